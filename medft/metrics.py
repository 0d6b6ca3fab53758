"""Evaluation metrics for the three tasks of Tajbakhsh et al. (TMI 2016).

Classification (ROC/AUC, sensitivity at fixed FPR), detection (FROC for polyps and
pulmonary emboli), CIMT boundary errors in micrometres, and unit-level statistics
(bootstrap, paired tests). Only numpy and scipy: the evaluator must not need an
accelerator, and numbers here must not depend on JAX's float32 defaults.

Every function returns python floats, lists or dicts of them, so a report can
``json.dumps`` the result directly (``roc_curve`` returns numpy arrays like scikit-learn).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.stats

# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


def _binary_labels_and_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
  """Returns (labels as 0/1 int array, scores as float64), both 1-D and equally long."""
  labels = np.asarray(labels).ravel()
  scores = np.asarray(scores, dtype=np.float64).ravel()
  if labels.shape != scores.shape:
    raise ValueError(f'labels has {labels.size} entries but scores has {scores.size}.')
  if labels.size and not np.isin(labels, (0, 1)).all():
    bad = np.unique(labels[~np.isin(labels, (0, 1))])[:5]
    raise ValueError(f'labels must be 0/1 (or bool); found values {bad.tolist()}.')
  if not np.isfinite(scores).all():
    raise ValueError(f'scores contain {int((~np.isfinite(scores)).sum())} NaN/inf values.')
  labels = labels.astype(np.int64)
  num_pos = int(labels.sum())
  if num_pos == 0 or num_pos == labels.size:
    present = 'positives' if num_pos else 'negatives'
    raise ValueError(
      f'ROC needs both classes, but all {labels.size} labels are {present} '
      '(e.g. a bootstrap resample or a subject without lesions).'
    )
  return labels, scores


def _fractions(values: Sequence[float] | float, name: str, upper: float | None) -> np.ndarray:
  values = np.atleast_1d(np.asarray(values, dtype=np.float64))
  if values.ndim != 1 or not np.isfinite(values).all() or (values < 0).any():
    raise ValueError(f'{name} must be finite non-negative numbers, got {values.tolist()}.')
  if upper is not None and (values > upper).any():
    raise ValueError(f'{name} must be <= {upper}, got {values.tolist()}.')
  return values


# ---------------------------------------------------------------------------
# ROC
# ---------------------------------------------------------------------------


def roc_curve(
  labels: Any, scores: Any, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ROC curve (fpr, tpr, thresholds), identical to ``sklearn.metrics.roc_curve``.

  One operating point per distinct score (tied scores enter together, so ties give a
  diagonal segment), preceded by (0, 0) at threshold ``inf``. ``drop_intermediate``
  applies scikit-learn's rule: drop points collinear on a horizontal or vertical run
  (second difference of both counts is zero); the piecewise-linear curve is unchanged.
  """
  labels, scores = _binary_labels_and_scores(labels, scores)
  order = np.argsort(scores, kind='mergesort')[::-1]
  scores, labels = scores[order], labels[order]
  # The last index of each run of equal scores is an operating point.
  last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
  tps = np.cumsum(labels)[last_of_tie].astype(np.float64)
  fps = (last_of_tie + 1) - tps
  thresholds = scores[last_of_tie]
  if drop_intermediate and fps.size > 2:
    keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
    tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
  tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
  thresholds = np.r_[np.inf, thresholds]
  return fps / fps[-1], tps / tps[-1], thresholds


def roc_auc(labels: Any, scores: Any) -> float:
  """Area under the ROC curve as the Mann-Whitney statistic.

  Ties between a positive and a negative get half credit, which equals the
  trapezoidal area of ``roc_curve`` and ``sklearn.metrics.roc_auc_score``.
  """
  labels, scores = _binary_labels_and_scores(labels, scores)
  ranks = scipy.stats.rankdata(scores)  # average ranks for ties = half credit
  num_pos = int(labels.sum())
  num_neg = labels.size - num_pos
  rank_sum = ranks[labels == 1].sum()
  return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def sensitivity_at_fpr(
  labels: Any, scores: Any, fprs: Sequence[float] = (0.10, 0.15, 0.20)
) -> list[float]:
  """Sensitivity (TPR) at each false-positive rate in ``fprs``, in the same order.

  Rule: the ROC curve is read as the piecewise-linear curve through its operating
  points (points in between are reachable by randomising between two thresholds).
  Where the curve is vertical at the requested FPR, the top of the segment is used,
  i.e. the best sensitivity attainable without exceeding that FPR.
  """
  targets = _fractions(fprs, 'fprs', upper=1.0)
  fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
  result = []
  for target in targets:
    last = int(np.searchsorted(fpr, target, side='right')) - 1  # fpr[last] <= target
    if fpr[last] == target or last == fpr.size - 1:
      result.append(float(tpr[last]))
    else:
      weight = (target - fpr[last]) / (fpr[last + 1] - fpr[last])
      result.append(float(tpr[last] + weight * (tpr[last + 1] - tpr[last])))
  return result


