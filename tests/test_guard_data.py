"""Data readers that must not mislead (issue 15): FUMPE slice order along the slice normal,
one series per folder, damaged annotation files, 16-bit scaling by the dtype's range, the
unit regex, and the synthetic writer's refusal to write over folders it did not write."""

import json

import numpy as np
import pytest
from PIL import Image

from medft import errors
from medft.data import frames_folder, fumpe, kvasir_seg, readers, synthetic

pydicom = pytest.importorskip('pydicom', reason='pydicom is not installed (pip install '
                              '"medft[pe]")')


# ---- FUMPE: slice order along the normal, within one series -------------------------------

# Oblique series: rows along +y, columns tilted in the x-z plane; normal = row x col.
ROW, COL = np.array([0.0, 1.0, 0.0]), np.array([0.6, 0.0, 0.8])
NORMAL = np.cross(ROW, COL)  # (0.8, 0, -0.6): z falls as the slices advance


def _oblique_series(folder, depth=6, step=2.5, seed=0, series=None):
  """Slice k (physical order) holds the value 100 k - 500; its ImagePositionPatient moves by
  `step` along the normal plus a random in-plane shift (which leaves the normal position
  alone but scrambles z); file names are shuffled. Returns the volume, names and positions."""
  rng = np.random.default_rng(seed)
  volume = np.stack([np.full((6, 4), 100 * k - 500, np.int16) for k in range(depth)])
  origin = np.array([-120.0, 30.0, 40.0])
  shifts = rng.uniform(-20, 20, size=(depth, 2))
  positions = np.stack([origin + k * step * NORMAL + a * ROW + b * COL
                        for k, (a, b) in enumerate(shifts)])
  names = [f'IM{int(i):03d}.dcm' for i in rng.permutation(depth)]
  synthetic.write_dicom_series(folder, volume, names, z0=0.0, spacing=(step, 0.8, 0.6),
                               orientation=(*ROW, *COL), positions=positions, series=series)
  return volume, names, positions


def test_oblique_shuffled_series_is_ordered_along_the_slice_normal(tmp_path):
  folder = tmp_path / 'CT_scans' / 'PAT001'
  volume, names, positions = _oblique_series(folder)
  # The old rule (ImagePositionPatient z) gets this series wrong: the test can tell.
  assert not np.array_equal(np.argsort(positions[:, 2]), np.arange(len(volume)))
  hu, along_normal, row_col = fumpe.read_series(folder)
  file_order = np.argsort(names)  # the physical slice held by each file, in file-name order
  np.testing.assert_array_equal(hu[:, 0, 0], volume[file_order, 0, 0])
  np.testing.assert_allclose(along_normal, positions[file_order] @ NORMAL, atol=1e-6)
  mask = np.zeros((6, 4, len(volume)), np.uint8)
  mask[1, 2, 0] = 1  # in the slice of the first file by name
  ordered, mask_zyx, step = fumpe.physical_order(hu, mask, along_normal, folder)
  np.testing.assert_array_equal(ordered, volume)
  assert np.argwhere(mask_zyx).tolist() == [[int(file_order[0]), 1, 2]]
  assert step == pytest.approx(2.5)
  assert row_col.tolist() == pytest.approx([0.8, 0.6])


def test_a_folder_mixing_two_series_is_refused_by_name(tmp_path):
  folder = tmp_path / 'PAT002'
  _oblique_series(folder, depth=3, series='1.2.3.4.1')
  volume = np.zeros((2, 6, 4), np.int16)
  synthetic.write_dicom_series(folder, volume, ['X1.dcm', 'X2.dcm'], z0=0.0,
                               series='1.2.3.4.2')
  with pytest.raises(errors.InputFileError) as info:
    fumpe.read_series(folder)
  message = str(info.value)
  assert all(s in message for s in (str(folder), '1.2.3.4.1: 3 files', '1.2.3.4.2: 2 files'))


def test_slices_of_different_orientations_are_refused(tmp_path):
  positions = np.zeros((2, 3))
  positions[1, 2] = 2.0
  with pytest.raises(errors.InputFileError, match='different ImageOrientationPatient'):
    fumpe.slice_positions(positions, np.array([[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 1.0]]),
                          tmp_path)


@pytest.mark.parametrize('content', [b'not a mat file' * 20, b'MATLAB 5.0 MAT-file' + bytes(200),
                                     b'\x89HDF\r\n\x1a\n' + bytes(60), b''])
def test_a_garbage_mask_file_names_the_file(tmp_path, content):
  path = tmp_path / 'PAT001.mat'
  path.write_bytes(content)
  with pytest.raises(errors.InputFileError, match='PAT001.mat'):
    fumpe.read_mask(path)


def test_a_mask_of_the_wrong_shape_or_key_names_the_file(tmp_path):
  from scipy import io as sio
  sio.savemat(str(tmp_path / 'a.mat'), {'Mask': 'a string'})
  with pytest.raises(errors.InputFileError, match=r'a.mat: "Mask" is a 1-D'):
    fumpe.read_mask(tmp_path / 'a.mat')
  sio.savemat(str(tmp_path / 'b.mat'), {'Other': np.zeros((2, 2, 2))})
  with pytest.raises(errors.InputFileError, match=r"b.mat has no key \"Mask\" \(keys: \['Other'\]"):
    fumpe.read_mask(tmp_path / 'b.mat')


