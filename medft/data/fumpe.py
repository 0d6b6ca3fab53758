"""FUMPE: CT pulmonary angiograms as DICOM series with MATLAB clot masks.

The masks (`GroundTruth/PAT<nnn>.mat`, key `Mask`) are stored (y, x, z) with the slices in
the order of the DICOM file names (sorted as plain strings, like MATLAB's `dir`). Volumes are
returned in physical order instead: slices sorted by their position along the slice normal
(the cross product of ImageOrientationPatient's row and column direction cosines, dotted with
ImagePositionPatient), which is right for oblique and tilted series too, where
ImagePositionPatient's z alone is not. A folder must hold one series (one SeriesInstanceUID)
of one orientation. The series is read by `volume_files.read_volume`, which also puts it on
the (z, y, x) = (superior, posterior, left) axes (an axial series is already there); the mask
is transposed to (z, y, x) and reordered exactly like the series. Intensities are
RescaleSlope * value + RescaleIntercept (HU) as int16; spacing is the voxel size along
(z, y, x) mm (for an axial series: slice step, row spacing, column spacing). The binary mask
becomes one integer per connected clot.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from medft.data import volume_files, volumes
from medft.data.base import ManualBuilder, ManualDirError, Record, register_builder
from medft.data.volume_files import read_series, series_files, slice_positions  # noqa: F401
from medft.errors import InputFileError

_PATIENT = re.compile(r'^PAT\d+$', re.IGNORECASE)
_PURPOSE = 'Reading FUMPE (DICOM + .mat)'


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
  mask = _mask_zyx(mask_yxz, volume_file_order.shape, where)
  order, step = volume_files.slice_order(z, where)
  return volume_file_order[order], mask[order], step


def _mask_zyx(mask_yxz: np.ndarray, shape: tuple[int, ...], where: Path) -> np.ndarray:
  """The (y, x, z) mask as (z, y, x) in file order, checked against the series' shape."""
  if mask_yxz.ndim != 3:
    raise InputFileError(f'Mask for {where} is {mask_yxz.ndim}-D; expected (y, x, z).')
  mask = np.transpose(mask_yxz, (2, 0, 1))
  if mask.shape != tuple(shape):
    raise InputFileError(
        f'Mask for {where} is (y, x, z) = {mask_yxz.shape}, but the series is (z, y, x) = '
        f'{tuple(shape)}.'
    )
  return mask


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
    scan = volume_files.read_volume(record.files['series'])
    mask = _mask_zyx(read_mask(record.files['mask']), scan.info.stored_shape,
                     record.files['series'])
    return {
        'volume': volumes.to_int16(scan.array),
        'spacing': scan.spacing.astype(np.float32),
        'labels': volumes.clot_labels(scan.info.normalise(mask) != 0),
    }
