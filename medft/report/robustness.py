"""Robustness to a smaller training set (the paper's finding 2), on the primary point.

Each arm with finished runs at both the largest and the smallest training fraction gets its
loss: how much worse its primary metric is at the smallest fraction than at the largest
(signed so that a positive loss is worse, whichever way the metric points), with a 95%
percentile-bootstrap interval over the test units both fractions share. A sweep splits its
data once (the split is by unit and does not depend on the fraction), so the two fractions
are tested on the same units and one resample of units serves both: the interval is paired.

Then every fine-tuning arm against every scratch arm: loss(scratch) - loss(fine-tuning), so a
positive number says the fine-tuned network lost less when its training set shrank. Its
interval and two-sided bootstrap p come from the same resamples (`metrics.bootstrap_p`); the
table is one family, adjusted like the all-pairs tables (Holm by default), and marked from
the adjusted p.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from medft import apps, metrics, tuning
from medft.report import stats

ALPHA = 0.05
FAMILY = 'every fine-tuning arm against every scratch arm, smallest vs largest fraction'


def section(spec: apps.Spec, point: apps.Point | None, arms: Mapping[float, Mapping],
            n_boot: int, correction: str = 'holm', seed: int = 0,
            learned_nothing: Sequence[str] = ()) -> dict | None:
  """`arms`: fraction -> arm -> SeedTests (finished runs). None when there is nothing to say
  (one fraction, or no primary point). `learned_nothing`: arms with a run of constant output
  at either fraction: their rows are marked, and they are left out of the comparisons (a
  network that learned nothing at both sizes loses nothing, which says nothing about
  robustness)."""
  fractions = sorted(f for f in arms if arms[f])
  if point is None or len(fractions) < 2 or n_boot <= 0:
    return None
  small, large = fractions[0], fractions[-1]
  both = [a for a in arms[large] if a in arms[small]]
  units = {(a, f): stats.seed_units(spec, arms[f][a]) for a in both for f in (small, large)}
  names = sorted(set.intersection(*(set(n) for n, _ in units.values()))) if units else []
  out: dict[str, Any] = {'point': point.key, 'label': point.label, 'unit': point.unit,
                         'fraction_small': small, 'fraction_large': large,
                         'n_units': len(names), 'n_boot': n_boot, 'family': FAMILY,
                         'correction': correction, 'rows': [], 'pairs': []}
  if not names:
    out['error'] = 'no test unit is shared by every arm at both fractions'
    return out
  sign = 1.0 if point.higher_is_better else -1.0
  replicates = stats.Replicates(n_boot, (point,), seed)
  losses: dict[str, tuple[float, np.ndarray]] = {}
  for a in both:
    picked = {}
    for f in (small, large):
      all_names, all_units = units[(a, f)]
      picked[f] = [all_units[all_names.index(n)] for n in names]
    if not all(stats.present(point, u) for u in picked.values()):
      continue
    try:
      v_small, v_large = (stats.value(point, picked[f]) for f in (small, large))
    except ValueError:
      continue
    boot = sign * (replicates.get((a, large, tuple(names)), point, picked[large])
                   - replicates.get((a, small, tuple(names)), point, picked[small]))
    loss = sign * (v_large - v_small)
    losses[a] = (loss, boot)
    out['rows'].append({'arm': a, 'value_large': v_large, 'value_small': v_small,
                        'loss': loss, **_interval(boot),
                        'learned_nothing': a in learned_nothing})
  compared = [a for a in losses if a not in learned_nothing]
  scratch = [a for a in compared if tuning.is_scratch(a)]
  tuned = [a for a in compared if not tuning.is_scratch(a)]
  for t in tuned:
    for s in scratch:
      difference = losses[s][1] - losses[t][1]
      kept = difference[~np.isnan(difference)]
      out['pairs'].append({'fine_tuned': t, 'scratch': s,
                           'difference': losses[s][0] - losses[t][0], **_interval(difference),
                           'p_bootstrap': metrics.bootstrap_p(kept) if kept.size else None})
  tested = [r for r in out['pairs'] if r['p_bootstrap'] is not None]
  for r, p in zip(tested, metrics.adjust_p([r['p_bootstrap'] for r in tested], correction)):
    r['p_adjusted'] = p
  for r in out['pairs']:
    r.setdefault('p_adjusted', None)
    r['mark'] = stats.mark(r['p_adjusted'])
  return out


def _interval(replicates: np.ndarray) -> dict:
  kept = replicates[~np.isnan(replicates)]
  if not kept.size:
    return {'low': None, 'high': None, 'n_boot': 0}
  low, high = np.quantile(kept, [ALPHA / 2, 1 - ALPHA / 2])
  return {'low': float(low), 'high': float(high), 'n_boot': int(kept.size)}


def markdown(section: dict | None, add, fmt: Sequence) -> None:
  """The section of report.md (nothing when `section` is None). `fmt`: (_ci, _p) of text."""
  if not section:
    return
  ci, p_text = fmt
  digits = 1 if section['unit'] == 'µm' else 3
  add('## Robustness to a smaller training set (the paper\'s finding 2)\n')
  add(f'Loss = how much worse {section["label"]} is at training fraction '
      f'{section["fraction_small"]:g} than at {section["fraction_large"]:g} (positive = worse), '
      f'on the {section["n_units"]} test units both fractions share (the same units: one '
      f'resample serves both), with a 95% bootstrap interval ({section["n_boot"]} resamples).\n')
  if section.get('error'):
    add(f'Not computed: {section["error"]}.\n')
    return
  add(f'| arm | at {section["fraction_large"]:g} | at {section["fraction_small"]:g} | '
      'loss [95% CI] |\n|---|---|---|---|')
  for r in section['rows']:
    add(f'| {r["arm"]}{" (learned nothing)" if r["learned_nothing"] else ""} | '
        f'{r["value_large"]:.{digits}f} | {r["value_small"]:.{digits}f} | '
        f'{ci({"value": r["loss"], "low": r["low"], "high": r["high"]}, digits)} |')
  add('')
  if any(r['learned_nothing'] for r in section['rows']):
    add('Arms marked "learned nothing" (a run of constant output at either fraction) are left '
        'out of the comparison below.\n')
  if section['pairs']:
    add('Loss of scratch minus loss of fine-tuning (positive = the fine-tuned network lost less '
        f'when its training set shrank); two-sided bootstrap p, adjusted '
        f'({section["correction"]}) within this table (family: {section["family"]}); with '
        f'{section["n_boot"]} resamples no raw p is below {2 / (section["n_boot"] + 1):.3g}.\n')
    add('| fine-tuned | scratch | difference [95% CI] | p (raw) | p (adj.) | mark |\n'
        '|---|---|---|---|---|---|')
    for r in section['pairs']:
      add(f'| {r["fine_tuned"]} | {r["scratch"]} | '
          f'{ci({"value": r["difference"], "low": r["low"], "high": r["high"]}, digits)} | '
          f'{p_text(r["p_bootstrap"])} | {p_text(r["p_adjusted"])} | {r["mark"]} |')
    add('')
