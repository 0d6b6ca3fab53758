"""TFDS builders of manifest datasets: a researcher's own images in, an application's examples out.

`data.name=manifest_<kind>` with `data.manifest=<file.csv|.jsonl>` (see `medft.data.manifest`
for the format) reads the listed files into the examples of one application, the same
features as that application's public builder, so every task, split, fraction and report
works unchanged:

    manifest_classification  frames   as frames_folder  (image bytes, label; `classes` map)
    manifest_detection       polyp    as kvasir_seg     (image bytes, mask, boxes of the mask)
    manifest_volumes         pe       as cad_pe         (volume int16 HU, spacing mm, labels)
    manifest_cimt            cimt     as cubs           (image, li, ma, cf)

One prepared copy per manifest: the builder config's name is a digest of the manifest's path,
contents, kind and `split_by`. Its source fingerprint (`medft.data.dataset`) covers the
manifest and every file it lists, so an edited image is prepared again. Before anything is
written, `validate_source` decodes every row's files (an unreadable image, a mask whose shape
differs from its image's, a malformed profile) and reports every bad row by line number.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from medft.data import cubs, frames_folder, kvasir_seg, readers, volumes
from medft.data import manifest as manifest_lib
from medft.data.base import ManualBuilder, Record, register_builder
from medft.data.masks import boxes_from_mask
from medft.errors import ConfigError, InputFileError, MissingInputError

ANNOTATOR = 'manifest'  # the `annotator` feature of a CIMT manifest's examples


class ManifestConfig(tfds.core.BuilderConfig):
  """A checked manifest; the config name is a digest of its path, contents and split."""

  def __init__(self, *, manifest: manifest_lib.Manifest, **kwargs):
    key = json.dumps(manifest_lib.config_key(manifest), sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    kwargs.setdefault('name', f'm{digest}')
    kwargs.setdefault('description', key)
    super().__init__(**kwargs)
    self.manifest = manifest


def manifest_root(cfg: dict[str, Any]) -> Path:
  """The folder a manifest's paths are relative to (its own), for a data config."""
  if cfg['manual_dir']:
    raise ConfigError(f'data.name={cfg["name"]!r} reads the files its manifest lists; remove '
                      f'data.manual_dir={cfg["manual_dir"]!r} (paths in the manifest are '
                      'relative to the manifest file).')
  return manifest_lib.manifest_path(cfg['manifest']).parent


class ManifestBuilder(ManualBuilder, skip_registration=True):
  """What the four manifest builders share: the manifest config, its rows as records."""

  KIND: ClassVar[str] = ''
  READS_MANIFEST: ClassVar[bool] = True
  DESCRIPTION = 'Your own images, listed in a CSV or JSON-lines manifest.'

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Write a manifest (a CSV file with a header line, or JSON lines) with one row per image '
      'or volume, paths relative to the manifest, and pass --config.data.manifest=<file>; see '
      'medft/data/manifest.py for the columns of each kind.')

  @classmethod
  def config_from(cls, data_config: dict[str, Any]) -> ManifestConfig:
    return ManifestConfig(manifest=manifest_lib.read(data_config['manifest'], cls.KIND,
                                                     data_config['split_by']))

  @property
  def manifest(self) -> manifest_lib.Manifest:
    return self.builder_config.manifest

  def source_paths(self, root: Path) -> list[Path]:
    """The manifest and every file or folder it lists (the source fingerprint's files)."""
    del root
    return [self.manifest.path, *(p for row in self.manifest.rows for p in row.paths.values())]

  def validate_source(self, root: Path) -> None:
    """Decodes every row's files; every failure is reported by line number, nothing written."""
    del root
    bad = manifest_lib.BadRows(self.manifest.path)
    for row in self.manifest.rows:
      try:
        self._load_example(self._record(row))
      except (InputFileError, MissingInputError) as e:
        bad.add(row.line, str(e).splitlines()[0])
    bad.raise_if_any()

  def _record(self, row: manifest_lib.Row) -> Record:
    return Record(id=row.id, unit=row.unit, files={**row.paths, 'row': row})

  def _list_records(self, root: Path) -> list[Record]:
    del root
    return [self._record(row) for row in self.manifest.rows]

  def _extra_metadata(self, records: list[Record]) -> dict[str, Any]:
    del records
    m = self.manifest
    extra = {'manifest': str(m.path), 'manifest_sha256': m.sha256, 'manifest_kind': m.kind.name,
             'split_by': m.split_by}
    return {**extra, **({'classes': dict(m.classes)} if m.classes else {})}


