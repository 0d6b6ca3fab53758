"""Kvasir-SEG: colonoscopy frames with polyp masks and boxes; each frame is its own unit.

Images are kept as their original JPEG bytes (decoded at read time: the originals are up to
1920x1072, so storing pixels would multiply the prepared size). Masks are lossy 3-channel
JPEGs and are thresholded at > 127. Boxes come from `kavsir_bboxes.json`, which gives them in
the original resolution (each entry's `height`/`width`); they are scaled to the image that is
actually on disk, so a resized copy of the dataset gets correct boxes. A frame without an
entry in the JSON (or a copy without the JSON) gets the boxes of its mask's components.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from medft.data import readers
from medft.data.base import ManualBuilder, ManualDirError, Record, register_builder
from medft.data.masks import boxes_from_mask
from medft.errors import InputFileError

BOXES_FILE = 'kavsir_bboxes.json'  # sic: the original release misspells it


def scale_boxes(entry: dict[str, Any], height: int, width: int, source: Path) -> np.ndarray:
  """Boxes of one JSON entry as float32 (K, 4) (ymin, xmin, ymax, xmax) in on-disk pixels."""
  try:
    sy = height / float(entry['height'])
    sx = width / float(entry['width'])
    boxes = [
        (b['ymin'] * sy, b['xmin'] * sx, b['ymax'] * sy, b['xmax'] * sx)
        for b in entry['bbox']
    ]
  except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
    raise InputFileError(f'Malformed box entry in {source}: {entry!r} ({err}).') from err
  return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


@register_builder
class KvasirSeg(ManualBuilder, skip_registration=True):
  """Kvasir-SEG frames (JPEG bytes), binary masks and scaled boxes."""

  name = 'kvasir_seg'
  APP = 'polyp'
  REQUIRED = ('images', 'masks')
  ENCODED_IMAGES = {'image': 'RGB'}
  DESCRIPTION = 'Kvasir-SEG polyp frames with masks and boxes (Jha et al. 2020).'
  HOMEPAGE = 'https://datasets.simula.no/kvasir-seg/'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download Kvasir-SEG (Jha et al., MMM 2020) from https://datasets.simula.no/kvasir-seg/ and
  extract it so that the folder holds
    images/<id>.jpg         RGB frames
    masks/<id>.jpg          polyp masks (white = polyp)
    kavsir_bboxes.json      boxes in each frame's original resolution (optional)
  """

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        # Encoded JPEG file bytes; medft.data decodes them to uint8 (H, W, 3).
        'image': tfds.features.Tensor(shape=(None,), dtype=np.uint8, encoding='bytes'),
        'mask': tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding='zlib'),
        'boxes': tfds.features.Tensor(shape=(None, 4), dtype=np.float32, encoding='bytes'),
        'id': tfds.features.Text(),
        'unit': tfds.features.Text(),
    })

  def _list_records(self, root: Path) -> list[Record]:
    boxes_path = root / BOXES_FILE
    self._boxes: dict[str, Any] = {}
    if boxes_path.is_file():
      try:
        self._boxes = json.loads(boxes_path.read_text())
      except (OSError, ValueError) as err:
        raise InputFileError(f'Cannot read boxes file {boxes_path}: {err}') from err
      if not isinstance(self._boxes, dict) or not all(
          isinstance(v, dict) for v in self._boxes.values()):
        raise InputFileError(
            f'Boxes file {boxes_path} holds a JSON {type(self._boxes).__name__}, expected an '
            'object {"<frame id>": {"height": h, "width": w, "bbox": [{"xmin": ..., "ymin": '
            '..., "xmax": ..., "ymax": ...}]}}; re-download it, or delete it to take the boxes '
            'from the masks.')
    self._boxes_path = boxes_path
    suffixes = ('.jpg', '.jpeg', '.png')
    masks = {p.stem: p for p in (root / 'masks').iterdir() if p.suffix.lower() in suffixes}
    records = []
    for image in sorted((root / 'images').iterdir()):
      if image.suffix.lower() not in suffixes:
        continue
      if image.stem not in masks:
        raise ManualDirError(f'Kvasir-SEG frame {image} has no mask in {root / "masks"}.')
      files = {'image': image, 'mask': masks[image.stem]}
      records.append(Record(id=image.stem, unit=image.stem, files=files))
    return records

  def _load_example(self, record: Record) -> dict[str, Any]:
    image_path, mask_path = record.files['image'], record.files['mask']
    image = readers.read_image(image_path, 'RGB')
    mask = (readers.read_image(mask_path, 'L') > 127).astype(np.uint8)
    if mask.shape != image.shape[:2]:
      raise InputFileError(f'Mask {mask_path} is {mask.shape}, its frame {image_path} is '
                           f'{image.shape[:2]}.')
    entry = self._boxes.get(record.id)
    if entry is None:
      boxes = boxes_from_mask(mask)
    else:
      boxes = scale_boxes(entry, image.shape[0], image.shape[1], self._boxes_path)
    return {
        'image': np.frombuffer(image_path.read_bytes(), dtype=np.uint8),
        'mask': mask,
        'boxes': boxes,
    }
