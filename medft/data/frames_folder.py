"""Frames in a `<class>/<image>` folder tree (e.g. HyperKvasir) for frame classification.

The class -> label map (any number of classes K: labels 0..K-1, each used; several folders may
share a label) and an optional unit regex are part of the builder config, so one prepared copy
exists per map; the map is also the prepared data's metadata `classes`, from which the frames
task takes K. Only the class folders named in the map are read. Each example's
id is `<class>/<file stem>`. Its unit (the split unit: video or patient) is the first group of
`unit_regex` searched in the file stem, or the file stem itself when there is no regex. A regex
that does not match every file is refused (those frames would silently become units of their
own, splitting one video over train and test). Images are kept as their original file bytes
and decoded at read time.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from medft.data import readers
from medft.data.base import ManualBuilder, ManualDirError, Record, register_builder
from medft.errors import ConfigError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff')


class FramesFolderConfig(tfds.core.BuilderConfig):
  """Class -> label map and unit regex; the config name is a hash of both."""

  def __init__(self, *, classes: Mapping[str, int], unit_regex: str | None = None, **kwargs):
    classes = {str(k): int(v) for k, v in sorted(dict(classes).items())}
    if not classes:
      raise ConfigError('frames_folder needs a non-empty class -> label map (config "classes").')
    labels = sorted(set(classes.values()))
    if labels != list(range(len(labels))):
      raise ConfigError(f'frames_folder class map {classes}: the labels must be 0..K-1 with '
                        f'each used (got {labels}); renumber them, e.g. '
                        f'{dict(zip(classes, range(len(classes))))}.')
    if unit_regex:
      try:
        re.compile(unit_regex)
      except re.error as e:
        raise ConfigError(f'data.unit_regex={unit_regex!r} is not a valid regular expression '
                          f'({e}); fix it, e.g. r"^(vid\\d+)_", or give "" for one unit per '
                          'file.') from None
    key = json.dumps({'classes': classes, 'unit_regex': unit_regex}, sort_keys=True)
    kwargs.setdefault('name', 'c' + hashlib.sha1(key.encode()).hexdigest()[:12])
    kwargs.setdefault('description', key)
    super().__init__(**kwargs)
    self.classes = classes
    self.unit_regex = unit_regex


def unit_of(stem: str, unit_regex: str | None) -> str:
  if unit_regex:
    match = re.search(unit_regex, stem)
    if match:
      return match.group(1) if match.groups() else match.group(0)
  return stem


def _check_units(records: list[Record], unit_regex: str | None, root: Path) -> None:
  """ConfigError unless `unit_regex` matches the stem of every file (when there is one)."""
  if not unit_regex or not records:
    return
  unmatched = [r for r in records if not re.search(unit_regex, Path(r.id).name)]
  if unmatched:
    shown = ', '.join(Path(str(r.files['image'])).name for r in unmatched[:3])
    raise ConfigError(
        f'data.unit_regex={unit_regex!r} matches {len(records) - len(unmatched)} of the '
        f'{len(records)} frames in {root} (e.g. not {shown}); every frame needs a unit (video '
        'or patient), or frames of one video would split over train and test. Fix the regex so '
        'that its first group picks the id out of every file stem, or give '
        '--config.data.unit_regex="" for one unit per file.')


@register_builder
class FramesFolder(ManualBuilder, skip_registration=True):
  """Frames (file bytes), integer labels from the class map, unit ids."""

  name = 'frames_folder'
  APP = 'frames'
  ENCODED_IMAGES = {'image': 'RGB'}
  DESCRIPTION = 'Frames in a <class>/<image> folder tree, labelled by a class -> label map.'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the frames in one folder per class, e.g. for HyperKvasir
    <manual_dir>/informative/<image>.jpg
    <manual_dir>/non_informative/<image>.jpg
  and pass the class -> label map as config field `classes`, e.g.
  {'informative': 1, 'non_informative': 0}; optionally `unit_regex`, a regex whose first group
  picks the video/patient id out of a file stem.
  """

  @classmethod
  def config_from(cls, data_config: dict[str, Any]) -> FramesFolderConfig:
    if not data_config['classes']:
      raise ConfigError(
          'frames_folder needs config field `classes`, a class folder -> label map such as '
          "{'informative': 1, 'non_informative': 0}."
      )
    return FramesFolderConfig(classes=dict(data_config['classes']),
                              unit_regex=data_config['unit_regex'])

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        # Encoded image file bytes; medft.data decodes them to uint8 (H, W, 3).
        'image': tfds.features.Tensor(shape=(None,), dtype=np.uint8, encoding='bytes'),
        'label': tfds.features.Scalar(dtype=np.int64),
        'id': tfds.features.Text(),
        'unit': tfds.features.Text(),
    })

  def _list_records(self, root: Path) -> list[Record]:
    config = self.builder_config
    if not isinstance(config, FramesFolderConfig):
      raise ValueError('frames_folder needs a FramesFolderConfig(classes=..., unit_regex=...).')
    records = []
    for class_name, label in config.classes.items():
      folder = root / class_name
      if not folder.is_dir():
        raise ManualDirError(
            f'Class folder {folder} does not exist (classes: {list(config.classes)}).\n'
            f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}'
        )
      for image in sorted(folder.rglob('*')):
        if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES:
          rel = image.relative_to(folder).with_suffix('').as_posix()
          records.append(Record(
              id=f'{class_name}/{rel}',
              unit=unit_of(image.stem, config.unit_regex),
              files={'image': image, 'label': label},
          ))
    _check_units(records, config.unit_regex, root)
    return records

  def _extra_metadata(self, records: list[Record]) -> dict[str, Any]:
    return {'classes': self.builder_config.classes, 'unit_regex': self.builder_config.unit_regex}

  def _load_example(self, record: Record) -> dict[str, Any]:
    data = readers.read_image_bytes(record.files['image'], 'RGB')
    return {'image': np.frombuffer(data, dtype=np.uint8), 'label': record.files['label']}
