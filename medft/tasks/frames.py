"""Frame classification: informative vs non-informative colonoscopy frames (Tajbakhsh et al. 2016).

Training patches are random `crop_size` crops of the frames (200 per frame make a nominal
epoch, as the paper's 200 crops per frame); a test frame's score is the mean probability
over 200 fixed random crops. Metrics: ROC AUC and sensitivity at 10, 15 and 20% false
positive rate over frames, with 95% bootstrap intervals over units (videos).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from medft import metrics
from medft.errors import ConfigError, InputFileError
from medft.tasks import TASKS, augment
from medft.tasks.base import PredictFn, positive_class_auc


@dataclasses.dataclass
class Frame:
  id: str
  unit: str
  image: np.ndarray  # (H, W, 3) uint8
  label: int

  @classmethod
  def from_example(cls, ex: dict, crop_size: int) -> 'Frame':
    image = np.asarray(ex['image'])
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    label = int(ex['label'])
    if label not in (0, 1):
      raise InputFileError(f'frame {ex.get("id")}: label {label} is not 0 or 1; map the classes to '
                           'non-informative 0 and informative 1 (config data.classes).')
    if crop_size > min(image.shape[:2]):
      raise ConfigError(f'frame {ex.get("id")} is {image.shape[0]}x{image.shape[1]}, smaller '
                        f'than task.crop_size={crop_size}; lower task.crop_size.')
    return cls(id=str(ex.get('id', '')), unit=str(ex.get('unit', ex.get('id', ''))),
               image=image, label=label)

  def crops(self, corners: np.ndarray, size: int) -> np.ndarray:
    return np.stack([self.image[y:y + size, x:x + size] for y, x in corners])


@TASKS.register('frames')
class FramesTask:
  """Random-crop sampling, crop averaging and ROC evaluation for frame classification."""
  app = 'frames'
  num_classes = 2

  def __init__(self, splits: dict[str, Sequence[dict]], task_config: Any, seed: int):
    self.cfg = task_config
    self.seed = seed
    self.frames = {name: [Frame.from_example(src[i], task_config.crop_size)
                          for i in range(len(src))] for name, src in splits.items()}
    self._eval_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    self._pool = None  # task.fixed_pool: (frame index, corner fraction) of every training crop
    if task_config.get('fixed_pool', False) and 'train' in self.frames:
      pool = np.random.default_rng([seed, 3])
      n = self.epoch_examples
      self._pool = pool.integers(len(self.frames['train']), size=n), pool.random((n, 2))

  @property
  def epoch_examples(self) -> int:
    return len(self.frames['train']) * self.cfg.crops_per_frame

  def train_batch(self, step: int, batch: int, host_slice: slice = slice(None)) -> dict:
    """Global batch `step` (a pure function of seed and step); this host's slice of it."""
    rng = np.random.default_rng([self.seed, 1, step])
    frames = self.frames['train']
    if self._pool is not None:  # one fixed set of crops, drawn from by index
      chosen = rng.integers(self.epoch_examples, size=batch)
      picks, where = self._pool[0][chosen], self._pool[1][chosen]
    else:
      picks = rng.integers(len(frames), size=batch)
      # Corners as fractions, so that a draw does not depend on the sizes of other frames.
      where = rng.random((batch, 2))
    size = self.cfg.crop_size
    images = []
    for k, f in list(zip(picks, where))[host_slice]:
      h, w = frames[k].image.shape[:2]
      corner = np.floor(f * [h - size + 1, w - size + 1]).astype(int)
      images.append(frames[k].crops(corner[None], size)[0])
    labels = np.array([frames[k].label for k in picks[host_slice]], np.int32)
    return {'image': np.stack(images), 'label': labels}

  def test_corners(self, split: str, index: int, n: int) -> np.ndarray:
    """The fixed crops of frame `index` of `split` (seeded per frame)."""
    frame = self.frames[split][index]
    rng = np.random.default_rng([self.seed, 3, len(split), index])
    return augment.random_crop_corners(rng, frame.image.shape[:2], self.cfg.crop_size, n)

  def eval_patches(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`val_crops_per_frame` fixed crops of every frame: (patches, labels, unit index)."""
    if split not in self._eval_cache:
      frames, n = self.frames[split], self.cfg.val_crops_per_frame
      units = sorted({f.unit for f in frames})
      patches = np.concatenate([f.crops(self.test_corners(split, k, n), self.cfg.crop_size)
                                for k, f in enumerate(frames)])
      labels = np.repeat([f.label for f in frames], n).astype(np.int32)
      unit_index = np.repeat([units.index(f.unit) for f in frames], n)
      self._eval_cache[split] = (patches, labels, unit_index)
    return self._eval_cache[split]

  def patch_auc(self, probs: np.ndarray, labels: np.ndarray) -> float:
    return positive_class_auc(probs, labels)

  def eval_size(self, split: str) -> int:
    """Patches the test score of `split` predicts (`test_crops` per frame)."""
    return len(self.frames.get(split, ())) * self.cfg.test_crops

  def frame_score(self, split: str, index: int, predict: PredictFn) -> float:
    """Mean informative probability over the frame's `test_crops` fixed crops."""
    corners = self.test_corners(split, index, self.cfg.test_crops)
    patches = self.frames[split][index].crops(corners, self.cfg.crop_size)
    return float(np.mean(np.asarray(predict(patches))[:, 1]))

  def evaluate(self, predict: PredictFn, split: str = 'test', n_boot: int = 1000) -> dict:
    """Frame ROC AUC and sensitivity at fixed FPRs, with 95% bootstrap CIs over units."""
    units: dict[str, dict] = {}
    for k, f in enumerate(self.frames[split]):
      u = units.setdefault(f.unit, {'unit': f.unit, 'ids': [], 'labels': [], 'scores': []})
      u['ids'].append(f.id)
      u['labels'].append(f.label)
      u['scores'].append(self.frame_score(split, k, predict))
    per_unit = list(units.values())

    def pooled(us):
      return (np.concatenate([u['labels'] for u in us]),
              np.concatenate([u['scores'] for u in us]))

    def ci(fn):  # undefined e.g. on a test split with one class only: the error is recorded
      return metrics.bootstrap_ci_or_error(fn, per_unit, n_boot=n_boot, seed=self.seed)

    auc = ci(lambda us: metrics.roc_auc(*pooled(us)))
    labels = np.concatenate([u['labels'] for u in per_unit])
    return {
        'auc': auc['value'],
        'auc_ci95': auc,
        'sensitivity_at_fpr': {
            str(r): ci(lambda us, r=r: metrics.sensitivity_at_fpr(*pooled(us), [r])[0])
            for r in self.cfg.fprs},
        'fprs': [float(r) for r in self.cfg.fprs],
        'num_units': len(per_unit),
        'num_frames': int(labels.size),
        'num_positive_frames': int(labels.sum()),
        'per_unit': per_unit,
    }
