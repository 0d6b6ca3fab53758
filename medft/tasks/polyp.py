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

from medft import metrics
from medft.data.masks import label_components
from medft.errors import ConfigError, InputFileError
from medft.tasks import augment, detection, example_cache

PredictFn = Callable[[np.ndarray], np.ndarray]
# name -> fn(image uint8 (H, W, 3), task_config) -> (centres (K, 2) yx float, sides (K,) px).
GENERATORS: dict[str, Callable[[np.ndarray, Any], tuple[np.ndarray, np.ndarray]]] = {}


def register_generator(name: str):
  """Decorator adding a candidate generator to `GENERATORS` under `name`."""
  def add(fn):
    GENERATORS[name] = fn
    return fn
  return add


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
                      f'; available: {", ".join(sorted(GENERATORS))} (join several with "+", '
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


class PolypTask:
  """Candidate sampling, test-time averaging and FROC evaluation for polyp detection."""
  app = 'polyp'
  num_classes = 2

  def __init__(self, splits: dict[str, Sequence[dict]], task_config: Any, seed: int):
    generator_names(task_config.generator)  # an unknown name is refused before any work
    self.cfg = task_config
    self.seed = seed
    self.views = augment.box_views(task_config.scales, task_config.shift_frac,
                                   task_config.shift_steps, task_config.orientations)
    self.frames = {name: [Frame.from_example(src[i], task_config) for i in range(len(src))]
                   for name, src in splits.items()}
    self.train_pool = self._pool(self.frames['train'], task_config.train_on_boxes)
    for split in ('train', 'validation'):
      pool = self.train_pool if split == 'train' else self._pool(self.frames.get(split, []), False)
      if split in self.frames and not (pool[3] == 1).any():
        raise ConfigError(f'No {split} candidate hits a polyp (task.generator='
                          f'{task_config.generator!r}); try task.generator=dog+grid, more '
                          'task.max_candidates, or task.train_on_boxes=True.')
    self._eval_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

  @staticmethod
  def _pool(frames: Sequence[Frame], with_boxes: bool):
    """All candidates of `frames` as flat arrays (frame index, centre, side, 0/1 label)."""
    parts = []
    for k, f in enumerate(frames):
      parts.append((np.full(len(f.sides), k), f.centres, f.sides, (f.lesions >= 0).astype(int)))
      if with_boxes:
        c, s = f.extra_positives
        parts.append((np.full(len(s), k), c, s, np.ones(len(s), int)))
    if not parts:
      return np.zeros(0, int), np.zeros((0, 2)), np.zeros(0), np.zeros(0, int)
    return tuple(np.concatenate(p) for p in zip(*parts))

  @property
  def epoch_examples(self) -> int:
    """The paper's balanced augmented set: every view of every positive, as many negatives."""
    return 2 * int(self.train_pool[3].sum()) * len(self.views)

  def cut(self, frame: Frame, centre, side: float, view: augment.View) -> np.ndarray:
    return augment.cut_view(frame.image, centre, side, view, self.cfg.patch_size)

  def train_batch(self, step: int, batch: int, host_slice: slice = slice(None)) -> dict:
    """Global batch `step` (a pure function of seed and step); this host's slice of it."""
    rng = np.random.default_rng([self.seed, 1, step])
    labels = np.arange(batch) % 2
    rng.shuffle(labels)
    frame_idx, centres, sides, pool_labels = self.train_pool
    pools = [np.flatnonzero(pool_labels == k) for k in (0, 1)]
    if not len(pools[0]):
      pools[0] = pools[1]  # no negative at all: nothing to balance against
      labels[:] = 1
    picks = np.array([pools[y][rng.integers(len(pools[y]))] for y in labels])
    view_idx = rng.integers(len(self.views), size=batch)
    picks, view_idx, labels = picks[host_slice], view_idx[host_slice], labels[host_slice]
    frames = self.frames['train']
    images = np.stack([self.cut(frames[frame_idx[p]], centres[p], sides[p], self.views[v])
                       for p, v in zip(picks, view_idx)])
    return {'image': images, 'label': labels.astype(np.int32)}

  def eval_patches(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre view of (up to `val_max_patches`) candidates: (patches, labels, unit index)."""
    if split not in self._eval_cache:
      frames = self.frames[split]
      frame_idx, centres, sides, labels = self._pool(frames, False)
      keep = np.arange(len(labels))
      if len(keep) > self.cfg.val_max_patches:
        rng = np.random.default_rng([self.seed, 2, len(split)])
        keep = np.sort(rng.choice(len(keep), self.cfg.val_max_patches, replace=False))
      units = sorted({f.unit for f in frames})
      unit_of = np.array([units.index(f.unit) for f in frames])
      centre_view = augment.View(1.0, (0.0, 0.0), 0)
      patches = np.stack([self.cut(frames[frame_idx[i]], centres[i], sides[i], centre_view)
                          for i in keep])
      self._eval_cache[split] = (patches, labels[keep].astype(np.int32),
                                 unit_of[frame_idx[keep]])
    return self._eval_cache[split]

  def patch_auc(self, probs: np.ndarray, labels: np.ndarray) -> float:
    return metrics.roc_auc(labels == 1, probs[:, 1])

  def candidate_patches(self, frame: Frame, index: int) -> np.ndarray:
    """All test views of candidate `index` of `frame` (the patches its score averages)."""
    return augment.cut_views(frame.image, frame.centres[index], frame.sides[index], self.views,
                             self.cfg.patch_size)

  def candidate_scores(self, frame: Frame, predict: PredictFn) -> np.ndarray:
    """Mean polyp probability over the views of each candidate of `frame`."""
    per_chunk = max(1, self.cfg.eval_chunk // len(self.views))
    scores = []
    for start in range(0, len(frame.sides), per_chunk):
      idx = range(start, min(start + per_chunk, len(frame.sides)))
      patches = np.concatenate([self.candidate_patches(frame, i) for i in idx])
      probs = np.asarray(predict(patches))[:, 1].reshape(len(idx), len(self.views))
      scores.append(probs.mean(axis=1))
    return np.concatenate(scores) if scores else np.zeros(0)

  def evaluate(self, predict: PredictFn, split: str = 'test', n_boot: int = 1000) -> dict:
    """FROC and candidate ROC AUC with 95% bootstrap intervals over units."""
    frames = self.frames[split]
    units: dict[str, dict] = {}
    for f in frames:
      u = units.setdefault(f.unit, {'unit': f.unit, 'frames': [], 'num_images': 0,
                                    'num_lesions': 0, 'scores': [], 'lesion_ids': []})
      # Lesion ids local to the unit: frame components numbered after the unit's earlier ones.
      ids = np.where(f.lesions >= 0, f.lesions - 1 + u['num_lesions'], -1)
      u['frames'].append(f.id)
      u['num_images'] += 1
      u['num_lesions'] += f.num_lesions
      u['scores'] += self.candidate_scores(f, predict).tolist()
      u['lesion_ids'] += ids.astype(int).tolist()
    return detection.report(list(units.values()), self.cfg.fp_rates, self.cfg.froc_max_fp,
                            n_boot, self.seed, per='frame')
