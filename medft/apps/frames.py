"""Frame classification (Tajbakhsh et al. 2016, Sec. IV, Fig. 6, Table S3): ROC of frames.

results.json `test` (medft.tasks.frames.FramesTask.evaluate): `fprs` (the configured false
positive rates, paper: 10, 15, 20%), `per_unit` = [{'unit' (video), 'labels', 'scores'}] and
`auc`. Sensitivity at an FPR is read from the pooled ROC (interpolated, as the task reports
it); the rank test's per-unit value is the share of the video's positive frames scoring at or
above the pooled ROC's threshold at that FPR (no interpolation; videos without positive
frames left out). The ROC is drawn to 1 - specificity = 0.5, as Fig. 6.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from medft import metrics
from medft.apps import APPS, Axis, Point, Spec, auc_point


def _pooled(records: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
  return (np.concatenate([np.ravel(r['labels']) for r in records]),
          np.concatenate([np.ravel(r['scores']) for r in records]))


def _sensitivity_point(fpr: float) -> Point:
  def pooled(records):
    return metrics.sensitivity_at_fpr(*_pooled(records), [fpr])[0]

  def per_unit(records):
    threshold = metrics.threshold_at_fpr(*_pooled(records), fpr)
    out = []
    for r in records:
      labels = np.ravel(r['labels']).astype(bool)
      scores = np.ravel(r['scores']).astype(np.float64)
      out.append(np.mean(scores[labels] >= threshold) if labels.any() else np.nan)
    return np.asarray(out, dtype=np.float64)

  return Point(f'sensitivity_at_fpr_{fpr:g}', f'sensitivity at {fpr:.0%} FPR', '', True,
               pooled, per_unit)


def _roc_on_grid(records: Sequence[Mapping], grid: np.ndarray) -> np.ndarray:
  fpr, tpr, _ = metrics.roc_curve(*_pooled(records))
  return np.interp(grid, fpr, tpr)


def points(test: Mapping) -> tuple[Point, ...]:
  return tuple(_sensitivity_point(float(f)) for f in test['fprs']) + (
      auc_point('frame AUC', lambda r: (r['labels'], r['scores'])),)


SPEC = APPS.register('frames', Spec(
    name='frames', unit_name='video', test_keys=('auc', 'fprs', 'per_unit'),
    record_key='per_unit', record_keys=('unit', 'labels', 'scores'),
    units=lambda test: {str(u['unit']): u for u in test['per_unit']}, points=points,
    primary=lambda test: 'auc',
    per_unit_rule=('at an FPR, the share of the video\'s positive frames scoring at or above '
                   'the threshold of that FPR on the arm\'s pooled ROC (videos without '
                   'positive frames left out); for AUC, the mean placement of its positive '
                   'frames among all pooled negatives'),
    plots=('roc',), curve_axis=Axis('linear', 0.0, 0.5, '1 - specificity (false positive '
                                                           'rate)'),
    curve=_roc_on_grid, curve_marks=lambda test: [float(f) for f in test['fprs']],
    curve_ylabel='sensitivity (true positive rate)'))
