"""Unit-level splits and nested fractions."""

import pytest

from medft import data, errors
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


def test_refusals_are_config_errors_naming_the_count_and_unit():
  with pytest.raises(errors.ConfigError, match=r'fraction=0.1 .*only 4 units \(subjects\).*'
                     r'need fraction >= 0.125'):
    splits.keep_fraction(['a', 'b', 'c', 'd'], 0.1, seed=0, unit='subjects')
  with pytest.raises(errors.ConfigError, match='fraction_unit=.slices.'):
    splits.check_fraction_unit('slices')
  assert splits.check_fraction_unit('videos') == 'videos'


def test_a_unit_count_is_the_fraction_that_keeps_exactly_that_many():
  for n in range(1, len(UNITS) + 1):
    train = UNITS[:n]
    for k in sorted({1, min(2, n), n}):
      kept = splits.keep_fraction(train, splits.count_fraction(k, n), seed=2)
      assert len(kept) == k
  # Nested: the single-unit arm is inside every larger fraction of the same ranking.
  one = set(splits.keep_fraction(UNITS, splits.count_fraction(1, 50), seed=2))
  assert one < set(splits.keep_fraction(UNITS, 0.25, seed=2))
  with pytest.raises(errors.ConfigError, match='has 5 subjects; ask for 1 to 5'):
    splits.count_fraction(6, 5, 'subjects')
  with pytest.raises(errors.ConfigError, match='whole number'):
    splits.count_fraction('one', 5)


def _load(data_dir, name, **cfg):
  return data.load({'name': name, 'data_dir': str(data_dir), 'test_share': 0.5, **cfg})


def test_study_fractions_are_checked_before_training_and_counts_resolved(cimt_data_dir):
  # synthetic_cimt: 12 subjects -> 6 test, 1 validation, 5 training.
  cfg = {'name': 'synthetic_cimt', 'data_dir': str(cimt_data_dir), 'test_share': 0.5,
         'fraction_unit': 'subjects'}
  assert data.study_fractions(cfg, [0.5, 1.0], ['1']) == [0.2, 0.5, 1.0]
  one = _load(cimt_data_dir, 'synthetic_cimt', fraction=0.2, fraction_unit='subjects')
  assert len(one.info['units']['train']) == 1 == one.info['fraction_units_kept']
  assert (one.info['fraction_unit'], one.info['fraction_units_before']) == ('subjects', 5)
  with pytest.raises(errors.ConfigError) as refused:
    data.study_fractions(cfg, [0.01, 0.05, 0.5], ())
  message = str(refused.value)
  assert '5 training subjects' in message and 'fraction=0.01' in message
  assert 'fraction=0.05' in message and 'fraction=0.5 ' not in message
  with pytest.raises(errors.ConfigError, match='has 5 subjects'):
    data.study_fractions(cfg, [1.0], ['6'])


def test_a_frame_fraction_keeps_frames_and_splits_by_video(data_dir):
  # synthetic_frames: 40 frames of 8 videos -> 4 test videos, 1 validation, 3 training (15
  # frames of both classes).
  full = _load(data_dir, 'synthetic_frames', fraction_unit='frames')
  train_ids = set(full.splits['train'].ids)
  assert full.info['fraction_units_before'] == full.info['fraction_units_kept'] == 15
  kept = {}
  for fraction in (0.1, 0.5):
    ds = _load(data_dir, 'synthetic_frames', fraction=fraction, fraction_unit='frames')
    kept[fraction] = set(ds.splits['train'].ids)
    assert ds.info['fraction_units_kept'] == len(kept[fraction])
    assert ds.info['units']['test'] == full.info['units']['test']
    assert ds.splits['test'].ids == full.splits['test'].ids
  assert len(kept[0.1]) == 2 and len(kept[0.5]) == 8
  assert kept[0.1] < kept[0.5] < train_ids
  # Counted in videos instead, 10% of 3 training videos keeps none: refused by name.
  with pytest.raises(errors.ConfigError, match=r'only 3 units \(videos\)'):
    _load(data_dir, 'synthetic_frames', fraction=0.1, fraction_unit='videos')
