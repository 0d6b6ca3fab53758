"""The cubs builder on its synthetic twin: round trip, splits by subject, fractions, errors."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medft import data
from medft.data import cubs, readers


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('medft_data')


@pytest.fixture(scope='module')
def ds(data_dir):
  return data.load({'name': 'synthetic_cimt', 'data_dir': str(data_dir)})


def test_reads_back_without_tensorflow(ds):
  example = ds.splits['train'][0]
  assert 'tensorflow' not in sys.modules
  assert ds.app == 'cimt'
  assert example['image'].dtype == np.uint8 and example['image'].ndim == 2
  assert example['li'].dtype == np.float32 and example['li'].shape[1] == 2
  assert isinstance(example['cf'], float) and isinstance(example['id'], str)
  assert example['annotator'] == 'A1' and example['centre'] == 'clin'


def test_values_equal_what_the_generator_wrote(ds):
  raw = ds.info['synthetic']['raw_dir']
  for split in ('train', 'test'):
    for example in ds.splits[split]:
      image_id = example['id']
      written = np.asarray(Image.open(f'{raw}/IMAGES/{image_id}.tiff'))
      np.testing.assert_array_equal(example['image'], written)
      for kind in ('li', 'ma'):
        text = open(f'{raw}/SEGMENTATIONS/A1/{image_id}-{kind.upper()}.txt').read()
        values = np.array(text.replace(',', ' ').split(), dtype=np.float32)
        rows = text.strip().count('\n') + 1
        expected = values.reshape(2, -1).T if rows == 2 else values.reshape(-1, 2)
        np.testing.assert_array_equal(example[kind], expected)
      assert example['cf'] == float(open(f'{raw}/CF/{image_id}_CF.txt').read())
      assert example['unit'] == cubs.subject_of(image_id)
  # The band is learnable: MA lies 8..20 px below LI and the band is brighter than the lumen.
  example = ds.splits['train'][0]
  thickness = example['ma'][:, 1] - example['li'][:, 1]
  assert 8 <= thickness.min() and thickness.max() <= 20
  columns = example['li'][:, 0].astype(int)
  li_rows = np.rint(example['li'][:, 1]).astype(int)
  image = example['image'].astype(float)
  assert image[li_rows + 4, columns].mean() > image[li_rows - 6, columns].mean() + 30


def test_splits_are_disjoint_by_subject_and_deterministic(ds, data_dir):
  units = {s: set(ds.units(s)) for s in ('train', 'validation', 'test')}
  assert not units['train'] & units['validation']
  assert not units['train'] & units['test'] and not units['validation'] & units['test']
  assert sum(len(ds.splits[s]) for s in units) == 24
  assert ds.info['units'] == {s: sorted(u) for s, u in units.items()}
  # Both sides of a subject are in the same split.
  for split, view in ds.splits.items():
    assert len(ds.units(split)) == len(view)
    for unit in set(ds.units(split)):
      assert ds.units(split).count(unit) == 2
  again = data.load({'name': 'synthetic_cimt', 'data_dir': str(data_dir)})
  assert again.info['units'] == ds.info['units']
  assert [e['id'] for e in again.splits['test']] == [e['id'] for e in ds.splits['test']]
  other = data.load({'name': 'synthetic_cimt', 'data_dir': str(data_dir), 'split_seed': 1})
  assert other.info['units'] != ds.info['units']


def test_fractions_are_nested_and_applied_to_train_only(data_dir):
  full = data.load({'name': 'synthetic_cimt', 'data_dir': str(data_dir)})
  kept = {}
  for fraction in (0.25, 0.5, 1.0):
    ds = data.load({'name': 'synthetic_cimt', 'data_dir': str(data_dir), 'fraction': fraction})
    kept[fraction] = set(ds.info['units']['train'])
    for split in ('validation', 'test'):
      assert ds.info['units'][split] == full.info['units'][split]
    assert ds.info['fraction'] == fraction and ds.info['num_train_units_before_fraction'] == 8
  assert kept[0.25] < kept[0.5] < kept[1.0]
  assert len(kept[1.0]) == 8 and len(kept[0.5]) == 4 and len(kept[0.25]) == 2
  with pytest.raises(ValueError, match=r'fraction=0.01.*train split.*only 8 units'):
    data.load({'name': 'synthetic_cimt', 'data_dir': str(data_dir), 'fraction': 0.01})


def test_annotator_set_on_the_command_line_reaches_the_loader(data_dir):
  """`--config.data.annotator=A2` is a field of every config (medft.data.schema)."""
  from absl import flags
  from ml_collections import config_flags
  config = Path(__file__).resolve().parents[1] / 'configs' / 'cimt.py'
  argv = ['run.py', f'--config={config}:synthetic', '--config.data.annotator=A2',
          f'--config.data.data_dir={data_dir}', '--config.data.synthetic_n=0']
  flag_values = flags.FlagValues()  # as run.py defines its --config flag
  config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  ds = data.load(flag_values.config.data)
  assert ds.splits['test'][0]['annotator'] == 'A2'


def test_other_annotator(data_dir):
  ds = data.load({'name': 'synthetic_cimt', 'data_dir': str(data_dir), 'annotator': 'A2'})
  a1 = data.load({'name': 'synthetic_cimt', 'data_dir': str(data_dir)})
  e2, e1 = ds.splits['test'][0], a1.splits['test'][0]
  assert e2['annotator'] == 'A2' and e2['id'] == e1['id']
  assert 0 < np.abs(e2['li'] - e1['li']).max() < 5
  with pytest.raises(ValueError, match='Unknown CUBS annotator'):
    data.load({'name': 'synthetic_cimt', 'data_dir': str(data_dir), 'annotator': 'B7'})


def test_missing_manual_dir_prints_instructions_and_path(tmp_path):
  missing = tmp_path / 'no_such_download'
  with pytest.raises(data.ManualDirError) as err:
    data.load({'name': 'cubs', 'manual_dir': str(missing), 'data_dir': str(tmp_path / 'tfds')})
  assert str(missing) in str(err.value) and 'SEGMENTATIONS/<annotator>' in str(err.value)
  with pytest.raises(data.ManualDirError, match='no manual_dir was given'):
    data.load({'name': 'cubs', 'data_dir': str(tmp_path / 'tfds')})


def _copy_twin(ds, tmp_path):
  manual = tmp_path / 'manual'
  shutil.copytree(ds.info['synthetic']['raw_dir'], manual)
  return manual


def _assert_nothing_prepared(data_dir):
  prepared = [p for p in data_dir.rglob('*') if p.name in ('1.0.0', 'dataset_info.json')
              or p.name.startswith('incomplete')]
  assert not prepared, prepared


@pytest.mark.parametrize('broken', ['IMAGES/clin_0004_R.tiff', 'CF/clin_0004_R_CF.txt',
                                    'SEGMENTATIONS/A1/clin_0004_R-MA.txt'])
def test_broken_file_is_named_and_leaves_no_half_prepared_data(ds, tmp_path, broken):
  manual = _copy_twin(ds, tmp_path)
  good = (manual / broken).read_bytes()
  (manual / broken).write_bytes(b'1 2 3\n4 5\n' if broken.endswith('.txt') else b'garbage')
  cfg = {'name': 'cubs', 'manual_dir': str(manual), 'data_dir': str(tmp_path / 'tfds')}
  with pytest.raises(ValueError, match=broken.split('/')[-1]):
    data.load(cfg)
  _assert_nothing_prepared(tmp_path / 'tfds')
  (manual / broken).write_bytes(good)  # fixed: the next run prepares from scratch
  assert sum(len(v) for v in data.load(cfg).splits.values()) == 24


def test_real_builder_on_the_twin_layout_matches_the_twin(ds, tmp_path):
  manual = _copy_twin(ds, tmp_path)
  real = data.load({'name': 'cubs', 'manual_dir': str(manual), 'data_dir': str(tmp_path / 't')})
  assert real.info['units'] == ds.info['units']
  assert real.info['source_dir'] == str(manual.resolve())
  np.testing.assert_array_equal(real.splits['train'][3]['ma'], ds.splits['train'][3]['ma'])


def test_subject_and_centre_rules():
  assert cubs.subject_of('clin_0001_L') == cubs.subject_of('clin_0001_R') == 'clin_0001'
  assert cubs.subject_of('ABC-12-left') == 'ABC-12'
  assert cubs.centre_of('clin_0001_L') == 'clin' and cubs.centre_of('0001_L') == 'unknown'
  assert readers.parse_profile('1 2 3\n4 5 6').shape == (3, 2)