@pytest.mark.parametrize('matlab_header', [True, False])
def test_matlab_v73_masks_read_through_h5py(tmp_path, matlab_header):
  h5py = pytest.importorskip('h5py')
  mask = np.zeros((4, 5, 3), np.uint8)  # (y, x, z) as MATLAB shows it
  mask[1, 2, 0] = 1
  path = tmp_path / 'PAT001.mat'
  with h5py.File(path, 'w', userblock_size=512 if matlab_header else 0) as f:
    f['Mask'] = mask.transpose()  # MATLAB writes column-major
  if matlab_header:  # what MATLAB's save -v7.3 puts in the user block (scipy reads it)
    header = b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Tue Dec  1 2026 HDF5 schema'
    with open(path, 'r+b') as f:
      f.write(header.ljust(116) + bytes(8) + b'\x00\x02IM')
  np.testing.assert_array_equal(fumpe.read_mask(path), mask)


# ---- 16-bit images: one scale for every image ----------------------------------------------


@pytest.mark.parametrize('suffix', ['.png', '.tif'])
def test_16_bit_images_are_scaled_by_the_dtype_range(tmp_path, suffix):
  dim = np.array([[0, 1000, 2570]], np.uint16)
  bright = np.array([[2570, 60000, 65535]], np.uint16)
  for name, values in (('dim', dim), ('bright', bright)):
    Image.fromarray(values).save(tmp_path / f'{name}{suffix}')
  a = readers.read_image(tmp_path / f'dim{suffix}', 'L')
  b = readers.read_image(tmp_path / f'bright{suffix}', 'L')
  # value * 255 / 65535, rounded: the same raw value gives the same byte in both images.
  assert a.tolist() == [[0, 4, 10]] and b.tolist() == [[10, 233, 255]]
  rgb = readers.read_image(tmp_path / f'dim{suffix}', 'RGB')
  assert rgb.shape == (1, 3, 3) and rgb[..., 1].tolist() == [[0, 4, 10]]
  stored = (tmp_path / f'bright{suffix}').read_bytes()
  np.testing.assert_array_equal(readers.decode_image_bytes(stored, 'L'), b)


# ---- annotation files of the wrong shape ---------------------------------------------------


@pytest.mark.parametrize('boxes', ['[1, 2, 3]', '{"frame": 5}', '"text"'])
def test_kvasir_boxes_json_of_the_wrong_shape_names_the_file(tmp_path, boxes):
  root = synthetic.write('polyp', tmp_path / 'kvasir', n=2, layout='kvasir_seg')
  (root / kvasir_seg.BOXES_FILE).write_text(boxes)
  builder = kvasir_seg.KvasirSeg(data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(errors.InputFileError, match=f'{root / kvasir_seg.BOXES_FILE}.*expected'):
    builder._list_records(root)


# ---- unit regex ----------------------------------------------------------------------------


def test_unit_regex_must_be_valid_and_match_every_frame(tmp_path):
  root = synthetic.write('frames', tmp_path / 'frames', n=10)
  classes = dict(synthetic.FRAMES_CLASSES)
  with pytest.raises(errors.ConfigError, match=r"data.unit_regex='\(' is not a valid"):
    frames_folder.FramesFolderConfig(classes=classes, unit_regex='(')

  def records(regex):
    config = frames_folder.FramesFolderConfig(classes=classes, unit_regex=regex)
    return frames_folder.FramesFolder(config=config, data_dir=str(tmp_path / 'tfds'))\
        ._list_records(root)
  assert sorted({r.unit for r in records(synthetic.FRAMES_UNIT_REGEX)}) == [
      'vid01', 'vid02', 'vid03']
  with pytest.raises(errors.ConfigError, match=r"unit_regex='\^\(patient\\\\d\+\)_' matches 0 "
                                               r'of the 10 frames'):
    records(r'^(patient\d+)_')
  with pytest.raises(errors.ConfigError, match='matches 7 of the 10 frames'):
    records(r'^(vid0[12])_')
  assert len({r.unit for r in records('')}) == 10  # no regex: one unit per file, as documented


# ---- the synthetic writer never writes over a folder it did not write ----------------------


def _tree(folder):
  return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
          for p in sorted(folder.rglob('*'))}


def test_synthetic_writer_refuses_foreign_folders_and_replaces_its_own(tmp_path):
  real = tmp_path / 'CUBS'
  (real / 'IMAGES').mkdir(parents=True)
  (real / 'IMAGES' / 'clin_0001_L.tiff').write_bytes(b'the user\'s real image')
  before = _tree(real)
  with pytest.raises(errors.NotOursError, match=f'--out={real} is a folder with files medft'):
    synthetic.write('cimt', real, n=2)
  assert _tree(real) == before and sorted(p.name for p in tmp_path.iterdir()) == ['CUBS']
  out = synthetic.write('cimt', tmp_path / 'twin', n=4)
  marker = json.loads((out / synthetic.MARKER).read_text())
  written = sum(1 for p in out.rglob('*') if p.is_file()) - 1
  assert marker == {'written_by': 'medft', 'app': 'cimt', 'layout': 'cubs', 'n': 4, 'seed': 0,
                    'files': written}
  synthetic.write('cimt', out, n=2)  # its own folder: replaced as a whole, no stale files
  assert sorted(p.name for p in (out / 'IMAGES').iterdir()) == [
      'clin_0001_L.tiff', 'clin_0001_R.tiff']
  with pytest.raises(errors.ConfigError, match='n=0'):
    synthetic.write('cimt', tmp_path / 'none', n=0)
  assert not (tmp_path / 'none').exists()
  assert not [p for p in tmp_path.iterdir() if 'incomplete' in p.name]
