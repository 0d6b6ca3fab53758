"""FUMPE: CT pulmonary angiograms as DICOM series with MATLAB clot masks.

The masks (`GroundTruth/PAT<nnn>.mat`, key `Mask`) are stored (y, x, z) with the slices in
the order of the DICOM file names (sorted as plain strings, like MATLAB's `dir`). Volumes are
returned in physical order instead, slices sorted by ImagePositionPatient z (ascending), and
the mask is permuted the same way, then transposed to (z, y, x). Intensities are
RescaleSlope * value + RescaleIntercept (HU) as int16; spacing is (slice step, row spacing,
column spacing) mm. The binary mask becomes one integer per connected clot.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from medft.data import volumes
from medft.data.base import ManualBuilder, ManualDirError, Record
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
  """Returns (HU volume in file order (z, y, x) float64, z positions in file order, spacing yx)."""
  pydicom = volumes.require('pydicom', _PURPOSE)
  slices, positions, spacing = [], [], None
  for path in series_files(folder):
    try:
      ds = pydicom.dcmread(str(path))
      pixels = ds.pixel_array.astype(np.float64)
      slope = float(getattr(ds, 'RescaleSlope', 1.0))
      intercept = float(getattr(ds, 'RescaleIntercept', 0.0))
      positions.append(float(ds.ImagePositionPatient[2]))
      row_col = [float(v) for v in ds.PixelSpacing]
    except Exception as err:  # pydicom raises many types for broken files
      raise InputFileError(f'Cannot read DICOM slice {path}: {err}') from err
    if spacing is None:
      spacing = row_col
    slices.append(pixels * slope + intercept)
  shapes = {s.shape for s in slices}
  if len(shapes) != 1:
    raise InputFileError(f'DICOM series {folder} mixes slice shapes {sorted(shapes)}.')
  return np.stack(slices), np.asarray(positions), np.asarray(spacing)


def read_mask(path: Path) -> np.ndarray:
  """The `Mask` array of a FUMPE .mat file, (y, x, z) as MATLAB shows it."""
  sio = volumes.require('scipy.io', _PURPOSE)
  try:
    contents = sio.loadmat(str(path))
    if 'Mask' not in contents:
      keys = sorted(k for k in contents if not k.startswith('__'))
      raise KeyError(f'no key "Mask" (keys: {keys})')
    return np.asarray(contents['Mask'])
  except NotImplementedError:  # MATLAB v7.3 files are HDF5
    h5py = volumes.require('h5py', _PURPOSE + ' (MATLAB v7.3 files)')
    with h5py.File(str(path), 'r') as f:
      if 'Mask' not in f:
        raise InputFileError(f'Mask file {path} has no key "Mask" (keys: {sorted(f)}).') from None
      # HDF5 stores MATLAB arrays column-major: reverse the axes back to (y, x, z).
      return np.asarray(f['Mask']).transpose()
  except (KeyError, ValueError, OSError) as err:
    raise InputFileError(f'Cannot read mask file {path}: {err}') from err


def physical_order(volume_file_order: np.ndarray, mask_yxz: np.ndarray, z: np.ndarray,
                   where: Path) -> tuple[np.ndarray, np.ndarray, float]:
  """Sorts slices by z position; returns (volume zyx, mask zyx, slice step)."""
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
    raise InputFileError(f'DICOM series {where} has two slices at the same z position.')
  step = float(np.median(steps)) if steps.size else 1.0
  return volume_file_order[order], mask[order], step


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
