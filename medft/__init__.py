"""medft: full training or fine-tuning? Tajbakhsh et al. (IEEE TMI 2016) in JAX/Flax.

Library entry points (each takes an ml_collections config, as `configs/<app>.py` returns):
  medft.train(config, workdir) -> results dict      one arm of the study
  medft.sweep(config, workdir) -> report dict       every arm x fraction x seed, then the report
  medft.auto_tune(config, workdir) -> auto dict     deepen from fc8 while validation AUC improves
  medft.report.build_report(sweep_dir) -> dict      report.md/json/csv + plots of a sweep folder
  medft.pretrain.pretrain(config, workdir) -> path  a source model in the converted-weights format
(`medft.sweep` is the function; the module's helpers import as `from medft.sweep import plan`.)
"""

from medft import pretrain, report  # noqa: F401
from medft.sweep import auto_tune, sweep  # noqa: F401
from medft.trainer import NonFiniteError, Preempted, train  # noqa: F401

__version__ = '0.1.0'
