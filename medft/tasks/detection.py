"""What polyp and PE detection share: the candidate task and its FROC / candidate-AUC report.

`CandidateTask` holds everything but the modality: the class-balanced sampler over the
training candidates (class pools built once), the fixed, subsampled validation patches, the
test score of a candidate (its mean probability over all views) and the accumulation of
candidates into units for `report`. A detection application (`tasks/polyp.py`, `tasks/pe.py`)
keeps only how candidates are found in an image or volume (its *item*), how a view of one
becomes a patch, and how its lesions are numbered: an item has `id`, `unit`, `num_lesions`
and `lesions`, the lesion number 1..num_lesions under each of its candidates or -1.
"""

from __future__ import annotations

import abc
from typing import Any, Sequence

import numpy as np

from medft import metrics, progress
from medft.errors import ConfigError
from medft.tasks import device_views
from medft.tasks.base import PredictFn, ViewPredictFn, positive_class_auc

# `froc_log`: the FROC at FP/image 0, then FROC_POINTS log-spaced points from FROC_LOW to
# max(FROC_HIGH, task.froc_max_fp) (`froc` stays the linear grid up to task.froc_max_fp).
FROC_LOW, FROC_HIGH, FROC_POINTS = 1e-4, 10.0, 121


def report(units: list[dict], fp_rates: Sequence[float], froc_max_fp: float,
           n_boot: int, seed: int, per: str, summary_rates: Sequence[float] = ()) -> dict:
  """FROC and candidate AUC of per-unit detections, with bootstrap CIs over units.

  `units[i]` holds `scores`, `lesion_ids` (-1 = false positive, unit-local ids),
  `num_lesions`, `num_images`; they are returned as `per_unit` so a report can recompute any
  metric, or a paired bootstrap between arms, on the same units, at the same `fp_rates`.
  `candidate_recall` (share of lesions any candidate hits) is the ceiling of every FROC.
  `summary_rates`, when given, adds the mean sensitivity over those FP rates (e.g. 1..5
  FP/volume) as `froc_mean`.
  """
  def froc(us):
    return metrics.froc_curve(**metrics.pool_detection_units(us))

  def auc(us):
    labels = np.concatenate([np.asarray(u['lesion_ids']) >= 0 for u in us])
    return metrics.roc_auc(labels, np.concatenate([u['scores'] for u in us]))

  # The resamples evaluated as draws per unit (`metrics.froc_by_counts`, `roc_auc_by_counts`:
  # one sort of the candidates, not one per resample; the same resamples and intervals as
  # resampling the unit lists, ~20 s -> well under 1 s for 300 frames at n_boot 1000).
  try:
    counts_curve = metrics.froc_by_counts(units)
  except ValueError:  # no lesion or no frame: the slow path gives the metric's own error
    counts_curve = None
  auc_counts = metrics.roc_auc_by_counts([np.asarray(u['lesion_ids']) >= 0 for u in units],
                                         [u['scores'] for u in units])

  def ci(fn, counts_fn=None):
    replicates = None
    if counts_fn is not None:
      replicates = metrics.bootstrap_replicates(counts_fn, units, n_boot, seed, by_counts=True)
    return metrics.bootstrap_ci_or_error(fn, units, n_boot=n_boot, seed=seed,
                                         replicates=replicates)

  def at_rate(r):
    if counts_curve is None:
      return None
    return lambda counts: metrics.froc_sensitivity_at(counts_curve(counts), [r])[0]

  labels = np.concatenate([np.asarray(u['lesion_ids'], int) >= 0 for u in units])
  auc_ci = ci(auc, auc_counts)
  result = {
      'auc': auc_ci['value'],
      'auc_ci95': auc_ci,
      f'sensitivity_at_fp_per_{per}': {
          str(r): ci(lambda us, r=r: metrics.froc_sensitivity_at(froc(us), [r])[0], at_rate(r))
          for r in fp_rates},
      'froc': {f'fp_per_{per}': [], 'sensitivity': []},
      'num_units': len(units),
      f'num_{per}s': int(sum(u['num_images'] for u in units)),
      'num_lesions': int(sum(u['num_lesions'] for u in units)),
      'num_candidates': int(labels.size),
      'num_positive_candidates': int(labels.sum()),
      'lesions_hit': int(sum(len({i for i in u['lesion_ids'] if i >= 0}) for u in units)),
      'per_unit': units,
      'fp_rates': [float(r) for r in fp_rates],
  }
  if result['num_lesions']:
    result['candidate_recall'] = metrics.candidate_recall(units)
    curve = froc(units)
    grid = metrics.froc_on_grid(curve, froc_max_fp)
    result['froc'] = {f'fp_per_{per}': grid['fp_per_image'], 'sensitivity': grid['sensitivity']}
    # The paper's ranges (1e-4..10 FP/frame, up to 10 FP/volume) on a log grid.
    log_grid = np.r_[0.0, np.geomspace(FROC_LOW, max(FROC_HIGH, froc_max_fp), FROC_POINTS)]
    result['froc_log'] = {f'fp_per_{per}': log_grid.tolist(),
                          'sensitivity': metrics.froc_sensitivity_at(curve, log_grid)}
  if len(summary_rates):
    result['froc_mean'] = ci(
        lambda us: metrics.froc_partial_area(froc(us), summary_rates),
        None if counts_curve is None else
        lambda counts: metrics.froc_partial_area(counts_curve(counts), summary_rates))
    result['froc_mean']['fp_rates'] = [float(r) for r in summary_rates]
  return result


