"""volume_files: NIfTI with its affine, NRRD and DICOM series read into one (z, y, x) =
(superior, posterior, left) convention; masks on the volume's grid; clear errors."""

import gzip
import itertools
import sys

import numpy as np
import pytest

from configs import pe as pe_config
from medft import errors
from medft.data import cad_pe, synthetic, volume_files
from medft.tasks import pe

_MISSING = '{} is not installed (pip install "medft[pe]")'
nib = pytest.importorskip('nibabel', reason=_MISSING.format('nibabel'))
nrrd = pytest.importorskip('nrrd', reason=_MISSING.format('pynrrd'))

SPACING = (1.25, 0.7, 0.7)  # (z, y, x) mm
LAYOUTS = [(order, flips) for order in itertools.permutations(range(3))
           for flips in itertools.product((False, True), repeat=3)]
ORIGIN = (-120.5, 33.0, -410.25)


def _anatomy(shape=(3, 4, 5), seed=0):
  return np.random.default_rng(seed).integers(-1000, 2000, shape).astype(np.int16)


def _write(path, volume, layout, spacing=SPACING, origin=ORIGIN):
  stored, directions, start = synthetic.pe_stored(volume, spacing, layout, origin)
  writer = synthetic.write_nifti if '.nii' in path.name else synthetic.write_nrrd
  writer(path, stored, directions, start)
  return path


@pytest.mark.parametrize('layout', LAYOUTS, ids=str)
def test_every_flip_and_permutation_reads_back_to_the_same_array(tmp_path, layout):
  volume = _anatomy()
  scan = volume_files.read_volume(_write(tmp_path / 'a.nii.gz', volume, layout))
  assert scan.array.flags.c_contiguous
  np.testing.assert_array_equal(scan.array, volume)
  np.testing.assert_allclose(scan.spacing, SPACING, rtol=1e-6)
  np.testing.assert_allclose(scan.info.affine[:3, 3], ORIGIN, atol=1e-4)
  assert scan.info.obliquity_deg == pytest.approx(0, abs=1e-3)
  # nibabel's own reorientation (RAS+, i fastest) agrees: our (z, y, x) is its (k, -j, -i).
  canonical = nib.as_closest_canonical(nib.load(str(tmp_path / 'a.nii.gz')))
  reference = np.flip(np.asarray(canonical.dataobj), (0, 1)).transpose(2, 1, 0)
  np.testing.assert_array_equal(scan.array, reference)
  np.testing.assert_allclose(scan.spacing, canonical.header.get_zooms()[::-1], rtol=1e-6)
  # The same file as NRRD (same space directions): the same array, spacing and geometry.
  other = volume_files.read_volume(_write(tmp_path / 'a.nrrd', volume, layout))
  np.testing.assert_array_equal(other.array, scan.array)
  np.testing.assert_allclose(other.spacing, scan.spacing, rtol=1e-6)
  np.testing.assert_allclose(other.info.affine, scan.info.affine, atol=1e-4)


