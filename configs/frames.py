"""The path `--config=configs/frames.py:...` names in a source checkout.

The config itself is medft/configs/frames.py (installed with the package).
"""

from medft.configs.frames import get_config  # noqa: F401
