"""Frame classification: informative vs non-informative colonoscopy frames (Tajbakhsh et al. 2016),
or any number of classes.

Training patches are random `crop_size` crops of the frames (200 per frame make a nominal
epoch, as the paper's 200 crops per frame); a test frame's score is the mean probability
over 200 fixed random crops. Metrics: ROC AUC and sensitivity at 10, 15 and 20% false
positive rate over frames, with 95% bootstrap intervals over units (videos).

Classes: K comes from the data. A prepared dataset carries its builder's class map (metadata
`classes`, name -> label: frames_folder, the CSV manifest builder), which the task reads from
the splits (`SplitView.classes`): K = largest label + 1. Examples given without one (a list of
dicts) have K = the number of distinct labels over all splits. Either way every label must lie
in 0..K-1 (an InputFileError names the first frame that does not). K = 2 is the paper's task
and results.json is as it always was; with K > 2 a frame's score is the mean softmax vector
over its crops and the test block reports one-vs-rest AUCs per class, their macro mean (`auc`,
the primary metric), per-class sensitivities at the FPRs and the confusion matrix (see
`evaluate`). `task.class_balanced` draws training frames so that every class present in the
training split is equally likely (default False: uniform over frames, as before).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

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
    """The frame of an example (its label is checked against K by `check_labels`)."""
    image = np.asarray(ex['image'])
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    label = int(ex['label'])
    if crop_size > min(image.shape[:2]):
      raise ConfigError(f'frame {ex.get("id")} is {image.shape[0]}x{image.shape[1]}, smaller '
                        f'than task.crop_size={crop_size}; lower task.crop_size.')
    return cls(id=str(ex.get('id', '')), unit=str(ex.get('unit', ex.get('id', ''))),
               image=image, label=label)

  def crops(self, corners: np.ndarray, size: int) -> np.ndarray:
    return np.stack([self.image[y:y + size, x:x + size] for y, x in corners])


def class_map(splits: Mapping[str, Any]) -> dict[str, int] | None:
  """The builder's class name -> label map the splits carry (`SplitView.classes`), or None."""
  for split in splits.values():
    classes = getattr(split, 'classes', None)
    if classes:
      return {str(k): int(v) for k, v in dict(classes).items()}
  return None


def class_names(classes: Mapping[str, int] | None, num_classes: int) -> list[str]:
  """Name of each label 0..K-1: its class in the map (names sharing a label joined by '+'),
  else the label itself."""
  names: list[list[str]] = [[] for _ in range(num_classes)]
  for name, label in sorted((classes or {}).items()):
    if 0 <= label < num_classes:
      names[label].append(name)
  return ['+'.join(n) if n else str(k) for k, n in enumerate(names)]


def check_labels(frames: dict[str, list[Frame]], classes: Mapping[str, int] | None) -> int:
  """K (see the module docstring); InputFileError naming the first frame outside 0..K-1."""
  labels = {f.label for split in frames.values() for f in split}
  if classes:
    k = max(classes.values()) + 1
    source = f'the dataset\'s class map {dict(sorted(classes.items()))} has {k} labels'
    fix = 'fix the label, or prepare the data with a class map that covers it'
  else:
    k = max(len(labels), 2)
    source = f'the frames carry {len(labels)} distinct labels, so labels must be 0..{k - 1}'
    fix = 'number the classes 0, 1, ... without gaps (e.g. config data.classes)'
  for split, items in frames.items():
    for f in items:
      if not 0 <= f.label < k:
        allowed = '0 or 1' if k == 2 else f'in 0..{k - 1}'
        raise InputFileError(f'frame {f.id} ({split} split): label {f.label} is not {allowed} '
                             f'({source}); {fix}.')
  return k


