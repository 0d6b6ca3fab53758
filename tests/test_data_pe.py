"""cad_pe and fumpe on synthetic twins; FUMPE's slice reordering on a tiny shuffled series."""

import sys

import numpy as np
import pytest

from medft import data
from medft.data import fumpe, synthetic, volumes

_MISSING = '{} is not installed (pip install "medft[pe]")'
nrrd = pytest.importorskip('nrrd', reason=_MISSING.format('pynrrd'))
pydicom = pytest.importorskip('pydicom', reason=_MISSING.format('pydicom'))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('medft_data')


def test_cad_pe_twin_round_trip(data_dir):
  ds = data.load({'name': 'synthetic_pe', 'data_dir': str(data_dir)})
  assert ds.app == 'pe' and ds.info['builder'] == 'cad_pe'
  seen = 0
  for split, view in ds.splits.items():
    for example in view:
      index = int(example['id']) - 1
      volume, labels = synthetic.pe_example(synthetic._rng(0, 4, index))
      assert example['volume'].dtype == np.int16 and example['labels'].dtype == np.int32
      np.testing.assert_array_equal(example['volume'], volume)
      np.testing.assert_array_equal(example['labels'], labels)
      np.testing.assert_allclose(example['spacing'], synthetic.PE_SPACING, rtol=1e-6)
      assert example['unit'] == example['id']
      # Filling defects are dark inside bright vessels.
      assert example['labels'].max() >= 1
      assert np.median(example['volume'][example['labels'] > 0]) < 120
      seen += 1
  assert seen == 6 and 'tensorflow' not in sys.modules


def test_fumpe_twin_round_trip(data_dir):
  ds = data.load({'name': 'synthetic_fumpe', 'data_dir': str(data_dir)})
  assert ds.info['builder'] == 'fumpe'
  for example in ds.splits['train']:
    index = int(example['id'].removeprefix('PAT')) - 1
    volume, labels = synthetic.pe_example(synthetic._rng(0, 5, index))
    np.testing.assert_array_equal(example['volume'], volume)  # physical order restored
    np.testing.assert_array_equal(example['labels'] > 0, labels > 0)
    # Binary masks become one id per connected clot.
    assert example['labels'].max() == volumes.label_components(labels > 0).max()
    np.testing.assert_allclose(example['spacing'], synthetic.PE_SPACING, rtol=1e-5)
  assert 'tensorflow' not in sys.modules


def test_fumpe_reorders_shuffled_file_names_by_position(tmp_path):
  depth, height, width = 5, 6, 4
  volume = np.zeros((depth, height, width), np.int16)
  for k in range(depth):
    volume[k] = 100 * k - 500  # slice k (physical order) is recognisable by its value
  names = ['b.dcm', 'e.dcm', 'a.dcm', 'd.dcm', 'c.dcm']  # physical slice k -> file names[k]
  series = tmp_path / 'CT_scans' / 'PAT001'
  synthetic.write_dicom_series(series, volume, names, z0=-50.0, spacing=(2.5, 0.8, 0.6))
  assert [p.name for p in fumpe.series_files(series)] == sorted(names)
  # Mask (y, x, z) in file-name order: mark one voxel in the slice of file 'a.dcm' only.
  file_order = np.argsort(names)  # physical slice of each file, in file-name order
  mask = np.zeros((height, width, depth), np.uint8)
  mask[1, 2, 0] = 1  # first file by name, 'a.dcm' = physical slice 2
  hu, z, row_col = fumpe.read_series(series)
  np.testing.assert_array_equal(hu[:, 0, 0], volume[file_order, 0, 0])
  ordered, mask_zyx, step = fumpe.physical_order(hu, mask, z, series)
  np.testing.assert_array_equal(ordered, volume)
  assert np.argwhere(mask_zyx).tolist() == [[2, 1, 2]]
  assert step == pytest.approx(2.5) and row_col.tolist() == pytest.approx([0.8, 0.6])
  # Through the builder (with the .mat file).
  from scipy import io as sio

  (tmp_path / 'GroundTruth').mkdir()
  sio.savemat(str(tmp_path / 'GroundTruth' / 'PAT001.mat'), {'Mask': mask})
  builder = fumpe.Fumpe(data_dir=str(tmp_path / 'tfds'), file_format='array_record')
  records = builder._list_records(tmp_path)
  example = builder._load_example(records[0])
  np.testing.assert_array_equal(example['volume'], volume)
  assert np.argwhere(example['labels']).tolist() == [[2, 1, 2]]
  np.testing.assert_allclose(example['spacing'], [2.5, 0.8, 0.6], rtol=1e-6)


def test_mask_shape_mismatch_names_the_series(tmp_path):
  with pytest.raises(ValueError, match='PAT009'):
    fumpe.physical_order(np.zeros((3, 4, 5)), np.zeros((4, 5, 2)), np.arange(3.0),
                         tmp_path / 'PAT009')


def test_missing_optional_reader_names_the_pip_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, 'nrrd', None)
  with pytest.raises(ImportError, match=r'medft\[pe\]'):
    volumes.require('nrrd', 'Reading CAD-PE')


def test_clot_labels():
  binary = np.zeros((4, 6, 6), np.uint8)
  binary[0, 0, 0] = binary[3, 5, 5] = 1
  binary[1:3, 2:4, 2:4] = 1
  assert volumes.clot_labels(binary).max() == 3
  ids = binary.astype(np.int32) * 7
  np.testing.assert_array_equal(volumes.clot_labels(ids), ids)
  assert volumes.to_int16(np.array([40000.0, -1024.4, 3000])).tolist() == [32767, -1024, 3000]
  assert volumes.to_int16(np.array([3001], np.int16)).tolist() == [3001]
