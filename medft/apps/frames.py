"""Frame classification (Tajbakhsh et al. 2016, Sec. IV, Fig. 6, Table S3): ROC of frames.

results.json `test` (medft.tasks.frames.FramesTask.evaluate): `fprs` (the configured false
positive rates, paper: 10, 15, 20%), `per_unit` = [{'unit' (video), 'labels', 'scores'}] and
`auc`. Sensitivity at an FPR is read from the pooled ROC (interpolated, as the task reports
it); the rank test's per-unit value is the share of the video's positive frames scoring at or
above the pooled ROC's threshold at that FPR (no interpolation; videos without positive
frames left out). The ROC is drawn to 1 - specificity = 0.5, as Fig. 6.

With K > 2 classes (`num_classes` and `classes` in the test block; each frame's `scores` is
its K mean probabilities) every class is scored one-vs-rest (class k = positive, score column
k) by the same rules: AUC per class and sensitivity per class at each FPR; `auc` is their
macro mean (the primary point), whose per-video value is the mean over classes of the video's
per-class AUC value (classes it has no frame of left out). The ROC drawn is the macro average
of the per-class ROCs, and each class's ROC gets a panel of its own (`panels`); the report
adds each arm's confusion matrix (argmax of the mean
probabilities against the labels, counts summed over seeds).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from medft import metrics
from medft.apps import APPS, Axis, Point, Spec, auc_point

Labelled = Callable[[Mapping], tuple[np.ndarray, np.ndarray]]


def _binary(record: Mapping) -> tuple[np.ndarray, np.ndarray]:
  return np.ravel(record['labels']), np.ravel(record['scores'])


def _class_scores(record: Mapping) -> tuple[np.ndarray, np.ndarray]:
  """(labels (n,), scores (n, K)) of one video with K > 2 classes."""
  labels = np.ravel(record['labels'])
  return labels, np.asarray(record['scores'], dtype=np.float64).reshape(labels.size, -1)


def _one_vs_rest(k: int) -> Labelled:
  """Class k against the others: (labels == k, score column k)."""
  def labelled(record):
    labels, scores = _class_scores(record)
    return (labels == k).astype(np.int64), scores[:, k]
  return labelled


def _pooled(records: Sequence[Mapping], labelled: Labelled = _binary
            ) -> tuple[np.ndarray, np.ndarray]:
  pairs = [labelled(r) for r in records]
  return (np.concatenate([np.ravel(lab) for lab, _ in pairs]),
          np.concatenate([np.ravel(s) for _, s in pairs]))


def _sensitivity_point(fpr: float, labelled: Labelled = _binary, key: str = '',
                       label: str = '') -> Point:
  def pooled(records):
    return metrics.sensitivity_at_fpr(*_pooled(records, labelled), [fpr])[0]

  def per_unit(records):
    threshold = metrics.threshold_at_fpr(*_pooled(records, labelled), fpr)
    out = []
    for r in records:
      labels, scores = labelled(r)
      labels = np.ravel(labels).astype(bool)
      scores = np.ravel(scores).astype(np.float64)
      out.append(np.mean(scores[labels] >= threshold) if labels.any() else np.nan)
    return np.asarray(out, dtype=np.float64)

  return Point(key or f'sensitivity_at_fpr_{fpr:g}', label or f'sensitivity at {fpr:.0%} FPR',
               '', True, pooled, per_unit if labelled is _binary else _nan_if_undefined(per_unit))


def _nan_if_undefined(per_unit: Callable) -> Callable:
  """`per_unit`, all NaN where the pooled metric is undefined (a class missing from the test
  split): the rank test then says no video has a value instead of failing the report."""
  def safe(records):
    try:
      return per_unit(records)
    except ValueError:
      return np.full(len(records), np.nan)
  return safe


def _roc_on_grid(records: Sequence[Mapping], grid: np.ndarray) -> np.ndarray:
  """The pooled ROC; with K > 2 classes the mean of the per-class (one-vs-rest) ROCs."""
  if not records or np.ndim(records[0]['scores']) < 2:
    fpr, tpr, _ = metrics.roc_curve(*_pooled(records))
    return np.interp(grid, fpr, tpr)
  k_all = _class_scores(records[0])[1].shape[1]
  return np.mean([_class_roc(k)(records, grid) for k in range(k_all)], axis=0)


def _class_roc(k: int) -> Callable[[Sequence[Mapping], np.ndarray], np.ndarray]:
  def curve(records, grid):
    fpr, tpr, _ = metrics.roc_curve(*_pooled(records, _one_vs_rest(k)))
    return np.interp(grid, fpr, tpr)
  return curve


def class_panels(test: Mapping) -> list[tuple[str, Callable]]:
  """K > 2: each class's one-vs-rest ROC as a panel of its own (none for two classes)."""
  if not _is_multiclass(test):
    return []
  return [(f'{name} vs rest', _class_roc(k)) for k, name in enumerate(test['classes'])]


