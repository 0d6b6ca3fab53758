"""Unit-level splits and nested fractions."""

import pytest

from medft.data import splits

UNITS = [f'subject{i:03d}' for i in range(50)]


def test_split_is_a_partition_and_deterministic():
  a = splits.split_units(UNITS * 2, seed=3)
  assert a == splits.split_units(list(reversed(UNITS)), seed=3)
  sets = [set(a[s]) for s in splits.SPLITS]
  assert set.union(*sets) == set(UNITS)
  assert sum(len(s) for s in sets) == len(UNITS)
  assert len(a['test']) == 10 and len(a['validation']) == 8 and len(a['train']) == 32
  assert splits.split_units(UNITS, seed=4) != a


def test_adding_a_unit_keeps_the_others_in_place():
  before = splits.split_units(UNITS, seed=0, val_share=0.0, test_share=0.0)
  assert before['train'] == sorted(UNITS)
  ranked_before = splits._ranked(UNITS, 0, 'split')
  ranked_after = splits._ranked([*UNITS, 'new'], 0, 'split')
  assert [u for u in ranked_after if u != 'new'] == ranked_before


def test_fractions_are_nested():
  train = splits.split_units(UNITS, seed=1)['train']
  kept = {f: set(splits.keep_fraction(train, f, seed=1)) for f in (0.25, 0.5, 1.0)}
  assert kept[0.25] < kept[0.5] < kept[1.0] == set(train)
  assert len(kept[0.25]) == 8 and len(kept[0.5]) == 16


def test_empty_fraction_and_bad_shares_raise():
  with pytest.raises(ValueError, match=r'fraction=0.01.*only 4 units'):
    splits.keep_fraction(['a', 'b', 'c', 'd'], 0.01, seed=0)
  with pytest.raises(ValueError, match='fraction=0'):
    splits.keep_fraction(['a'], 0.0, seed=0)
  with pytest.raises(ValueError, match='Only 2 units'):
    splits.split_units(['a', 'b'], seed=0)
  with pytest.raises(ValueError, match='test_share'):
    splits.split_units(UNITS, seed=0, test_share=1.0)