Pool = tuple  # (item index (N,), *where the candidate is (N, ...) each, 0/1 label (N,))


class CandidateTask(abc.ABC):
  """Candidate sampling, test-time view averaging and FROC evaluation (polyp and PE).

  A subclass sets `app`, `per` (what the FROC counts false positives per, and the per-unit
  record's list of item ids `<per>s`) and implements `make_views`, `make_item`, `pool`,
  `cut`, `candidate_patches`, `eval_view` and `no_hit_message`. A pool lists candidates as
  flat arrays `(item index, *where, label)`; `cut(item, *where, view)` makes one patch.
  """
  app: str
  per: str
  num_classes = 2

  def __init__(self, splits: dict[str, Sequence[dict]], task_config: Any, seed: int):
    self.cfg = task_config
    self.seed = seed
    self.views = self.make_views(task_config)
    # Finding candidates can take minutes the first time in a process (cached after).
    counter = progress.Progress(f'{self.app} candidates', f'{self.per}s',
                                total=sum(len(src) for src in splits.values()))
    self.items = {}
    for name, src in splits.items():
      self.items[name] = []
      for i in range(len(src)):
        self.items[name].append(self.make_item(src[i]))
        counter.update(1)
    counter.done()
    self.train_pool = self.pool('train', train=True)
    labels = self.train_pool[-1]
    self._class_pools = (np.flatnonzero(labels == 0), np.flatnonzero(labels == 1))
    for split in ('train', 'validation'):
      pool = self.train_pool if split == 'train' else self.pool(split)
      if split in self.items and not (pool[-1] == 1).any():
        raise ConfigError(self.no_hit_message(split))
    self._eval_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    self._train_source: device_views.Source | None = None

  # ---- what an application defines ---------------------------------------------------------

  @abc.abstractmethod
  def make_views(self, cfg: Any) -> list:
    """Every augmentation of a candidate (training draws one, a test score averages all)."""

  @abc.abstractmethod
  def make_item(self, example: dict) -> Any:
    """An example's item: its candidates, where they are, and their lesion numbers."""

  @abc.abstractmethod
  def item_pool(self, items: Sequence[Any], train: bool = False) -> Pool:
    """Every candidate of `items` as flat arrays, in item then candidate order; `train`: the
    training pool (which may add positives that are no candidate, e.g. the polyp's own box)."""

  @abc.abstractmethod
  def cut(self, item: Any, *where_and_view) -> np.ndarray:
    """The patch of one view of a candidate: `cut(item, *where, view)` (`where` as in `pool`)."""

  @abc.abstractmethod
  def candidate_patches(self, item: Any, index: int) -> np.ndarray:
    """All test views of candidate `index` of `item` (the patches its score averages)."""

  @property
  @abc.abstractmethod
  def eval_view(self) -> Any:
    """The view of the validation patches."""

  @abc.abstractmethod
  def no_hit_message(self, split: str) -> str:
    """Why no candidate of `split` hits a lesion, and what to change."""

  def summary_rates(self) -> Sequence[float]:
    """FP rates whose mean sensitivity the report adds as `froc_mean` (none by default)."""
    return ()

  def view_source(self, items: Sequence[Any]) -> device_views.Source | None:
    """`items` stacked for cutting views on the device, or None (host path only)."""
    return None

  def descriptors(self, items: Sequence[Any], rows: tuple, views: Sequence[Any]
                  ) -> dict[str, np.ndarray]:
    """Device descriptors of pool `rows` (item index, *where), row m under `views[m]`, for
    `device_views.patches` on `view_source(items)`."""
    raise NotImplementedError

  # ---- shared ------------------------------------------------------------------------------

  def pool(self, split: str, train: bool = False) -> Pool:
    """`item_pool` of `split`'s items."""
    return self.item_pool(self.items.get(split, []), train)

  def views_on_device(self) -> bool:
    """Whether evaluation cuts views on the device (`task.views_on`, and the app can)."""
    return self.cfg.get('views_on', 'host') == 'device' and (
        type(self).view_source is not CandidateTask.view_source)

  def all_view_descriptors(self, items: Sequence[Any], rows: tuple) -> dict[str, np.ndarray]:
    """`descriptors` of every view of every row, candidate-major as `candidate_patches`."""
    n, v = len(rows[0]), len(self.views)
    repeated = tuple(np.repeat(np.asarray(r), v, axis=0) for r in rows)
    return self.descriptors(items, repeated, list(self.views) * n)

  def _patch(self, items: Sequence[Any], pool: Pool, i: int, view: Any) -> np.ndarray:
    return self.cut(items[pool[0][i]], *(where[i] for where in pool[1:-1]), view)

  @property
  def epoch_examples(self) -> int:
    """The paper's balanced augmented set: every view of every positive, as many negatives."""
    return 2 * int(self.train_pool[-1].sum()) * len(self.views)

  def train_batch(self, step: int, batch: int, host_slice: slice = slice(None)) -> dict:
    """Global batch `step` (a pure function of seed and step); this host's slice of it."""
    rng = np.random.default_rng([self.seed, 1, step])
    labels = np.arange(batch) % 2
    rng.shuffle(labels)
    pools = self._class_pools
    if not len(pools[0]):
      pools = (pools[1], pools[1])  # no negative at all: nothing to balance against
      labels[:] = 1
    picks = np.array([pools[y][rng.integers(len(pools[y]))] for y in labels])
    view_idx = rng.integers(len(self.views), size=batch)
    picks, view_idx, labels = picks[host_slice], view_idx[host_slice], labels[host_slice]
    items = self.items['train']
    if self._train_source is not None:  # cut in the train step (`train_views_on_device`)
      rows = tuple(np.asarray(r)[picks] for r in self.train_pool[:-1])
      views = self.descriptors(items, rows, [self.views[v] for v in view_idx])
      return {'views': views, 'label': labels.astype(np.int32)}
    images = np.stack([self._patch(items, self.train_pool, p, self.views[v])
                       for p, v in zip(picks, view_idx)])
    return {'image': images, 'label': labels.astype(np.int32)}

  def train_views_on_device(self) -> device_views.Source | None:
    """Switches `train_batch` to patch descriptors ({'views', 'label'}) cut in the train step
    from the returned stack of the training items; None (and host patches) when views are
    not cut on the device or the stack is too large. Call before the input pipeline starts."""
    if self.views_on_device():
      self._train_source = self.view_source(self.items['train'])
    return self._train_source

  def eval_patches(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`eval_view` of (up to `val_max_patches`) candidates: (patches, labels, unit index)."""
    if split not in self._eval_cache:
      items = self.items[split]
      pool = self.pool(split)
      labels = pool[-1]
      keep = np.arange(len(labels))
      if len(keep) > self.cfg.val_max_patches:
        rng = np.random.default_rng([self.seed, 2, len(split)])
        keep = np.sort(rng.choice(len(keep), self.cfg.val_max_patches, replace=False))
      units = sorted({item.unit for item in items})
      unit_of = np.array([units.index(item.unit) for item in items])
      view = self.eval_view
      source = self.view_source(items) if self.views_on_device() else None
      if source is not None:
        rows = tuple(np.asarray(p)[keep] for p in pool[:-1])
        patches = device_views.cut(source, self.descriptors(items, rows, [view] * len(keep)))
      else:
        patches = np.stack([self._patch(items, pool, i, view) for i in keep])
      self._eval_cache[split] = (patches, labels[keep].astype(np.int32), unit_of[pool[0][keep]])
    return self._eval_cache[split]

  def patch_auc(self, probs: np.ndarray, labels: np.ndarray) -> float:
    return positive_class_auc(probs, labels)

  def eval_size(self, split: str) -> int:
    """Patches the test score of `split` predicts (every view of every candidate)."""
    return sum(len(item.lesions) for item in self.items.get(split, ())) * len(self.views)

  def candidate_scores(self, items: Sequence[Any], predict: PredictFn,
                       predict_views: ViewPredictFn | None = None) -> list[np.ndarray]:
    """Mean lesion probability over the views of each candidate, one array per item.

    Predicted across items in calls of `eval_chunk` patches: an item has a few dozen
    candidates, so one call per item left most of every padded device batch empty. With
    `predict_views` the views are cut on the device from `view_source(items)` (the same
    patches to float tolerance, `device_views`); otherwise on the host.
    """
    per_chunk = max(1, self.cfg.eval_chunk // len(self.views))
    jobs = np.array([(k, i) for k, item in enumerate(items) for i in range(len(item.lesions))],
                    np.int64).reshape(-1, 2)
    source = self.view_source(items) if predict_views is not None else None
    rows = self.item_pool(items)[:-1] if source is not None else ()
    scores = np.zeros(len(jobs))
    for start in range(0, len(jobs), per_chunk):
      chunk = jobs[start:start + per_chunk]
      if source is not None:
        part = tuple(np.asarray(r)[start:start + len(chunk)] for r in rows)
        probs = predict_views(source, self.all_view_descriptors(items, part))
      else:
        patches = np.concatenate([self.candidate_patches(items[k], i) for k, i in chunk])
        probs = predict(patches)
      probs = np.asarray(probs)[:, 1].reshape(len(chunk), len(self.views))
      scores[start:start + len(chunk)] = probs.mean(axis=1)
    bounds = np.cumsum([0] + [len(item.lesions) for item in items])
    return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

  def evaluate(self, predict: PredictFn, split: str = 'test', n_boot: int = 1000,
               predict_views: ViewPredictFn | None = None) -> dict:
    """FROC and candidate ROC AUC with 95% bootstrap intervals over units (`report`)."""
    units: dict[str, dict] = {}
    listed = f'{self.per}s'
    items = self.items[split]
    for item, scores in zip(items, self.candidate_scores(items, predict, predict_views)):
      u = units.setdefault(item.unit, {'unit': item.unit, listed: [], 'num_images': 0,
                                       'num_lesions': 0, 'scores': [], 'lesion_ids': []})
      # Lesion ids local to the unit: the item's lesions numbered after the unit's earlier ones.
      lesions = np.asarray(item.lesions, np.int64)
      ids = np.where(lesions >= 0, lesions - 1 + u['num_lesions'], -1)
      u[listed].append(item.id)
      u['num_images'] += 1
      u['num_lesions'] += item.num_lesions
      u['scores'] += scores.tolist()
      u['lesion_ids'] += ids.astype(int).tolist()
    return report(list(units.values()), self.cfg.fp_rates, self.cfg.froc_max_fp, n_boot,
                  self.seed, per=self.per, summary_rates=self.summary_rates())