@TASKS.register('frames')
class FramesTask:
  """Random-crop sampling, crop averaging and ROC evaluation for frame classification."""
  app = 'frames'
  num_classes = 2  # the default; an instance has its data's K

  def __init__(self, splits: dict[str, Sequence[dict]], task_config: Any, seed: int):
    self.cfg = task_config
    self.seed = seed
    self.frames = {name: [Frame.from_example(src[i], task_config.crop_size)
                          for i in range(len(src))] for name, src in splits.items()}
    classes = class_map(splits)
    self.num_classes = check_labels(self.frames, classes)
    self.class_names = class_names(classes, self.num_classes)
    self._eval_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    # task.class_balanced: the training frames of each class present, drawn class first.
    self._by_class = None
    if task_config.get('class_balanced', False) and self.frames.get('train'):
      train_labels = np.asarray([f.label for f in self.frames['train']])
      self._by_class = [np.flatnonzero(train_labels == k) for k in np.unique(train_labels)]
    self._pool = None  # task.fixed_pool: (frame index, corner fraction) of every training crop
    if task_config.get('fixed_pool', False) and 'train' in self.frames:
      pool = np.random.default_rng([seed, 3])
      n = self.epoch_examples
      self._pool = self._draw_frames(pool, n), pool.random((n, 2))

  def _draw_frames(self, rng: np.random.Generator, n: int) -> np.ndarray:
    """Indices of `n` training frames: uniform over frames, or (task.class_balanced) a
    uniform class, then a uniform frame of it."""
    if self._by_class is None:
      return rng.integers(len(self.frames['train']), size=n)
    groups = self._by_class
    sizes = np.asarray([g.size for g in groups])
    cls, within = rng.integers(len(groups), size=n), rng.random(n)
    flat, starts = np.concatenate(groups), np.r_[0, np.cumsum(sizes)[:-1]]
    return flat[starts[cls] + np.floor(within * sizes[cls]).astype(int)]

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
      picks = self._draw_frames(rng, batch)
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
    """Validation AUC: class 1's (K = 2); else the macro one-vs-rest AUC over the classes the
    validation patches hold."""
    if self.num_classes == 2:
      return positive_class_auc(probs, labels)
    return metrics.macro_roc_auc_present(labels, probs)

  def eval_size(self, split: str) -> int:
    """Patches the test score of `split` predicts (`test_crops` per frame)."""
    return len(self.frames.get(split, ())) * self.cfg.test_crops

  def frame_score(self, split: str, index: int, predict: PredictFn) -> float | list[float]:
    """Mean informative probability over the frame's `test_crops` fixed crops; with K > 2
    classes the mean probability vector (K floats)."""
    corners = self.test_corners(split, index, self.cfg.test_crops)
    patches = self.frames[split][index].crops(corners, self.cfg.crop_size)
    probs = np.asarray(predict(patches))
    if self.num_classes == 2:
      return float(np.mean(probs[:, 1]))
    return np.mean(probs.astype(np.float64), axis=0).tolist()

  def evaluate(self, predict: PredictFn, split: str = 'test', n_boot: int = 1000) -> dict:
    """Frame ROC AUC and sensitivity at fixed FPRs, with 95% bootstrap CIs over units (with
    K > 2 classes: `_evaluate_classes`)."""
    units: dict[str, dict] = {}
    for k, f in enumerate(self.frames[split]):
      u = units.setdefault(f.unit, {'unit': f.unit, 'ids': [], 'labels': [], 'scores': []})
      u['ids'].append(f.id)
      u['labels'].append(f.label)
      u['scores'].append(self.frame_score(split, k, predict))
    per_unit = list(units.values())
    if self.num_classes > 2:
      return self._evaluate_classes(per_unit, n_boot)

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

  def _evaluate_classes(self, per_unit: list[dict], n_boot: int) -> dict:
    """The K > 2 test block: `auc` = macro one-vs-rest AUC (the primary metric), `class_auc`
    and `class_sensitivity_at_fpr` per class name (class k against all others, from score
    column k), each with its 95% bootstrap CI over units; `confusion_matrix` [true][argmax
    predicted] counts; `classes` (names by label), `num_classes`, `num_frames_per_class`."""
    k_all = self.num_classes

    def pooled(us):
      return (np.concatenate([u['labels'] for u in us]),
              np.concatenate([np.reshape(u['scores'], (-1, k_all)) for u in us]))

    def one_vs_rest(us, k):
      labels, scores = pooled(us)
      return labels == k, scores[:, k]

    def ci(fn):  # undefined e.g. where a class is missing from the test split: recorded
      return metrics.bootstrap_ci_or_error(fn, per_unit, n_boot=n_boot, seed=self.seed)

    auc = ci(lambda us: metrics.macro_roc_auc(*pooled(us)))
    labels, scores = pooled(per_unit)
    names = self.class_names
    return {
        'auc': auc['value'],
        'auc_ci95': auc,
        'auc_average': 'macro one-vs-rest',
        'class_auc': {names[k]: ci(lambda us, k=k: metrics.roc_auc(*one_vs_rest(us, k)))
                      for k in range(k_all)},
        'class_sensitivity_at_fpr': {
            names[k]: {str(r): ci(lambda us, k=k, r=r: metrics.sensitivity_at_fpr(
                *one_vs_rest(us, k), [r])[0]) for r in self.cfg.fprs}
            for k in range(k_all)},
        'confusion_matrix': metrics.confusion_matrix(labels, np.argmax(scores, axis=1), k_all),
        'classes': names,
        'num_classes': k_all,
        'fprs': [float(r) for r in self.cfg.fprs],
        'num_units': len(per_unit),
        'num_frames': int(labels.size),
        'num_frames_per_class': np.bincount(labels, minlength=k_all).astype(int).tolist(),
        'per_unit': per_unit,
    }
