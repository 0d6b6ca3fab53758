"""medft: full training or fine-tuning? Tajbakhsh et al. (IEEE TMI 2016) in JAX/Flax.

Library entry points (each takes an ml_collections config, as `medft/configs/<app>.py` returns):
  medft.train(config, workdir) -> results dict      one arm of the study
  medft.sweep(config, workdir) -> report dict       every arm x fraction x seed, then the report
  medft.auto_tune(config, workdir) -> auto dict     deepen from fc8 while validation AUC improves
  medft.report.build_report(sweep_dir) -> dict      report.md/json/csv + plots of a sweep folder
  medft.pretrain.pretrain(config, workdir) -> path  a source model in the converted-weights format
(`medft.sweep` is the function; the module's helpers import as `from medft.sweep import plan`.)
"""

import importlib

from medft.errors import (  # noqa: F401
  ConfigError,
  InputFileError,
  LockedError,
  MissingInputError,
  MissingPackageError,
  NonFiniteError,
  NotOursError,
  ResourceError,
  UserError,
)
from medft.loop import Preempted  # noqa: F401

# Imported eagerly: importing the submodule `medft.sweep` would otherwise bind the name to the
# module. The trainer imports TFDS only when a run reads data.
from medft.sweep import auto_tune, sweep  # noqa: F401  (also imports medft.trainer)
from medft.trainer import train  # noqa: F401

__version__ = '0.1.0'

# Loaded on first use (PEP 562): the CLI, the converter and the benchmark need neither TFDS
# nor matplotlib.
_LAZY = {
    'report': ('medft.report', None),
    'pretrain': ('medft.pretrain', None),
}


def __getattr__(name: str):
  if name not in _LAZY:
    raise AttributeError(f'module medft has no attribute {name!r}')
  module, attr = _LAZY[name]
  value = importlib.import_module(module)
  value = getattr(value, attr) if attr else value
  globals()[name] = value
  return value


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
