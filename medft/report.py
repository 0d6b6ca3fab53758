"""Report of a sweep folder: tables with 95% intervals, paired tests and plots, from finished runs.

    python run.py --mode=report --workdir=DIR      (or medft.report.build_report(DIR))

writes DIR/report.md, DIR/report.json, DIR/report.csv and DIR/plots/*.png from whatever runs
under DIR/<arm>/<fraction>/<seed>/ have a results.json; planned runs (DIR/sweep.json) without
one are listed as unfinished (started) or missing (never started), so a report can be made at
any time during a sweep.

Seeds: an arm x fraction pools its finished seeds. The per-unit test data (CIMT: per-image
boundary errors; detection: scored candidates per video/volume; classification: labels and
scores per video) are kept per seed, every metric is computed per seed and averaged over
seeds, and its 95% interval is the percentile bootstrap over test units (subjects, videos,
volumes: the whole unit is resampled, with the same resample for every seed). Patch AUCs have
no per-unit data in results.json: they are the mean over seeds (+- SD between seeds).

Paired comparisons, within a training fraction, of every arm with scratch and with the best
arm (the best primary metric): CIMT: Wilcoxon signed-rank over test images of the
seed-averaged LI and MA errors, and a paired bootstrap over subjects of the mean error;
detection and classification: a paired bootstrap over units of the primary metric.

The per-unit data read from a task's `evaluate()` dict (results.json `test`):
  CIMT            test['per_image'] = [{'id', 'unit', 'li_error_um', 'ma_error_um', ...}]
  detection       test['per_unit'] (or 'units') = [{'unit', 'scores', 'lesion_ids',
                  'num_lesions', 'num_images'}], optional test['fp_rates'] (FP/image points
                  averaged into the primary metric, the mean sensitivity over them)
  classification  test['per_unit'] (or 'units') = [{'unit', 'labels', 'scores'}]
Any other number, or dict with 'value'/'mean' (and 'ci95' or 'low'/'high'), in `test` becomes
an extra column (seed mean, and the run's own interval when there is one seed).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medft import files, metrics, report_text

N_BOOT = 1000
# What a task's malformed or degenerate per-unit data raise inside a metric: reported in the
# table's entry instead of stopping the whole report.
BAD_DATA = (ValueError, KeyError, TypeError, IndexError)
PLOTS = 'plots'
PRETEXT_FORMAT = report_text.PRETEXT_FORMAT


# ---- runs --------------------------------------------------------------------------------


@dataclasses.dataclass
class RunRecord:
  arm: str
  fraction: float
  seed: int
  dir: Path
  status: str                       # finished | unfinished | failed | missing
  results: dict | None = None
  timing: dict | None = None
  note: str = ''


def _read_json(path: Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return None


def _number(name: str, kind: type) -> Any:
  try:
    return kind(name)
  except ValueError:
    return None


def discover(sweep_dir: Path) -> list[RunRecord]:
  """Every run folder found under DIR plus every planned run of DIR/sweep.json."""
  found: dict[tuple, RunRecord] = {}
  for arm_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
    if arm_dir.name.startswith('.') or arm_dir.name in (PLOTS, 'source_model'):
      continue
    for fraction_dir in sorted(p for p in arm_dir.iterdir() if p.is_dir()):
      fraction = _number(fraction_dir.name, float)
      if fraction is None:
        continue
      for seed_dir in sorted(p for p in fraction_dir.iterdir() if p.is_dir()):
        seed = _number(seed_dir.name, int)
        if seed is None or not any((seed_dir / f).exists() for f in
                                   ('config.json', 'results.json', 'failed.json')):
          continue
        key = (arm_dir.name, fraction, seed)
        found[key] = _record(arm_dir.name, fraction, seed, seed_dir)
  plan = _read_json(sweep_dir / 'sweep.json') or {}
  for run in plan.get('runs', []):
    key = (run['arm'], float(run['fraction']), int(run['seed']))
    if key not in found:
      found[key] = RunRecord(*key, dir=sweep_dir / run['dir'], status='missing',
                             note='never started')
  return list(found.values())


def _record(arm: str, fraction: float, seed: int, path: Path) -> RunRecord:
  results = _read_json(path / 'results.json')
  if results is not None:
    return RunRecord(arm, fraction, seed, path, 'finished', results,
                     _read_json(path / 'timing.json') or {})
  failed = _read_json(path / 'failed.json')
  if failed is not None:
    return RunRecord(arm, fraction, seed, path, 'failed', note=str(failed.get('error', ''))[:200])
  rows = _metrics_rows(path)
  step = rows[-1]['step'] if rows else 0
  return RunRecord(arm, fraction, seed, path, 'unfinished',
                   note=f'started, no results.json (last logged step {step})')


def _metrics_rows(path: Path) -> list[dict]:
  try:
    lines = (path / 'metrics.jsonl').read_text().splitlines()
  except OSError:
    return []
  rows = []
  for line in lines:
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


def arm_order(arms: Sequence[str], arch: str | None) -> list[str]:
  """scratch first, then head-only to all layers (the paper's order); unknown names last."""
  from medft import models, tuning
  known = list(tuning.arms(models.ARCHS[arch][1] if arch in models.ARCHS else ()))
  return sorted(set(arms), key=lambda a: (known.index(a) if a in known else len(known), a))


# ---- applications ------------------------------------------------------------------------


@dataclasses.dataclass
class Metric:
  key: str
  label: str
  unit: str
  higher_is_better: bool


class App:
  """How one application's per-unit test data become metrics (see the module docstring)."""
  name = 'generic'
  metrics: tuple[Metric, ...] = ()
  primary = ''

  def units(self, test: dict) -> dict[str, Any]:
    """unit -> that unit's records in one run (empty: no per-unit data)."""
    return {}

  def value(self, key: str, units: Sequence[Sequence[Any]]) -> float:
    """Metric `key` of a list of units, each a list over seeds of that unit's records."""
    raise NotImplementedError


class CimtApp(App):
  name = 'cimt'
  metrics = (
      Metric('li_ma_error_um', 'mean boundary error (LI, MA)', 'µm', False),
      Metric('li_error_um', 'LI error', 'µm', False),
      Metric('ma_error_um', 'MA error', 'µm', False),
      Metric('cimt_error_um', 'CIMT error', 'µm', False),
  )
  primary = 'li_ma_error_um'

  def units(self, test: dict) -> dict[str, Any]:
    by_unit: dict[str, dict] = {}
    for image in test.get('per_image') or []:
      by_unit.setdefault(str(image.get('unit', image.get('id'))), {})[str(image.get('id'))] = image
    return by_unit

  def image_errors(self, key: str, units: Sequence[Sequence[dict]]) -> np.ndarray:
    """Seed-averaged error of every image of `units` (images present in every seed)."""
    out = []
    for seeds in units:
      ids = set.intersection(*(set(s) for s in seeds))
      for image_id in sorted(ids):
        if key == 'li_ma_error_um':
          v = [(s[image_id]['li_error_um'] + s[image_id]['ma_error_um']) / 2 for s in seeds]
        else:
          v = [s[image_id][key] for s in seeds]
        out.append(float(np.mean(v)))
    return np.asarray(out)

  def value(self, key: str, units) -> float:
    errors = self.image_errors(key, units)
    if not errors.size:
      raise ValueError('no images')
    return float(errors.mean())


def _unit_list(test: dict) -> list[dict]:
  for key in ('per_unit', 'units', 'per_video', 'per_volume'):
    value = test.get(key)
    if isinstance(value, list) and value and isinstance(value[0], dict):
      return value
  return []


class DetectionApp(App):
  """Polyps and PE: FROC over units; primary metric = mean sensitivity at `fp_rates`."""
  name = 'detection'
  primary = 'froc_sensitivity'

  def __init__(self, fp_rates: Sequence[float]):
    self.fp_rates = [float(f) for f in fp_rates]
    points = ', '.join(f'{f:g}' for f in self.fp_rates)
    self.metrics = (Metric('froc_sensitivity', f'mean sensitivity at {points} FP/image', '',
                           True),)

  def units(self, test: dict) -> dict[str, Any]:
    return {str(u.get('unit', i)): u for i, u in enumerate(_unit_list(test))}

  def curve(self, units: Sequence[dict]) -> dict:
    return metrics.froc_curve(**metrics.pool_detection_units(units))

  def value(self, key: str, units) -> float:
    n_seeds = len(units[0])
    return float(np.mean([metrics.froc_partial_area(self.curve([u[s] for u in units]),
                                                    self.fp_rates) for s in range(n_seeds)]))


class ClassificationApp(App):
  """Frames: ROC AUC of the pooled per-frame (or per-unit) scores."""
  name = 'classification'
  metrics = (Metric('unit_auc', 'AUC (pooled over test units)', '', True),)
  primary = 'unit_auc'

  def units(self, test: dict) -> dict[str, Any]:
    return {str(u.get('unit', i)): u for i, u in enumerate(_unit_list(test))}

  @staticmethod
  def pooled(units: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.concatenate([np.ravel(u['labels']) for u in units])
    scores = np.concatenate([np.ravel(u['scores']) for u in units])
    return labels, scores

  def value(self, key: str, units) -> float:
    n_seeds = len(units[0])
    return float(np.mean([metrics.roc_auc(*self.pooled([u[s] for u in units]))
                          for s in range(n_seeds)]))


def detect_app(tests: Sequence[dict]) -> App:
  """The application of a group of runs, from the shape of their test dicts."""
  for test in tests:
    if test.get('per_image') and 'li_error_um' in test['per_image'][0]:
      return CimtApp()
    units = _unit_list(test)
    if units and 'lesion_ids' in units[0]:
      # Results written before detection.report recorded its FP rates: the FROC range of
      # the CAD literature.
      return DetectionApp(test.get('fp_rates') or [0.125, 0.25, 0.5, 1, 2, 4, 8])
    if units and 'labels' in units[0] and 'scores' in units[0]:
      return ClassificationApp()
  return App()


# ---- statistics over seeds and units -----------------------------------------------------


def _seed_units(app: App, runs: Sequence[RunRecord]) -> tuple[list[str], list[list[Any]]]:
  """(unit names, per unit the list over seeds of its records), units common to all seeds."""
  per_seed = [app.units(r.results.get('test') or {}) for r in runs]
  if not per_seed or not all(per_seed):
    return [], []
  names = sorted(set.intersection(*(set(u) for u in per_seed)))
  return names, [[seed[n] for seed in per_seed] for n in names]


def _scalar(value: Any) -> tuple[float, float | None, float | None] | None:
  """(value, low, high) of a number or of a {'value'|'mean', 'ci95'|'low'/'high'} dict."""
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    return float(value), None, None
  if isinstance(value, dict):
    v = value.get('value', value.get('mean'))
    if not isinstance(v, (int, float)) or isinstance(v, bool):
      return None
    ci = value.get('ci95') if isinstance(value.get('ci95'), dict) else value
    low, high = ci.get('low'), ci.get('high')
    ok = all(isinstance(x, (int, float)) for x in (low, high))
    return float(v), (float(low) if ok else None), (float(high) if ok else None)
  return None


def _mean_sd(values: Sequence[float]) -> dict:
  values = [float(v) for v in values if v is not None and np.isfinite(v)]
  if not values:
    return {'mean': None, 'sd': None, 'n': 0}
  return {'mean': float(np.mean(values)),
          'sd': float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 'n': len(values)}


def summarise_group(app: App, runs: Sequence[RunRecord], n_boot: int, seed: int = 0) -> dict:
  """Metrics of one arm x fraction over its finished seeds (see the module docstring)."""
  runs = sorted(runs, key=lambda r: r.seed)
  out: dict[str, Any] = {'seeds': [r.seed for r in runs], 'n_seeds': len(runs), 'metrics': {}}
  for key in ('test_auc', 'val_auc', 'steps', 'best_step'):
    out[key] = _mean_sd([r.results.get(key) for r in runs])
  out['wall_s'] = _mean_sd([(r.timing or {}).get('wall_s') for r in runs])
  out['wall_s_total'] = float(sum((r.timing or {}).get('wall_s') or 0.0 for r in runs))
  out['steps_total'] = int(sum(r.results.get('steps') or 0 for r in runs))
  names, units = _seed_units(app, runs)
  out['n_units'] = len(names)
  for m in app.metrics:
    if not units:
      break
    try:
      ci = metrics.bootstrap_ci(lambda us, k=m.key: app.value(k, us), units, n_boot=n_boot,
                                seed=seed)
    except BAD_DATA as e:
      out['metrics'][m.key] = {'value': None, 'error': f'{type(e).__name__}: {e}'}
      continue
    entry = {'value': ci['value'], 'low': ci['low'], 'high': ci['high'], 'n_boot': ci['n_boot']}
    if isinstance(app, CimtApp):
      errors = app.image_errors(m.key, units)
      entry.update(sd=float(np.std(errors, ddof=1)) if errors.size > 1 else 0.0,
                   n_images=int(errors.size))
    out['metrics'][m.key] = entry
  # Whatever else the task reported: seed mean, and the run's interval with one seed.
  covered = {m.key for m in app.metrics} | {'auc'}
  extra: dict[str, list] = {}
  for r in runs:
    for key, value in (r.results.get('test') or {}).items():
      s = _scalar(value)
      if s is not None and key not in covered:
        extra.setdefault(key, []).append(s)
  for key, values in extra.items():
    if len(values) != len(runs):
      continue
    entry = {'value': float(np.mean([v[0] for v in values])), 'low': None, 'high': None}
    if len(values) == 1:
      entry['low'], entry['high'] = values[0][1], values[0][2]
    else:
      entry['seed_sd'] = float(np.std([v[0] for v in values], ddof=1))
    out.setdefault('extra', {})[key] = entry
  return out


def compare(app: App, runs_a: Sequence[RunRecord], runs_b: Sequence[RunRecord],
            n_boot: int, seed: int = 0) -> dict:
  """Paired comparison of two arms over the test units (and seeds) both have."""
  seeds = sorted({r.seed for r in runs_a} & {r.seed for r in runs_b})
  a = [r for r in runs_a if r.seed in seeds]
  b = [r for r in runs_b if r.seed in seeds]
  if not seeds:
    return {'error': 'no seed finished in both arms'}
  names_a, units_a = _seed_units(app, sorted(a, key=lambda r: r.seed))
  names_b, units_b = _seed_units(app, sorted(b, key=lambda r: r.seed))
  common = sorted(set(names_a) & set(names_b))
  if not common:
    return {'error': 'no per-unit test data shared by both arms'}
  ua = [units_a[names_a.index(n)] for n in common]
  ub = [units_b[names_b.index(n)] for n in common]
  if isinstance(app, CimtApp):
    # Keep only images both arms evaluated, so the pairs line up.
    for ka, kb in zip(ua, ub):
      ids = set.intersection(*(set(s) for s in ka + kb))
      for s in ka + kb:
        for i in set(s) - ids:
          del s[i]
  out: dict[str, Any] = {'seeds': seeds, 'n_units': len(common)}
  keys = ('li_error_um', 'ma_error_um') if isinstance(app, CimtApp) else (app.primary,)
  for key in keys:
    entry: dict[str, Any] = {}
    try:
      entry['bootstrap'] = metrics.paired_bootstrap(lambda us, k=key: app.value(k, us), ua, ub,
                                                    n_boot=n_boot, seed=seed)
    except BAD_DATA as e:
      entry['bootstrap'] = {'error': f'{type(e).__name__}: {e}'}
      out[key] = entry
      continue
    if isinstance(app, CimtApp):
      ea, eb = app.image_errors(key, ua), app.image_errors(key, ub)
      try:
        entry['wilcoxon'] = metrics.paired_wilcoxon(ea, eb)
      except ValueError as e:
        entry['wilcoxon'] = {'error': str(e)}
    out[key] = entry
  return out


# ---- report assembly ---------------------------------------------------------------------


def _weights_statement(inits: Sequence[str]) -> tuple[list[dict], list[str]]:
  """What each `init` folder holds, and plain sentences saying it."""
  described, lines = [], []
  for init in inits:
    d: dict[str, Any] = {'init': init}
    meta = _read_json(Path(init) / 'meta.json') or {}
    d.update({k: meta.get(k) for k in ('arch', 'source_format', 'source_file',
                                       'num_source_classes', 'input_size')})
    record = _read_json(Path(init).parent / 'pretrain.json')
    if record:
      d['pretrain'] = {k: record.get(k) for k in ('held_out_accuracy', 'chance_accuracy',
                                                   'steps', 'wall_s', 'num_classes')}
    described.append(d)
    if not meta:
      lines.append(f'Fine-tuning arms start from `{init}`, whose meta.json could not be read.')
    elif meta.get('source_format') == PRETEXT_FORMAT:
      pre = d.get('pretrain') or {}
      acc = (f' (held-out pretext accuracy {pre["held_out_accuracy"]:.3f}, chance '
             f'{pre["chance_accuracy"]:.3f}, {pre["steps"]} steps)'
             if pre.get('held_out_accuracy') is not None else '')
      lines.append(
          f'**Source weights are NOT ImageNet.** Fine-tuning arms start from `{init}`: the '
          f'offline stand-in (source_format `{PRETEXT_FORMAT}`), the same architecture '
          f'({meta.get("arch")}) pre-trained here on crops of natural photographs shipped with '
          f'scikit-image ({meta.get("source_file")}), classifying which photo and rotation a '
          f'crop came from{acc}. Its features are far weaker than ImageNet features, so the '
          'fine-tuning arms here understate what the paper\'s ImageNet AlexNet gives.')
    else:
      lines.append(f'Fine-tuning arms start from `{init}`: source_format '
                   f'`{meta.get("source_format")}`, source file `{meta.get("source_file")}`, '
                   f'{meta.get("arch")} with {meta.get("num_source_classes")} source classes.')
  if not inits:
    lines.append('No finished run used pretrained weights (init is empty).')
  lines.append(
      'To use real ImageNet weights instead: convert them once, e.g. `python -m '
      'medft.weights.convert --src=bvlc_alexnet.caffemodel --format=caffe --arch=alexnet '
      '--out=weights/alexnet_bvlc` (also `--format=torch|safetensors|keras`), or train them '
      'with `configs/imagenet_pretrain.py`, then pass `init=weights/alexnet_bvlc` to the '
      'config (e.g. `--config=configs/cimt.py:init=weights/alexnet_bvlc`). Input size, channel '
      'order and normalisation are read from the weights\' meta.json (227x227 BGR for BVLC '
      'AlexNet), for every arm including scratch.')
  return described, lines


def build_report(sweep_dir: str | Path, n_boot: int = N_BOOT) -> dict:
  """Writes report.md/json/csv and plots for the finished runs of `sweep_dir`; returns the dict."""
  sweep_dir = Path(sweep_dir)
  if not sweep_dir.is_dir():
    raise FileNotFoundError(f'{sweep_dir}: no such sweep folder.')
  runs = discover(sweep_dir)
  finished = [r for r in runs if r.status == 'finished']
  plan = _read_json(sweep_dir / 'sweep.json') or {}
  arch = next((r.results.get('arch') for r in finished), plan.get('arch'))
  arms = arm_order([r.arm for r in runs], arch)
  fractions = sorted({r.fraction for r in runs})
  app = detect_app([r.results.get('test') or {} for r in finished])
  groups = {(f, a): [r for r in finished if r.fraction == f and r.arm == a]
            for f in fractions for a in arms}

  rows, comparisons = [], []
  for f in fractions:
    summaries = {a: summarise_group(app, groups[(f, a)], n_boot) for a in arms
                 if groups[(f, a)]}
    best = _best_arm(app, summaries)
    for a in arms:
      planned = [r for r in runs if r.fraction == f and r.arm == a]
      if not planned:
        continue
      row = {'fraction': f, 'arm': a, 'runs_finished': len(groups[(f, a)]),
             'runs_planned': len(planned), 'is_best': a == best}
      row.update(summaries.get(a, {'n_seeds': 0, 'seeds': []}))
      rows.append(row)
      # Each arm against scratch, and against the best arm unless that is scratch (the
      # same comparison) or itself; scratch against the best is the best's row, mirrored.
      for ref_name, ref in (('scratch', 'scratch'), ('best', best)):
        if ref is None or a in (ref, 'scratch') or (ref_name == 'best' and ref == 'scratch') \
            or not groups[(f, a)] or not groups.get((f, ref)):
          continue
        comparisons.append({'fraction': f, 'arm': a, 'versus': ref_name, 'reference': ref,
                            **compare(app, groups[(f, a)], groups[(f, ref)], n_boot)})

  inits = sorted({r.results.get('init') for r in finished if r.results.get('init')})
  settings = _settings(finished)
  weights, weight_lines = _weights_statement(inits)
  auto = _auto_section(sweep_dir, app, finished, plan)
  plots_dir = sweep_dir / PLOTS
  from medft import report_plots  # matplotlib only here
  plots = report_plots.make_all(plots_dir, app, rows, groups, arms, fractions, finished, auto)

  report = {
      'generated': time.strftime('%Y-%m-%d %H:%M:%S'), 'sweep_dir': str(sweep_dir),
      'app': app.name, 'arch': arch, 'dataset': next((r.results.get('dataset')
                                                      for r in finished), plan.get('dataset')),
      'primary_metric': app.primary, 'metrics': [dataclasses.asdict(m) for m in app.metrics],
      'averaging': AVERAGING, 'n_boot': n_boot,
      'runs': [{'arm': r.arm, 'fraction': r.fraction, 'seed': r.seed, 'status': r.status,
                'dir': str(r.dir), 'note': r.note} for r in runs],
      'weights': weights, 'weights_statement': weight_lines, 'settings': settings,
      'rows': rows, 'comparisons': comparisons, 'auto': auto,
      'cost': _cost(finished, sweep_dir), 'plots': plots,
  }
  files.write_json_atomic(sweep_dir / 'report.json', report)
  files.write_text_atomic(sweep_dir / 'report.csv', report_text.csv_table(app, rows, comparisons))
  files.write_text_atomic(sweep_dir / 'report.md', report_text.markdown(report, app))
  return report


AVERAGING = ('Each arm x fraction pools its finished seeds: every metric is computed per seed '
             'and averaged over seeds (for CIMT: each test image\'s error is averaged over '
             'seeds, then over images); the 95% interval is the percentile bootstrap over test '
             'units (whole subjects/videos/volumes, the same resample for every seed). Patch '
             'AUCs (validation, test) are the mean over seeds +- SD between seeds.')


def _settings(finished: Sequence[RunRecord]) -> dict:
  """The run settings a reader needs to judge the numbers (from a finished run's config)."""
  for r in finished:
    c = _read_json(r.dir / 'config.json')
    if not c or 'optim' not in c:
      continue
    get = lambda *keys: _dig(c, keys)  # noqa: E731
    return {'arch': get('arch'), 'input_size': get('input_size'), 'width': get('model', 'width'),
            'init_scheme': get('model', 'init_scheme'), 'base_lr': get('optim', 'base_lr'),
            'head_lr_mult': get('optim', 'head_lr_mult'), 'batch': get('train', 'batch'),
            'patch_size': get('task', 'patch_size'),
            'eval_col_stride': get('task', 'eval_col_stride')}
  return {}


def _dig(d: Any, keys: Sequence[str]) -> Any:
  for k in keys:
    d = d.get(k) if isinstance(d, dict) else None
  return d


def _best_arm(app: App, summaries: dict) -> str | None:
  best, best_value = None, None
  for arm, s in summaries.items():
    entry = s.get('metrics', {}).get(app.primary) or {}
    value = entry.get('value')
    sign = 1 if not app.metrics or app.metrics[0].higher_is_better else -1
    if value is None:  # no per-unit data: fall back on the test patch AUC
      value, sign = (s.get('test_auc') or {}).get('mean'), 1
    if value is None:
      continue
    if best_value is None or sign * value > best_value:
      best, best_value = arm, sign * value
  return best


def _cost(finished: Sequence[RunRecord], sweep_dir: Path) -> dict:
  pre = _read_json(sweep_dir / 'source_model' / 'pretrain.json') or {}
  return {'runs': len(finished),
          'steps': int(sum(r.results.get('steps') or 0 for r in finished)),
          'wall_s': float(sum((r.timing or {}).get('wall_s') or 0.0 for r in finished)),
          'pretrain_wall_s': pre.get('wall_s'), 'pretrain_steps': pre.get('steps')}


def _arch_of(finished: Sequence[RunRecord]) -> str | None:
  return next((r.results.get('arch') for r in finished), None)


def _auto_section(sweep_dir: Path, app: App, finished: Sequence[RunRecord],
                  plan: dict) -> dict | None:
  """auto.json, plus its cost and result against the planned sweep at its fraction and seed."""
  auto = _read_json(sweep_dir / 'auto.json')
  if not auto:
    return None
  f, seed = float(auto['fraction']), int(auto['seed'])
  planned = {r['arm'] for r in plan.get('runs', [])
             if float(r['fraction']) == f and int(r['seed']) == seed}
  at = {r.arm: r for r in finished if r.fraction == f and r.seed == seed}
  swept = [at[a] for a in planned if a in at]
  tuned = [r for r in swept if r.arm != 'scratch']
  out = dict(auto)
  if not tuned:
    return out
  wanted = {r.arm: r for r in swept}
  if auto['chosen'] in at:
    wanted[auto['chosen']] = at[auto['chosen']]
  summaries = {a: summarise_group(app, [r], n_boot=200) for a, r in wanted.items()}
  value = lambda a: (((summaries.get(a) or {}).get('metrics') or {})  # noqa: E731
                     .get(app.primary) or {}).get('value')
  best_test = _best_arm(app, {r.arm: summaries[r.arm] for r in tuned})
  out['versus_sweep'] = {
      'sweep_arms': arm_order([r.arm for r in tuned], _arch_of(finished)),
      'sweep_complete': len(tuned) == len(planned - {'scratch'}),
      'sweep_steps': int(sum(r.results['steps'] for r in tuned)),
      'sweep_wall_s': float(sum((r.timing or {}).get('wall_s') or 0 for r in tuned)),
      'best_by_validation': max(tuned, key=lambda r: r.results['val_auc']).arm,
      'best_by_test': best_test, 'chosen_test': value(auto['chosen']),
      'best_test': value(best_test), 'scratch_test': value('scratch'),
  }
  return out
