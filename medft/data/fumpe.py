"""FUMPE: CT pulmonary angiograms as DICOM series with MATLAB clot masks.

The masks (`GroundTruth/PAT<nnn>.mat`, key `Mask`) are stored (y, x, z) with the slices in
the order of the DICOM file names (sorted as plain strings, like MATLAB's `dir`). Volumes are
returned in physical order instead: slices sorted by their position along the slice normal
(the cross product of ImageOrientationPatient's row and column direction cosines, dotted with
ImagePositionPatient), which is right for oblique and tilted series too, where
ImagePositionPatient's z alone is not. A folder must hold one series (one SeriesInstanceUID)
of one orientation; the mask is permuted the same way, then transposed to (z, y, x).
Intensities are RescaleSlope * value + RescaleIntercept (HU) as int16; spacing is (slice
step, row spacing, column spacing) mm. The binary mask becomes one integer per connected clot.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from medft.data import volumes
from medft.data.base import ManualBuilder, ManualDirError, Record, register_builder
from medft.errors import InputFileError

_PATIENT = re.compile(r'^PAT\d+$', re.IGNORECASE)
_PURPOSE = 'Reading FUMPE (DICOM + .mat)'


def series_files(folder: Path) -> list[Path]:
  """The DICOM files of one series in file-name order (the order the masks use)."""
  files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == '.dcm']
  if not files:  # some copies drop the extension
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith('.')]
  if not files:
    raise ManualDirError(f'FUMPE series folder {folder} holds no DICOM files.')
  return sorted(files, key=lambda p: p.name)


def read_series(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns (HU volume in file order (z, y, x) float64, each slice's position along the slice
  normal (mm) in file order, spacing yx)."""
  pydicom = volumes.require('pydicom', _PURPOSE)
  slices, positions, orientations, series, spacing = [], [], [], {}, None
  for path in series_files(folder):
    try:
      ds = pydicom.dcmread(str(path))
      pixels = ds.pixel_array.astype(np.float64)
      slope = float(getattr(ds, 'RescaleSlope', 1.0))
      intercept = float(getattr(ds, 'RescaleIntercept', 0.0))
      position = np.asarray([float(v) for v in ds.ImagePositionPatient])
      orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
      row_col = [float(v) for v in ds.PixelSpacing]
      uid = str(getattr(ds, 'SeriesInstanceUID', ''))
    except Exception as err:  # pydicom raises many types for broken files
      raise InputFileError(f'Cannot read DICOM slice {path}: {err}') from err
    if position.shape != (3,) or orientation.shape != (6,):
      raise InputFileError(f'DICOM slice {path}: ImagePositionPatient {position.tolist()} / '
                           f'ImageOrientationPatient {orientation.tolist()} are not 3 and 6 '
                           'numbers; the file is damaged.')
    series.setdefault(uid, []).append(path.name)
    if spacing is None:
      spacing = row_col
    orientations.append(orientation)
    positions.append(position)
    slices.append(pixels * slope + intercept)
  if len(series) > 1:
    counts = ', '.join(f'{uid or "(none)"}: {len(names)} files (e.g. {names[0]})'
                       for uid, names in series.items())
    raise InputFileError(f'DICOM folder {folder} mixes {len(series)} series (SeriesInstanceUID '
                         f'{counts}); a FUMPE series folder holds one series. Move the other '
                         'series\' files out of the folder.')
  shapes = {s.shape for s in slices}
  if len(shapes) != 1:
    raise InputFileError(f'DICOM series {folder} mixes slice shapes {sorted(shapes)}.')
  return np.stack(slices), slice_positions(np.asarray(positions), np.asarray(orientations),
                                           folder), np.asarray(spacing)


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


def read_mask(path: Path) -> np.ndarray:
  """The `Mask` array of a FUMPE .mat file, (y, x, z) as MATLAB shows it."""
  sio = volumes.require('scipy.io', _PURPOSE)
  try:
    contents = sio.loadmat(str(path))
  except NotImplementedError:  # MATLAB v7.3 files are HDF5
    contents = _read_hdf5_mat(path)
  except Exception as err:  # scipy raises many types (MatReadError, IndexError, ...) for junk
    if not _is_hdf5(path):  # an HDF5 .mat without MATLAB's header: scipy does not know it
      raise InputFileError(f'Cannot read mask file {path} ({type(err).__name__}: {err}); it '
                           'is not a MATLAB .mat file. Re-download or replace this file.') from None
    contents = _read_hdf5_mat(path)
  if 'Mask' not in contents:
    keys = sorted(k for k in contents if not k.startswith('__'))
    raise InputFileError(f'Mask file {path} has no key "Mask" (keys: {keys}); expected the '
                         'FUMPE GroundTruth file of this patient.')
  mask = np.asarray(contents['Mask'])
  if mask.ndim != 3 or not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool):
    raise InputFileError(f'Mask file {path}: "Mask" is a {mask.ndim}-D {mask.dtype} array; '
                         'expected a 3-D numeric (y, x, z) mask.')
  return mask


