"""The path `--config=configs/imagenet_pretrain.py:...` names in a source checkout.

The config itself is medft/configs/imagenet_pretrain.py (installed with the package).
"""

from medft.configs.imagenet_pretrain import get_config  # noqa: F401
