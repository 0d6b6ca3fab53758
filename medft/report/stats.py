"""The report's statistics over test units, for any application's declared points.

An arm x fraction pools its finished seeds: a point's value is its pooled metric computed per
seed and averaged over seeds; its 95% interval is the percentile bootstrap over test units
(whole subjects/videos/volumes, the same resample for every seed and every arm, since the
resampling seed is fixed and the units are listed in one order).

All pairs of arms, per fraction and point (the paper's Tables S1-S4): the difference A - B of
the pooled metric with its paired-bootstrap interval over units, and the Wilcoxon
signed-rank test (`scipy.stats.wilcoxon`, two-sided) on the per-unit values the application
declares (`medft.apps.Point.per_unit`, averaged over seeds; units where either arm's value is
undefined are left out, and `n` says how many were ranked). One table (one fraction x one
point) is one family: its rank-test p-values are adjusted together (Holm by default,
Benjamini-Hochberg with correction='bh'), and marks come from the adjusted p only.

The functions take per-arm lists of `(seed, test)` where `test` is a results.json `test`
dict in the application's schema, so simulations can drive exactly what the report runs.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import numpy as np

from medft import apps, metrics

ALPHA = 0.05
MARKS = ((0.001, '***'), (0.01, '**'), (0.05, '*'))
FAMILY = 'one table: every pair of arms at one training fraction and one operating point'
RANK_TEST = 'Wilcoxon signed-rank test (two-sided, scipy.stats.wilcoxon) on per-unit values'

SeedTests = Sequence[tuple[int, Mapping]]  # one arm: (seed, results.json test) per finished run


def seed_units(spec: apps.Spec, seed_tests: SeedTests) -> tuple[list[str], list[list[Any]]]:
  """(unit names, per unit the list over seeds of its record), units every seed has."""
  per_seed = [spec.units(test) for _, test in sorted(seed_tests, key=lambda st: st[0])]
  if not per_seed or not all(per_seed):
    return [], []
  names = sorted(set.intersection(*(set(u) for u in per_seed)))
  return names, [[seed[n] for seed in per_seed] for n in names]


def present(point: apps.Point, units: Sequence[Sequence[Any]]) -> bool:
  """Whether every seed's records carry what the point needs (`Point.available`)."""
  return point.available is None or all(
      point.available([u[s] for u in units]) for s in range(len(units[0])))


def value(point: apps.Point, units: Sequence[Sequence[Any]]) -> float:
  """The pooled metric per seed, averaged over seeds."""
  return float(np.mean([point.pooled([u[s] for u in units]) for s in range(len(units[0]))]))


def unit_values(point: apps.Point, units: Sequence[Sequence[Any]]) -> np.ndarray:
  """The per-unit values of the rank test, averaged over seeds (NaN where undefined)."""
  with np.errstate(all='ignore'):
    per_seed = np.asarray([point.per_unit([u[s] for u in units]) for s in range(len(units[0]))])
  if np.isnan(per_seed).all(axis=0).any():
    out = np.full(per_seed.shape[1], np.nan)
    defined = ~np.isnan(per_seed).all(axis=0)
    out[defined] = np.nanmean(per_seed[:, defined], axis=0)
    return out
  return np.nanmean(per_seed, axis=0)


class Replicates:
  """Bootstrap replicates of each arm's value at each of `points`, computed once per arm, seed
  set and unit list, and shared by the arm's interval and every pair it is in (the resamples
  depend only on the seed and the number of units, so they are the same ones). Points with
  `by_counts` are evaluated on resample counts; the others on the resampled lists."""

  def __init__(self, n_boot: int, points: Sequence[apps.Point], seed: int = 0):
    self.n_boot, self.points, self.seed = int(n_boot), tuple(points), seed
    self._memo: dict[tuple, np.ndarray] = {}

  def get(self, key: tuple, point: apps.Point, units: Sequence[Sequence[Any]]) -> np.ndarray:
    """`key` = (arm, seeds, unit names): it must identify `units` (one fraction's runs)."""
    if key not in self._memo:
      usable = [p for p in self.points if present(p, units)]
      self._memo[key] = self._compute(usable, units)
    if point.key not in self._memo[key]:
      self._memo[key].update(self._compute([point], units))
    return self._memo[key][point.key]

  def _compute(self, points: Sequence[apps.Point], units: Sequence[Sequence[Any]]) -> dict:
    """Points with `by_counts` on resample counts (array speed), the others on the lists."""
    out, fast, slow = {}, [], []
    for p in points:
      if p.by_counts is None:
        slow.append(p)
        continue
      try:
        fast.append((p, [p.by_counts([u[s] for u in units]) for s in range(len(units[0]))]))
      except ValueError:  # undefined on these units: the lists' way says so per resample
        slow.append(p)
    if fast:
      values = metrics.bootstrap_replicates(
          [lambda counts, fns=fns: float(np.mean([f(counts) for f in fns])) for _, fns in fast],
          units, self.n_boot, self.seed, by_counts=True)
      out.update({p.key: values[:, j] for j, (p, _) in enumerate(fast)})
    if slow:
      values = metrics.bootstrap_replicates([lambda us, p=p: value(p, us) for p in slow], units,
                                            self.n_boot, self.seed)
      out.update({p.key: values[:, j] for j, p in enumerate(slow)})
    return out


