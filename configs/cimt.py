"""The path `--config=configs/cimt.py:...` names in a source checkout.

The config itself is medft/configs/cimt.py (installed with the package).
"""

from medft.configs.cimt import get_config  # noqa: F401
