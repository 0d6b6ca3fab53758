"""cvc_clinicdb and kvasir_seg on synthetic twins; kvasir_seg on the real ../shared copy."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medft import data
from medft.data import cvc_clinicdb
from medft.data.masks import boxes_from_mask

SHARED = Path(__file__).resolve().parents[1] / '..' / 'shared'
KVASIR = SHARED / 'data' / 'kvasir-seg-256'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('medft_data')


@pytest.fixture(scope='module')
def cvc(data_dir):
  return data.load({'name': 'synthetic_polyp', 'data_dir': str(data_dir)})


@pytest.fixture(scope='module')
def kvasir(data_dir):
  return data.load({'name': 'synthetic_kvasir_seg', 'data_dir': str(data_dir)})


def test_cvc_round_trip_without_tensorflow(cvc):
  raw = Path(cvc.info['synthetic']['raw_dir'])
  assert cvc.app == 'polyp' and cvc.info['builder'] == 'cvc_clinicdb'
  n_empty = 0
  for split, view in cvc.splits.items():
    for example in view:
      frame = int(example['id'])
      image = np.asarray(Image.open(raw / 'Original' / f'{frame}.tif'))
      np.testing.assert_array_equal(example['image'], image)
      mask = np.asarray(Image.open(raw / 'Ground Truth' / f'{frame}.tif')) > 127
      np.testing.assert_array_equal(example['mask'], mask.astype(np.uint8))
      assert example['image'].shape == (288, 384, 3) and example['mask'].dtype == np.uint8
      assert set(np.unique(example['mask'])) <= {0, 1}
      assert example['boxes'].dtype == np.float32 and example['boxes'].shape[1] == 4
      np.testing.assert_array_equal(example['boxes'], boxes_from_mask(example['mask']))
      assert example['unit'] == f'seq{cvc_clinicdb.sequence_of(frame):02d}'
      n_empty += example['boxes'].shape[0] == 0
  assert 'tensorflow' not in sys.modules
  assert n_empty > 0  # some frames have no polyp


def test_cvc_polyps_are_reddish_and_textured(cvc):
  example = next(e for e in cvc.splits['train'] if e['mask'].any())
  inside = example['image'][example['mask'] > 0].astype(float)
  assert inside[:, 0].mean() > inside[:, 1].mean() + 40  # red dominates
  assert inside.std(axis=0).mean() > 5


def test_cvc_splits_by_sequence(cvc, data_dir):
  units = {s: set(cvc.units(s)) for s in cvc.splits}
  assert units['train'].isdisjoint(units['test']) and units['train'].isdisjoint(
      units['validation']) and units['validation'].isdisjoint(units['test'])
  assert len(set().union(*units.values())) == 6
  half = data.load({'name': 'synthetic_polyp', 'data_dir': str(data_dir), 'fraction': 0.5})
  assert set(half.info['units']['train']) < units['train']


def test_cvc_sequence_map():
  assert [cvc_clinicdb.sequence_of(f) for f in (1, 25, 26, 50, 51, 591, 592, 612)] == [
      1, 1, 2, 2, 3, 28, 29, 29]
  assert len(cvc_clinicdb.SEQUENCE_STARTS) == 29
  with pytest.raises(ValueError, match='613'):
    cvc_clinicdb.sequence_of(613)


def test_kvasir_twin_boxes_are_scaled_to_the_frame_on_disk(kvasir):
  raw = Path(kvasir.info['synthetic']['raw_dir'])
  entries = json.loads((raw / 'kavsir_bboxes.json').read_text())
  for example in kvasir.splits['train']:
    image = np.asarray(Image.open(raw / 'images' / f'{example["id"]}.jpg').convert('RGB'))
    np.testing.assert_array_equal(example['image'], image)
    assert example['unit'] == example['id']
    assert set(np.unique(example['mask'])) <= {0, 1}
    assert entries[example['id']]['width'] > 256  # the JSON is in another resolution ...
    boxes = example['boxes']
    assert np.all(boxes >= 0) and np.all(boxes <= 256)  # ... the boxes are in this one
    from_mask = boxes_from_mask(example['mask'])
    assert boxes.shape == from_mask.shape
    np.testing.assert_allclose(np.sort(boxes, 0), np.sort(from_mask, 0), atol=2.0)
  assert 'tensorflow' not in sys.modules


@pytest.mark.skipif(not KVASIR.is_dir(), reason=f'real Kvasir-SEG copy not found at {KVASIR}')
def test_real_kvasir_seg(tmp_path):
  ds = data.load({'name': 'kvasir_seg', 'manual_dir': str(KVASIR), 'data_dir': str(tmp_path)})
  assert sum(len(v) for v in ds.splits.values()) == 998
  assert ds.info['units']['train'] and len(ds.units('test')) == len(set(ds.units('test')))
  entries = json.loads((KVASIR / 'kavsir_bboxes.json').read_text())
  n_boxes = 0
  for split, view in ds.splits.items():
    for i in range(0, len(view), 7):
      example = view[i]
      assert example['image'].shape == (256, 256, 3)
      assert example['mask'].shape == (256, 256)
      assert set(np.unique(example['mask'])) <= {0, 1} and example['mask'].any()
      boxes = example['boxes']
      entry = entries[example['id']]
      assert boxes.shape == (len(entry['bbox']), 4)
      assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= 256) and np.all(
          boxes[:, [1, 3]] <= 256)
      # The mask lies mostly inside its boxes.
      inside = np.zeros_like(example['mask'])
      for ymin, xmin, ymax, xmax in np.rint(boxes).astype(int):
        inside[ymin:ymax + 1, xmin:xmax + 1] = 1
      assert (example['mask'] & inside).sum() >= 0.95 * example['mask'].sum()
      n_boxes += len(boxes)
  assert n_boxes > 100
  assert 'tensorflow' not in sys.modules
