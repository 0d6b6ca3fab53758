"""The path `--config=configs/polyp.py:...` names in a source checkout.

The config itself is medft/configs/polyp.py (installed with the package).
"""

from medft.configs.polyp import get_config  # noqa: F401
