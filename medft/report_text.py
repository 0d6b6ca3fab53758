"""The report's text: report.md (tables, comparisons, auto section, plots) and report.csv.

Both are rendered from the dict `medft.report.build_report` assembles (report.json), plus the
application object that names the metrics.
"""

from __future__ import annotations

import csv
import io
import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
  from medft.report import App

PRETEXT_FORMAT = 'medft-pretext'


# ---- writers -----------------------------------------------------------------------------


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
  if p is None:
    return '–'
  return f'{p:.3g}' + (' *' if p < 0.05 else '')


def _versus(c: dict) -> str:
  return c['versus'] if c['versus'] == c['reference'] else f'{c["versus"]} ({c["reference"]})'


def csv_table(app: App, rows: Sequence[dict], comparisons: Sequence[dict]) -> str:
  extra_keys = sorted({k for r in rows for k in (r.get('extra') or {})})
  header = ['fraction', 'arm', 'runs_finished', 'runs_planned', 'seeds', 'is_best']
  for m in app.metrics:
    header += [m.key, f'{m.key}_low', f'{m.key}_high']
  header += ['test_auc', 'test_auc_sd', 'val_auc', 'val_auc_sd', 'steps_mean', 'wall_s_mean']
  header += extra_keys
  comp_keys = ('li_error_um', 'ma_error_um') if app.name == 'cimt' else (app.primary,)
  for ref in ('scratch', 'best'):
    for k in comp_keys:
      header += [f'vs_{ref}_{k}_diff', f'vs_{ref}_{k}_low', f'vs_{ref}_{k}_high',
                 f'vs_{ref}_{k}_p_bootstrap']
      if app.name == 'cimt':
        header.append(f'vs_{ref}_{k}_p_wilcoxon')
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=header, extrasaction='ignore')
  writer.writeheader()
  for r in rows:
    out = {k: r.get(k) for k in ('fraction', 'arm', 'runs_finished', 'runs_planned',
                                 'is_best')}
    out['seeds'] = ' '.join(str(s) for s in r.get('seeds', []))
    for m in app.metrics:
      e = (r.get('metrics') or {}).get(m.key) or {}
      out[m.key], out[f'{m.key}_low'], out[f'{m.key}_high'] = (e.get('value'), e.get('low'),
                                                               e.get('high'))
    for k in ('test_auc', 'val_auc'):
      out[k], out[f'{k}_sd'] = (r.get(k) or {}).get('mean'), (r.get(k) or {}).get('sd')
    out['steps_mean'] = (r.get('steps') or {}).get('mean')
    out['wall_s_mean'] = (r.get('wall_s') or {}).get('mean')
    for k in extra_keys:
      out[k] = ((r.get('extra') or {}).get(k) or {}).get('value')
    for c in comparisons:
      if c['fraction'] != r['fraction'] or c['arm'] != r['arm']:
        continue
      for k in comp_keys:
        b = (c.get(k) or {}).get('bootstrap') or {}
        prefix = f'vs_{c["versus"]}_{k}'
        out[f'{prefix}_diff'], out[f'{prefix}_low'], out[f'{prefix}_high'] = (
            b.get('difference'), b.get('low'), b.get('high'))
        out[f'{prefix}_p_bootstrap'] = b.get('p_value')
        if app.name == 'cimt':
          out[f'{prefix}_p_wilcoxon'] = ((c.get(k) or {}).get('wilcoxon') or {}).get('p_value')
    writer.writerow(out)
  return buf.getvalue()