def threshold_at_fpr(labels: Any, scores: Any, fpr: float) -> float:
  """The lowest score threshold whose false-positive rate is <= ``fpr`` (``inf`` if none).

  Scores >= the threshold are called positive. This is the ROC operating point at the top
  of the last vertex at or below ``fpr``, without the interpolation ``sensitivity_at_fpr``
  uses, so it can be applied to each unit's frames to give per-unit sensitivities.
  """
  fpr_target = float(_fractions(fpr, 'fpr', upper=1.0)[0])
  fprs, _, thresholds = roc_curve(labels, scores, drop_intermediate=False)
  return float(thresholds[np.flatnonzero(fprs <= fpr_target + 1e-12)[-1]])


def auc_placements(labels: Any, scores: Any) -> np.ndarray:
  """Per positive: the share of negatives it outscores (ties count half).

  These are the Mann-Whitney (DeLong) components of the AUC: their mean is ``roc_auc``,
  so the mean placement of one unit's positives is that unit's share of the pooled AUC.
  Returned in the order of the positives in ``labels``.
  """
  labels, scores = _binary_labels_and_scores(labels, scores)
  negatives = np.sort(scores[labels == 0])
  positives = scores[labels == 1]
  below = np.searchsorted(negatives, positives, side='left')
  tied = np.searchsorted(negatives, positives, side='right') - below
  return (below + 0.5 * tied) / negatives.size


# ---------------------------------------------------------------------------
# Several classes (one-vs-rest)
# ---------------------------------------------------------------------------


def _class_labels_and_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
  """(labels as int array (n,), scores as float64 (n, K)): K >= 2 score columns, labels in
  0..K-1, every score finite."""
  labels = np.asarray(labels).ravel()
  scores = np.asarray(scores, dtype=np.float64)
  if scores.ndim != 2 or scores.shape[1] < 2 or scores.shape[0] != labels.size:
    raise ValueError(f'scores must be (n, K) with K >= 2 classes for {labels.size} labels; '
                     f'got shape {scores.shape}.')
  k = scores.shape[1]
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be integers 0..{k - 1}; got dtype {labels.dtype}.')
  outside = (labels < 0) | (labels >= k)
  if outside.any():
    raise ValueError(f'labels must be 0..{k - 1} (one per score column); found '
                     f'{np.unique(labels[outside])[:5].tolist()}.')
  if not np.isfinite(scores).all():
    raise ValueError(f'scores contain {int((~np.isfinite(scores)).sum())} NaN/inf values.')
  return labels.astype(np.int64), scores


def one_vs_rest_aucs(labels: Any, scores: Any) -> list[float]:
  """ROC AUC of each class k against all others, from score column k (as
  ``sklearn.metrics.roc_auc_score(labels == k, scores[:, k])``). ValueError when a class has
  no example, or every example (its AUC is undefined)."""
  labels, scores = _class_labels_and_scores(labels, scores)
  return [roc_auc(labels == k, scores[:, k]) for k in range(scores.shape[1])]


def macro_roc_auc(labels: Any, scores: Any) -> float:
  """Unweighted mean of the one-vs-rest AUCs: ``sklearn.metrics.roc_auc_score(labels, scores,
  multi_class='ovr', average='macro')`` (every class must occur, as there)."""
  return float(np.mean(one_vs_rest_aucs(labels, scores)))


def macro_roc_auc_present(labels: Any, scores: Any) -> float:
  """`macro_roc_auc` over the classes that occur in `labels` but not alone (a validation set
  may lack a rare class; early stopping still needs a number). ValueError if none does."""
  labels, scores = _class_labels_and_scores(labels, scores)
  present = [k for k in range(scores.shape[1]) if 0 < int((labels == k).sum()) < labels.size]
  if not present:
    raise ValueError(f'AUC needs two classes; the {labels.size} labels hold one only.')
  return float(np.mean([roc_auc(labels == k, scores[:, k]) for k in present]))


def macro_roc_auc_by_counts(labels: Sequence[Any], scores: Sequence[Any],
                            num_classes: int) -> Callable[[np.ndarray], float]:
  """`macro_roc_auc` of units drawn ``counts[u]`` times each (`roc_auc_by_counts` per class);
  ``labels[u]`` (n_u,) and ``scores[u]`` (n_u, K) are unit u's."""
  lab = [np.asarray(x, dtype=np.int64).ravel() for x in labels]
  sc = [np.asarray(x, dtype=np.float64).reshape(len(y), num_classes)
        for x, y in zip(scores, lab)]
  per_class = [roc_auc_by_counts([y == k for y in lab], [s[:, k] for s in sc])
               for k in range(num_classes)]
  return lambda counts: float(np.mean([f(counts) for f in per_class]))