def test_nifti_and_nrrd_give_the_same_pe_candidates_and_cuts(tmp_path):
  volume, labels = synthetic.pe_example(np.random.default_rng(3), shape=(24, 48, 48))
  cfg = pe_config.get_config('synthetic').task
  cfg.update(dict(patch_size=16, widths_mm=(10.0, 15.0), rotations=3))
  nifti_layout, nrrd_layout = synthetic.PE_NIFTI_LAYOUT, ((1, 2, 0), (False, True, False))
  examples = []
  for name, layout in (('v.nii.gz', nifti_layout), ('v.nrrd', nrrd_layout)):
    suffix = name.split('.', 1)[1]
    scan = volume_files.read_volume(_write(tmp_path / name, volume, layout))
    mask = volume_files.read_mask(_write(tmp_path / f'm.{suffix}', labels, layout), like=scan)
    np.testing.assert_array_equal(scan.array, volume)
    np.testing.assert_array_equal(mask, labels)
    examples.append({'volume': scan.array, 'labels': mask, 'spacing': scan.spacing, 'id': name})
  truth = {'volume': volume, 'labels': labels, 'spacing': np.asarray(SPACING), 'id': 'truth'}
  views = pe.pe_views(cfg.widths_mm, cfg.shifts_mm, cfg.rotations)
  read = [pe.Volume.from_example(ex, cfg) for ex in [truth, *examples]]
  assert len(read[0].candidates) > 0 and read[0].num_lesions > 0
  for vol in read[1:]:
    np.testing.assert_array_equal(vol.lesions, read[0].lesions)
    for c, t in zip(vol.candidates, read[0].candidates, strict=True):
      np.testing.assert_allclose(c.axis, t.axis, atol=1e-5)
      for view in views[:: len(views) // 4]:
        args = (cfg.patch_size, view.shift_mm, view.angle, cfg.hu_window)
        cut = pe.vessel_cut(c.cube, vol.spacing, c.centre, c.axis, view.width_mm, *args)
        ref = pe.vessel_cut(t.cube, read[0].spacing, t.centre, t.axis, view.width_mm, *args)
        assert np.abs(cut.astype(int) - ref.astype(int)).max() <= 1  # uint8 rounding


def test_the_cad_pe_builder_reads_the_nifti_twin(tmp_path):
  raw = tmp_path / 'raw'
  synthetic.write_cad_pe(raw, 2, seed=0, form='nifti', layout=synthetic.PE_NIFTI_LAYOUT,
                         origin=synthetic.PE_NIFTI_ORIGIN)
  assert sorted(p.name for p in (raw / 'images').iterdir()) == ['001.nii.gz', '002.nii.gz']
  builder = cad_pe.CadPe(data_dir=str(tmp_path / 'tfds'), file_format='array_record')
  records = builder._list_records(raw)
  assert [r.id for r in records] == ['001', '002']
  for i, record in enumerate(records):
    example = builder._load_example(record)
    volume, labels = synthetic.pe_example(synthetic._rng(0, 4, i))
    np.testing.assert_array_equal(example['volume'], volume)
    np.testing.assert_array_equal(example['labels'], labels)
    np.testing.assert_allclose(example['spacing'], synthetic.PE_SPACING, rtol=1e-6)


def test_a_coronal_dicom_series_is_put_on_the_convention_axes(tmp_path):
  pytest.importorskip('pydicom', reason=_MISSING.format('pydicom'))
  volume = _anatomy((4, 3, 5), seed=1)  # (z, y, x) = (superior, posterior, left)
  sz, sy, sx = 2.0, 1.5, 0.8
  # Coronal slices, one per y: rows run downwards (-S), columns to the patient's left (+L).
  stored = np.stack([volume[::-1, k, :] for k in range(volume.shape[1])])
  positions = np.array([[0.0, k * sy, (volume.shape[0] - 1) * sz] for k in range(len(stored))])
  names = ['c.dcm', 'a.dcm', 'b.dcm']
  synthetic.write_dicom_series(tmp_path / 's', stored, names, z0=0.0, spacing=(sy, sz, sx),
                               orientation=(1, 0, 0, 0, 0, -1), positions=positions)
  scan = volume_files.read_volume(tmp_path / 's')
  np.testing.assert_array_equal(scan.array, volume)
  np.testing.assert_allclose(scan.spacing, (sz, sy, sx))
  assert scan.info.form == 'dicom' and scan.info.stored_shape == stored.shape
  # A NIfTI mask of the same anatomy, stored in another order, lies on its voxels.
  mask = (volume > 500).astype(np.uint8)
  path = _write(tmp_path / 'm.nii.gz', mask, ((2, 1, 0), (True, True, False)), (sz, sy, sx),
                origin=(0.0, 0.0, 0.0))
  np.testing.assert_array_equal(volume_files.read_mask(path, like=scan), mask)


def test_fumpe_puts_a_coronal_series_and_its_mat_mask_on_the_convention_axes(tmp_path):
  pytest.importorskip('pydicom', reason=_MISSING.format('pydicom'))
  from scipy import io as sio

  from medft.data import fumpe
  volume = _anatomy((4, 3, 5), seed=2)
  labels = np.zeros(volume.shape, np.uint8)
  labels[0, 1, 2] = labels[3, 2, 4] = 1  # two clots, far apart
  sz, sy, sx = 2.0, 1.5, 0.8
  stored = np.stack([volume[::-1, k, :] for k in range(volume.shape[1])])
  stored_labels = np.stack([labels[::-1, k, :] for k in range(volume.shape[1])])
  positions = np.array([[0.0, k * sy, 0.0] for k in range(len(stored))])
  names = ['b.dcm', 'c.dcm', 'a.dcm']  # physical slice k -> names[k]
  synthetic.write_dicom_series(tmp_path / 'CT_scans' / 'PAT001', stored, names, z0=0.0,
                               spacing=(sy, sz, sx), orientation=(1, 0, 0, 0, 0, -1),
                               positions=positions)
  file_order = np.argsort(names)  # the physical slice in each file, in file-name order
  (tmp_path / 'GroundTruth').mkdir()
  sio.savemat(str(tmp_path / 'GroundTruth' / 'PAT001.mat'),
              {'Mask': np.transpose(stored_labels[file_order], (1, 2, 0))})
  builder = fumpe.Fumpe(data_dir=str(tmp_path / 'tfds'), file_format='array_record')
  example = builder._load_example(builder._list_records(tmp_path)[0])
  np.testing.assert_array_equal(example['volume'], volume)
  assert np.argwhere(example['labels']).tolist() == [[0, 1, 2], [3, 2, 4]]
  np.testing.assert_allclose(example['spacing'], (sz, sy, sx), rtol=1e-6)


def test_an_oblique_volume_goes_to_its_nearest_axes_and_a_sheared_one_is_refused(tmp_path):
  volume = _anatomy()
  stored, directions, origin = synthetic.pe_stored(volume, SPACING)
  angle = np.radians(20)
  tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)],
                   [0, np.sin(angle), np.cos(angle)]])  # about L: a gantry tilt
  synthetic.write_nifti(tmp_path / 'o.nii.gz', stored, tilt @ directions, origin)
  scan = volume_files.read_volume(tmp_path / 'o.nii.gz')
  np.testing.assert_array_equal(scan.array, volume)
  np.testing.assert_allclose(scan.spacing, SPACING, rtol=1e-6)
  assert scan.info.obliquity_deg == pytest.approx(20, abs=1e-3)
  sheared = directions.copy()
  sheared[:, 0] = [2.0, 0.0, 1.25]  # the z step leans nearer L than S, like the x step
  synthetic.write_nifti(tmp_path / 's.nii.gz', stored, sheared, origin)
  with pytest.raises(errors.InputFileError, match=r's\.nii\.gz.*too oblique'):
    volume_files.read_volume(tmp_path / 's.nii.gz')