def markdown(report: dict, app: App) -> str:
  md: list[str] = []
  add = md.append
  runs = report['runs']
  status = {s: [r for r in runs if r['status'] == s]
            for s in ('finished', 'unfinished', 'failed', 'missing')}
  add(f'# Full training or fine-tuning? — {report.get("dataset") or "study"} '
      f'({report.get("arch") or "?"})\n')
  add(f'Generated {report["generated"]} from `{report["sweep_dir"]}`. Application: '
      f'**{app.name}**. Reproduces the design of Tajbakhsh et al. (IEEE TMI 2016): one network '
      'trained from scratch versus fine-tuned layer-wise from pretrained weights (arm `fc8` = '
      'only the new head trains, `fc7` = fc7 and fc8, ..., `conv1` = every layer), at several '
      'training-set fractions.\n')
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
  cost = report['cost']
  add(f'Training cost of the finished runs: {cost["steps"]} steps, {cost["wall_s"]:.0f} s wall '
      'time' + (f' (+ {cost["pretrain_wall_s"]:.0f} s pretraining the source model, '
                f'{cost["pretrain_steps"]} steps)' if cost.get('pretrain_wall_s') else '')
      + '.\n')
  add('## Results\n')
  add(report['averaging'] + '\n')
  rows = report['rows']
  if not any(r['runs_finished'] for r in rows):
    add('_No run has finished yet._\n')
  metric_heads = [m['label'] + (f' ({m["unit"]})' if m['unit'] else '')
                  for m in report['metrics']]
  extra_keys = sorted({k for r in rows for k in (r.get('extra') or {})})
  for f in sorted({r['fraction'] for r in rows}):
    units = max((r.get('n_units') or 0 for r in rows if r['fraction'] == f), default=0)
    add(f'### Training fraction {f:g}' + (f' ({units} test units)' if units else '') + '\n')
    heads = ['arm', 'seeds'] + metric_heads + ['test patch AUC', 'val AUC', 'steps'] + extra_keys
    add('| ' + ' | '.join(heads) + ' |')
    add('|' + '---|' * len(heads))
    for r in (r for r in rows if r['fraction'] == f):
      name = f'**{r["arm"]}** (best)' if r.get('is_best') else r['arm']
      cells = [name, f'{r["runs_finished"]}/{r["runs_planned"]}']
      cells += [_ci((r.get('metrics') or {}).get(m['key']), 1 if m['unit'] == 'µm' else 3)
                for m in report['metrics']]
      for k in ('test_auc', 'val_auc'):
        e = r.get(k) or {}
        cells.append(_fmt(e.get('mean')) + (f' ± {_fmt(e["sd"])}' if e.get('n', 0) > 1 else ''))
      steps = (r.get('steps') or {}).get('mean')
      cells.append('–' if steps is None else f'{steps:.0f}')
      cells += [_ci((r.get('extra') or {}).get(k)) for k in extra_keys]
      add('| ' + ' | '.join(cells) + ' |')
    add('')
  if app.name == 'cimt':
    add('### CIMT table in the paper\'s form\n')
    add('Boundary error in µm, mean ± SD over test images (seed-averaged per image).\n')
    fr = sorted({r['fraction'] for r in rows})
    add('| arm | ' + ' | '.join(f'LI error (f={f:g}) | MA error (f={f:g})' for f in fr) + ' |')
    add('|---|' + '---|---|' * len(fr))
    for arm in dict.fromkeys(r['arm'] for r in rows):
      cells = [arm]
      for f in fr:
        r = next((x for x in rows if x['arm'] == arm and x['fraction'] == f), {})
        for k in ('li_error_um', 'ma_error_um'):
          e = (r.get('metrics') or {}).get(k) or {}
          cells.append(f'{e["value"]:.1f} ± {e["sd"]:.1f}' if e.get('value') is not None
                       else '–')
      add('| ' + ' | '.join(cells) + ' |')
    add('')
  _markdown_comparisons(report, app, add)
  _markdown_auto(report, app, add)
  if report['plots']:
    add('## Plots\n')
    for p in report['plots']:
      add(f'**{p["title"]}**\n\n![{p["title"]}]({p["file"]})\n')
  add('## Files\n')
  add('`report.json` holds everything above (with per-comparison statistics); `report.csv` has '
      'one row per arm and fraction; each run folder `<arm>/<fraction>/<seed>/` holds '
      '`config.json`, `metrics.jsonl` (training curve), `results.json` (per-image/per-unit '
      'test results) and checkpoints.\n')
  return '\n'.join(md)


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
  if s.get('width') not in (None, 1.0):
    notes.append(f'Network width x{s["width"]} (fewer filters per layer than the paper).')
  if any(w.get('source_format') == PRETEXT_FORMAT for w in weights):
    notes.append('Source model: offline pretext training on natural photos instead of ImageNet '
                 '(see "Source weights").')
  if s.get('base_lr') not in (None, 0.001):
    notes.append(f'Learning rate {s["base_lr"]:g} (head x{s.get("head_lr_mult"):g} when '
                 'fine-tuning) instead of the paper\'s 0.001 (head 0.01), to learn in few steps.')
  if s.get('init_scheme') not in (None, '', 'gaussian'):
    notes.append(f'Scratch layers and the new head use {s["init_scheme"]} initialisation '
                 'instead of the BVLC Gaussian one (faster start in a short run).')
  if report.get('app') == 'cimt' and (s.get('eval_col_stride') or 1) > 1:
    notes.append(f'Test boundaries from every {s["eval_col_stride"]}th ROI column, '
                 'interpolated in between (the paper classifies every column).')
  steps = [r.get('steps', {}).get('mean') for r in report['rows'] if r.get('steps')]
  steps = [x for x in steps if x]
  if steps and max(steps) < 2000:
    notes.append(f'Short training: at most {max(steps):.0f} steps per arm; differences between '
                 'arms at this length reflect speed of learning as much as final quality.')
  return '\n'.join(f'- {n}' for n in notes)


