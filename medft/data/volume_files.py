"""One reader for CT volumes and their label masks: NIfTI, NRRD, or a DICOM series folder.

    scan = read_volume('ct.nii.gz')            # or 'ct.nrrd', 'ct.nhdr', a DICOM series folder
    labels = read_mask('clots.nii.gz', like=scan)
    scan.array, scan.spacing, scan.info        # (z, y, x) array, (3,) mm, where it came from

The form is chosen from the path: a folder is a DICOM series (one SeriesInstanceUID), `.nii` /
`.nii.gz` is NIfTI-1/2 (nibabel), `.nrrd` / `.nhdr` is NRRD (pynrrd). Each reader is an
optional package of the `medft[pe]` extra.

Orientation convention. Every volume comes back as a C-order array whose axes (0, 1, 2) =
(z, y, x) step toward the patient's superior, posterior and left: slices from feet to head,
rows from front to back, columns from the patient's right to left (DICOM's LPS axes in reverse
order; the radiological axial view). An axial DICOM series (ImageOrientationPatient
1,0,0,0,1,0, slices sorted along the normal) and an LPS NRRD with positive diagonal
`space directions` are already in this form, so CAD-PE and FUMPE data read as before.
`spacing` is the voxel size in mm along (z, y, x). NIfTI's RAS+ affine and NRRD's `space`
(left-posterior-superior, right-anterior-superior, left-anterior-superior) are turned into
LPS directions first.

Reorientation only permutes and reverses axes; nothing is resampled. Each array axis goes to the
patient axis its direction is nearest to, so an oblique volume (a tilted gantry, an oblique
series) is put on its nearest axes; its spacing stays the true voxel size along each array axis
and `info.obliquity_deg` says how far the axes are from the patient axes. Directions that do
not map one-to-one onto patient axes (two axes nearest the same patient axis) are refused.
A file without a patient frame (NRRD with only `spacings` or a non-anatomical `space`, NIfTI
with qform and sform codes 0) is taken as stored, in (slowest .. fastest) = (z, y, x) order;
`info.affine` is then None.

Masks: `read_mask(path, like=scan)` reads a label volume in any of the same forms and puts it on
the volume's grid. A mask with a patient frame is normalised by its own geometry and must then
match the volume's shape, voxel size and origin; a mask without one (or of a volume without
one) is taken to be stored like the volume, slowest axis first (for a DICOM series: slices in
file-name order, as FUMPE's masks are), and gets the volume's own reordering. Values are
whole numbers (int32).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medft.data import volumes
from medft.errors import InputFileError, MissingInputError

FORMS = ('nifti', 'nrrd', 'dicom')
# NRRD `space` values with a patient frame -> sign flips taking their axes to LPS.
_NRRD_SPACES = {
    'left-posterior-superior': (1, 1, 1), 'lps': (1, 1, 1),
    'right-anterior-superior': (-1, -1, 1), 'ras': (-1, -1, 1),
    'left-anterior-superior': (1, -1, 1), 'las': (1, -1, 1),
}
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
# The LPS axis (0 = L, 1 = P, 2 = S) each convention axis (z, y, x) steps along.
_CONVENTION = (2, 1, 0)


# ---- orientation ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Orientation:
  """Axis permutation then reversals that take a stored array to the convention."""
  order: tuple[int, int, int] = (0, 1, 2)        # stored axis that becomes axis 0, 1, 2
  flips: tuple[bool, bool, bool] = (False, False, False)  # output axes then reversed

  def apply(self, array: np.ndarray) -> np.ndarray:
    out = np.transpose(array, self.order)
    flipped = [a for a, f in enumerate(self.flips) if f]
    return np.ascontiguousarray(np.flip(out, flipped) if flipped else out)


def orientation(directions: np.ndarray, origin: np.ndarray, shape: tuple[int, ...],
                where: Path) -> tuple[Orientation, np.ndarray, np.ndarray, float]:
  """The reordering that puts a stored array on the convention's axes.

  `directions` (3, 3): column a is the LPS step (mm) of one voxel along stored axis a;
  `origin` the LPS position of voxel (0, 0, 0). Returns (orientation, spacing (z, y, x) mm,
  4x4 LPS affine of the reordered array, obliquity in degrees).
  """
  directions = np.asarray(directions, np.float64)
  sizes = np.linalg.norm(directions, axis=0)
  if not (np.all(np.isfinite(directions)) and np.all(sizes > 0)):
    raise InputFileError(f'{where}: the voxel directions {directions.T.tolist()} (mm) are not '
                         'finite and non-zero; the header is damaged.')
  unit = directions / sizes
  if abs(np.linalg.det(unit)) < 1e-3:
    raise InputFileError(f'{where}: the voxel directions {directions.T.tolist()} (mm) are '
                         'parallel; the header does not describe a 3-D grid.')
  nearest = np.argmax(np.abs(unit), axis=0)  # the patient axis of each stored axis
  if sorted(nearest.tolist()) != [0, 1, 2]:
    raise InputFileError(
        f'{where}: the voxel axes {np.round(unit.T, 3).tolist()} (LPS) are too oblique to put '
        'on patient axes without resampling (two of them are nearest the same patient axis). '
        'Resample the volume to an axis-aligned grid first.')
  order = tuple(int(np.flatnonzero(nearest == p)[0]) for p in _CONVENTION)
  signs = np.array([np.sign(unit[p, a]) for p, a in zip(_CONVENTION, order)])
  flips = tuple(bool(s < 0) for s in signs)
  new_directions = directions[:, order] * signs
  new_origin = np.asarray(origin, np.float64) + sum(
      directions[:, a] * (shape[a] - 1) for a, f in zip(order, flips) if f)
  affine = np.eye(4)
  affine[:3, :3], affine[:3, 3] = new_directions, new_origin
  cosines = np.abs(unit[list(_CONVENTION), list(order)])
  obliquity = float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))
  return Orientation(order, flips), sizes[list(order)], affine, obliquity


# ---- what read_volume returns ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class VolumeInfo:
  """Where a volume came from and how it was put in the convention."""
  path: Path
  form: str                           # 'nifti', 'nrrd' or 'dicom'
  stored_shape: tuple[int, ...]       # as stored, slowest axis first (DICOM: file-name order)
  orientation: Orientation
  affine: np.ndarray | None           # 4x4 LPS mm of the returned array; None: no patient frame
  obliquity_deg: float = 0.0          # largest angle between an axis and its patient axis
  slice_order: np.ndarray | None = None  # DICOM: the file-order index of each sorted slice

  def normalise(self, stored: np.ndarray) -> np.ndarray:
    """Puts an array stored like this volume (same shape, same order) in the convention."""
    if self.slice_order is not None:
      stored = stored[self.slice_order]
    return self.orientation.apply(stored)


class Scan(NamedTuple):
  """A volume in the convention: array (z, y, x) with the file's values (HU for CT), spacing
  (3,) float64 mm along (z, y, x), and where it came from."""
  array: np.ndarray
  spacing: np.ndarray
  info: VolumeInfo


class _Stored(NamedTuple):
  """A file's array as stored and its geometry (directions None: no patient frame)."""
  array: np.ndarray
  directions: np.ndarray | None
  origin: np.ndarray | None
  sizes: np.ndarray            # voxel size (mm) of each stored axis
  slice_order: np.ndarray | None = None


