"""CAD-PE: CT pulmonary angiograms (NRRD) with a reference standard of clots.

Volumes are read with pynrrd in C order, i.e. (z, y, x); spacing is the length of each axis's
`space directions` vector (or `spacings`), reported as (z, y, x) mm. Intensities are taken as
HU and stored as int16. The reference standard becomes one integer per clot (see
`volumes.clot_labels`). Note the file names: `images/<nnn>.nrrd` (3 digits) pairs with
`rs/<nnnn>RefStd.nrrd` (4 digits); the patient id is the 3-digit number.
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

_IMAGE = re.compile(r'^(\d+)\.nrrd$')


def nrrd_spacing(header: dict[str, Any], path: Path) -> np.ndarray:
  """(z, y, x) voxel size in mm from an NRRD header read in C order."""
  if header.get('space directions') is not None:
    rows = [np.asarray(r, dtype=np.float64) for r in header['space directions']]
    sizes = [float(np.linalg.norm(r)) for r in rows if np.all(np.isfinite(r))]
  elif header.get('spacings') is not None:
    sizes = [float(s) for s in header['spacings']]
  else:
    raise InputFileError(f'NRRD file {path} has neither "space directions" nor "spacings".')
  if len(sizes) != 3 or min(sizes) <= 0:
    raise InputFileError(f'NRRD file {path}: cannot read a 3-D voxel size from {sizes}.')
  # The header lists axes fastest first (x, y, z); C-order arrays are (z, y, x).
  return np.asarray(sizes[::-1], dtype=np.float32)


def read_nrrd(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
  nrrd = volumes.require('nrrd', 'Reading CAD-PE (.nrrd)')
  try:
    data, header = nrrd.read(str(path), index_order='C')
  except Exception as err:  # pynrrd raises many types (NRRDError, ValueError, OSError, ...)
    raise InputFileError(f'Cannot read NRRD file {path}: {err}') from err
  if data.ndim != 3:
    raise InputFileError(f'NRRD file {path} holds a {data.ndim}-D array; expected a 3-D volume.')
  return data, header


@register_builder
class CadPe(ManualBuilder, skip_registration=True):
  """CAD-PE volumes, spacing and per-clot labels; unit = patient."""

  name = 'cad_pe'
  APP = 'pe'
  REQUIRED = ('images', 'rs')
  DESCRIPTION = 'CAD-PE challenge CTPA scans with clot reference standard (Gonzalez et al. 2020).'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the CAD-PE challenge data (Gonzalez et al., "Computer aided detection for pulmonary
  embolism challenge (CAD-PE)", 2020; distributed via IEEE DataPort) and extract it so that
  the folder holds
    images/<nnn>.nrrd          CT volumes in HU, e.g. images/001.nrrd
    rs/<nnnn>RefStd.nrrd       clot reference standard, e.g. rs/0001RefStd.nrrd
  """

  def _features(self) -> tfds.features.FeaturesDict:
    return volumes.pe_features()

  def _list_records(self, root: Path) -> list[Record]:
    volumes.require('nrrd', 'Reading CAD-PE (.nrrd)')
    records = []
    for image in sorted((root / 'images').iterdir()):
      match = _IMAGE.match(image.name)
      if not match:
        continue
      number = int(match.group(1))
      reference = root / 'rs' / f'{number:04d}RefStd.nrrd'
      if not reference.is_file():
        raise ManualDirError(f'CAD-PE volume {image} has no reference standard {reference}.')
      patient = f'{number:03d}'
      records.append(Record(id=patient, unit=patient,
                            files={'image': image, 'reference': reference}))
    return records

  def _load_example(self, record: Record) -> dict[str, Any]:
    volume, header = read_nrrd(record.files['image'])
    reference, _ = read_nrrd(record.files['reference'])
    if reference.shape != volume.shape:
      raise InputFileError(
          f'Reference {record.files["reference"]} is {reference.shape}, volume '
          f'{record.files["image"]} is {volume.shape}.'
      )
    return {
        'volume': volumes.to_int16(volume),
        'spacing': nrrd_spacing(header, record.files['image']),
        'labels': volumes.clot_labels(reference),
    }