def confusion_matrix(labels: Any, predicted: Any, num_classes: int) -> list[list[int]]:
  """Counts [true class][predicted class] (``sklearn.metrics.confusion_matrix`` with
  ``labels=range(num_classes)``): rows are the true classes."""
  labels = np.asarray(labels, dtype=np.int64).ravel()
  predicted = np.asarray(predicted, dtype=np.int64).ravel()
  if labels.shape != predicted.shape:
    raise ValueError(f'labels has {labels.size} entries but predicted has {predicted.size}.')
  for name, v in (('labels', labels), ('predicted', predicted)):
    if v.size and (v.min() < 0 or v.max() >= num_classes):
      raise ValueError(f'{name} must be 0..{num_classes - 1}; found {v.min()}..{v.max()}.')
  counts = np.bincount(labels * num_classes + predicted, minlength=num_classes ** 2)
  return counts.reshape(num_classes, num_classes).astype(int).tolist()


# ---------------------------------------------------------------------------
# FROC (detection)
# ---------------------------------------------------------------------------

# A target FP rate such as 0.01 FP/frame must include a point at exactly 1/100.
_FP_RATE_TOLERANCE = 1e-12


def _ranked(scores: np.ndarray, lesion_ids: np.ndarray) -> tuple[np.ndarray, ...]:
  """Candidates by decreasing score (stable): the order, which are false positives, which
  are their lesion's first (highest-scoring) hit, and the last position of each tie group."""
  order = np.argsort(scores, kind='mergesort')[::-1]
  scores, lesion_ids = scores[order], lesion_ids[order]
  is_false_positive = lesion_ids < 0
  # A hit counts only at the lesion's highest-scoring candidate (first in sorted order).
  first_hit = np.zeros(scores.size, dtype=bool)
  hit_positions = np.flatnonzero(~is_false_positive)
  _, first = np.unique(lesion_ids[hit_positions], return_index=True)
  first_hit[hit_positions[first]] = True
  last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1].astype(np.int64)
  if scores.size == 0:
    last_of_tie = last_of_tie[:0]
  return order, is_false_positive, first_hit, last_of_tie


def froc_curve(scores: Any, lesion_ids: Any, num_lesions: int, num_images: int) -> dict[str, Any]:
  """Free-response ROC of a detector from its scored candidates.

  ``lesion_ids[i]`` is the lesion that candidate i hits, or -1 for a false positive;
  lesion ids must be unique across the whole data set (``pool_detection_units``
  renumbers per-unit ids). ``num_lesions`` counts every lesion, including those no
  candidate hits; ``num_images`` counts every frame/volume, including lesion-free ones.

  At threshold t a lesion is detected if any candidate with score >= t hits it; extra
  hits on a detected lesion are neither new detections nor false positives. Tied
  scores enter together (one point per distinct score). Returns
  ``{'thresholds', 'fp_per_image', 'sensitivity', 'num_lesions', 'num_images'}`` with
  the curve starting at (0 FP, 0 sensitivity, threshold inf).
  """
  scores = np.asarray(scores, dtype=np.float64).ravel()
  lesion_ids = np.asarray(lesion_ids).ravel()
  if scores.shape != lesion_ids.shape:
    raise ValueError(f'scores has {scores.size} entries but lesion_ids has {lesion_ids.size}.')
  if not np.isfinite(scores).all():
    raise ValueError(f'scores contain {int((~np.isfinite(scores)).sum())} NaN/inf values.')
  if lesion_ids.size and not np.issubdtype(lesion_ids.dtype, np.integer):
    raise ValueError(f'lesion_ids must be integers (-1 = false positive), got {lesion_ids.dtype}.')
  if lesion_ids.size and lesion_ids.min() < -1:
    raise ValueError(f'lesion_ids must be >= -1, found {int(lesion_ids.min())}.')
  if int(num_images) <= 0 or int(num_lesions) <= 0:
    raise ValueError(f'num_images ({num_images}) and num_lesions ({num_lesions}) must be > 0.')
  num_hit = np.unique(lesion_ids[lesion_ids >= 0]).size
  if num_hit > num_lesions:
    raise ValueError(f'candidates hit {num_hit} distinct lesions but num_lesions={num_lesions}.')

  order, is_false_positive, first_hit, last_of_tie = _ranked(scores, lesion_ids)
  scores = scores[order]
  detected = np.cumsum(first_hit)[last_of_tie]
  false_positives = np.cumsum(is_false_positive)[last_of_tie]
  return {
    'thresholds': [float('inf')] + scores[last_of_tie].tolist(),
    'fp_per_image': [0.0] + (false_positives / num_images).tolist(),
    'sensitivity': [0.0] + (detected / num_lesions).tolist(),
    'num_lesions': int(num_lesions),
    'num_images': int(num_images),
  }


