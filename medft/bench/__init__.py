"""The benchmark: medft's speed against a PyTorch twin (`python -m medft.bench`, see `cli`).

Not part of training; nothing in the library imports it. One module per job:
  core        settings, interleaved timing, the machine's description, the row format
  cases       the JAX cases: the real train step, feature-cached step and inference, compiled
  torch_twin  the same networks in PyTorch, timed the same way
  flops       FLOPs of a lowered step, achieved FLOP/s, fraction of the device's peak
  levers      speed levers of the AlexNet step, each against the default (`--levers`)
  measure     every measurement, and `run`, which returns them as rows
  cli         the command line (`main`); `__main__` runs it
  step_trace  are train steps back to back? (`python -m medft.bench.step_trace`)
"""

from medft.bench.core import QUICK, Settings  # noqa: F401
from medft.bench.measure import run  # noqa: F401
