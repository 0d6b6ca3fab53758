"""Progress lines for long phases: count, rate, ETA, at most one log line every few seconds.

Training logs its own rows; every other phase that can take minutes (test and validation
evaluation, data preparation, report building) reports through one `Progress`:

    progress = Progress('test evaluation', unit='patches', total=n)
    for chunk in chunks:
      ...
      progress.update(len(chunk))
    progress.done()

logs e.g. `test evaluation: 4096/21600 patches (19%), 310.2 patches/s, ETA 0:00:56`.
`wrap_predict` counts the patches a task sends through its predict function, so the tasks
need not know about progress at all.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
from absl import logging

# Seconds between two progress lines of one phase.
EVERY_S = 10.0


def hms(seconds: float) -> str:
  """'1:02:03' (or '?' for an unknown duration)."""
  if not np.isfinite(seconds):
    return '?'
  s = int(seconds)
  return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'


class Progress:
  """Counts work done in a phase and logs count, rate and (with `total`) share and ETA."""

  def __init__(self, what: str, unit: str = 'items', total: int | None = None,
               every_s: float | None = None, log: Callable[..., None] | None = None):
    self.what, self.unit, self.total = what, unit, total
    self.every_s = EVERY_S if every_s is None else every_s
    self._log = log or logging.info
    self.count = 0
    self.t0 = self._last = time.time()
    self.lines = 0

  def rate(self) -> float:
    return self.count / max(time.time() - self.t0, 1e-9)

  def line(self) -> str:
    rate = self.rate()
    if self.total:
      eta = (self.total - self.count) / rate if rate > 0 else float('inf')
      return (f'{self.what}: {self.count}/{self.total} {self.unit} '
              f'({100 * self.count / self.total:.0f}%), {rate:.1f} {self.unit}/s, '
              f'ETA {hms(eta)}')
    return f'{self.what}: {self.count} {self.unit}, {rate:.1f} {self.unit}/s'

  def update(self, n: int = 1) -> None:
    self.count += int(n)
    now = time.time()
    if now - self._last >= self.every_s:
      self._last = now
      self.lines += 1
      self._log('%s', self.line())

  def done(self) -> None:
    """One closing line when the phase logged progress (or took longer than `every_s`)."""
    elapsed = time.time() - self.t0
    if self.lines or elapsed >= self.every_s:
      self._log('%s: %d %s in %s (%.1f %s/s).', self.what, self.count, self.unit, hms(elapsed),
                self.rate(), self.unit)


def wrap_predict(predict: Callable, progress: Progress) -> Callable:
  """`predict` that counts the patches it classified (its output rows) into `progress`."""

  def counted(*args, **kwargs):
    out = predict(*args, **kwargs)
    progress.update(len(out))
    return out
  return counted
