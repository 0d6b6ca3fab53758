"""frames_folder on its synthetic twin: labels from the class map, units from the regex."""

import sys

import numpy as np
import pytest
from PIL import Image

from medft import data
from medft.data import frames_folder


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('medft_data')


@pytest.fixture(scope='module')
def ds(data_dir):
  return data.load({'name': 'synthetic_frames', 'data_dir': str(data_dir)})


def test_round_trip_labels_and_units(ds):
  raw = ds.info['synthetic']['raw_dir']
  labels = []
  for split, view in ds.splits.items():
    for example in view:
      class_name, stem = example['id'].split('/')
      written = np.asarray(Image.open(f'{raw}/{class_name}/{stem}.jpg').convert('RGB'))
      np.testing.assert_array_equal(example['image'], written)
      assert example['label'] == {'informative': 1, 'non_informative': 0}[class_name]
      assert example['unit'] == stem.split('_')[0]  # vidNN
      labels.append(example['label'])
  assert 'tensorflow' not in sys.modules
  assert sorted(set(labels)) == [0, 1] and len(labels) == 40


def test_informative_frames_are_sharper(ds):
  def sharpness(image):
    grey = image.astype(float).mean(axis=2)
    return np.abs(np.diff(grey, axis=1)).mean()

  by_label = {0: [], 1: []}
  for example in ds.splits['train']:
    by_label[example['label']].append(sharpness(example['image']))
  assert min(by_label[1]) > max(by_label[0])


def test_splits_by_video(ds):
  units = {s: set(ds.units(s)) for s in ds.splits}
  assert units['train'].isdisjoint(units['test'] | units['validation'])
  assert units['test'].isdisjoint(units['validation'])
  assert ds.info['units']['test'] == sorted(units['test'])


def test_class_map_decides_labels_and_folders(ds, tmp_path):
  raw = ds.info['synthetic']['raw_dir']
  flipped = data.load({'name': 'frames_folder', 'manual_dir': raw, 'data_dir': str(tmp_path),
                       'classes': {'informative': 0, 'non_informative': 1}})
  example = flipped.splits['test'][0]
  assert example['label'] == int(example['id'].startswith('non_informative'))
  # No unit regex: every file stem is its own unit.
  assert flipped.units('test') == [e.split('/')[1] for e in flipped.splits['test'].ids]
  with pytest.raises(data.ManualDirError, match='blurry'):
    data.load({'name': 'frames_folder', 'manual_dir': raw, 'data_dir': str(tmp_path),
               'classes': {'blurry': 0, 'informative': 1}})
  with pytest.raises(ValueError, match='classes'):
    data.load({'name': 'frames_folder', 'manual_dir': raw, 'data_dir': str(tmp_path)})


def test_unit_rule():
  assert frames_folder.unit_of('vid03_frame0001', r'^(vid\d+)_') == 'vid03'
  assert frames_folder.unit_of('other', r'^(vid\d+)_') == 'other'
  assert frames_folder.unit_of('p12-x', r'^p\d+') == 'p12'
