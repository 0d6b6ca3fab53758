"""CUBS (Carotid Ultrasound Boundary Study): B-mode carotid images with LI/MA profiles (CIMT).

Ids, subjects and centres: an example's id is its image file stem, e.g. `clin_0001_L`. The
subject (the split unit) is the id without its trailing side marker `_L`/`_R` (also `-L`,
`_left`, ...; any case), so the left and right carotid of one person always share a split.
The centre is the id's leading run of letters (`clin`), or 'unknown' when the id starts
otherwise. Profiles are stored as written (x, y) in pixels; nothing is resampled or sorted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from medft.data import readers
from medft.data.base import ManualBuilder, ManualDirError, Record, register_builder
from medft.errors import ConfigError

IMAGE_SUFFIXES = ('.tiff', '.tif', '.png')
# Folder names under SEGMENTATIONS/ accepted for each annotator (copies of CUBS differ).
ANNOTATOR_FOLDERS = {
    'A1': ('A1', 'Manual-A1'),
    "A1'": ("A1'", 'A1s', 'A1p', 'A1prime', "Manual-A1'", 'Manual-A1s'),
    'A2': ('A2', 'Manual-A2'),
    'A3': ('A3', 'Manual-A3'),
}
_SIDE = re.compile(r'[_-](l|r|left|right)$', re.IGNORECASE)
_CENTRE = re.compile(r'[A-Za-z]+')


def subject_of(image_id: str) -> str:
  """`clin_0001_L` -> `clin_0001`: the two sides of one subject form one unit."""
  return _SIDE.sub('', image_id)


def centre_of(image_id: str) -> str:
  """`clin_0001_L` -> `clin`: the id's leading letters, or 'unknown'."""
  match = _CENTRE.match(image_id)
  return match.group(0) if match else 'unknown'


class CubsConfig(tfds.core.BuilderConfig):
  """Which annotator's profiles to read (A1 is the reference annotation)."""

  def __init__(self, *, annotator: str, **kwargs):
    super().__init__(**kwargs)
    self.annotator = annotator


def config_name(annotator: str) -> str:
  """Builder config name for an annotator: A1 -> a1, A1' -> a1s."""
  if annotator not in ANNOTATOR_FOLDERS:
    raise ConfigError(f'Unknown CUBS annotator {annotator!r}; use one of '
                      f'{list(ANNOTATOR_FOLDERS)}.')
  return annotator.lower().replace("'", 's')


@register_builder
class Cubs(ManualBuilder, skip_registration=True):
  """CUBS images, calibration factors and one annotator's LI/MA profiles."""

  name = 'cubs'
  APP = 'cimt'
  REQUIRED = ('IMAGES', 'CF', 'SEGMENTATIONS')
  DESCRIPTION = 'Carotid Ultrasound Boundary Study: images, CF (mm/px), LI and MA profiles.'
  BUILDER_CONFIGS = [
      CubsConfig(name=config_name(a), annotator=a, description=f'Profiles of annotator {a}.')
      for a in ANNOTATOR_FOLDERS
  ]
  DEFAULT_CONFIG_NAME = 'a1'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download CUBS (Carotid Ultrasound Boundary Study, Meiburger et al. 2021; published on
  Mendeley Data) and extract it so that the folder holds
    IMAGES/<id>.tiff                         greyscale B-mode images
    CF/<id>_CF.txt                           one number: millimetres per pixel
    SEGMENTATIONS/<annotator>/<id>-LI.txt    lumen-intima profile, (x, y) pixels
    SEGMENTATIONS/<annotator>/<id>-MA.txt    media-adventitia profile
  with annotators A1 (reference), A1' (A1 again), A2, A3.
  """

  @classmethod
  def config_from(cls, data_config: dict[str, Any]) -> str:
    return config_name(data_config['annotator'])

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding='zlib'),
        'li': tfds.features.Tensor(shape=(None, 2), dtype=np.float32, encoding='bytes'),
        'ma': tfds.features.Tensor(shape=(None, 2), dtype=np.float32, encoding='bytes'),
        'cf': tfds.features.Tensor(shape=(), dtype=np.float64, encoding='bytes'),
        'id': tfds.features.Text(),
        'unit': tfds.features.Text(),
        'centre': tfds.features.Text(),
        'annotator': tfds.features.Text(),
    })

  def _segmentation_dir(self, root: Path) -> Path:
    annotator = self.builder_config.annotator
    for folder in ANNOTATOR_FOLDERS[annotator]:
      if (root / 'SEGMENTATIONS' / folder).is_dir():
        return root / 'SEGMENTATIONS' / folder
    raise ManualDirError(
        f'No profiles of annotator {annotator} in {root / "SEGMENTATIONS"}: looked for folders '
        f'{list(ANNOTATOR_FOLDERS[annotator])}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}'
    )

  def _list_records(self, root: Path) -> list[Record]:
    seg_dir = self._segmentation_dir(root)
    records = []
    for image in sorted((root / 'IMAGES').iterdir()):
      if image.suffix.lower() not in IMAGE_SUFFIXES:
        continue
      image_id = image.stem
      files = {
          'image': image,
          'cf': root / 'CF' / f'{image_id}_CF.txt',
          'li': seg_dir / f'{image_id}-LI.txt',
          'ma': seg_dir / f'{image_id}-MA.txt',
      }
      for key, path in files.items():
        if not path.is_file():
          raise ManualDirError(f'CUBS image {image} has no {key.upper()} file: expected {path}.')
      records.append(Record(id=image_id, unit=subject_of(image_id), files=files))
    return records

  def _load_example(self, record: Record) -> dict[str, Any]:
    files = record.files
    return {
        'image': readers.read_image(files['image'], 'L'),
        'li': readers.read_profile(files['li']),
        'ma': readers.read_profile(files['ma']),
        'cf': readers.read_cf(files['cf']),
        'centre': centre_of(record.id),
        'annotator': self.builder_config.annotator,
    }
