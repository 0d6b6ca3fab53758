"""Patch geometry shared by the detection and classification tasks (pure numpy).

A 2-D view of a candidate is a square crop of side `scale * box` image pixels centred on the
candidate moved by `shift` (in units of the box side), resampled bilinearly to `size x size`
and then put in one of 8 orientations (4 rotations by 90 degrees, each optionally mirrored).
Sample points are placed symmetrically about the crop centre, so the candidate lands on the
continuous patch centre `(size - 1) / 2` for every scale and orientation, and a shift of `f`
box sides moves it by exactly `-f * size / scale` patch pixels (before orientation).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np
from scipy import ndimage

from medft.errors import ConfigError

NUM_ORIENTATIONS = 8


def orient(patch: np.ndarray, orientation: int) -> np.ndarray:
  """Orientation 0..7 of a square patch: rotation by 90 * (k % 4) degrees, mirrored if k >= 4."""
  if not 0 <= orientation < NUM_ORIENTATIONS:
    raise ValueError(f'orientation {orientation} is not in 0..{NUM_ORIENTATIONS - 1}.')
  out = np.rot90(patch, orientation % 4, axes=(0, 1))
  if orientation >= 4:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def sample_grid(size: int, spacing: float) -> np.ndarray:
  """Offsets of `size` samples `spacing` apart, symmetric about 0 (the patch centre)."""
  return (np.arange(size, dtype=np.float64) - (size - 1) / 2.0) * spacing


def crop(image: np.ndarray, center_yx: Sequence[float], side: float, size: int,
         order: int = 1) -> np.ndarray:
  """The `side x side`-pixel square around `center_yx`, resampled to `size x size` (uint8).

  `image` is (H, W) or (H, W, C); outside the image the nearest edge pixel is repeated.
  """
  if side <= 0 or size <= 0:
    raise ValueError(f'crop needs side > 0 and size > 0, got side={side}, size={size}.')
  offsets = sample_grid(size, side / size)
  rows = np.broadcast_to((center_yx[0] + offsets)[:, None], (size, size))
  cols = np.broadcast_to((center_yx[1] + offsets)[None, :], (size, size))
  coords = np.stack([rows, cols])
  image = np.asarray(image)
  if image.ndim == 2:
    out = ndimage.map_coordinates(image.astype(np.float32), coords, order=order, mode='nearest')
  else:
    out = np.stack([ndimage.map_coordinates(image[..., c].astype(np.float32), coords,
                                            order=order, mode='nearest')
                    for c in range(image.shape[-1])], axis=-1)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class View:
  """One augmentation of a 2-D candidate: crop scale, shift (box sides) and orientation."""
  scale: float
  shift_yx: tuple[float, float]
  orientation: int


def box_views(scales: Sequence[float], shift_frac: float, shift_steps: Sequence[int],
              orientations: int = NUM_ORIENTATIONS) -> list[View]:
  """Every combination of scale, (vertical, horizontal) shift and orientation, in a fixed order.

  Shifts are `shift_frac * step` box sides for each step in `shift_steps` on both axes (the
  paper's 10% translations with steps (-1, 0, 1) give a 3 x 3 grid).
  """
  if not 1 <= orientations <= NUM_ORIENTATIONS:
    raise ConfigError(f'orientations={orientations} must be in 1..{NUM_ORIENTATIONS}.')
  shifts = [(shift_frac * dy, shift_frac * dx)
            for dy, dx in itertools.product(shift_steps, shift_steps)]
  return [View(float(s), (float(dy), float(dx)), k)
          for s, (dy, dx), k in itertools.product(scales, shifts, range(orientations))]


def cut_view(image: np.ndarray, center_yx: Sequence[float], box: float, view: View,
             size: int) -> np.ndarray:
  """The patch of one candidate (centre, box side in pixels) under one view."""
  center = (center_yx[0] + view.shift_yx[0] * box, center_yx[1] + view.shift_yx[1] * box)
  return orient(crop(image, center, view.scale * box, size), view.orientation)


def random_crop_corners(rng: np.random.Generator, image_hw: Sequence[int], size: int,
                        n: int) -> np.ndarray:
  """(n, 2) top-left corners of `size x size` crops drawn uniformly inside an (H, W) image."""
  h, w = int(image_hw[0]), int(image_hw[1])
  if size > min(h, w):
    raise ConfigError(f'crop size {size} does not fit in a {h}x{w} image; lower the crop size.')
  return np.stack([rng.integers(0, h - size + 1, n), rng.integers(0, w - size + 1, n)], axis=1)


def cut_views(image: np.ndarray, center_yx: Sequence[float], box: float, views: Sequence[View],
              size: int) -> np.ndarray:
  """`cut_view` for every view, resampling once per (scale, shift) and re-orienting that."""
  crops: dict[tuple[float, tuple[float, float]], np.ndarray] = {}
  out = []
  for view in views:
    key = (view.scale, view.shift_yx)
    if key not in crops:
      center = (center_yx[0] + view.shift_yx[0] * box, center_yx[1] + view.shift_yx[1] * box)
      crops[key] = crop(image, center, view.scale * box, size)
    out.append(orient(crops[key], view.orientation))
  return np.stack(out)
