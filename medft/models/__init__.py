"""Model registry: `get_model(arch, num_classes, **kw) -> (module, units)`.

`units` lists the tuning units bottom-up; the last one is the classifier head that a
fine-tuning arm re-initialises.
"""

from __future__ import annotations

from flax import linen as nn

from medft.errors import ConfigError
from medft.models import alexnet, squeezenet

ARCHS = {
    'alexnet': (alexnet.AlexNet, alexnet.UNITS),
    'alexnet_torchvision': (alexnet.AlexNetTorchvision, alexnet.UNITS),
    'squeezenet1_1': (squeezenet.SqueezeNet, squeezenet.UNITS),
}


def get_model(arch: str, num_classes: int, **kwargs) -> tuple[nn.Module, tuple[str, ...]]:
  """Returns the linen module for `arch` and its tuning units (bottom-up)."""
  if arch not in ARCHS:
    raise ConfigError(f'arch={arch!r} is not a known architecture; choose one of '
                      f'{", ".join(ARCHS)}.')
  cls, units = ARCHS[arch]
  return cls(num_classes=num_classes, **kwargs), units
