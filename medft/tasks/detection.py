"""Detection metrics shared by the polyp and PE tasks: FROC and candidate AUC with unit CIs."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medft import metrics

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

  def ci(fn):
    try:
      return metrics.bootstrap_ci(fn, units, n_boot=n_boot, seed=seed)
    except ValueError as err:  # e.g. no lesion or no positive candidate in this split
      return {'value': None, 'error': str(err)}

  labels = np.concatenate([np.asarray(u['lesion_ids'], int) >= 0 for u in units])
  auc_ci = ci(auc)
  result = {
      'auc': auc_ci['value'],
      'auc_ci95': auc_ci,
      f'sensitivity_at_fp_per_{per}': {
          str(r): ci(lambda us, r=r: metrics.froc_sensitivity_at(froc(us), [r])[0])
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
    result['froc_mean'] = ci(lambda us: metrics.froc_partial_area(froc(us), summary_rates))
    result['froc_mean']['fp_rates'] = [float(r) for r in summary_rates]
  return result
