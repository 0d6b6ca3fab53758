"""CVC-ClinicDB: 612 colonoscopy frames (384x288) with polyp masks, from 29 video sequences.

Frames are numbered 1..612 in sequence order. The split unit is the sequence. The frame ->
sequence boundaries below (1-25 sequence 1, 26-50 sequence 2, 51-67 sequence 3, ...,
592-612 sequence 29) follow the listing in common public use; they are not stated in the
official release, so check them against your copy if sequence identity matters. A frame
number outside 1..612 is an error.
Boxes are the bounding boxes of the mask's connected components.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from medft.data import readers
from medft.data.base import ManualBuilder, ManualDirError, Record, register_builder
from medft.data.masks import boxes_from_mask
from medft.errors import InputFileError

# First frame of each of the 29 sequences; the last sequence ends at frame 612.
SEQUENCE_STARTS = (
    1, 26, 51, 68, 79, 104, 127, 152, 178, 200, 206, 228, 253, 278, 298,
    318, 343, 364, 384, 409, 429, 448, 467, 479, 504, 529, 547, 572, 592,
)
LAST_FRAME = 612
IMAGE_SUFFIXES = ('.tif', '.tiff', '.png', '.bmp')
MASK_FOLDERS = ('Ground Truth', 'GroundTruth', 'Ground_Truth')


def sequence_of(frame: int) -> int:
  """CVC-ClinicDB frame number (1-based) -> sequence number 1..29."""
  if not 1 <= frame <= LAST_FRAME:
    raise InputFileError(f'CVC-ClinicDB frame {frame} is outside 1..{LAST_FRAME}.')
  return bisect.bisect_right(SEQUENCE_STARTS, frame)


def _find(folder: Path, stem: str) -> Path | None:
  for suffix in IMAGE_SUFFIXES:
    if (folder / f'{stem}{suffix}').is_file():
      return folder / f'{stem}{suffix}'
  return None


@register_builder
class CvcClinicdb(ManualBuilder, skip_registration=True):
  """CVC-ClinicDB frames, binary masks and component boxes; unit = video sequence."""

  name = 'cvc_clinicdb'
  APP = 'polyp'
  REQUIRED = ('Original',)
  DESCRIPTION = 'CVC-ClinicDB colonoscopy frames with polyp masks (Bernal et al. 2015).'
  HOMEPAGE = 'https://polyp.grand-challenge.org/CVCClinicDB/'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download CVC-ClinicDB (Bernal et al., Comput. Med. Imaging Graph. 2015) from
  https://polyp.grand-challenge.org/CVCClinicDB/ and extract it so that the folder holds
    Original/<n>.tif        RGB frames, n = 1..612
    Ground Truth/<n>.tif    polyp masks (0 / 255)
  """

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding='zlib'),
        'mask': tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding='zlib'),
        'boxes': tfds.features.Tensor(shape=(None, 4), dtype=np.float32, encoding='bytes'),
        'id': tfds.features.Text(),
        'unit': tfds.features.Text(),
    })

  def _list_records(self, root: Path) -> list[Record]:
    mask_dir = next((root / f for f in MASK_FOLDERS if (root / f).is_dir()), None)
    if mask_dir is None:
      raise ManualDirError(
          f'No mask folder in {root}: looked for {list(MASK_FOLDERS)}.\n'
          f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}'
      )
    records = []
    for image in sorted((root / 'Original').iterdir()):
      if image.suffix.lower() not in IMAGE_SUFFIXES:
        continue
      if not image.stem.isdigit():
        raise InputFileError(f'CVC-ClinicDB frame {image} is not named <number>{image.suffix}.')
      frame = int(image.stem)
      mask = _find(mask_dir, image.stem)
      if mask is None:
        raise ManualDirError(f'CVC-ClinicDB frame {image} has no mask {mask_dir / image.name}.')
      records.append(Record(
          # Zero-padded so that sorting ids sorts frames.
          id=f'{frame:04d}',
          unit=f'seq{sequence_of(frame):02d}',
          files={'image': image, 'mask': mask},
      ))
    return records

  def _load_example(self, record: Record) -> dict[str, Any]:
    image = readers.read_image(record.files['image'], 'RGB')
    mask = (readers.read_image(record.files['mask'], 'L') > 127).astype(np.uint8)
    if mask.shape != image.shape[:2]:
      raise InputFileError(
          f'Mask {record.files["mask"]} is {mask.shape}, its frame {record.files["image"]} '
          f'is {image.shape[:2]}.'
      )
    return {'image': image, 'mask': mask, 'boxes': boxes_from_mask(mask)}
