"""The report's figures in the paper's form (matplotlib, Agg backend, PNG).

  depth.png               primary metric (and AUC) vs tuning depth, one line per fraction
  froc_f<f>.png / roc_f<f>.png   the app's curve on its declared axis (FROC: log 1e-4..10
                          FP/frame for polyps as Fig. 2a, 0..10 FP/volume for PE as Fig. 4; ROC
                          to 1 - specificity 0.5 as Fig. 6), 95% bands over test units, the
                          operating points and the candidate-recall ceiling marked
  roc_panels_f<f>.png     the app's further curves, one panel each (frames with K > 2 classes:
                          each class's one-vs-rest ROC), one line per arm
  box_f<f>.png            box plots of per-image values with mean and SD per box (Fig. 9)
  convergence_f<f>.png    validation AUC vs mini-batches on a log axis: the deepest
                          fine-tuning arm against each scratch arm (init scheme) (Fig. 10)
  auto_depth.png          the automatic depth choice
  sources_f<f>.png        several sources (`sweep.sources`): the metric vs tuning depth, one
                          line per source, scratch as a horizontal reference
Every figure has a title, axis labels with units and a legend. What is drawn is read from the
application's declaration (`medft.apps`), never from the shape of the results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib
from absl import logging

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medft import apps, tuning  # noqa: E402
from medft.report import stats  # noqa: E402
from medft.report.runs import RunRecord, metrics_rows  # noqa: E402

BAND_BOOT = 200
DPI = 110
GRID_POINTS = 200


def _save(fig, plots_dir: Path, name: str, title: str, out: list) -> None:
  plots_dir.mkdir(parents=True, exist_ok=True)
  fig.savefig(plots_dir / name, dpi=DPI, bbox_inches='tight')
  plt.close(fig)
  out.append({'file': f'{plots_dir.name}/{name}', 'title': title})


def _ftag(f: float) -> str:
  return f'{f:g}'.replace('.', 'p')


def make_all(plots_dir: Path, spec: apps.Spec | None, points: Sequence[apps.Point],
             rows: Sequence[dict], groups: dict, arms: Sequence[str],
             fractions: Sequence[float], finished: Sequence[RunRecord],
             auto: dict | None, compared: dict | None = None) -> list[dict]:
  """Draws every figure the data allow; returns [{'file': 'plots/x.png', 'title'}].
  `compared`: report.json `sources` (a sweep of several sources), else None."""
  out: list[dict] = []
  if not finished or spec is None:
    return out

  def draw(fn, *args) -> None:
    try:
      fn(*args)
    except ValueError as e:  # e.g. a split without lesions: the other figures still come
      plt.close('all')
      logging.warning('Plot %s skipped: %s', fn.__name__, e)

  draw(_depth_plot, plots_dir, spec, points, rows, arms, out)
  for f in fractions:
    present = [a for a in arms if groups.get((f, a))]
    if not present:
      continue
    units = {a: stats.seed_units(spec, [(r.seed, r.results['test']) for r in groups[(f, a)]
                                        if r.results.get('test')])[1] for a in present}
    units = {a: u for a, u in units.items() if u}
    if units and spec.curve is not None and spec.curve_axis is not None:
      draw(_curve_plot, plots_dir, spec, f, units, rows, groups, out)
    if units and spec.panels is not None and spec.curve_axis is not None:
      draw(_panels_plot, plots_dir, spec, f, units, groups, out)
    if units and spec.box_keys:
      draw(_box_plot, plots_dir, spec, points, f, units, out)
    draw(_convergence_plot, plots_dir, f, present, groups, rows, out)
    if compared:
      draw(_sources_plot, plots_dir, spec, points, rows, f, compared, out)
  if auto and auto.get('curve'):
    draw(_auto_plot, plots_dir, auto, out)
  return out


def _depth_plot(plots_dir: Path, spec: apps.Spec, points: Sequence[apps.Point],
                rows: Sequence[dict], arms: Sequence[str], out: list) -> None:
  """The first two compared points vs tuning depth, one line per training fraction."""
  panels = [p for p in points if p.compared
            and any(p.key in (r.get('metrics') or {}) for r in rows)][:2]
  if not panels:
    return
  fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
  x = np.arange(len(arms))
  for ax, p in zip(axes[0], panels):
    for f in sorted({r['fraction'] for r in rows}):
      y, lo, hi = [], [], []
      for a in arms:
        r = next((r for r in rows if r['fraction'] == f and r['arm'] == a), {})
        e = (r.get('metrics') or {}).get(p.key) or {}
        v = e.get('value')
        y.append(np.nan if v is None else v)
        lo.append(0.0 if v is None or e.get('low') is None else v - e['low'])
        hi.append(0.0 if v is None or e.get('high') is None else e['high'] - v)
      y = np.asarray(y, float)
      ok = np.isfinite(y)
      if ok.any():
        ax.errorbar(x[ok], y[ok], yerr=np.asarray([lo, hi])[:, ok], marker='o', capsize=3,
                    label=f'fraction {f:g}')
    ax.set_xticks(x, arms, rotation=30)
    tuned = [a for a in arms if not tuning.is_scratch(a)]
    ax.set_xlabel('arm (scratch, then fine-tuning from the head'
                  + (f' {tuned[0]} down to all layers)' if tuned else ')'))
    ax.set_ylabel(p.label + (f' ({p.unit})' if p.unit else ''))
    ax.set_title(f'{p.label} vs tuning depth')
    ax.grid(alpha=0.3)
    ax.legend(title='training set')
  fig.suptitle('Test metric per arm (95% bootstrap CI over test '
               f'{spec.unit_name}s)', y=1.02)
  _save(fig, plots_dir, 'depth.png', 'Test metric vs tuning depth, one line per fraction', out)


def _sources_plot(plots_dir: Path, spec: apps.Spec, points: Sequence[apps.Point],
                  rows: Sequence[dict], f: float, compared: dict, out: list) -> None:
  """The first two compared points vs tuning depth at one fraction: one line per source (95%
  bootstrap interval over test units), each scratch arm a horizontal line with its band."""
  from medft.report import by_source  # noqa: PLC0415
  from medft.sources import qualified  # noqa: PLC0415
  at = {r['arm']: r for r in rows if r['fraction'] == f}
  panels = [p for p in points if p.compared
            and any(p.key in (r.get('metrics') or {}) for r in at.values())][:2]
  depths, names = compared['depths'], [s['name'] for s in compared['sources']]
  if not panels or not depths:
    return
  fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
  x = np.arange(len(depths))
  for ax, p in zip(axes[0], panels):
    for k, name in enumerate(names):
      entries = [((at.get(qualified(name, d)) or {}).get('metrics') or {}).get(p.key) or {}
                 for d in depths]
      y = np.asarray([np.nan if e.get('value') is None else e['value'] for e in entries])
      err = np.asarray([[0.0 if e.get('value') is None or e.get(b) is None
                         else abs(e['value'] - e[b]) for e in entries] for b in ('low', 'high')])
      ok = np.isfinite(y)
      if ok.any():  # a small shift per source keeps overlapping intervals apart
        ax.errorbar(x[ok] + 0.06 * (k - (len(names) - 1) / 2), y[ok], yerr=err[:, ok],
                    marker='o', capsize=3, color=f'C{k}', label=f'source {name}')
    for j, (arm, e) in enumerate(by_source.scratch_reference(rows, f, p.key)):
      color = f'C{len(names) + j}'
      ax.axhline(e['value'], color=color, ls='--', lw=1.2, label=f'{arm} (no source)')
      if e.get('low') is not None and e.get('high') is not None:
        ax.axhspan(e['low'], e['high'], color=color, alpha=0.08)
    ax.set_xticks(x, depths, rotation=30)
    ax.set_xlabel(f'fine-tuning depth (from the head {depths[0]} down to {depths[-1]})')
    ax.set_ylabel(p.label + (f' ({p.unit})' if p.unit else ''))
    ax.set_title(f'{p.label} vs depth per source, fraction {f:g}')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle('Which source, and how deep? (95% bootstrap CI over test '
               f'{spec.unit_name}s)', y=1.02)
  _save(fig, plots_dir, f'sources_f{_ftag(f)}.png',
        f'Test metric vs tuning depth, one line per source, scratch as reference (fraction '
        f'{f:g})', out)


def _seed_mean_curve(spec: apps.Spec, units: Sequence[Sequence[Any]],
                     grid: np.ndarray) -> np.ndarray:
  return np.mean([spec.curve([u[s] for u in units], grid) for s in range(len(units[0]))], axis=0)


def _curves_by_counts(spec: apps.Spec, units: Sequence[Sequence[Any]],
                      grid: np.ndarray) -> list | None:
  """Per seed, the curve of a resample given as draws per unit (None: resample the lists)."""
  if spec.curve_by_counts is None:
    return None
  try:
    return [spec.curve_by_counts([u[s] for u in units], grid) for s in range(len(units[0]))]
  except ValueError:
    return None


def _curve_plot(plots_dir: Path, spec: apps.Spec, f: float, units: dict, rows: Sequence[dict],
                groups: dict, out: list) -> None:
  """FROC or ROC per arm on the declared axis, with a 95% band over resampled test units."""
  axis = spec.curve_axis
  grid = (np.geomspace(axis.low, axis.high, GRID_POINTS) if axis.scale == 'log'
          else np.linspace(axis.low, axis.high, GRID_POINTS))
  fig, ax = plt.subplots(figsize=(7.5, 5.2))
  kind = 'FROC' if 'froc' in spec.plots else 'ROC'
  # A FROC is a step function of the threshold; an ROC is read piecewise-linearly.
  style = 'steps-post' if kind == 'FROC' else 'default'
  rng = np.random.default_rng(0)
  ceilings: dict[float, list[str]] = {}
  for k, (arm, us) in enumerate(units.items()):
    boots = []
    by_counts = _curves_by_counts(spec, us, grid)
    for _ in range(BAND_BOOT):
      index = rng.integers(len(us), size=len(us))
      try:
        boots.append(np.mean([f(np.bincount(index, minlength=len(us))) for f in by_counts],
                             axis=0) if by_counts else
                     _seed_mean_curve(spec, [us[i] for i in index], grid))
      except ValueError:  # a resample without lesions / one class
        continue
    ax.plot(grid, _seed_mean_curve(spec, us, grid), color=f'C{k}', label=arm, drawstyle=style)
    if boots:
      low, high = np.percentile(boots, [2.5, 97.5], axis=0)
      ax.fill_between(grid, low, high, step='post' if kind == 'FROC' else None, color=f'C{k}',
                      alpha=0.12)
    row = next((r for r in rows if r['fraction'] == f and r['arm'] == arm), {})
    ceiling = ((row.get('metrics') or {}).get(spec.ceiling_key) or {}).get('value')
    if ceiling is not None:  # the same candidates for every arm: usually one line
      ceilings.setdefault(round(ceiling, 4), []).append(arm)
  for j, (ceiling, names) in enumerate(ceilings.items()):
    ax.axhline(ceiling, color='k', ls='--', lw=1,
               label=f'candidate recall {ceiling:.2f} (ceiling'
               + (f', {", ".join(names)})' if len(ceilings) > 1 else ')'))
  first = next(r.results['test'] for a in units for r in groups[(f, a)] if r.results.get('test'))
  for j, x in enumerate(spec.curve_marks(first) if spec.curve_marks else ()):
    ax.axvline(x, color='grey', ls=':', lw=1, label='operating points' if j == 0 else None)
  ax.set_xscale(axis.scale)
  ax.set_xlim(axis.low, axis.high)
  ax.set_ylim(0, 1.02)
  ax.set_xlabel(axis.label + (' (log scale)' if axis.scale == 'log' else ''))
  ax.set_ylabel(spec.curve_ylabel)
  ax.set_title(f'{kind} per arm, training fraction {f:g}\n(shaded: 95% bootstrap band over '
               f'test {spec.unit_name}s)')
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8, loc='lower right' if kind == 'ROC' else 'best')
  name = f'{kind.lower()}_f{_ftag(f)}.png'
  _save(fig, plots_dir, name, f'{kind} curves per arm on the paper\'s axis ({axis.scale} '
        f'{axis.low:g}..{axis.high:g}; fraction {f:g})', out)


def _panels_plot(plots_dir: Path, spec: apps.Spec, f: float, units: dict, groups: dict,
                 out: list) -> None:
  """`spec.panels`: one panel per further curve (e.g. per class), one line per arm (the mean
  over seeds, no band)."""
  first = next(r.results['test'] for a in units for r in groups[(f, a)] if r.results.get('test'))
  panels = list(spec.panels(first))
  if not panels:
    return
  axis = spec.curve_axis
  grid = (np.geomspace(axis.low, axis.high, GRID_POINTS) if axis.scale == 'log'
          else np.linspace(axis.low, axis.high, GRID_POINTS))
  fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
  for ax, (title, curve) in zip(axes[0], panels):
    for k, (arm, us) in enumerate(units.items()):
      try:
        y = np.mean([curve([u[s] for u in us], grid) for s in range(len(us[0]))], axis=0)
      except ValueError:  # e.g. no frame of this class in the test split
        continue
      ax.plot(grid, y, color=f'C{k}', label=arm)
    ax.set_xscale(axis.scale)
    ax.set_xlim(axis.low, axis.high)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(axis.label)
    ax.set_ylabel(spec.curve_ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8, loc='lower right')
  fig.suptitle(f'Per-class curves per arm, training fraction {f:g} (mean over seeds)', y=1.02)
  _save(fig, plots_dir, f'roc_panels_f{_ftag(f)}.png',
        f'Per-class curves per arm ({", ".join(t for t, _ in panels)}; fraction {f:g})', out)


def _box_plot(plots_dir: Path, spec: apps.Spec, points: Sequence[apps.Point], f: float,
              units: dict, out: list) -> None:
  """Per-item values (CIMT: per test image, seed-averaged) per arm, with mean and SD."""
  keys = [p for p in points if p.key in spec.box_keys]
  fig, axes = plt.subplots(1, len(keys), figsize=(6.2 * len(keys), 4.8), squeeze=False)
  arms = list(units)
  for ax, p in zip(axes[0], keys):
    data = [spec.items(units[a], p.key) for a in arms]
    ax.boxplot([d if d.size else [np.nan] for d in data])
    x = np.arange(1, len(arms) + 1)
    means = np.asarray([d.mean() if d.size else np.nan for d in data])
    sds = np.asarray([d.std(ddof=1) if d.size > 1 else 0.0 for d in data])
    ax.errorbar(x + 0.25, means, yerr=sds, fmt='D', color='C3', capsize=4, ms=5)
    top = max(max(float(np.nanmax(d)), m + s) if d.size else 0.0  # above whiskers and SD bars
              for d, m, s in zip(data, means, sds))
    for xi, m, s in zip(x, means, sds):
      if np.isfinite(m):
        ax.text(xi, top * 1.04, f'{m:.0f}±{s:.0f}', ha='center', va='bottom', fontsize=8)
    ax.set_ylim(top=top * 1.15 if top > 0 else 1)
    ax.set_xticks(x, arms, rotation=30)
    ax.set_xlabel('arm')
    ax.set_ylabel(f'{p.label} per test image ({p.unit})')
    ax.set_title(f'{p.label} (red diamond and bar, and text: mean ± SD)')
    ax.grid(alpha=0.3, axis='y')
  fig.suptitle(f'Boundary error per arm, training fraction {f:g} (box: quartiles and median; '
               'whiskers: 1.5 IQR)', y=1.02)
  _save(fig, plots_dir, f'box_f{_ftag(f)}.png',
        f'Box plots of per-image errors with mean ± SD per arm (fraction {f:g})', out)


def _convergence_plot(plots_dir: Path, f: float, arms: Sequence[str], groups: dict,
                      rows: Sequence[dict], out: list) -> None:
  """Validation AUC vs mini-batches (log axis): the deepest fine-tuning arm and each scratch
  arm (one line per init scheme), as the paper's Fig. 10; one line per seed."""
  tuned = [a for a in arms if not tuning.is_scratch(a)]
  shown = [a for a in arms if tuning.is_scratch(a)] + tuned[-1:]
  fig, ax = plt.subplots(figsize=(7.5, 4.6))
  drawn = False
  for k, a in enumerate(shown):
    row = next((r for r in rows if r['fraction'] == f and r['arm'] == a), {})
    label = a + (f' ({row["init_scheme"]} init)' if a == 'scratch' and row.get('init_scheme')
                 else '') + ('' if tuning.is_scratch(a) else ' (deepest fine-tuning)')
    for j, r in enumerate(sorted(groups[(f, a)], key=lambda r: r.seed)):
      points = [x for x in metrics_rows(r.dir) if 'val_auc' in x and x.get('step', 0) > 0]
      if points:
        ax.plot([x['step'] for x in points], [x['val_auc'] for x in points], marker='.',
                color=f'C{k}', alpha=1.0 if j == 0 else 0.4, label=label if j == 0 else None)
        drawn = True
  if not drawn:
    plt.close(fig)
    return
  ax.set_xscale('log')
  ax.set_xlabel('mini-batches (training steps, log scale)')
  ax.set_ylabel('validation AUC')
  ax.set_title(f'Convergence: deepest fine-tuning vs scratch per init scheme, fraction {f:g}')
  ax.grid(alpha=0.3, which='both')
  ax.legend(title='arm (one line per seed)', fontsize=8)
  _save(fig, plots_dir, f'convergence_f{_ftag(f)}.png',
        f'Validation AUC vs mini-batches (log), deepest fine-tuning vs scratch (fraction {f:g})',
        out)