def froc_sensitivity_at(curve: Mapping[str, Any], fp_rates: Sequence[float]) -> list[float]:
  """Sensitivity at each FP/image in ``fp_rates``, from a ``froc_curve`` result.

  Step-function rule (no interpolation): the highest sensitivity among operating
  points whose FP/image is <= the target. Beyond the last point (all candidates
  accepted) the curve stays at its final sensitivity.
  """
  targets = np.asarray(_fractions(fp_rates, 'fp_rates', upper=None), dtype=np.float64)
  fp = np.asarray(curve['fp_per_image'], dtype=np.float64)
  sensitivity = np.asarray(curve['sensitivity'], dtype=np.float64)
  limits = targets + _FP_RATE_TOLERANCE * np.maximum(1.0, targets)
  last = np.searchsorted(fp, limits, side='right') - 1
  if np.all(np.diff(fp) >= 0) and np.all(last >= 0):  # a curve in threshold order (all are):
    return np.maximum.accumulate(sensitivity)[last].tolist()  # the best point so far
  return [float(sensitivity[fp <= limit].max()) for limit in limits]


def froc_on_grid(
  curve: Mapping[str, Any], max_fp: float, num_points: int = 101
) -> dict[str, list[float]]:
  """The FROC curve sampled at ``num_points`` evenly spaced FP/image in [0, max_fp].

  Curves of different folds or bootstrap resamples share this grid, so they can be
  averaged point-wise or given point-wise confidence bands.
  """
  if num_points < 2 or not max_fp > 0:
    raise ValueError(f'need max_fp > 0 and num_points >= 2, got {max_fp}, {num_points}.')
  grid = np.linspace(0.0, float(max_fp), int(num_points))
  return {'fp_per_image': grid.tolist(), 'sensitivity': froc_sensitivity_at(curve, grid)}


def froc_partial_area(curve: Mapping[str, Any], fp_rates: Sequence[float]) -> float:
  """Mean sensitivity over the given FP/image points (e.g. 1..5 FP/volume for PE).

  A one-number summary of the low-FP part of the curve that bootstrap tests can compare.
  """
  return float(np.mean(froc_sensitivity_at(curve, fp_rates)))


def froc_threshold_at(curve: Mapping[str, Any], fp_rate: float) -> float:
  """The score threshold of ``froc_sensitivity_at(curve, [fp_rate])``'s operating point.

  Candidates scoring >= the returned value are accepted (``inf``: none is). Applying it to
  each unit's candidates gives per-unit sensitivities whose lesion-weighted mean is the
  pooled sensitivity at ``fp_rate``.
  """
  target = float(_fractions(fp_rate, 'fp_rate', upper=None)[0])
  fp = np.asarray(curve['fp_per_image'], dtype=np.float64)
  allowed = np.flatnonzero(fp <= target + _FP_RATE_TOLERANCE * max(1.0, target))
  return float(curve['thresholds'][allowed[-1]])  # the curve's sensitivity never falls


def unit_lesion_sensitivity(units: Sequence[Mapping[str, Any]], threshold: float) -> np.ndarray:
  """Per unit: share of its lesions hit by a candidate scoring >= ``threshold``.

  NaN for a unit without lesions (its sensitivity is undefined). ``units`` as for
  ``pool_detection_units``; with ``threshold=-inf`` this is each unit's candidate recall.
  """
  out = np.full(len(units), np.nan)
  for k, unit in enumerate(units):
    if int(unit['num_lesions']) > 0:
      ids = np.asarray(unit['lesion_ids']).ravel()
      accepted = ids[(np.asarray(unit['scores'], dtype=np.float64).ravel() >= threshold)
                     & (ids >= 0)]
      out[k] = np.unique(accepted).size / int(unit['num_lesions'])
  return out


def candidate_recall(units: Sequence[Mapping[str, Any]]) -> float:
  """Share of all lesions that at least one candidate hits: the ceiling of any FROC."""
  lesions = sum(int(u['num_lesions']) for u in units)
  if lesions <= 0:
    raise ValueError('candidate_recall: the units hold no lesion.')
  hit = sum(np.unique(np.asarray(u['lesion_ids'])[np.asarray(u['lesion_ids']) >= 0]).size
            for u in units)
  return float(hit / lesions)


