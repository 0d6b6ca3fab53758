"""Model registry: `get_model(arch, num_classes, **kw) -> (module, units)`.

`units` lists the tuning units bottom-up; the last one is the classifier head that a
fine-tuning arm re-initialises. An architecture registers itself in its own module with
`@register(name, units)` (`medft.registry`); `ARCHS[name]` is its (linen class, units).
"""

from __future__ import annotations

from typing import Callable, Sequence

from flax import linen as nn

from medft.registry import Registry

ARCHS: Registry[tuple[type[nn.Module], tuple[str, ...]]] = Registry('architecture', 'arch',
                                                                    'medft.models')


def register(name: str, units: Sequence[str]) -> Callable[[type[nn.Module]], type[nn.Module]]:
  """Class decorator: the linen module of architecture `name` with its tuning `units`."""
  def add(cls: type[nn.Module]) -> type[nn.Module]:
    ARCHS.register(name, (cls, tuple(units)))
    return cls
  return add


def get_model(arch: str, num_classes: int, **kwargs) -> tuple[nn.Module, tuple[str, ...]]:
  """Returns the linen module for `arch` and its tuning units (bottom-up)."""
  cls, units = ARCHS[arch]
  return cls(num_classes=num_classes, **kwargs), units
