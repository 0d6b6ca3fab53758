"""Report of a sweep folder: per-operating-point tables, all-pairs tests and the paper's plots.

    python run.py --mode=report --workdir=DIR      (or medft.report.build_report(DIR))

writes DIR/report.md, DIR/report.json, DIR/report.csv and DIR/plots/*.png from whatever runs
under DIR/<arm>/<fraction>/<seed>/ have a results.json; planned runs (DIR/sweep.json) without
one are listed as unfinished (started) or missing (never started), so a report can be made at
any time during a sweep.

What is reported comes from the application's declaration (`medft.apps.<app>.SPEC`, named by
results.json `app`): every operating point (and AUC) with its 95% bootstrap interval over
test units, context figures such as the candidate recall (the ceiling of any detector built
on those candidates), and for every training fraction and operating point a table of every
pair of arms with a paired-bootstrap interval of the difference and a Wilcoxon signed-rank
test on per-unit values, adjusted for multiplicity within the table (`report.stats`); and
with several fractions, each arm's loss from the largest to the smallest training fraction,
fine-tuning against scratch (`report.robustness`, the paper's finding 2). A sweep of several
sources (`sweep.sources`: runs DIR/<source>/<arm>/<fraction>/<seed>/, named `<source>:<arm>`)
also gets the sources compared at each depth (`report.by_source`, plots/sources_f<f>.png).

Layout: `runs` (discovery, file checks), `stats` (numbers), `context` (weights, settings,
auto), `text` (report.md, report.csv), `plots` (PNG); this module assembles them.

The folder must be medft's: a sweep folder (DIR/sweep.json) or one holding medft run
folders; report files are replaced only when the existing report.json carries medft's marker.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medft import apps, files, metrics, progress, sources, tuning
from medft.errors import ConfigError, InputFileError, MissingInputError, NotOursError
from medft.report import by_source, context, robustness, stats, text
from medft.report.runs import PLOTS, RunRecord, discover, read_json, read_plan

N_BOOT = 1000
MARKER = 'medft_report'   # report.json key (its value: the format version) that proves medft
FORMAT_VERSION = 2
REPORT_FILES = ('report.md', 'report.csv', 'report.json')
AVERAGING = ('Each arm x fraction pools its finished seeds: every metric is computed per seed '
             'and averaged over seeds; the 95% interval is the percentile bootstrap over test '
             'units (whole {unit}s, the same resample for every seed and every arm). Patch '
             'AUCs (validation, test) are the mean over seeds +- SD between seeds.')


def arm_order(arms: Sequence[str], arch: str | None,
              source_names: Sequence[str] = ()) -> list[str]:
  """scratch arms first, then head-only to all layers (the paper's order); unknown names last;
  then the runs of each source (`<source>:<arm>`, sources in `source_names`' order)."""
  known = list(tuning.arms(_tuning_units(arch), scratch_schemes=True))
  names = list(source_names)

  def key(a: str) -> tuple:
    source, arm = sources.split(a)
    group = 0 if not source else 1 + (names.index(source) if source in names else len(names))
    return group, source, known.index(arm) if arm in known else len(known), a
  return sorted(set(arms), key=key)


def _tuning_units(arch: str | None) -> list[str]:
  """The architecture's tuning units, lowest first (its head last); [] when unknown."""
  from medft import models
  return list(models.ARCHS[arch][1]) if arch in models.ARCHS else []


def _check_folder(sweep_dir: Path) -> tuple[dict | None, list[RunRecord]]:
  """The plan and runs of a folder medft wrote; refuses anything else by name."""
  if not sweep_dir.is_dir():
    raise MissingInputError(f'{sweep_dir}: no such sweep folder; pass the --workdir of a '
                            '--mode=sweep (or auto) run.')
  plan = read_plan(sweep_dir)
  runs = discover(sweep_dir, plan)
  if plan is None and not runs:
    if not any(sweep_dir.iterdir()):
      raise MissingInputError(f'{sweep_dir}: empty; it holds no sweep.json and no run folders '
                              '<arm>/<fraction>/<seed>/ to report on.')
    raise NotOursError(f'{sweep_dir}: not a medft sweep folder (no sweep.json, no run folders '
                       '<arm>/<fraction>/<seed>/ with config.json or results.json); refusing '
                       'to write a report into it.')
  previous = read_json(sweep_dir / 'report.json')
  ours = isinstance(previous, dict) and MARKER in previous
  foreign = [n for n in REPORT_FILES if (sweep_dir / n).exists()]
  if foreign and not ours:
    raise NotOursError(f'{sweep_dir}: {", ".join(foreign)} exist but were not written by '
                       f'medft (no report.json with "{MARKER}"); move them away to report here.')
  return plan, runs


def _seed_tests(runs: Sequence[RunRecord]) -> list[tuple[int, dict]]:
  return [(r.seed, r.results['test']) for r in runs if r.results.get('test')]


def _mean_sd(values: Sequence[Any]) -> dict:
  values = [float(v) for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
  if not values:
    return {'mean': None, 'sd': None, 'n': 0}
  return {'mean': float(np.mean(values)),
          'sd': float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 'n': len(values)}


def _row(spec: apps.Spec, points: Sequence[apps.Point], runs: Sequence[RunRecord],
         n_boot: int, replicates: stats.Replicates | None = None) -> dict:
  """One arm x fraction: every point with its interval, plus the runs' own summaries.
  `replicates`: this fraction's bootstrap replicates, shared with the pairs tables."""
  runs = sorted(runs, key=lambda r: r.seed)
  out: dict[str, Any] = {'seeds': [r.seed for r in runs], 'n_seeds': len(runs), 'metrics': {}}
  for key in ('test_auc', 'val_auc', 'steps', 'best_step', 'train_units'):
    out[key] = _mean_sd([r.results.get(key) for r in runs])
  out['fraction_unit'] = next((r.results['fraction_unit'] for r in runs
                               if r.results.get('fraction_unit')), None)
  out['wall_s'] = _mean_sd([(r.timing or {}).get('wall_s') for r in runs])
  if runs and tuning.is_scratch(runs[0].arm):
    out['init_scheme'] = (tuning.arm_settings(runs[0].arm)[1]
                          or context.init_scheme(runs[0]) or 'architecture default')
  names, units = stats.seed_units(spec, _seed_tests(runs))
  out['n_units'] = len(names)
  out['constant_seeds'] = [r.seed for r in runs if _constant_output(spec, r)]
  for p in points:
    if not units or not stats.present(p, units):
      continue
    boot = (replicates.get((runs[0].arm, frozenset(r.seed for r in runs), tuple(names)), p,
                           units) if replicates is not None else None)
    entry = stats.interval(p, units, n_boot, replicates=boot)
    if p.key in spec.box_keys and spec.items is not None and entry.get('value') is not None:
      items = spec.items(units, p.key)
      entry.update(sd=float(np.std(items, ddof=1)) if items.size > 1 else 0.0,
                   n_items=int(items.size))
    out['metrics'][p.key] = entry
  counts = _summed_counts(spec, runs) if spec.counts is not None else None
  if counts is not None:  # e.g. the confusion matrix: summed over the seeds
    out['counts'] = counts
  return out


def _summed_counts(spec: apps.Spec, runs: Sequence[RunRecord]) -> dict | None:
  """`spec.counts` of every seed's test, the counts added up (None where no seed has one)."""
  tables = [t for r in runs if r.results.get('test')
            and (t := spec.counts(r.results['test'])) is not None]
  if not tables:
    return None
  total = np.sum([np.asarray(t['counts'], dtype=np.int64) for t in tables], axis=0)
  return {**tables[0], 'counts': total.tolist(), 'n_seeds': len(tables)}


def _constant_output(spec: apps.Spec, run: RunRecord) -> bool:
  """Whether every test score of a run is the same number: the network's output did not
  depend on its input (e.g. dead ReLUs or vanished activations), so it learned nothing and
  its AUC is 0.5 by construction. False for applications whose records hold no scores."""
  test = run.results.get('test')
  if not test or 'scores' not in spec.record_keys:
    return False
  scores = [np.asarray(r['scores'], dtype=np.float64).ravel() for r in spec.units(test).values()]
  scores = np.concatenate(scores) if scores else np.zeros(0)
  return scores.size > 1 and bool(np.all(scores == scores[0]))


def build_report(sweep_dir: str | Path, n_boot: int = N_BOOT, correction: str = 'holm') -> dict:
  """Writes report.md/json/csv and plots for the finished runs of `sweep_dir`; returns the dict.

  `correction`: 'holm' (default) or 'bh', applied within each all-pairs table.
  """
  if correction not in metrics.CORRECTIONS:
    raise ConfigError(f'report.correction={correction!r}: expected one of '
                      f'{", ".join(metrics.CORRECTIONS)}.')
  sweep_dir = Path(sweep_dir)
  plan, runs = _check_folder(sweep_dir)
  finished = [r for r in runs if r.status == 'finished']
  app_names = sorted({r.results['app'] for r in finished})
  if len(app_names) > 1:
    raise InputFileError(f'{sweep_dir}: runs of several applications ({", ".join(app_names)}) '
                         'in one sweep folder; report each study from its own folder.')
  spec = apps.get(app_names[0]) if app_names else None
  arch = next((r.results.get('arch') for r in finished), (plan or {}).get('arch'))
  source_names = by_source.source_names([r.arm for r in runs], plan)
  arms = arm_order([r.arm for r in runs], arch, source_names)
  depths = by_source.depths_of(arms)
  fractions = sorted({r.fraction for r in runs})
  groups = {(f, a): [r for r in finished if r.fraction == f and r.arm == a]
            for f in fractions for a in arms}
  first_test = next((r.results['test'] for r in finished if r.results.get('test')), None)
  points = spec.points(first_test) if spec and first_test else ()

  rows, pairs, source_tables = [], [], []
  counter = progress.Progress('report: intervals', 'arm x fraction groups',
                              total=len(fractions) * len(arms))
  for f in fractions:
    replicates = stats.Replicates(n_boot, points)  # this fraction's intervals and pairs share them
    for a in arms:
      planned = [r for r in runs if r.fraction == f and r.arm == a]
      if planned:
        rows.append({'fraction': f, 'arm': a, 'runs_finished': len(groups[(f, a)]),
                     'runs_planned': len(planned),
                     **(_row(spec, points, groups[(f, a)], n_boot, replicates) if groups[(f, a)]
                        else {'n_seeds': 0, 'seeds': [], 'metrics': {}})})
      counter.update(1)
    present = {a: _seed_tests(groups[(f, a)]) for a in arms if _seed_tests(groups[(f, a)])}
    for p in points:
      if not p.compared or len(present) < 2:
        continue
      if not any(p.key in r['metrics'] for r in rows if r['fraction'] == f):
        continue
      pairs.append({'fraction': f, 'point': p.key, 'label': p.label, 'unit': p.unit,
                    'higher_is_better': p.higher_is_better, 'correction': correction,
                    'rows': stats.pairs_table(spec, p, present, n_boot, correction,
                                                    replicates=replicates)})
    if len(source_names) > 1:
      source_tables += by_source.tables(spec, points, f, present, source_names, depths, n_boot,
                                        correction, replicates)
  counter.done()
  primary = spec.primary(first_test) if spec and first_test else None
  primary_point = next((p for p in points if p.key == primary), None)
  _mark_best(rows, primary_point)

  def run_primary(r: RunRecord) -> float | None:
    if primary_point is None or not r.results.get('test'):
      return None
    _, units = stats.seed_units(spec, _seed_tests([r]))
    try:
      return stats.value(primary_point, units) if units else None
    except ValueError:
      return None

  finished_tests = {f: {a: tests for a in arms if (tests := _seed_tests(groups[(f, a)]))}
                    for f in fractions}
  dead = {r['arm'] for r in rows if r.get('constant_seeds')}
  robust = robustness.section(spec, primary_point, finished_tests, n_boot, correction,
                              learned_nothing=sorted(dead))
  sign = 1 if primary_point is None or primary_point.higher_is_better else -1
  auto = context.auto_section(sweep_dir, finished, plan, run_primary, sign,
                              lambda a: arm_order(a, arch))
  inits = sorted({r.results.get('init') for r in finished if r.results.get('init')})
  source_inits = {s['name']: s.get('init') for s in (plan or {}).get('sources', [])
                  if isinstance(s, dict)}
  for r in finished:  # without a plan: each source's init from its runs
    if r.source and r.results.get('init'):
      source_inits.setdefault(r.source, r.results['init'])
  weights, weight_lines = context.weights_statement(
      inits, {i: n for n, i in source_inits.items() if len(source_names) > 1})
  compared = by_source.section(source_names, source_inits, depths, source_tables, correction)
  from medft.report import plots  # matplotlib only here
  drawn = plots.make_all(sweep_dir / PLOTS, spec, points, rows, groups, arms, fractions,
                         finished, auto, compared)
  unit = spec.unit_name if spec else 'unit'
  # A detection unit holding one frame (Kvasir-SEG: no video ids) is a frame; say so.
  one_image = bool(spec and first_test and 'num_images' in spec.record_keys and all(
      int(u['num_images']) == 1 for r in finished if r.results.get('test')
      for u in spec.units(r.results['test']).values()))
  report = {
      MARKER: FORMAT_VERSION,
      'generated': time.strftime('%Y-%m-%d %H:%M:%S'), 'sweep_dir': str(sweep_dir),
      'app': spec.name if spec else None, 'unit_name': unit, 'one_image_per_unit': one_image,
      'arch': arch, 'tuning_units': _tuning_units(arch),
      'dataset': next((r.results.get('dataset') for r in finished), (plan or {}).get('dataset')),
      'primary_metric': primary,
      'points': [{'key': p.key, 'label': p.label, 'unit': p.unit, 'compared': p.compared,
                  'higher_is_better': p.higher_is_better, 'digits': p.digits} for p in points],
      'statistics': {
          'averaging': AVERAGING.format(unit=unit), 'n_boot': n_boot, 'alpha': stats.ALPHA,
          'rank_test': stats.RANK_TEST,
          'per_unit_value': apps.per_unit_rule(spec, first_test) if spec else '',
          'family': stats.FAMILY, 'correction': correction,
          'correction_name': metrics.CORRECTIONS[correction],
          'marks': ', '.join(f'{m} adjusted p < {limit:g}' for limit, m in reversed(stats.MARKS))},
      'runs': [{'arm': r.arm, 'fraction': r.fraction, 'seed': r.seed, 'status': r.status,
                'dir': str(r.dir), 'note': r.note, **({'source': r.source} if r.source else {})}
               for r in runs],
      'weights': weights, 'weights_statement': weight_lines,
      'settings': context.settings(finished), 'rows': rows, 'pairs': pairs,
      'robustness': robust, 'auto': auto, **({'sources': compared} if compared else {}),
      'cost': context.cost(finished, sweep_dir), 'plots': drawn,
  }
  files.write_json_atomic(sweep_dir / 'report.json', report)
  files.write_text_atomic(sweep_dir / 'report.csv', text.csv_table(report))
  files.write_text_atomic(sweep_dir / 'report.md', text.markdown(report))
  return report


def _mark_best(rows: list[dict], point: apps.Point | None) -> None:
  """`is_best` on the arm with the best primary point of each fraction."""
  for f in {r['fraction'] for r in rows}:
    scored = [r for r in rows if r['fraction'] == f and point is not None
              and (r['metrics'].get(point.key) or {}).get('value') is not None]
    sign = 1 if point is None or point.higher_is_better else -1
    best = max(scored, key=lambda r: sign * r['metrics'][point.key]['value'], default=None)
    for r in rows:
      if r['fraction'] == f:
        r['is_best'] = r is best