def file_form(path: Path) -> str:
  """'nifti', 'nrrd' or 'dicom' (a folder) from the path; a clear error for anything else."""
  path = Path(path)
  if not path.exists():
    raise MissingInputError(f'Volume file {path} does not exist.')
  if path.is_dir():
    return 'dicom'
  name = path.name.lower()
  if name.endswith(('.nii', '.nii.gz')):
    return 'nifti'
  if name.endswith(('.nrrd', '.nhdr')):
    return 'nrrd'
  raise InputFileError(f'{path}: unknown volume form; use a NIfTI file (.nii, .nii.gz), an NRRD '
                       'file (.nrrd, .nhdr) or a folder holding one DICOM series.')


def read_volume(path: str | Path) -> Scan:
  """The volume at `path` (NIfTI, NRRD or DICOM series folder) in the module's convention."""
  return _load(Path(path))[0]


def read_mask(path: str | Path, like: Scan) -> np.ndarray:
  """The label volume at `path` on the grid of `like` (int32, the shape of `like.array`)."""
  path = Path(path)
  mask, stored = _load(path)
  if mask.info.affine is None or like.info.affine is None:  # taken as stored like the volume
    if mask.info.stored_shape != like.info.stored_shape:
      raise InputFileError(
          f'Mask {path} is {mask.info.stored_shape} as stored, but volume {like.info.path} is '
          f'{like.info.stored_shape}; a mask must cover the volume voxel for voxel.')
    array = like.info.normalise(stored.array)
  else:
    array = mask.array
    if array.shape != like.array.shape:
      raise InputFileError(
          f'Mask {path} is {array.shape} (z, y, x), but volume {like.info.path} is '
          f'{like.array.shape}; a mask must cover the volume voxel for voxel.')
    _check_same_grid(mask, like)
  return _whole_numbers(array, path)


