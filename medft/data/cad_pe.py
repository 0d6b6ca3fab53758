"""CAD-PE: CT pulmonary angiograms (NRRD) with a reference standard of clots.

Volumes and references are read by `volume_files` (NRRD, or NIfTI `.nii`/`.nii.gz` copies
named the same way), in its (z, y, x) convention (superior, posterior, left); spacing is the
voxel size in mm along (z, y, x). Intensities are taken as HU and stored as int16. The
reference standard becomes one integer per clot (see `volumes.clot_labels`). Note the file
names: `images/<nnn>.nrrd` (3 digits) pairs with `rs/<nnnn>RefStd.nrrd` (4 digits); the
patient id is the 3-digit number.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from medft.data import volume_files, volumes
from medft.data.base import ManualBuilder, ManualDirError, Record, register_builder

_IMAGE = re.compile(r'^(\d+)\.(nrrd|nii|nii\.gz)$')
_PURPOSE = {'nrrd': ('nrrd', 'Reading CAD-PE (.nrrd)'),
            'nifti': ('nibabel', 'Reading CAD-PE as NIfTI (.nii, .nii.gz)')}


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
  (NIfTI copies, images/<nnn>.nii.gz with rs/<nnnn>RefStd.nii.gz, are read the same way.)
  """

  def _features(self) -> tfds.features.FeaturesDict:
    return volumes.pe_features()

  def _list_records(self, root: Path) -> list[Record]:
    records, forms, seen = [], set(), {}
    for image in sorted((root / 'images').iterdir()):
      match = _IMAGE.match(image.name)
      if not match:
        continue
      number = int(match.group(1))
      reference = root / 'rs' / f'{number:04d}RefStd.{match.group(2)}'
      forms.add(volume_files.file_form(image))
      if not reference.is_file():
        raise ManualDirError(f'CAD-PE volume {image} has no reference standard {reference}.')
      patient = f'{number:03d}'
      if patient in seen:
        raise ManualDirError(f'CAD-PE patient {patient} has two volumes, {seen[patient].name} '
                             f'and {image.name}; keep one.')
      seen[patient] = image
      records.append(Record(id=patient, unit=patient,
                            files={'image': image, 'reference': reference}))
    for form in sorted(forms):  # a missing reader is named before anything is built
      volumes.require(*_PURPOSE[form])
    return records

  def _load_example(self, record: Record) -> dict[str, Any]:
    scan = volume_files.read_volume(record.files['image'])
    reference = volume_files.read_mask(record.files['reference'], like=scan)
    return {
        'volume': volumes.to_int16(scan.array),
        'spacing': scan.spacing.astype(np.float32),
        'labels': volumes.clot_labels(reference),
    }