def test_masks_must_lie_on_the_volume(tmp_path):
  volume = _anatomy((4, 5, 6))
  layout = synthetic.PE_NIFTI_LAYOUT
  scan = volume_files.read_volume(_write(tmp_path / 'ct.nii.gz', volume, layout))
  small = _write(tmp_path / 'small.nii.gz', np.zeros((4, 5, 5), np.uint8), layout)
  with pytest.raises(errors.InputFileError, match=r'small\.nii\.gz.*ct\.nii\.gz'):
    volume_files.read_mask(small, like=scan)
  moved = _write(tmp_path / 'moved.nii.gz', np.zeros_like(volume), layout,
                 origin=np.add(ORIGIN, (0, 0, 3 * SPACING[0])))
  with pytest.raises(errors.InputFileError, match=r'moved\.nii\.gz does not lie on .*ct\.nii'):
    volume_files.read_mask(moved, like=scan)
  fractions = _write(tmp_path / 'soft.nii.gz', np.full(volume.shape, 0.5, np.float32), layout)
  with pytest.raises(errors.InputFileError, match=r'soft\.nii\.gz holds values that are not'):
    volume_files.read_mask(fractions, like=scan)
  # A mask with no patient frame is taken as stored like the volume.
  stored = synthetic.pe_stored(volume, SPACING, layout, ORIGIN)[0]
  nrrd.write(str(tmp_path / 'bare.nrrd'), (stored > 0).astype(np.uint8),
             {'spacings': [0.7, 0.7, 1.25]}, index_order='C')
  np.testing.assert_array_equal(volume_files.read_mask(tmp_path / 'bare.nrrd', like=scan),
                                volume > 0)
  nrrd.write(str(tmp_path / 'bare2.nrrd'), np.zeros((2, 2, 2), np.uint8),
             {'spacings': [1, 1, 1]}, index_order='C')
  with pytest.raises(errors.InputFileError, match=r'bare2\.nrrd is \(2, 2, 2\) as stored.*ct'):
    volume_files.read_mask(tmp_path / 'bare2.nrrd', like=scan)


@pytest.mark.parametrize('content', ['garbage', 'truncated', 'empty'])
def test_a_damaged_nifti_names_the_file(tmp_path, content):
  good = _write(tmp_path / 'good.nii.gz', _anatomy((6, 7, 8)), synthetic.PE_NIFTI_LAYOUT)
  path = tmp_path / 'bad.nii.gz'
  data = {'garbage': gzip.compress(b'not a nifti header' * 30),
          'truncated': good.read_bytes()[:-60], 'empty': b''}[content]
  path.write_bytes(data)
  with pytest.raises(errors.InputFileError, match=r'Cannot read NIfTI file .*bad\.nii\.gz'):
    volume_files.read_volume(path)


def test_missing_reader_unknown_form_and_missing_file_are_named(tmp_path, monkeypatch):
  path = _write(tmp_path / 'ct.nii.gz', _anatomy(), synthetic.PE_NIFTI_LAYOUT)
  with pytest.raises(errors.InputFileError, match=r'ct\.mha: unknown volume form'):
    (tmp_path / 'ct.mha').write_bytes(b'x')
    volume_files.read_volume(tmp_path / 'ct.mha')
  with pytest.raises(errors.MissingInputError, match=r'nope\.nii\.gz does not exist'):
    volume_files.read_volume(tmp_path / 'nope.nii.gz')
  monkeypatch.setitem(sys.modules, 'nibabel', None)
  with pytest.raises(errors.MissingPackageError, match=r'ct\.nii\.gz needs .*medft\[pe\]'):
    volume_files.read_volume(path)