def _is_multiclass(test: Mapping) -> bool:
  return int(test.get('num_classes', 2)) > 2


def _macro_auc_point(k_all: int) -> Point:
  """The macro one-vs-rest AUC; per video, the mean of its per-class AUC values."""
  classes = [auc_point('', _one_vs_rest(k)) for k in range(k_all)]

  def pooled(records):
    return metrics.macro_roc_auc(*_pooled_classes(records))

  def per_unit(records):
    values = np.vstack([_nan_if_undefined(c.per_unit)(records) for c in classes])
    defined = ~np.isnan(values).all(axis=0)
    out = np.full(values.shape[1], np.nan)
    out[defined] = np.nanmean(values[:, defined], axis=0)
    return out

  def by_counts(records):
    pairs = [_class_scores(r) for r in records]
    return metrics.macro_roc_auc_by_counts([lab for lab, _ in pairs], [s for _, s in pairs],
                                           k_all)

  return Point('auc', 'macro AUC (one-vs-rest)', '', True, pooled, per_unit,
               by_counts=by_counts)


def _pooled_classes(records: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
  pairs = [_class_scores(r) for r in records]
  return np.concatenate([lab for lab, _ in pairs]), np.concatenate([s for _, s in pairs])


def points(test: Mapping) -> tuple[Point, ...]:
  if not _is_multiclass(test):
    return tuple(_sensitivity_point(float(f)) for f in test['fprs']) + (
        auc_point('frame AUC', lambda r: (r['labels'], r['scores'])),)
  names = list(test['classes'])
  out = [_macro_auc_point(len(names))]
  for k, name in enumerate(names):
    one = auc_point(f'AUC {name} vs rest', _one_vs_rest(k))
    out.append(dataclasses.replace(one, key=f'auc_class{k}',
                                   per_unit=_nan_if_undefined(one.per_unit)))
  for k, name in enumerate(names):
    out += [_sensitivity_point(float(f), _one_vs_rest(k), f'sensitivity_at_fpr_{float(f):g}'
                               f'_class{k}', f'{name}: sensitivity at {float(f):.0%} FPR')
            for f in test['fprs']]
  return tuple(out)


def confusion(test: Mapping) -> dict | None:
  """K > 2: the confusion matrix of one seed's test frames (argmax of the mean probabilities
  against the labels, rows = true class); None for two classes."""
  if not _is_multiclass(test):
    return None
  names = list(test['classes'])
  labels, scores = _pooled_classes(test['per_unit'])
  return {'heading': 'Confusion matrices',
          'title': 'Confusion matrix of the test frames (rows: true class; columns: predicted '
                   'class = highest mean probability over the crops; counts summed over seeds)',
          'rows': names, 'columns': names,
          'counts': metrics.confusion_matrix(labels, np.argmax(scores, axis=1), len(names))}


BINARY_RULE = ('at an FPR, the share of the video\'s positive frames scoring at or above the '
               'threshold of that FPR on the arm\'s pooled ROC (videos without positive frames '
               'left out); for AUC, the mean placement of its positive frames among all pooled '
               'negatives')
CLASSES_RULE = ('each class k one-vs-rest (its frames positive, score = mean probability of k): '
                'at an FPR, the share of the video\'s class-k frames scoring at or above the '
                'threshold of that FPR on the arm\'s pooled one-vs-rest ROC; for the AUC of k, '
                'the mean placement of its class-k frames among all pooled frames of other '
                'classes (videos without class-k frames left out); for the macro AUC, the mean '
                'of the video\'s per-class AUC values over the classes it has frames of')


SPEC = APPS.register('frames', Spec(
    name='frames', unit_name='video', test_keys=('auc', 'fprs', 'per_unit'),
    record_key='per_unit', record_keys=('unit', 'labels', 'scores'),
    units=lambda test: {str(u['unit']): u for u in test['per_unit']}, points=points,
    primary=lambda test: 'auc',
    per_unit_rule=BINARY_RULE,
    per_unit_rule_of=lambda test: CLASSES_RULE if _is_multiclass(test) else BINARY_RULE,
    plots=('roc',), curve_axis=Axis('linear', 0.0, 0.5, '1 - specificity (false positive '
                                                           'rate)'),
    curve=_roc_on_grid, curve_marks=lambda test: [float(f) for f in test['fprs']],
    curve_ylabel='sensitivity (true positive rate)', counts=confusion, panels=class_panels))