def _load(path: Path) -> tuple[Scan, _Stored]:
  form = file_form(path)
  stored = _READERS[form](path)
  if stored.directions is None:  # no patient frame: as stored, slowest axis first
    orient, spacing, affine, obliquity = Orientation(), stored.sizes, None, 0.0
  else:
    orient, spacing, affine, obliquity = orientation(stored.directions, stored.origin,
                                                     stored.array.shape, path)
  info = VolumeInfo(path=path, form=form, stored_shape=tuple(stored.array.shape),
                    orientation=orient, affine=affine, obliquity_deg=obliquity,
                    slice_order=stored.slice_order)
  return Scan(info.normalise(stored.array), np.asarray(spacing, np.float64), info), stored


def _check_same_grid(mask: Scan, like: Scan) -> None:
  """A mask with a patient frame must lie on the volume's voxels (1% in size, half a voxel)."""
  if not np.allclose(mask.spacing, like.spacing, rtol=1e-2):
    raise InputFileError(
        f'Mask {mask.info.path} has voxels of {np.round(mask.spacing, 4).tolist()} mm, volume '
        f'{like.info.path} {np.round(like.spacing, 4).tolist()} mm (z, y, x); write the mask '
        "with the volume's header.")
  a, b = mask.info.affine, like.info.affine
  tilt = np.abs(a[:3, :3] / mask.spacing - b[:3, :3] / like.spacing).max()
  shift = np.abs(np.linalg.solve(b[:3, :3], a[:3, 3] - b[:3, 3])).max()  # in voxels
  if tilt > 1e-2 or shift > 0.5:
    raise InputFileError(
        f'Mask {mask.info.path} does not lie on the voxels of volume {like.info.path}: its '
        f'origin is {np.round(a[:3, 3], 3).tolist()} mm vs {np.round(b[:3, 3], 3).tolist()} '
        f'(LPS), axes differ by {tilt:.3g}. Write the mask with the volume\'s header.')


def _whole_numbers(array: np.ndarray, path: Path) -> np.ndarray:
  if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
    return array.astype(np.int32)
  if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)) \
      or np.any(array != np.rint(array)):
    raise InputFileError(f'Mask {path} holds values that are not whole numbers (e.g. '
                         f'{array.ravel()[np.flatnonzero(array != np.rint(array))[:3]]}); a mask '
                         'holds labels 0, 1, 2, ...')
  return np.rint(array).astype(np.int32)


# ---- NIfTI -----------------------------------------------------------------------------------


def _read_nifti(path: Path) -> _Stored:
  nib = volumes.require('nibabel', f'Reading the NIfTI file {path}')
  try:
    image = nib.load(str(path))
    array = np.asanyarray(image.dataobj)
    header = image.header
    codes = (int(header['qform_code']), int(header['sform_code']))
    affine = np.asarray(image.affine, np.float64)
    zooms = np.asarray(header.get_zooms()[:3], np.float64)
  except Exception as err:  # nibabel, gzip and zlib raise many types for damaged files
    raise InputFileError(f'Cannot read NIfTI file {path} ({type(err).__name__}: {err}); '
                         're-export or replace it.') from None
  while array.ndim > 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 3:
    raise InputFileError(f'NIfTI file {path} holds a {array.ndim}-D array {array.shape}; '
                         'expected one 3-D volume.')
  # Stored order is slowest first for every form: NIfTI's i is fastest, so (k, j, i).
  array = np.transpose(array, (2, 1, 0))
  if codes == (0, 0):  # no patient frame
    return _Stored(array, None, None, zooms[::-1])
  lps = _RAS_TO_LPS @ affine[:3]
  directions = lps[:, [2, 1, 0]]
  return _Stored(array, directions, lps[:, 3], np.linalg.norm(directions, axis=0))