def _markdown_comparisons(report: dict, app: App, add: Callable[[str], None]) -> None:
  comps = [c for c in report['comparisons'] if 'error' not in c]
  if not comps:
    if report['comparisons']:
      add('## Paired comparisons\n\nNot available: ' + report['comparisons'][0]['error'] + '.\n')
    return
  add('## Paired comparisons\n')
  if app.name == 'cimt':
    add('Difference = arm − reference in mean error (µm; negative = the arm is better). '
        '95% interval and p from a paired bootstrap over test subjects; Wilcoxon p from the '
        'signed-rank test over test images. * = p < 0.05.\n')
    add('| fraction | arm | vs | LI diff [95% CI] | LI p (boot) | LI p (Wilcoxon) | '
        'MA diff [95% CI] | MA p (boot) | MA p (Wilcoxon) |')
    add('|---|---|---|---|---|---|---|---|---|')
    for c in comps:
      cells = [f'{c["fraction"]:g}', c['arm'], _versus(c)]
      for k in ('li_error_um', 'ma_error_um'):
        b = (c.get(k) or {}).get('bootstrap') or {}
        w = (c.get(k) or {}).get('wilcoxon') or {}
        cells += [_ci({'value': b.get('difference'), 'low': b.get('low'),
                       'high': b.get('high')}, 1), _p(b.get('p_value')), _p(w.get('p_value'))]
      add('| ' + ' | '.join(cells) + ' |')
  else:
    add(f'Difference = arm − reference in {app.primary} (positive = the arm is better); 95% '
        'interval and p from a paired bootstrap over test units. * = p < 0.05.\n')
    add('| fraction | arm | vs | difference [95% CI] | p |\n|---|---|---|---|---|')
    for c in comps:
      b = (c.get(app.primary) or {}).get('bootstrap') or {}
      add(f'| {c["fraction"]:g} | {c["arm"]} | {_versus(c)} | '
          + _ci({'value': b.get('difference'), 'low': b.get('low'), 'high': b.get('high')})
          + f' | {_p(b.get("p_value"))} |')
  add('')


def _markdown_auto(report: dict, app: App, add: Callable[[str], None]) -> None:
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
    metric = next((m['label'] for m in report['metrics'] if m['key'] == app.primary),
                  'test patch AUC')
    add(f'Against the sweep\'s fine-tuning arms at the same fraction and seed '
        f'({", ".join(vs["sweep_arms"])}'
        + ('' if vs['sweep_complete'] else ', not all finished yet')
        + f'): they cost {vs["sweep_steps"]} steps and {vs["sweep_wall_s"]:.0f} s; auto cost '
        f'{auto["total_steps"]} steps ({share:.0%} of that) and {auto["total_wall_s"]:.0f} s. '
        f'Best of those arms by validation AUC: {vs["best_by_validation"]}; by test {metric}: '
        f'{vs["best_by_test"]} ({_fmt(vs["best_test"])}). Auto\'s choice {auto["chosen"]}: '
        f'{_fmt(vs["chosen_test"])}; scratch: {_fmt(vs["scratch_test"])}.\n')
