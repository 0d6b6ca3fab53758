"""What polyp and PE detection share in their reports: FROC operating points over units.

results.json `test` (medft.tasks.detection.report): `fp_rates` (the configured operating
points), `per_unit` = [{'unit', 'scores', 'lesion_ids' (-1 = false positive, unit-local
ids), 'num_lesions', 'num_images'}], `auc` (candidate ROC AUC) and summaries.

Per-unit value of the rank test at an operating point: the pooled FROC of the arm's test
units gives the score threshold of that FP rate (`metrics.froc_threshold_at`); each unit's
sensitivity is the share of its lesions hit by a candidate above it (units without lesions
are left out). Their lesion-weighted mean is the pooled sensitivity the table shows.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from medft import metrics
from medft.apps import Axis, Point, Spec, auc_point

PER_UNIT_RULE = ('at an FP rate, the share of the unit\'s lesions hit by a candidate scoring '
                 'above the threshold of that FP rate on the arm\'s pooled FROC (units without '
                 'lesions left out); for AUC, the mean placement of the unit\'s positive '
                 'candidates among all pooled negatives (units without positives left out)')


def _arrays(record: Mapping) -> dict:
  """A results.json unit record with its candidates as numpy arrays: the report pools the
  same records thousands of times (bootstrap), so they are converted once, here."""
  return {**record, 'scores': np.asarray(record['scores'], dtype=np.float64).ravel(),
          'lesion_ids': np.asarray(record['lesion_ids']).ravel()}


def froc(records: Sequence[Mapping]) -> dict:
  return metrics.froc_curve(**metrics.pool_detection_units(records))


def _sensitivity_point(rate: float, per: str) -> Point:
  def pooled(records):
    return metrics.froc_sensitivity_at(froc(records), [rate])[0]

  def per_unit(records):
    return metrics.unit_lesion_sensitivity(records,
                                           metrics.froc_threshold_at(froc(records), rate))

  def by_counts(records):
    curve = metrics.froc_by_counts(records)
    return lambda counts: metrics.froc_sensitivity_at(curve(counts), [rate])[0]

  return Point(f'sensitivity_at_{rate:g}', f'sensitivity at {rate:g} FP/{per}', '', True,
               pooled, per_unit, by_counts=by_counts)


# The share of test lesions any candidate hits: no arm's sensitivity can exceed it.
RECALL = Point('candidate_recall', 'candidate recall (ceiling)', '', True,
               pooled=metrics.candidate_recall, compared=False,
               by_counts=metrics.candidate_recall_by_counts)


def _curve_by_counts(records: Sequence[Mapping], grid: np.ndarray):
  curve = metrics.froc_by_counts(records)
  return lambda counts: np.asarray(metrics.froc_sensitivity_at(curve(counts), grid))


def make(name: str, unit_name: str, per: str, axis: Axis) -> Spec:
  """The spec of a detection app whose FROC counts false positives per `per` (frame, volume)."""
  def points(test: Mapping) -> tuple[Point, ...]:
    rates = [float(r) for r in test['fp_rates']]
    auc = auc_point('candidate AUC',
                    lambda r: (np.asarray(r['lesion_ids']) >= 0, r['scores']))
    return tuple(_sensitivity_point(r, per) for r in rates) + (auc, RECALL)

  return Spec(
      name=name, unit_name=unit_name, test_keys=('auc', 'fp_rates', 'per_unit'),
      record_key='per_unit',
      record_keys=('unit', 'scores', 'lesion_ids', 'num_lesions', 'num_images'),
      units=lambda test: {str(u['unit']): _arrays(u) for u in test['per_unit']}, points=points,
      primary=lambda test: 'auc', per_unit_rule=PER_UNIT_RULE, plots=('froc',),
      curve_axis=axis,
      curve=lambda records, grid: np.asarray(metrics.froc_sensitivity_at(froc(records), grid)),
      curve_by_counts=_curve_by_counts,
      curve_marks=lambda test: [float(r) for r in test['fp_rates']],
      curve_ylabel='sensitivity (share of lesions detected)', ceiling_key=RECALL.key)
