"""The path `--config=configs/pe.py:...` names in a source checkout.

The config itself is medft/configs/pe.py (installed with the package).
"""

from medft.configs.pe import get_config  # noqa: F401