# ---- NRRD ------------------------------------------------------------------------------------


def read_nrrd(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
  """The data in C order ((z, y, x) for a volume written x fastest) and the header."""
  nrrd = volumes.require('nrrd', f'Reading the NRRD file {path}')
  try:
    data, header = nrrd.read(str(path), index_order='C')
  except Exception as err:  # pynrrd raises many types (NRRDError, ValueError, OSError, ...)
    raise InputFileError(f'Cannot read NRRD file {path}: {err}') from err
  if data.ndim != 3:
    raise InputFileError(f'NRRD file {path} holds a {data.ndim}-D array; expected a 3-D volume.')
  return data, header


def nrrd_spacing(header: dict[str, Any], path: Path) -> np.ndarray:
  """Voxel size in mm of the C-order axes (slowest first) from an NRRD header."""
  if header.get('space directions') is not None:
    rows = [np.asarray(r, dtype=np.float64) for r in header['space directions']]
    sizes = [float(np.linalg.norm(r)) for r in rows if np.all(np.isfinite(r))]
  elif header.get('spacings') is not None:
    sizes = [float(s) for s in header['spacings']]
  else:
    raise InputFileError(f'NRRD file {path} has neither "space directions" nor "spacings".')
  if len(sizes) != 3 or not min(sizes) > 0:
    raise InputFileError(f'NRRD file {path}: cannot read a 3-D voxel size from {sizes}.')
  # The header lists axes fastest first (x, y, z); C-order arrays are (z, y, x).
  return np.asarray(sizes[::-1], dtype=np.float64)


def _read_nrrd(path: Path) -> _Stored:
  data, header = read_nrrd(path)
  sizes = nrrd_spacing(header, path)
  space = str(header.get('space', '')).lower()
  if space not in _NRRD_SPACES or header.get('space directions') is None:
    return _Stored(data, None, None, sizes)
  rows = np.asarray(header['space directions'], np.float64)  # one row per axis, fastest first
  if rows.shape != (3, 3):
    raise InputFileError(f'NRRD file {path}: "space directions" {rows.tolist()} is not 3 '
                         'vectors of 3 numbers.')
  signs = np.asarray(_NRRD_SPACES[space], np.float64)[:, None]
  origin = np.asarray(header.get('space origin', np.zeros(3)), np.float64)
  if origin.shape != (3,) or not np.all(np.isfinite(origin)):
    origin = np.zeros(3)
  return _Stored(data, signs * rows[::-1].T, signs[:, 0] * origin, sizes)


# ---- DICOM series ----------------------------------------------------------------------------


def series_files(folder: Path) -> list[Path]:
  """The DICOM files of one series folder in file-name order."""
  files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == '.dcm']
  if not files:  # some copies drop the extension
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith('.')]
  if not files:
    raise MissingInputError(f'DICOM series folder {folder} holds no DICOM files.')
  return sorted(files, key=lambda p: p.name)


class DicomSeries(NamedTuple):
  """One series in file-name order: HU (n, rows, cols) float64, ImagePositionPatient (n, 3),
  each slice's position along the normal (n,), PixelSpacing (row, col) mm and the shared
  ImageOrientationPatient (6,)."""
  hu: np.ndarray
  positions: np.ndarray
  along_normal: np.ndarray
  row_col: np.ndarray
  orientation: np.ndarray


