"""The report's text: report.md (per-operating-point tables, all-pairs tables, auto, plots) and
report.csv (one row per arm x fraction x point and per pair of arms x fraction x point).

Both are rendered from the report dict `medft.report.build_report` assembles (report.json).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Callable

from medft.report import by_source, robustness
from medft.report.context import PRETEXT_FORMAT

CSV_FIELDS = ('section', 'fraction', 'arm', 'versus', 'metric', 'value', 'low', 'high',
              'n_units', 'n_ranked', 'statistic', 'p_raw', 'p_adjusted', 'correction', 'mark')


def _fmt(value: Any, digits: int = 3) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return '–'
  if isinstance(value, float):
    return f'{value:.{digits}f}' if abs(value) < 100 else f'{value:.1f}'
  return str(value)


def _ci(entry: dict | None, digits: int = 3) -> str:
  if not entry or entry.get('value') is None:
    return '–'
  text = _fmt(entry['value'], digits)
  if entry.get('low') is not None and entry.get('high') is not None:
    text += f' [{_fmt(entry["low"], digits)}, {_fmt(entry["high"], digits)}]'
  return text


def _p(p: Any) -> str:
  return '–' if p is None else f'{p:.3g}'


def _head(point: dict) -> str:
  return point['label'] + (f' ({point["unit"]})' if point['unit'] else '')


def _arm(row: dict) -> str:
  name = row['arm'] + (f' ({row["init_scheme"]} init)' if row.get('init_scheme')
                       and row['arm'] == 'scratch' else '')
  return f'**{name}** (best)' if row.get('is_best') else name


def _fraction_heading(report: dict, f: float) -> str:
  rows = [r for r in report['rows'] if r['fraction'] == f]
  unit = report['unit_name']
  train = next(((r.get('train_units') or {}).get('mean') for r in rows
                if (r.get('train_units') or {}).get('mean') is not None), None)
  of = next((r.get('fraction_unit') for r in rows if r.get('fraction_unit')), None)
  test = max((r.get('n_units') or 0 for r in rows), default=0)
  parts = ([f'{train:.0f} training {of or unit + "s"}'] if train is not None else []) + (
      [f'{test} test {unit}s'] if test else [])
  return f'Training fraction {f:g}' + (f' ({", ".join(parts)})' if parts else '')


def csv_table(report: dict) -> str:
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction='ignore')
  writer.writeheader()
  for r in report['rows']:
    for key, e in (r.get('metrics') or {}).items():
      writer.writerow({'section': 'point', 'fraction': r['fraction'], 'arm': r['arm'],
                       'metric': key, 'value': e.get('value'), 'low': e.get('low'),
                       'high': e.get('high'), 'n_units': e.get('n_units')})
    for key in ('test_auc', 'val_auc'):
      e = r.get(key) or {}
      if e.get('mean') is not None:
        writer.writerow({'section': 'seed_mean', 'fraction': r['fraction'], 'arm': r['arm'],
                         'metric': key, 'value': e['mean']})
  for table in report['pairs']:
    for x in table['rows']:
      writer.writerow({'section': 'pair', 'fraction': table['fraction'], 'arm': x['a'],
                       'versus': x['b'], 'metric': table['point'],
                       'value': x.get('difference'), 'low': x.get('low'), 'high': x.get('high'),
                       'n_units': x.get('n_units'), 'n_ranked': x.get('n'),
                       'statistic': x.get('statistic'), 'p_raw': x.get('p_raw'),
                       'p_adjusted': x.get('p_adjusted'), 'correction': table['correction'],
                       'mark': x.get('mark')})
  robust = report.get('robustness') or {}
  for x in robust.get('rows', []):  # fraction: the smaller one (the loss is from the larger)
    writer.writerow({'section': 'robustness_loss', 'fraction': robust['fraction_small'],
                     'arm': x['arm'], 'metric': robust['point'], 'value': x['loss'],
                     'low': x['low'], 'high': x['high'], 'n_units': robust['n_units']})
  for x in robust.get('pairs', []):
    writer.writerow({'section': 'robustness_pair', 'fraction': robust['fraction_small'],
                     'arm': x['fine_tuned'], 'versus': x['scratch'], 'metric': robust['point'],
                     'value': x['difference'], 'low': x['low'], 'high': x['high'],
                     'n_units': robust['n_units'], 'p_raw': x['p_bootstrap'],
                     'p_adjusted': x['p_adjusted'], 'correction': robust['correction'],
                     'mark': x['mark']})
  for row in by_source.csv_rows(report):  # several sources: pairs of sources at each depth
    writer.writerow(row)
  return buf.getvalue()


def _depth_words(units: list[str]) -> str:
  """'arm `fc8` = only the new head trains, `fc7` = fc7 and every unit above it, ..., `conv1` =
  every layer' for an architecture's tuning units (lowest first)."""
  if len(units) < 2:
    return 'arm `<unit>` = that unit and every unit above it train'
  head, below, bottom = units[-1], units[-2], units[0]
  return (f'arm `{head}` = only the new head trains, `{below}` = {below} and every unit above '
          f'it, ..., `{bottom}` = every layer')


# Said when a manifest dataset was split by image (data.split_by=image): no subject column.
SPLIT_BY_IMAGE = (
    '**Split by image** (data.split_by=image): the manifest named no subjects, so each image '
    'is its own unit. Images of one subject may be in both training and test, and the '
    'intervals and tests, which resample images as if independent, may be optimistic.')


def markdown(report: dict) -> str:
  md: list[str] = []
  add = md.append
  runs = report['runs']
  status = {s: [r for r in runs if r['status'] == s]
            for s in ('finished', 'unfinished', 'failed', 'missing')}
  add(f'# Full training or fine-tuning? — {report.get("dataset") or "study"} '
      f'({report.get("arch") or "?"})\n')
  add(f'Generated {report["generated"]} from `{report["sweep_dir"]}`. Application: '
      f'**{report.get("app") or "?"}** (unit of independence: the {report["unit_name"]}'
      + (f'; here every test {report["unit_name"]} holds a single image, so the images are '
         'the units' if report.get('one_image_per_unit') else '') + '). '
      'Reproduces the design of Tajbakhsh et al. (IEEE TMI 2016): one network trained from '
      'scratch versus fine-tuned layer-wise from pretrained weights ('
      + _depth_words(report.get('tuning_units') or []) + '; `scratch_<scheme>` = from '
      'scratch with that init scheme), at several training-set fractions.\n')
  if (report.get('settings') or {}).get('split_by') == 'image':
    add(SPLIT_BY_IMAGE + '\n')
  add('## Source weights\n')
  md.extend(line + '\n' for line in report['weights_statement'])
  demo_note = _deviation_note(report)
  if demo_note:
    add('## Deviations from the paper in this run\n')
    add(demo_note + '\n')
  add('## Runs\n')
  add(f'{len(status["finished"])} of {len(runs)} runs finished'
      + (f'; {len(status["unfinished"])} unfinished' if status['unfinished'] else '')
      + (f'; {len(status["failed"])} failed' if status['failed'] else '')
      + (f'; {len(status["missing"])} missing (never started)' if status['missing'] else '')
      + '.\n')
  incomplete = status['unfinished'] + status['failed'] + status['missing']
  if incomplete:
    add('Runs without results (not in the tables; repeat the sweep command to finish them):\n')
    add('| arm | fraction | seed | status | note |\n|---|---|---|---|---|')
    for r in incomplete:
      add(f'| {r["arm"]} | {r["fraction"]:g} | {r["seed"]} | {r["status"]} | {r["note"]} |')
    add('')
  dead = [(r['arm'], r['fraction'], r['constant_seeds']) for r in report['rows']
          if r.get('constant_seeds')]
  if dead:
    add('**Runs that learned nothing**: every test score of these runs is the same number (the '
        'network\'s output does not depend on its input: dead ReLUs or vanished activations), '
        'so their AUC is 0.5 and their sensitivities are those of no detector. They are in the '
        'tables as they are; read them as "this arm failed to train", not as a measurement.\n')
    add('| arm | fraction | seeds |\n|---|---|---|')
    for arm, f, seeds in dead:
      add(f'| {arm} | {f:g} | {", ".join(map(str, seeds))} |')
    add('')
  cost = report['cost']
  add(f'Training cost of the finished runs: {cost["steps"]} steps, {cost["wall_s"]:.0f} s wall '
      'time' + (f' (+ {cost["pretrain_wall_s"]:.0f} s pretraining the source model, '
                f'{cost["pretrain_steps"]} steps)' if cost.get('pretrain_wall_s') else '')
      + '.\n')
  _markdown_statistics(report, add)
  _markdown_points(report, add)
  _markdown_counts(report, add)
  _markdown_pairs(report, add)
  by_source.markdown(report, add, (_ci, _p, _fmt))
  robustness.markdown(report.get('robustness'), add, (_ci, _p))
  _markdown_auto(report, add)
  if report['plots']:
    add('## Plots\n')
    for p in report['plots']:
      add(f'**{p["title"]}**\n\n![{p["title"]}]({p["file"]})\n')
  add('## Files\n')
  add('`report.json` holds everything above; `report.csv` has one row per arm x fraction x '
      'metric (`section=point`) and per pair of arms x fraction x operating point '
      '(`section=pair`, with raw and adjusted p)'
      + ('; per pair of sources x depth x fraction x operating point (`section=source_pair`); '
         'each run folder `<source>/<arm>/<fraction>/<seed>/` (scratch: `<arm>/<fraction>/'
         '<seed>/`) ' if report.get('sources') else '; each run folder '
         '`<arm>/<fraction>/<seed>/` ')
      + 'holds `config.json`, `metrics.jsonl` (training curve), `results.json` (per-unit test '
      'results) and checkpoints.\n')
  return '\n'.join(md)


def _markdown_statistics(report: dict, add: Callable[[str], None]) -> None:
  s = report['statistics']
  add('## How the numbers are made\n')
  add(s['averaging'] + '\n')
  add(f'Pairs of arms: within each training fraction, every pair of arms at every operating '
      f'point. Difference = A − B of the pooled metric, with its 95% paired-bootstrap interval '
      f'over test {report["unit_name"]}s ({s["n_boot"]} resamples). Test: {s["rank_test"]}; '
      f'the per-unit value is {s["per_unit_value"]}. Family: {s["family"]}. Correction: '
      f'{s["correction_name"]} (`report.correction={s["correction"]}`; `bh` selects the '
      f'other). Marks come from the adjusted p only: {s["marks"]}. With few test units no '
      'p-value can be small (the exact signed-rank test on n units cannot go below '
      '2 / 2^n), so an unmarked table may just be too small to decide.\n')


def _markdown_points(report: dict, add: Callable[[str], None]) -> None:
  add('## Results per operating point\n')
  rows = report['rows']
  if not any(r['runs_finished'] for r in rows):
    add('_No run has finished yet._\n')
    return
  points = [p for p in report['points']
            if any(p['key'] in (r.get('metrics') or {}) for r in rows)]
  has_auc = any(p['key'] == 'auc' for p in points)
  for f in sorted({r['fraction'] for r in rows}):
    add(f'### {_fraction_heading(report, f)}\n')
    heads = ['arm', 'seeds'] + [_head(p) for p in points]
    heads += ([] if has_auc else ['test patch AUC']) + ['val AUC', 'steps']
    add('| ' + ' | '.join(heads) + ' |')
    add('|' + '---|' * len(heads))
    for r in (r for r in rows if r['fraction'] == f):
      cells = [_arm(r), f'{r["runs_finished"]}/{r["runs_planned"]}']
      cells += [_ci((r.get('metrics') or {}).get(p['key']), p['digits']) for p in points]
      for k in ([] if has_auc else ['test_auc']) + ['val_auc']:
        e = r.get(k) or {}
        cells.append(_fmt(e.get('mean')) + (f' ± {_fmt(e["sd"])}' if e.get('n', 0) > 1 else ''))
      steps = (r.get('steps') or {}).get('mean')
      cells.append('–' if steps is None else f'{steps:.0f}')
      add('| ' + ' | '.join(cells) + ' |')
    add('')
  sd_points = [p for p in points if any('sd' in ((r.get('metrics') or {}).get(p['key']) or {})
                                        for r in rows)]
  if sd_points:
    add('### Mean ± SD over test images (the paper\'s form)\n')
    fr = sorted({r['fraction'] for r in rows})
    add('| arm | ' + ' | '.join(f'{p["label"]} (f={f:g})' for f in fr for p in sd_points) + ' |')
    add('|---|' + '---|' * (len(fr) * len(sd_points)))
    for arm in dict.fromkeys(r['arm'] for r in rows):
      cells = [arm]
      for f in fr:
        r = next((x for x in rows if x['arm'] == arm and x['fraction'] == f), {})
        for p in sd_points:
          e = (r.get('metrics') or {}).get(p['key']) or {}
          cells.append(f'{e["value"]:.1f} ± {e["sd"]:.1f}' if e.get('sd') is not None
                       else '–')
      add('| ' + ' | '.join(cells) + ' |')
    add('')


def _markdown_counts(report: dict, add: Callable[[str], None]) -> None:
  """Each arm x fraction's table of counts (the app's `counts`, e.g. a confusion matrix)."""
  rows = [r for r in report['rows'] if r.get('counts')]
  if not rows:
    return
  add('## ' + rows[0]['counts'].get('heading', 'Counts') + '\n')
  add(rows[0]['counts']['title'] + '.\n')
  for r in rows:
    t = r['counts']
    add(f'**{r["arm"]}, fraction {r["fraction"]:g}** ({t["n_seeds"]} seed(s))\n')
    add('| true \\ predicted | ' + ' | '.join(map(str, t['columns'])) + ' |')
    add('|---|' + '---|' * len(t['columns']))
    for name, counts in zip(t['rows'], t['counts']):
      add(f'| {name} | ' + ' | '.join(str(int(c)) for c in counts) + ' |')
    add('')


def _markdown_pairs(report: dict, add: Callable[[str], None]) -> None:
  tables = report['pairs']
  if not tables:
    return
  s = report['statistics']
  add('## All pairs of arms\n')
  add(f'One table per training fraction and operating point; p (raw) is the {s["rank_test"]}, '
      f'p (adj.) its {s["correction_name"]} adjustment within the table; n = '
      f'{report["unit_name"]}s ranked.\n')
  for t in tables:
    better = 'higher' if t['higher_is_better'] else 'lower'
    add(f'### Fraction {t["fraction"]:g}: {t["label"]}' + (f' ({t["unit"]})' if t['unit'] else '')
        + f' — {better} is better\n')
    add('| arm A | arm B | A − B [95% CI] | n | W | p (raw) | p (adj.) | mark |')
    add('|---|---|---|---|---|---|---|---|')
    digits = 1 if t['unit'] == 'µm' else 3
    for x in t['rows']:
      diff = _ci({'value': x.get('difference'), 'low': x.get('low'), 'high': x.get('high')},
                 digits)
      add(f'| {x["a"]} | {x["b"]} | {diff} | {x.get("n", 0)} | {_fmt(x.get("statistic"), 1)} | '
          f'{_p(x.get("p_raw"))} | {_p(x.get("p_adjusted"))} | {x.get("mark") or ""} |')
    add('')


def _deviation_note(report: dict) -> str:
  """Plain list of where this run departs from the paper's protocol."""
  weights = report.get('weights') or []
  s = report.get('settings') or {}
  notes = []
  alexnet = (report.get('arch') or '').startswith('alexnet')
  if alexnet and s.get('input_size') and s['input_size'] != 227:
    notes.append(f'AlexNet input {s["input_size"]}x{s["input_size"]} instead of the paper\'s '
                 '227x227 (to fit a CPU time budget); every layer and filter count is the '
                 'paper\'s, but the feature map before fc6 is smaller, so fc6 has fewer weights.')
  elif not alexnet and s.get('input_size') and s['input_size'] != 227:
    notes.append(f'Network input {s["input_size"]}x{s["input_size"]} instead of the paper\'s '
                 '227x227 (to fit a CPU time budget; every layer and filter count unchanged).')
  views = s.get('views')
  if views and views['n'] != 216:
    notes.append(f'{views["n"]} view(s) per candidate (scales '
                 f'{", ".join(f"{x:g}" for x in views["scales"])}; {views["shifts"]} shift(s); '
                 f'{views["orientations"]} orientation(s)) instead of the paper\'s 216 (3 scales '
                 'x 9 shifts x 8 orientations), in training and at test time.')
  if s.get('test_share') not in (None, 0.5):
    notes.append(f'{s["test_share"]:.0%} of the units held out for testing instead of about '
                 'half, as the paper did.')
  if s.get('width') not in (None, 1.0):
    notes.append(f'Network width x{s["width"]} (fewer filters per layer than the paper).')
  if any(w.get('source_format') == PRETEXT_FORMAT for w in weights):
    notes.append('Source model: offline pretext training on natural photos instead of ImageNet '
                 '(see "Source weights").')
  if s.get('base_lr') not in (None, 0.001):
    notes.append(f'Learning rate {s["base_lr"]:g} (head x{s.get("head_lr_mult"):g} when '
                 'fine-tuning) instead of the paper\'s 0.001 (head 0.01), to learn in few steps.')
  if s.get('scratch_base_lr') not in (None, s.get('base_lr')):
    notes.append(f'Scratch arms learn at {s["scratch_base_lr"]:g} in every layer '
                 f'(sweep.scratch_lr_mult), not at the fine-tuning rate {s.get("base_lr"):g} '
                 'the paper used for scratch too, so that they learn in the shortened schedule.')
  if s.get('init_scheme') not in (None, '', 'gaussian'):
    notes.append(f'Scratch layers and the new head use {s["init_scheme"]} initialisation '
                 'instead of the BVLC Gaussian one (faster start in a short run).')
  if (s.get('eval_col_stride') or 1) > 1:  # a CIMT setting (other apps have no such field)
    notes.append(f'Test boundaries from every {s["eval_col_stride"]}th ROI column, '
                 'interpolated in between (the paper classifies every column).')
  steps = [r.get('steps', {}).get('mean') for r in report['rows'] if r.get('steps')]
  steps = [x for x in steps if x]
  if steps and max(steps) < 2000:
    notes.append(f'Short training: at most {max(steps):.0f} steps per arm; differences between '
                 'arms at this length reflect speed of learning as much as final quality.')
  return '\n'.join(f'- {n}' for n in notes)



