"""medft: full training or fine-tuning? Tajbakhsh et al. (IEEE TMI 2016) in JAX/Flax.

Library entry points (each takes an ml_collections config, as `configs/<app>.py` returns):
  medft.train(config, workdir) -> results dict   one arm of the study
"""

from medft.trainer import NonFiniteError, Preempted, train  # noqa: F401

__version__ = '0.1.0'