def read_dicom(folder: Path) -> DicomSeries:
  """Every slice of the one series in `folder`, in file-name order."""
  pydicom = volumes.require('pydicom', f'Reading the DICOM series {folder}')
  slices, positions, orientations, series, spacing = [], [], [], {}, None
  for path in series_files(folder):
    try:
      ds = pydicom.dcmread(str(path))
      pixels = ds.pixel_array.astype(np.float64)
      slope = float(getattr(ds, 'RescaleSlope', 1.0))
      intercept = float(getattr(ds, 'RescaleIntercept', 0.0))
      position = np.asarray([float(v) for v in ds.ImagePositionPatient])
      orientation_ = np.asarray([float(v) for v in ds.ImageOrientationPatient])
      row_col = [float(v) for v in ds.PixelSpacing]
      uid = str(getattr(ds, 'SeriesInstanceUID', ''))
    except Exception as err:  # pydicom raises many types for broken files
      raise InputFileError(f'Cannot read DICOM slice {path}: {err}') from err
    if position.shape != (3,) or orientation_.shape != (6,) or len(row_col) != 2:
      raise InputFileError(f'DICOM slice {path}: ImagePositionPatient {position.tolist()} / '
                           f'ImageOrientationPatient {orientation_.tolist()} / PixelSpacing '
                           f'{row_col} are not 3, 6 and 2 numbers; the file is damaged.')
    series.setdefault(uid, []).append(path.name)
    if spacing is None:
      spacing = row_col
    orientations.append(orientation_)
    positions.append(position)
    slices.append(pixels * slope + intercept)
  if len(series) > 1:
    counts = ', '.join(f'{uid or "(none)"}: {len(names)} files (e.g. {names[0]})'
                       for uid, names in series.items())
    raise InputFileError(f'DICOM folder {folder} mixes {len(series)} series (SeriesInstanceUID '
                         f'{counts}); a series folder holds one series. Move the other '
                         'series\' files out of the folder.')
  shapes = {s.shape for s in slices}
  if len(shapes) != 1:
    raise InputFileError(f'DICOM series {folder} mixes slice shapes {sorted(shapes)}.')
  positions, orientations = np.asarray(positions), np.asarray(orientations)
  return DicomSeries(np.stack(slices), positions,
                     slice_positions(positions, orientations, folder), np.asarray(spacing),
                     orientations[0])


def read_series(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(HU (z, y, x) float64 in file order, each slice's position along the normal (mm) in file
  order, (row, column) spacing mm)."""
  series = read_dicom(folder)
  return series.hu, series.along_normal, series.row_col


def slice_positions(positions: np.ndarray, orientations: np.ndarray, where: Path) -> np.ndarray:
  """Each slice's ImagePositionPatient (n, 3) along the normal of its ImageOrientationPatient
  (n, 6): dot(position, cross(row cosines, column cosines)). All slices must share one
  orientation (to 1e-4)."""
  if np.abs(orientations - orientations[0]).max(initial=0.0) > 1e-4:
    raise InputFileError(f'DICOM series {where}: its slices have different '
                         'ImageOrientationPatient values; a series of parallel slices is needed.')
  normal = np.cross(orientations[0][:3], orientations[0][3:])
  norm = np.linalg.norm(normal)
  if not norm > 0.5:  # unit row and column cosines that are orthogonal give norm 1
    raise InputFileError(f'DICOM series {where}: ImageOrientationPatient '
                         f'{orientations[0].tolist()} has parallel or zero direction cosines.')
  return positions @ (normal / norm)


def slice_order(along_normal: np.ndarray, where: Path) -> tuple[np.ndarray, float]:
  """The file-order index of each slice sorted along the normal, and the median step (mm)."""
  order = np.argsort(along_normal, kind='stable')
  steps = np.diff(along_normal[order])
  if np.any(steps == 0):
    raise InputFileError(f'DICOM series {where} has two slices at the same position along the '
                         'slice normal (a duplicated file?).')
  return order, (float(np.median(steps)) if steps.size else 1.0)


def _read_dicom(folder: Path) -> _Stored:
  series = read_dicom(folder)
  order, step = slice_order(series.along_normal, folder)
  row, col = series.orientation[:3], series.orientation[3:]
  normal = np.cross(row, col)
  normal /= np.linalg.norm(normal)
  # Sorted slices step along +normal; rows of a slice step along the column cosines by
  # PixelSpacing[0], columns along the row cosines by PixelSpacing[1].
  directions = np.stack([normal * step, col * series.row_col[0], row * series.row_col[1]], axis=1)
  sizes = np.array([step, series.row_col[0], series.row_col[1]])
  # Slices are taken sorted; `slice_order` is applied by VolumeInfo.normalise, so the stored
  # array here is in file order and the geometry is that of the sorted slices.
  return _Stored(series.hu, directions, series.positions[order[0]], sizes, order)


_READERS = {'nifti': _read_nifti, 'nrrd': _read_nrrd, 'dicom': _read_dicom}
