"""Unit-level train/validation/test splits and nested training fractions.

Units (subjects, sequences, patients) are ordered by a SHA-256 of `seed:purpose:unit`, a
ranking that depends only on the seed and the unit's own name: it is the same on every
machine and numpy version, and a unit keeps its place when others are added. The first
`test_share` of the units are the test set; of the rest, the first `val_share` are the
validation set. Fractions keep a prefix of a second ranking of the training units, so the 25%
units are always inside the 50% units.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

from medft.errors import ConfigError

SPLITS = ('train', 'validation', 'test')


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
      raise ConfigError(f'{name}={share} must be in [0, 1).')
  ranked = _ranked(units, seed, 'split')
  n_test = _count(test_share, len(ranked))
  n_val = _count(val_share, len(ranked) - n_test)
  if len(ranked) - n_test - n_val < 1:
    raise ConfigError(
        f'Only {len(ranked)} units: cannot keep training units with test_share={test_share} '
        f'and val_share={val_share}.'
    )
  return {
      'train': sorted(ranked[n_test + n_val:]),
      'validation': sorted(ranked[n_test:n_test + n_val]),
      'test': sorted(ranked[:n_test]),
  }


def keep_fraction(train_units: Sequence[str], fraction: float, seed: int) -> list[str]:
  """The training units kept at `fraction` (nested across fractions), sorted by name."""
  if not 0 < fraction <= 1:
    raise ConfigError(f'fraction={fraction} must be in (0, 1].')
  ranked = _ranked(train_units, seed, 'fraction')
  n_keep = math.floor(fraction * len(ranked) + 0.5)
  if n_keep == 0:
    raise ConfigError(
        f'fraction={fraction} leaves the train split empty: it has only {len(ranked)} units '
        f'(need fraction >= {0.5 / max(len(ranked), 1):.3g} to keep one).'
    )
  return sorted(ranked[:n_keep])