def _markdown_auto(report: dict, add: Callable[[str], None]) -> None:
  auto = report.get('auto')
  if not auto:
    return
  add('## Automatic depth choice\n')
  add(f'Fraction {auto["fraction"]:g}, seed {auto["seed"]}: starting at fc8 and deepening one '
      f'unit at a time while validation AUC rose by more than {auto["tolerance"]:g}; every '
      'depth restarts from the pretrained weights with the full step budget (so each is the '
      f'sweep\'s arm of that name). Stopped: {auto["stopped"]}.\n')
  add('| depth | val AUC | test patch AUC | steps | wall s | reused |\n|---|---|---|---|---|---|')
  for p in auto['curve']:
    name = f'**{p["arm"]}** (chosen)' if p['arm'] == auto['chosen'] else p['arm']
    add(f'| {name} | {_fmt(p["val_auc"], 4)} | {_fmt(p["test_auc"], 4)} | {p["steps"]} | '
        f'{_fmt(p["wall_s"], 0)} | {"yes" if p["reused"] else "no"} |')
  add('')
  add(f'Chosen depth **{auto["chosen"]}** (validation AUC {auto["chosen_val_auc"]:.4f}); '
      f'cost {auto["total_steps"]} steps, {auto["total_wall_s"]:.0f} s over '
      f'{auto["depths_visited"]} of {auto["depths_available"]} depths.\n')
  vs = auto.get('versus_sweep')
  if vs:
    share = auto['total_steps'] / vs['sweep_steps'] if vs['sweep_steps'] else float('nan')
    metric = next((m['label'] for m in report['points']
                   if m['key'] == report['primary_metric']), 'test patch AUC')
    add(f'Against the sweep\'s fine-tuning arms at the same fraction and seed '
        f'({", ".join(vs["sweep_arms"])}'
        + ('' if vs['sweep_complete'] else ', not all finished yet')
        + f'): they cost {vs["sweep_steps"]} steps and {vs["sweep_wall_s"]:.0f} s; auto cost '
        f'{auto["total_steps"]} steps ({share:.0%} of that) and {auto["total_wall_s"]:.0f} s. '
        f'Best of those arms by validation AUC: {vs["best_by_validation"]}; by test {metric}: '
        f'{vs["best_by_test"]} ({_fmt(vs["best_test"])}). Auto\'s choice {auto["chosen"]}: '
        f'{_fmt(vs["chosen_test"])}; scratch: {_fmt(vs["scratch_test"])}.\n')