def _is_hdf5(path: Path) -> bool:
  """HDF5's signature at offset 0 or after MATLAB v7.3's 512-byte user block."""
  with open(path, 'rb') as f:
    head = f.read(520)
  return any(head[o:o + 8] == b'\x89HDF\r\n\x1a\n' for o in (0, 512))


def _read_hdf5_mat(path: Path) -> dict[str, np.ndarray]:
  """A MATLAB v7.3 (HDF5) file's top-level arrays, axes reversed back to MATLAB's order."""
  h5py = volumes.require('h5py', _PURPOSE + ' (MATLAB v7.3 files)')
  try:
    with h5py.File(str(path), 'r') as f:
      # HDF5 stores MATLAB arrays column-major: reverse the axes back to (y, x, z).
      return {k: np.asarray(v).transpose() for k, v in f.items() if isinstance(v, h5py.Dataset)}
  except Exception as err:  # h5py raises OSError, KeyError, TypeError ... for a damaged file
    raise InputFileError(f'Cannot read mask file {path} as MATLAB v7.3 (HDF5) '
                         f'({type(err).__name__}: {err}); re-download or replace it.') from None


def physical_order(volume_file_order: np.ndarray, mask_yxz: np.ndarray, z: np.ndarray,
                   where: Path) -> tuple[np.ndarray, np.ndarray, float]:
  """Sorts slices by position along the slice normal; returns (volume zyx, mask zyx, step)."""
  if mask_yxz.ndim != 3:
    raise InputFileError(f'Mask for {where} is {mask_yxz.ndim}-D; expected (y, x, z).')
  mask = np.transpose(mask_yxz, (2, 0, 1))
  if mask.shape != volume_file_order.shape:
    raise InputFileError(
        f'Mask for {where} is (y, x, z) = {mask_yxz.shape}, but the series is (z, y, x) = '
        f'{volume_file_order.shape}.'
    )
  order = np.argsort(z, kind='stable')
  sorted_z = z[order]
  steps = np.diff(sorted_z)
  if np.any(steps == 0):
    raise InputFileError(f'DICOM series {where} has two slices at the same position along the '
                         'slice normal (a duplicated file?).')
  step = float(np.median(steps)) if steps.size else 1.0
  return volume_file_order[order], mask[order], step


@register_builder
class Fumpe(ManualBuilder, skip_registration=True):
  """FUMPE volumes (physical slice order), spacing and per-clot labels; unit = patient."""

  name = 'fumpe'
  APP = 'pe'
  REQUIRED = ('CT_scans', 'GroundTruth')
  DESCRIPTION = 'FUMPE CTPA scans with clot masks (Masoudi et al., Sci. Data 2018).'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download FUMPE (Masoudi et al., "A new dataset of computed-tomography angiography images for
  computer-aided detection of pulmonary embolism", Sci. Data 2018; distributed via figshare)
  and extract it so that the folder holds
    CT_scans/PAT<nnn>/*.dcm      one DICOM series per patient, e.g. CT_scans/PAT001/
    GroundTruth/PAT<nnn>.mat     key "Mask", (y, x, z), slices in file-name order
  """

  def _features(self) -> tfds.features.FeaturesDict:
    return volumes.pe_features()

  def _list_records(self, root: Path) -> list[Record]:
    volumes.require('pydicom', _PURPOSE)
    records = []
    for folder in sorted((root / 'CT_scans').iterdir()):
      if not (folder.is_dir() and _PATIENT.match(folder.name)):
        continue
      mask = root / 'GroundTruth' / f'{folder.name}.mat'
      if not mask.is_file():
        raise ManualDirError(f'FUMPE series {folder} has no mask file {mask}.')
      records.append(Record(id=folder.name, unit=folder.name,
                            files={'series': folder, 'mask': mask}))
    return records

  def _load_example(self, record: Record) -> dict[str, Any]:
    volume, z, row_col = read_series(record.files['series'])
    mask = read_mask(record.files['mask'])
    volume, mask, step = physical_order(volume, mask, z, record.files['series'])
    return {
        'volume': volumes.to_int16(volume),
        'spacing': np.asarray([abs(step), row_col[0], row_col[1]], dtype=np.float32),
        'labels': volumes.clot_labels(mask != 0),
    }