@register_builder
class ManifestClassification(ManifestBuilder, skip_registration=True):
  """image,label,subject -> the frames task's examples (as frames_folder's)."""

  name = 'manifest_classification'
  KIND = 'classification'
  APP = 'frames'
  ENCODED_IMAGES = {'image': 'RGB'}

  # The examples of the builder this kind mirrors, so its task reads them alike.
  _features = frames_folder.FramesFolder._features

  def _load_example(self, record: Record) -> dict[str, Any]:
    data = readers.read_image_bytes(record.files['image'], 'RGB')
    return {'image': np.frombuffer(data, dtype=np.uint8),
            'label': self.manifest.label(record.files['row'])}


def read_mask_image(path: Path) -> np.ndarray:
  """A binary mask image: a 0/1 label image as it is, else values > 127 (a lossy JPEG of a
  0/255 mask keeps its edges)."""
  values = readers.read_image(path, 'L')
  return (values > (0 if values.max(initial=0) <= 1 else 127)).astype(np.uint8)


@register_builder
class ManifestDetection(ManifestBuilder, skip_registration=True):
  """image,mask,subject -> the polyp task's examples (as kvasir_seg's; boxes from the mask)."""

  name = 'manifest_detection'
  KIND = 'detection'
  APP = 'polyp'
  ENCODED_IMAGES = {'image': 'RGB'}

  # The examples of the builder this kind mirrors, so its task reads them alike.
  _features = kvasir_seg.KvasirSeg._features

  def _load_example(self, record: Record) -> dict[str, Any]:
    image_path, mask_path = record.files['image'], record.files['mask']
    image = readers.read_image(image_path, 'RGB')
    mask = read_mask_image(mask_path)
    if mask.shape != image.shape[:2]:
      raise InputFileError(f'mask {mask_path.name} is {mask.shape[0]}x{mask.shape[1]}, its '
                           f'image {image_path.name} is {image.shape[0]}x{image.shape[1]} '
                           f'(height x width); a mask must cover its image pixel for pixel.')
    return {'image': np.frombuffer(image_path.read_bytes(), dtype=np.uint8), 'mask': mask,
            'boxes': boxes_from_mask(mask)}


@register_builder
class ManifestVolumes(ManifestBuilder, skip_registration=True):
  """volume,mask,subject -> the PE task's examples (as cad_pe's): NIfTI, NRRD or DICOM."""

  name = 'manifest_volumes'
  KIND = 'volumes'
  APP = 'pe'

  def _features(self) -> tfds.features.FeaturesDict:
    return volumes.pe_features()

  def _load_example(self, record: Record) -> dict[str, Any]:
    from medft.data import volume_files  # noqa: PLC0415  (its readers are optional packages)
    scan = volume_files.read_volume(record.files['volume'])
    mask = volume_files.read_mask(record.files['mask'], like=scan)
    return {'volume': volumes.to_int16(scan.array),
            'spacing': np.asarray(scan.spacing, np.float32),
            'labels': volumes.clot_labels(mask)}


@register_builder
class ManifestCimt(ManifestBuilder, skip_registration=True):
  """image,li,ma,calibration_mm_per_px,subject -> the CIMT task's examples (as cubs')."""

  name = 'manifest_cimt'
  KIND = 'cimt'
  APP = 'cimt'

  # The examples of the builder this kind mirrors, so its task reads them alike.
  _features = cubs.Cubs._features

  def _load_example(self, record: Record) -> dict[str, Any]:
    files, row = record.files, record.files['row']
    image = readers.read_image(files['image'], 'L')
    profiles = {key: readers.read_profile(files[key]) for key in ('li', 'ma')}
    height, width = image.shape
    for key, points in profiles.items():
      outside = (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (
          points[:, 1] > height)
      if outside.any():
        x, y = points[np.argmax(outside)]
        raise InputFileError(f'{key} profile {files[key].name} has point ({x:g}, {y:g}) outside '
                             f'its image {files["image"].name} ({width}x{height} pixels); '
                             'profiles are (x, y) pixel positions in the image.')
    return {'image': image, **profiles, 'cf': float(row.values['calibration_mm_per_px']),
            'centre': 'unknown', 'annotator': ANNOTATOR}