def interval(point: apps.Point, units: Sequence[Sequence[Any]], n_boot: int,
             seed: int = 0, replicates: np.ndarray | None = None) -> dict:
  """{'value', 'low', 'high', 'n_boot', 'n_units'} or {'value': None, 'error'}."""
  ci = metrics.bootstrap_ci_or_error(lambda us: value(point, us), units, n_boot=n_boot,
                                    seed=seed, replicates=replicates)
  if 'error' in ci:  # e.g. no lesion in this split, or one class only
    return ci
  return {'value': ci['value'], 'low': ci['low'], 'high': ci['high'], 'n_boot': ci['n_boot'],
          'n_units': len(units)}


def compare(point: apps.Point, units_a: Sequence, units_b: Sequence, n_boot: int,
            seed: int = 0, values: tuple | None = None,
            replicates: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
  """Paired difference A - B (bootstrap interval over units) and the rank test's raw p.

  `n_boot=0` skips the interval (the difference is still given): simulations of the rank
  test need no bootstrap. `values`: (value_a, value_b, unit values a, unit values b) and
  `replicates` (both arms' bootstrap replicates) when the caller has them already.
  """
  if values is None:
    values = (value(point, units_a), value(point, units_b), unit_values(point, units_a),
              unit_values(point, units_b))
  value_a, value_b, va, vb = values
  out: dict[str, Any] = {'n_units': len(units_a), 'value_a': value_a, 'value_b': value_b,
                         'difference': value_a - value_b}
  if n_boot > 0:
    try:
      boot = metrics.paired_bootstrap(lambda us: value(point, us), units_a, units_b,
                                      n_boot=n_boot, seed=seed, replicates=replicates)
      out.update(low=boot['low'], high=boot['high'], p_bootstrap=boot['p_value'])
    except ValueError as e:  # e.g. every resample without a lesion
      out['bootstrap_error'] = str(e)
  ok = np.isfinite(va) & np.isfinite(vb)
  if ok.any():
    w = metrics.paired_wilcoxon(va[ok], vb[ok])
    out.update(statistic=w['statistic'], p_raw=w['p_value'], n=w['n'],
               n_nonzero=w['n_nonzero'])
  else:
    out.update(p_raw=None, n=0, rank_error='no unit has a defined value in both arms')
  return out


def mark(p_adjusted: float | None) -> str:
  if p_adjusted is None:
    return ''
  return next((m for limit, m in MARKS if p_adjusted < limit), '')


def pairs_table(spec: apps.Spec, point: apps.Point, arms: Mapping[str, SeedTests],
                n_boot: int, correction: str = 'holm', seed: int = 0,
                replicates: Replicates | None = None) -> list[dict]:
  """Every pair of `arms` (in their order) at one point: difference, interval, raw and
  adjusted rank-test p (one family) and the mark from the adjusted p. `replicates`: the
  arms' bootstrap replicates so far (keyed by arm and seed set), shared with their intervals."""
  cache: dict[tuple, tuple] = {}
  replicates = replicates if replicates is not None else Replicates(n_boot, (point,), seed)

  def arm_units(arm: str, seeds: frozenset) -> tuple:
    """(names, units, memo) of an arm over `seeds`, computed once per arm and seed set."""
    if (arm, seeds) not in cache:
      cache[(arm, seeds)] = (*seed_units(spec, [st for st in arms[arm] if st[0] in seeds]), {})
    return cache[(arm, seeds)]

  def summary(arm: str, seeds: frozenset, names: list) -> tuple:
    """(units, value, unit values) of an arm restricted to `names`."""
    all_names, all_units, memo = arm_units(arm, seeds)
    units = [all_units[all_names.index(n)] for n in names]
    if names != all_names:
      return units, value(point, units), unit_values(point, units)
    if 'values' not in memo:  # the usual case: every arm has the same units
      memo['values'] = value(point, units), unit_values(point, units)
    return (units, *memo['values'])

  rows = []
  for a, b in itertools.combinations(list(arms), 2):
    seeds = frozenset({s for s, _ in arms[a]} & {s for s, _ in arms[b]})
    common = sorted(set(arm_units(a, seeds)[0]) & set(arm_units(b, seeds)[0]))
    if not common:
      rows.append({'a': a, 'b': b, 'n_units': 0, 'p_raw': None, 'n': 0,
                   'rank_error': 'no test unit shared by both arms (over common seeds)'})
      continue
    ua, value_a, va = summary(a, seeds, common)
    ub, value_b, vb = summary(b, seeds, common)
    names = tuple(common)
    boot = ((replicates.get((a, seeds, names), point, ua),
             replicates.get((b, seeds, names), point, ub)) if n_boot > 0 else None)
    rows.append({'a': a, 'b': b,
                 **compare(point, ua, ub, n_boot, seed, (value_a, value_b, va, vb), boot)})
  tested = [r for r in rows if r.get('p_raw') is not None]
  for r, p in zip(tested, metrics.adjust_p([r['p_raw'] for r in tested], correction)):
    r['p_adjusted'] = p
  for r in rows:
    r.setdefault('p_adjusted', None)
    r['mark'] = mark(r['p_adjusted'])
  return rows