def _auto_plot(plots_dir: Path, auto: dict, out: list) -> None:
  curve: list[dict[str, Any]] = auto['curve']
  fig, ax = plt.subplots(figsize=(6.5, 4.4))
  x = np.arange(len(curve))
  ax.plot(x, [p['val_auc'] for p in curve], marker='o', label='validation AUC')
  chosen = [i for i, p in enumerate(curve) if p['arm'] == auto['chosen']]
  ax.plot(x[chosen], [curve[i]['val_auc'] for i in chosen], 'r*', ms=16, label='chosen depth')
  best = curve[chosen[0]]['val_auc'] if chosen else None
  if best is not None:
    ax.axhline(best + auto['tolerance'], color='grey', ls='--', lw=1,
               label=f'chosen + tolerance ({auto["tolerance"]:g})')
  ax.set_xticks(x, [p['arm'] for p in curve])
  ax.set_xlabel('fine-tuning depth (lowest trained unit), visited in order')
  ax.set_ylabel('best validation patch AUC')
  ax.set_title(f'Automatic depth choice (fraction {auto["fraction"]:g}, seed {auto["seed"]})')
  ax.grid(alpha=0.3)
  ax.legend()
  _save(fig, plots_dir, 'auto_depth.png', 'Automatic depth choice: validation AUC per depth',
        out)