def pool_detection_units(units: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Concatenates per-unit candidates into ``froc_curve`` keyword arguments.

  Each unit (a video or a CT volume) is a mapping with ``scores``, ``lesion_ids``
  (-1 = false positive, ids local to the unit), ``num_lesions`` and ``num_images``.
  Lesion ids are made distinct per list position (a unit's id plus the lesions of the units
  before it; a unit whose ids are not 0..num_lesions-1 is first renumbered in sorted order),
  so a unit drawn twice by the bootstrap contributes its lesions twice instead of having
  them merged. Use as ``froc_curve(**pool_detection_units(units))``. Pass numpy arrays (not
  lists) when pooling the same units many times: nothing is then converted per call.
  """
  if len(units) == 0:
    raise ValueError('pool_detection_units got no units.')
  scores = [np.asarray(u['scores'], dtype=np.float64).ravel() for u in units]
  ids = [np.asarray(u['lesion_ids']).ravel() for u in units]
  lesions = np.asarray([int(u['num_lesions']) for u in units], dtype=np.int64)
  sizes = np.asarray([i.size for i in ids], dtype=np.int64)
  integer = all(i.size == 0 or np.issubdtype(i.dtype, np.integer) for i in ids)
  pooled_ids = np.concatenate(ids).astype(np.int64) if integer else None
  position = np.repeat(np.arange(len(units)), sizes)
  if integer:
    outside = np.unique(position[pooled_ids >= np.repeat(lesions, sizes)])
  else:
    outside, pooled_ids = np.arange(len(units)), np.zeros(int(sizes.sum()), np.int64)
  starts = np.r_[0, np.cumsum(sizes)[:-1]]
  for k in outside:  # ids other than 0..n-1 (e.g. global lesion numbers): sorted order
    unit_ids = ids[k]
    hit = unit_ids >= 0
    _, compact = np.unique(unit_ids[hit], return_inverse=True)
    if hit.any() and compact.max() + 1 > lesions[k]:
      raise ValueError(f'unit {k} hits {compact.max() + 1} distinct lesions but '
                       f'num_lesions={lesions[k]}.')
    renumbered = np.full(unit_ids.shape, -1, dtype=np.int64)
    renumbered[hit] = compact.ravel()
    pooled_ids[starts[k]:starts[k] + sizes[k]] = renumbered
  offsets = np.repeat(np.cumsum(lesions) - lesions, sizes)
  return {
    'scores': np.concatenate(scores),
    'lesion_ids': np.where(pooled_ids >= 0, pooled_ids + offsets, -1),
    'num_lesions': int(lesions.sum()),
    'num_images': sum(int(u['num_images']) for u in units),
  }


def froc_by_counts(units: Sequence[Mapping[str, Any]]) -> Callable[[np.ndarray], dict]:
  """The FROC of `units` drawn with multiplicities, for bootstraps: ``curve(counts)`` gives
  the ``fp_per_image`` and ``sensitivity`` arrays of ``froc_curve`` on the units listed
  ``counts[u]`` times each (a resample), from one sort of all candidates instead of pooling
  and sorting each resample again. Its ``froc_sensitivity_at`` equals that of
  ``froc_curve(**pool_detection_units(resample))`` exactly (the same integer counts divided);
  the curve may hold extra points at thresholds of absent units, which repeat their
  neighbour's values. Raises ValueError as ``froc_curve`` does (no lesion or no frame)."""
  pooled = pool_detection_units(units)
  froc_curve(**pooled)  # the same checks on the candidates
  sizes = np.asarray([np.asarray(u['lesion_ids']).size for u in units])
  lesions = np.asarray([int(u['num_lesions']) for u in units], dtype=np.int64)
  images = np.asarray([int(u['num_images']) for u in units], dtype=np.int64)
  # A lesion's copies in a resample share their first hit: its weight counts them.
  order, is_false_positive, first_hit, last_of_tie = _ranked(pooled['scores'],
                                                             pooled['lesion_ids'])
  unit_of = np.repeat(np.arange(len(units)), sizes)[order]

  def curve(counts: np.ndarray) -> dict:
    counts = np.asarray(counts, dtype=np.int64)
    num_lesions, num_images = int(counts @ lesions), int(counts @ images)
    if num_images <= 0 or num_lesions <= 0:
      raise ValueError(f'num_images ({num_images}) and num_lesions ({num_lesions}) must be > 0.')
    weight = counts[unit_of]
    detected = np.cumsum(weight * first_hit)[last_of_tie]
    false_positives = np.cumsum(weight * is_false_positive)[last_of_tie]
    return {'fp_per_image': np.r_[0.0, false_positives / num_images],
            'sensitivity': np.r_[0.0, detected / num_lesions]}

  return curve


def candidate_recall_by_counts(units: Sequence[Mapping[str, Any]]) -> Callable[[np.ndarray],
                                                                                 float]:
  """``candidate_recall`` of `units` drawn ``counts[u]`` times each (a bootstrap resample)."""
  ids = [np.asarray(u['lesion_ids']) for u in units]
  hit = np.asarray([np.unique(i[i >= 0]).size for i in ids], dtype=np.int64)
  lesions = np.asarray([int(u['num_lesions']) for u in units], dtype=np.int64)

  def recall(counts: np.ndarray) -> float:
    total = int(np.asarray(counts, dtype=np.int64) @ lesions)
    if total <= 0:
      raise ValueError('candidate_recall: the units hold no lesion.')
    return float(int(np.asarray(counts, dtype=np.int64) @ hit) / total)

  return recall


def roc_auc_by_counts(labels: Sequence[Any], scores: Sequence[Any]) -> Callable[[np.ndarray],
                                                                                float]:
  """ROC AUC of units drawn ``counts[u]`` times each (a bootstrap resample); ``labels[u]``
  and ``scores[u]`` are unit u's. The Mann-Whitney statistic with each positive-negative
  pair weighted by the product of their units' counts (ties half): ``roc_auc`` of the
  resample to rounding (about 1e-15)."""
  lab = [np.asarray(x, dtype=np.int64).ravel() for x in labels]
  unit_of = np.repeat(np.arange(len(lab)), [x.size for x in lab])
  lab_all = np.concatenate(lab) if lab else np.zeros(0, np.int64)
  sc_all = (np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in scores])
            if lab else np.zeros(0))
  if not np.isin(lab_all, (0, 1)).all():
    raise ValueError('labels must be 0/1.')
  neg_order = np.argsort(sc_all[lab_all == 0], kind='mergesort')
  neg_scores = sc_all[lab_all == 0][neg_order]
  neg_unit = unit_of[lab_all == 0][neg_order]
  pos_scores, pos_unit = sc_all[lab_all == 1], unit_of[lab_all == 1]
  below = np.searchsorted(neg_scores, pos_scores, side='left')
  tied_end = np.searchsorted(neg_scores, pos_scores, side='right')

  def auc(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    w_neg = np.r_[0.0, np.cumsum(counts[neg_unit])]
    w_pos = counts[pos_unit]
    total_pos, total_neg = w_pos.sum(), w_neg[-1]
    if total_pos <= 0 or total_neg <= 0:
      raise ValueError('AUC needs both classes.')
    placed = w_neg[below] + 0.5 * (w_neg[tied_end] - w_neg[below])
    return float((w_pos @ placed) / (total_pos * total_neg))

  return auc


# ---------------------------------------------------------------------------
# CIMT boundaries
# ---------------------------------------------------------------------------


def _paired_rows(pred: Any, ref: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
  """Prediction and reference rows at columns where the reference is defined."""
  pred = np.asarray(pred, dtype=np.float64).ravel()
  ref = np.asarray(ref, dtype=np.float64).ravel()
  if pred.shape != ref.shape:
    raise ValueError(f'{name}: prediction has {pred.size} columns, reference {ref.size}.')
  valid = np.isfinite(ref)
  if not valid.any():
    raise ValueError(f'{name}: the reference has no finite column.')
  if not np.isfinite(pred[valid]).all():
    missing = int((~np.isfinite(pred[valid])).sum())
    raise ValueError(f'{name}: prediction is NaN/inf at {missing} columns the reference defines.')
  return pred[valid], ref[valid]


def boundary_error_um(pred_rows: Any, ref_rows: Any, cf_mm_per_px: float) -> float:
  """Mean absolute row distance between predicted and reference boundary, in µm.

  Rows are per image column (same columns in both); columns where the reference is
  NaN are not annotated and are ignored. ``cf_mm_per_px`` is the image's conversion
  factor, so the result is mean |pred - ref| * CF * 1000.
  """
  pred, ref = _paired_rows(pred_rows, ref_rows, 'boundary')
  return float(np.mean(np.abs(pred - ref)) * cf_mm_per_px * 1000.0)


def cimt_error_um(
  pred_li: Any, pred_ma: Any, ref_li: Any, ref_ma: Any, cf_mm_per_px: float
) -> float:
  """Absolute error of the mean intima-media thickness, in µm.

  Thickness per column is MA row - LI row; the error is |mean predicted thickness -
  mean reference thickness| * CF * 1000, both means over the columns where both
  reference boundaries are defined (so a common shift of both boundaries costs 0).
  """
  ref_li = np.asarray(ref_li, dtype=np.float64).ravel()
  ref_ma = np.asarray(ref_ma, dtype=np.float64).ravel()
  if ref_li.shape != ref_ma.shape:
    raise ValueError(f'ref_li has {ref_li.size} columns but ref_ma has {ref_ma.size}.')
  # NaN where either reference boundary is missing, so both means use the same columns.
  both = np.where(np.isfinite(ref_li) & np.isfinite(ref_ma), 0.0, np.nan)
  p_li, r_li = _paired_rows(pred_li, ref_li + both, 'LI')
  p_ma, r_ma = _paired_rows(pred_ma, ref_ma + both, 'MA')
  difference_px = np.mean(p_ma - p_li) - np.mean(r_ma - r_li)
  return float(abs(difference_px) * cf_mm_per_px * 1000.0)


# ---------------------------------------------------------------------------
# Statistics over units (subjects, videos, volumes)
# ---------------------------------------------------------------------------


def bootstrap_replicates(metric_fns: Callable[[list], float] | Sequence[Callable[[list], float]],
                         units: Sequence, n_boot: int = 1000, seed: int = 0,
                         by_counts: bool = False) -> np.ndarray:
  """Each metric on ``n_boot`` resamples (with replacement) of whole ``units``: shape
  (n_boot,) for one function, (n_boot, k) for a sequence of k (evaluated one after the other
  on each resample, so they may share work); NaN where a metric raised ValueError (e.g. no
  positive left for an AUC) or gave NaN.

  The resamples depend only on ``seed`` and ``len(units)``: two arms evaluated on the same
  units in the same order get the same resamples, so an arm's replicates serve its interval
  and every paired comparison it is in (``bootstrap_ci`` and ``paired_bootstrap`` accept
  them precomputed). ``by_counts=True``: each metric gets the resample as how many times each
  unit is drawn (``np.bincount`` of the resample's indices) instead of the list of units (see
  ``froc_by_counts``): the same resamples, for metrics that need not rebuild the list.
  """
  fns = [metric_fns] if callable(metric_fns) else list(metric_fns)
  units = list(units)
  rng = np.random.default_rng(seed)
  values = np.full((int(n_boot), len(fns)), np.nan)
  for k in range(int(n_boot)):
    index = rng.integers(0, len(units), len(units))
    resampled = (np.bincount(index, minlength=len(units)) if by_counts
                 else [units[i] for i in index])
    for j, fn in enumerate(fns):
      try:
        values[k, j] = float(fn(resampled))
      except ValueError:
        pass
  return values[:, 0] if callable(metric_fns) else values


def _defined(values: np.ndarray, n_boot: int) -> np.ndarray:
  kept = values[~np.isnan(values)]
  if not kept.size:
    raise ValueError(f'metric_fn raised ValueError on all {n_boot} bootstrap resamples.')
  return kept


def bootstrap_ci(
  metric_fn: Callable[[list], float],
  units: Sequence,
  n_boot: int = 1000,
  seed: int = 0,
  alpha: float = 0.05,
  replicates: np.ndarray | None = None,
) -> dict[str, float]:
  """Percentile bootstrap CI of ``metric_fn(units)``, resampling whole units.

  Units are the independent samples (subjects, videos, volumes); patches of one unit
  are correlated, so resampling patches would give too narrow intervals.
  ``metric_fn`` receives a list of units. Resamples on which it raises ValueError
  (e.g. no positive left for an AUC) are skipped and counted in ``n_skipped``.
  ``replicates``: ``bootstrap_replicates(metric_fn, units, n_boot, seed)`` if already known.
  """
  units = list(units)
  if not units:
    raise ValueError('bootstrap_ci got no units.')
  if replicates is None:
    replicates = bootstrap_replicates(metric_fn, units, n_boot, seed)
  values = _defined(np.asarray(replicates, dtype=np.float64), n_boot)
  low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
  return {
    'value': float(metric_fn(units)),
    'low': float(low),
    'high': float(high),
    'n_boot': int(values.size),
    'n_skipped': int(len(replicates) - values.size),
  }


def bootstrap_ci_or_error(metric_fn: Callable[[list], float], units: Sequence,
                          n_boot: int = 1000, seed: int = 0,
                          replicates: np.ndarray | None = None) -> dict:
  """`bootstrap_ci`, or {'value': None, 'error': why} where the metric is undefined on these
  units (e.g. no lesion or one class only in a test split), so a report states why."""
  try:
    return bootstrap_ci(metric_fn, units, n_boot=n_boot, seed=seed, replicates=replicates)
  except ValueError as err:
    return {'value': None, 'error': str(err)}


def bootstrap_p(differences: Any) -> float:
  """Two-sided bootstrap p of "the difference is 0": twice the smaller share of resampled
  differences on either side of 0, with the +1 correction ((k + 1) / (n + 1)) so it is never
  exactly 0; capped at 1."""
  differences = np.asarray(differences, dtype=np.float64)
  tail = min((differences <= 0).sum(), (differences >= 0).sum())
  return float(min(1.0, 2.0 * (tail + 1) / (differences.size + 1)))


def paired_bootstrap(
  metric_fn: Callable[[list], float],
  units_a: Sequence,
  units_b: Sequence,
  n_boot: int = 1000,
  seed: int = 0,
  alpha: float = 0.05,
  replicates: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
  """Bootstrap of metric(A) - metric(B) with the same resampled units in both arms.

  ``units_a[i]`` and ``units_b[i]`` are the same unit evaluated by two methods.
  Two-sided p-value: twice the smaller share of resampled differences on either side
  of 0, with the +1 correction ((k + 1) / (n + 1)) so it is never exactly 0; capped at 1.
  Resamples where either arm's metric raised ValueError are skipped. ``replicates``: both
  arms' ``bootstrap_replicates`` with this ``n_boot`` and ``seed``, if already known.
  """
  units_a, units_b = list(units_a), list(units_b)
  if len(units_a) != len(units_b) or not units_a:
    raise ValueError(f'need equally many units per arm (>0), got {len(units_a)}, {len(units_b)}.')
  if replicates is None:
    replicates = (bootstrap_replicates(metric_fn, units_a, n_boot, seed),
                  bootstrap_replicates(metric_fn, units_b, n_boot, seed))
  a, b = (np.asarray(r, dtype=np.float64) for r in replicates)
  differences = _defined(a - b, n_boot)
  n = differences.size
  low, high = np.quantile(differences, [alpha / 2, 1 - alpha / 2])
  value_a, value_b = float(metric_fn(units_a)), float(metric_fn(units_b))
  return {
    'value_a': value_a,
    'value_b': value_b,
    'difference': value_a - value_b,
    'low': float(low),
    'high': float(high),
    'p_value': bootstrap_p(differences),
    'n_boot': int(n),
    'n_skipped': int(a.size - n),
  }


def paired_permutation_test(
  metric_fn: Callable[[list], float],
  units_a: Sequence,
  units_b: Sequence,
  n_permutations: int = 1000,
  seed: int = 0,
) -> dict[str, float]:
  """Two-sided permutation test of metric(A) - metric(B), swapping arms per unit.

  Under the null the two methods are exchangeable within each unit; the p-value is
  (1 + #{|permuted difference| >= |observed|}) / (n_permutations + 1).
  """
  units_a, units_b = list(units_a), list(units_b)
  if len(units_a) != len(units_b) or not units_a:
    raise ValueError(f'need equally many units per arm (>0), got {len(units_a)}, {len(units_b)}.')
  observed = float(metric_fn(units_a)) - float(metric_fn(units_b))
  rng = np.random.default_rng(seed)
  at_least_as_extreme = 0
  for _ in range(int(n_permutations)):
    swap = rng.random(len(units_a)) < 0.5
    perm_a = [b if s else a for a, b, s in zip(units_a, units_b, swap)]
    perm_b = [a if s else b for a, b, s in zip(units_a, units_b, swap)]
    permuted = float(metric_fn(perm_a)) - float(metric_fn(perm_b))
    # Tolerance so that exact ties (e.g. identical arms) count as extreme.
    at_least_as_extreme += abs(permuted) >= abs(observed) - 1e-12 * max(1.0, abs(observed))
  return {
    'difference': observed,
    'p_value': (1 + at_least_as_extreme) / (int(n_permutations) + 1),
    'n_permutations': int(n_permutations),
  }


def paired_wilcoxon(errors_a: Any, errors_b: Any) -> dict[str, float]:
  """Wilcoxon signed-rank test on paired per-unit errors (``scipy.stats.wilcoxon``).

  If every difference is zero the methods are indistinguishable: statistic 0, p = 1
  (scipy would return NaN). ``n`` counts pairs, ``n_nonzero`` those the test ranks.
  """
  a = np.asarray(errors_a, dtype=np.float64).ravel()
  b = np.asarray(errors_b, dtype=np.float64).ravel()
  if a.shape != b.shape or a.size == 0:
    raise ValueError(f'need equally many paired errors (>0), got {a.size} and {b.size}.')
  if not (np.isfinite(a).all() and np.isfinite(b).all()):
    raise ValueError('paired_wilcoxon got NaN/inf errors; drop those units explicitly.')
  n_nonzero = int(np.count_nonzero(a - b))
  if n_nonzero == 0:
    return {'statistic': 0.0, 'p_value': 1.0, 'n': int(a.size), 'n_nonzero': 0}
  result = scipy.stats.wilcoxon(a, b)
  return {
    'statistic': float(result.statistic),
    'p_value': float(result.pvalue),
    'n': int(a.size),
    'n_nonzero': n_nonzero,
  }


def mean_sd(values: Any) -> dict[str, float]:
  """Mean and sample standard deviation (ddof=1, as papers report); sd is NaN if n < 2."""
  values = np.asarray(values, dtype=np.float64).ravel()
  if values.size == 0:
    raise ValueError('mean_sd got no values.')
  sd = float(np.std(values, ddof=1)) if values.size > 1 else float('nan')
  return {'mean': float(np.mean(values)), 'sd': sd, 'n': int(values.size)}


# ---------------------------------------------------------------------------
# Multiplicity
# ---------------------------------------------------------------------------


def holm(p_values: Any) -> list[float]:
  """Holm's step-down adjusted p-values (family-wise error control), in the input order.

  With the p-values sorted ascending, p_(i) becomes max_{j<=i} min(1, (m - j + 1) p_(j)); a
  hypothesis is rejected at level alpha when its adjusted p-value is < alpha.
  """
  p = np.asarray(p_values, dtype=np.float64).ravel()
  if p.size == 0:
    return []
  if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
    raise ValueError(f'p-values must lie in [0, 1], got {p.tolist()}.')
  order = np.argsort(p, kind='mergesort')
  stepped = np.maximum.accumulate((p.size - np.arange(p.size)) * p[order])
  adjusted = np.empty_like(p)
  adjusted[order] = np.minimum(1.0, stepped)
  return adjusted.tolist()


CORRECTIONS = {
  'holm': 'Holm step-down (family-wise error rate)',
  'bh': 'Benjamini-Hochberg (false discovery rate)',
}


def adjust_p(p_values: Any, method: str = 'holm') -> list[float]:
  """Adjusted p-values of one family: ``holm`` or ``bh`` (scipy.stats.false_discovery_control)."""
  if method not in CORRECTIONS:
    raise ValueError(f'correction {method!r}: expected one of {", ".join(CORRECTIONS)}.')
  if method == 'holm':
    return holm(p_values)
  p = np.asarray(p_values, dtype=np.float64).ravel()
  return scipy.stats.false_discovery_control(p, method='bh').tolist() if p.size else []
