"""Polyp detection: classify candidate boxes of colonoscopy frames (Tajbakhsh et al. 2016).

The paper's candidate generator is not public, so candidates come from the frame itself
through a pluggable generator (`GENERATORS`, chosen by `task.generator`): `dog` takes local
maxima of a scale-normalised difference-of-Gaussians response of redness and brightness (a
cheap blob detector; the box side follows from the blob scale), `grid` tiles the frame with
boxes of a few sizes. Names joined by '+' (the default `dog+grid`) take the union of those
generators (see `generate`): the blob detector finds small polyps, the coarse grid the large
smooth ones that give no blob maximum inside them, which otherwise cap the study's sensitivity
(docs/candidate_recall_kvasir.md). A candidate whose centre lies inside the polyp mask is
positive and hits the connected mask component (the lesion) under its centre; every other
candidate is a false positive. Training draws candidates class-balanced (negatives
down-sampled) with a random view: 3 scales of the box, shifts of 10% of the box on both axes
and 8 orientations. At test time a candidate's score is the mean probability over all of its
views, and the detector is scored by FROC (sensitivity vs false positives per frame) and
candidate ROC AUC, with 95% bootstrap intervals over units (video sequences; a Kvasir frame is
its own unit).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage
from skimage import feature, transform

from medft.data.masks import label_components
from medft.errors import ConfigError, InputFileError
from medft.registry import Registry
from medft.tasks import TASKS, augment, detection, device_views, example_cache

# name -> fn(image uint8 (H, W, 3), task_config) -> (centres (K, 2) yx float, sides (K,) px);
# `@register_generator(name)` adds one (`medft.registry`).
GENERATORS: Registry[Callable[[np.ndarray, Any], tuple[np.ndarray, np.ndarray]]] = Registry(
    'candidate generator', 'task.generator')
register_generator = GENERATORS.register


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
  """Image scaled by `factor` (pixel centres map as (y + 0.5) * factor - 0.5), same dtype."""
  if factor == 1.0:
    return image
  shape = (max(1, round(image.shape[0] * factor)), max(1, round(image.shape[1] * factor)))
  out = transform.resize(image, shape + image.shape[2:], order=1, anti_aliasing=factor < 1,
                         preserve_range=True)
  return np.clip(np.rint(out), 0, 255).astype(image.dtype)


@register_generator('dog')
def dog_candidates(image: np.ndarray, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
  """Blob centres and box sides from a difference of Gaussians of redness and brightness.

  Each channel is normalised by its spread so neither dominates; the response at scale s is
  (G_s - G_{1.6 s}) / 0.6 (about -s^2 Laplacian: scale-normalised, positive on bright blobs),
  maximised over channels and scales. The strongest `max_candidates` local maxima are kept;
  a blob of scale s gets a box side of 2 * sqrt(2) * s (its diameter).
  """
  h, w = image.shape[:2]
  factor = min(1.0, cfg.work_size / max(h, w))
  small = _resize(image, factor).astype(np.float32) / 255.0
  red = small[..., 0] - 0.5 * (small[..., 1] + small[..., 2])
  bright = small.mean(axis=-1)
  channels = [(c - np.median(c)) / (np.std(c) + 1e-6) for c in (red, bright)]
  short = min(small.shape[:2])
  sigmas = np.asarray(cfg.blob_sigmas, np.float64) * short
  responses = []
  for s in sigmas:
    responses.append(np.max([(ndimage.gaussian_filter(c, s) - ndimage.gaussian_filter(c, 1.6 * s))
                             / 0.6 for c in channels], axis=0))
  responses = np.stack(responses)
  best = responses.max(axis=0)
  peaks = feature.peak_local_max(best, min_distance=max(1, int(cfg.min_distance * short)),
                                 num_peaks=cfg.max_candidates, exclude_border=False)
  if not len(peaks):
    return np.zeros((0, 2)), np.zeros((0,))
  scale = sigmas[responses[:, peaks[:, 0], peaks[:, 1]].argmax(axis=0)]
  centres = (peaks + 0.5) / factor - 0.5
  sides = np.maximum(2 * np.sqrt(2) * scale / factor, cfg.min_box)
  return centres.astype(np.float64), sides.astype(np.float64)


@register_generator('grid')
def grid_candidates(image: np.ndarray, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
  """Boxes of side `f * short side` for f in `grid_box_fracs`, tiled with half-box strides."""
  h, w = image.shape[:2]
  centres, sides = [], []
  for frac in cfg.grid_box_fracs:
    side = max(frac * min(h, w), cfg.min_box)
    ys = np.arange(side / 2, h - side / 2 + 1e-6, side / 2) - 0.5
    xs = np.arange(side / 2, w - side / 2 + 1e-6, side / 2) - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing='ij')
    centres.append(np.stack([yy.ravel(), xx.ravel()], axis=1))
    sides.append(np.full(yy.size, side))
  return np.concatenate(centres), np.concatenate(sides)


def generator_names(spec: str) -> list[str]:
  """The registered generators named by `task.generator` ('dog', or a union such as 'dog+grid')."""
  names = [n.strip() for n in str(spec).split('+')]
  unknown = [n for n in names if n not in GENERATORS]
  if unknown:
    raise ConfigError(f'task.generator={spec!r}: unknown generator {", ".join(map(repr, unknown))}'
                      f'; available: {", ".join(GENERATORS)} (join several with "+", '
                      'e.g. dog+grid).')
  return names


def generate(image: np.ndarray, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
  """Candidates of `task.generator` on `image`: (centres (K, 2) yx, sides (K,)) in its pixels.

  For a union 'a+b' the generators run in that order. A candidate is dropped when its centre
  is darker than `min_brightness` (mean of the 5x5 pixels around it, channels averaged, 0..1:
  the black frame border and overlays; lit mucosa is far brighter), or when it comes from a
  later generator and the centre of a kept candidate lies within `dedup_frac` of its own box
  side (a grid box whose cell a blob candidate already covers costs test views, adds no hit).
  """
  kept_c, kept_s = np.zeros((0, 2)), np.zeros(0)
  bright = None
  if cfg.min_brightness > 0:
    bright = ndimage.uniform_filter(image.astype(np.float32).mean(axis=-1) / 255.0, 5,
                                    mode='nearest')
  for k, name in enumerate(generator_names(cfg.generator)):
    centres, sides = GENERATORS[name](image, cfg)
    centres, sides = np.asarray(centres, np.float64).reshape(-1, 2), np.asarray(sides, np.float64)
    keep = np.ones(len(sides), bool)
    if bright is not None and len(sides):
      rows = np.clip(np.rint(centres[:, 0]).astype(np.int64), 0, image.shape[0] - 1)
      cols = np.clip(np.rint(centres[:, 1]).astype(np.int64), 0, image.shape[1] - 1)
      keep &= bright[rows, cols] >= cfg.min_brightness
    if k and len(kept_s) and len(sides):
      nearest = np.linalg.norm(centres[:, None] - kept_c[None], axis=-1).min(axis=1)
      keep &= nearest > cfg.dedup_frac * sides
    kept_c = np.concatenate([kept_c, centres[keep]])
    kept_s = np.concatenate([kept_s, sides[keep]])
  return kept_c, kept_s


def label_candidates(mask: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, int]:
  """(lesion id per candidate: mask component 1..K under its centre or -1, K)."""
  components = label_components(mask)
  rows = np.clip(np.rint(centres[:, 0]).astype(np.int64), 0, mask.shape[0] - 1)
  cols = np.clip(np.rint(centres[:, 1]).astype(np.int64), 0, mask.shape[1] - 1)
  hit = components[rows, cols].astype(np.int64) if len(centres) else np.zeros(0, np.int64)
  return np.where(hit > 0, hit, -1), int(components.max())


@dataclasses.dataclass
class Frame:
  """One frame (possibly downscaled) with its candidates in its own pixel coordinates."""
  id: str
  unit: str
  image: np.ndarray          # (h, w, 3) uint8
  centres: np.ndarray        # (K, 2) float (y, x)
  sides: np.ndarray          # (K,) box side in pixels
  lesions: np.ndarray        # (K,) mask component hit, or -1
  num_lesions: int
  extra_positives: tuple[np.ndarray, np.ndarray]  # (centres, sides) of the mask components

  @classmethod
  def from_example(cls, ex: dict, cfg: Any) -> 'Frame':
    """The frame of example `ex` under `cfg` (computed once per process: example_cache)."""
    return example_cache.get('polyp.Frame', ex, cfg, lambda: cls._make(ex, cfg))

  @classmethod
  def _make(cls, ex: dict, cfg: Any) -> 'Frame':
    image, mask = np.asarray(ex['image']), np.asarray(ex['mask']) > 0
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    if image.shape[:2] != mask.shape:
      raise InputFileError(f'polyp frame {ex.get("id")}: image {image.shape} and mask '
                           f'{mask.shape} differ in size; fix or remove that frame\'s mask.')
    factor = min(1.0, cfg.frame_max_side / max(mask.shape))
    image = _resize(image, factor)
    centres, sides = generate(image, cfg)
    # Labels are read on the full-resolution mask.
    full_centres = (centres + 0.5) / factor - 0.5
    lesions, num_lesions = label_candidates(mask, full_centres)
    components = label_components(mask)
    objects = ndimage.find_objects(components)
    comp_centres = np.asarray(ndimage.center_of_mass(mask, components, range(1, num_lesions + 1)),
                              np.float64).reshape(-1, 2)
    comp_sides = np.asarray([max(o[0].stop - o[0].start, o[1].stop - o[1].start)
                             for o in objects], np.float64)
    return cls(id=str(ex.get('id', '')), unit=str(ex.get('unit', ex.get('id', ''))),
               image=image, centres=centres, sides=sides, lesions=lesions,
               num_lesions=num_lesions,
               extra_positives=((comp_centres + 0.5) * factor - 0.5,
                                np.maximum(comp_sides * factor, cfg.min_box)))


def candidate_recall(examples: Iterable[dict], cfg: Any) -> dict:
  """Candidate recall of `examples`: lesions some candidate hits / lesions (the sensitivity cap).

  Each example becomes its `Frame` exactly as the task makes it (resize, `task.generator`,
  labels on the full-resolution mask), timed. Returns the totals, candidates per frame (mean
  and max), milliseconds per frame and `per_unit` rows {unit, lesions, lesions_hit}.
  """
  units: dict[str, dict] = {}
  counts, seconds = [], 0.0
  for ex in examples:
    start = time.perf_counter()
    frame = Frame._make(ex, cfg)  # the real work, timed (not the memo)
    seconds += time.perf_counter() - start
    counts.append(len(frame.sides))
    u = units.setdefault(frame.unit, {'unit': frame.unit, 'lesions': 0, 'lesions_hit': 0})
    u['lesions'] += frame.num_lesions
    u['lesions_hit'] += len(set(frame.lesions[frame.lesions >= 0].tolist()))
  lesions = sum(u['lesions'] for u in units.values())
  hit = sum(u['lesions_hit'] for u in units.values())
  return {'frames': len(counts), 'lesions': lesions, 'lesions_hit': hit,
          'recall': hit / lesions if lesions else float('nan'),
          'candidates_per_frame': float(np.mean(counts)) if counts else 0.0,
          'max_candidates_per_frame': int(max(counts, default=0)),
          'ms_per_frame': 1000 * seconds / max(len(counts), 1),
          'per_unit': list(units.values())}


@TASKS.register('polyp')
class PolypTask(detection.CandidateTask):
  """Polyp candidates of colonoscopy frames: box views, FROC in false positives per frame."""
  app = 'polyp'
  per = 'frame'

  def __init__(self, splits: dict[str, Sequence[dict]], task_config: Any, seed: int):
    generator_names(task_config.generator)  # an unknown name is refused before any work
    super().__init__(splits, task_config, seed)

  @property
  def frames(self) -> dict[str, list[Frame]]:
    return self.items

  def make_views(self, cfg: Any) -> list[augment.View]:
    return augment.box_views(cfg.scales, cfg.shift_frac, cfg.shift_steps, cfg.orientations)

  def make_item(self, example: dict) -> Frame:
    return Frame.from_example(example, self.cfg)

  def item_pool(self, items: Sequence[Frame], train: bool = False):
    """(frame index, centre, side, 0/1 label) of every candidate of `items`; the training
    pool adds each polyp's own box as a positive with `task.train_on_boxes`."""
    with_boxes = train and self.cfg.train_on_boxes
    parts = []
    for k, f in enumerate(items):
      parts.append((np.full(len(f.sides), k), f.centres, f.sides, (f.lesions >= 0).astype(int)))
      if with_boxes:
        c, s = f.extra_positives
        parts.append((np.full(len(s), k), c, s, np.ones(len(s), int)))
    if not parts:
      return np.zeros(0, int), np.zeros((0, 2)), np.zeros(0), np.zeros(0, int)
    return tuple(np.concatenate(p) for p in zip(*parts))

  def no_hit_message(self, split: str) -> str:
    return (f'No {split} candidate hits a polyp (task.generator={self.cfg.generator!r}); try '
            'task.generator=dog+grid, more task.max_candidates, or task.train_on_boxes=True.')

  def cut(self, frame: Frame, centre, side: float, view: augment.View) -> np.ndarray:
    return augment.cut_view(frame.image, centre, side, view, self.cfg.patch_size)

  @property
  def eval_view(self) -> augment.View:
    return augment.View(1.0, (0.0, 0.0), 0)  # the box itself, unshifted, upright

  def candidate_patches(self, frame: Frame, index: int) -> np.ndarray:
    return augment.cut_views(frame.image, frame.centres[index], frame.sides[index], self.views,
                             self.cfg.patch_size)

  def view_source(self, frames: Sequence[Frame]) -> device_views.Source | None:
    stack, limits = device_views.stack_items([f.image for f in frames], np.uint8)
    if not device_views.fits(stack.nbytes):
      return None
    return device_views.Source('box', stack, limits, self.cfg.patch_size)

  def descriptors(self, frames: Sequence[Frame], rows: tuple, views: Sequence[augment.View]
                  ) -> dict[str, np.ndarray]:
    """Rows (frame index, centre, box side) under `views`: `device_views.box_patches`."""
    item, centre, box = (np.asarray(r) for r in rows)
    scale = np.array([v.scale for v in views], np.float64)
    shift = np.array([v.shift_yx for v in views], np.float64).reshape(-1, 2)
    return {'item': item.astype(np.int32),
            'centre': (centre + shift * box[:, None]).astype(np.float32),
            'side': (scale * box).astype(np.float32),
            'orientation': np.array([v.orientation for v in views], np.int32)}
