"""Unit-level train/validation/test splits and nested training fractions.

Units (subjects, sequences, patients) are ordered by a SHA-256 of `seed:purpose:unit`, a
ranking that depends only on the seed and the unit's own name: it is the same on every
machine and numpy version, and a unit keeps its place when others are added. The first
`test_share` of the units are the test set; of the rest, the first `val_share` are the
validation set. Fractions keep a prefix of a second ranking of the training units, so the 25%
units are always inside the 50% units.

The unit of a fraction (`data.fraction_unit`) is normally the split unit itself (subjects,
patients, videos, ...). With 'frames' or 'images' the fraction counts examples instead: the
split stays by unit (test statistics stay at the level of independence), and a nested prefix
of the training examples is kept (the paper's frame-classification design, 1% of frames).
A fraction that keeps no training unit is refused by name (`errors.ConfigError`), and so is a
unit count above what the training split has (`count_fraction`, a study's single-patient arm).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

from medft import errors

SPLITS = ('train', 'validation', 'test')
# Valid `data.fraction_unit` values; those in EXAMPLE_UNITS count examples, not split units.
FRACTION_UNITS = ('subjects', 'patients', 'videos', 'sequences', 'volumes', 'frames', 'images')
EXAMPLE_UNITS = ('frames', 'images')


def check_fraction_unit(unit: str) -> str:
  """`unit` if it is a known fraction unit, else a ConfigError naming the choices."""
  if unit not in FRACTION_UNITS:
    raise errors.ConfigError(f'data.fraction_unit={unit!r} is not a fraction unit; choose one of '
                             f'{", ".join(FRACTION_UNITS)}.')
  return unit


def _ranked(units: Iterable[str], seed: int, purpose: str) -> list[str]:
  def key(unit: str) -> tuple[str, str]:
    return hashlib.sha256(f'{seed}:{purpose}:{unit}'.encode()).hexdigest(), unit

  return sorted(set(units), key=key)


def _count(share: float, n: int) -> int:
  """Units for a share: rounded half up, at least one when the share is positive."""
  if share <= 0:
    return 0
  return max(1, math.floor(share * n + 0.5))


def split_units(
    units: Iterable[str], seed: int, val_share: float = 0.2, test_share: float = 0.2
) -> dict[str, list[str]]:
  """Assigns every unit to exactly one of train/validation/test (lists sorted by name)."""
  for name, share in (('val_share', val_share), ('test_share', test_share)):
    if not 0 <= share < 1:
      raise errors.ConfigError(f'{name}={share} must be in [0, 1).')
  ranked = _ranked(units, seed, 'split')
  n_test = _count(test_share, len(ranked))
  n_val = _count(val_share, len(ranked) - n_test)
  if len(ranked) - n_test - n_val < 1:
    raise errors.ConfigError(
        f'Only {len(ranked)} units: cannot keep training units with test_share={test_share} '
        f'and val_share={val_share}.'
    )
  return {
      'train': sorted(ranked[n_test + n_val:]),
      'validation': sorted(ranked[n_test:n_test + n_val]),
      'test': sorted(ranked[:n_test]),
  }


def kept_count(fraction: float, n: int) -> int:
  """Training units kept at `fraction` of `n`: rounded half up (0 when too few)."""
  return math.floor(fraction * n + 0.5)


def keep_fraction(train_units: Sequence[str], fraction: float, seed: int,
                  unit: str = 'units') -> list[str]:
  """The training units kept at `fraction` (nested across fractions), sorted by name.

  `unit` names what `train_units` are (subjects, frames, ...) in the refusal message.
  """
  if not 0 < fraction <= 1:
    raise errors.ConfigError(f'fraction={fraction} must be in (0, 1].')
  ranked = _ranked(train_units, seed, 'fraction')
  n_keep = kept_count(fraction, len(ranked))
  if n_keep == 0:
    raise errors.ConfigError(
        f'fraction={fraction} leaves the train split empty: it has only {len(ranked)} units '
        f'({unit}) (need fraction >= {0.5 / max(len(ranked), 1):.3g} to keep one).'
    )
  return sorted(ranked[:n_keep])


def count_fraction(count: int | str, n: int, unit: str = 'units') -> float:
  """The fraction that keeps exactly `count` of `n` training units (`count / n`).

  A study's unit counts (`sweep.train_units`, e.g. the paper's single-patient CIMT arm) run as
  this fraction, so they nest inside the larger fractions and share their folder layout.
  """
  try:
    k = int(count)
  except (TypeError, ValueError):
    raise errors.ConfigError(f'sweep.train_units: {count!r} is not a whole number of training '
                             f'{unit}; write e.g. 1 or 1,2.') from None
  if not 1 <= k <= n:
    raise errors.ConfigError(f'sweep.train_units={k}: the train split has {n} {unit}; ask for '
                             f'1 to {n}.')
  return k / n  # kept_count(k / n, n) == k: floor(k + 0.5) survives any rounding of k / n
