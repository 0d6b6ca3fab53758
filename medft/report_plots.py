"""The report's figures (matplotlib, Agg backend, PNG): each readable without the text.

Every figure has a title, axis labels with units and a legend. Called by `medft.report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import matplotlib
from absl import logging

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medft import metrics  # noqa: E402
from medft.report import (  # noqa: E402
  BAD_DATA,
  App,
  CimtApp,
  ClassificationApp,
  DetectionApp,
  RunRecord,
  _metrics_rows,
  _seed_units,
)

BAND_BOOT = 200
DPI = 110


def _save(fig, plots_dir: Path, name: str, title: str, out: list) -> None:
  plots_dir.mkdir(parents=True, exist_ok=True)
  fig.savefig(plots_dir / name, dpi=DPI, bbox_inches='tight')
  plt.close(fig)
  out.append({'file': f'{plots_dir.name}/{name}', 'title': title})


def _ftag(f: float) -> str:
  return f'{f:g}'.replace('.', 'p')


def make_all(plots_dir: Path, app: App, rows: Sequence[dict], groups: dict, arms: Sequence[str],
             fractions: Sequence[float], finished: Sequence[RunRecord],
             auto: dict | None) -> list[dict]:
  """Draws every figure the data allow; returns [{'file': 'plots/x.png', 'title'}]."""
  out: list[dict] = []
  if not finished:
    return out

  def draw(fn, *args) -> None:
    try:
      fn(*args)
    except BAD_DATA as e:  # a task's odd per-unit data must not cost the whole report
      plt.close('all')
      logging.warning('Plot %s skipped: %s: %s', fn.__name__, type(e).__name__, e)

  draw(_depth_plot, plots_dir, app, rows, arms, out)
  for f in fractions:
    present = [a for a in arms if groups.get((f, a))]
    if not present:
      continue
    if isinstance(app, CimtApp):
      draw(_cimt_boxplot, plots_dir, app, f, present, groups, out)
    elif isinstance(app, DetectionApp):
      draw(_froc_plot, plots_dir, app, f, present, groups, out)
    elif isinstance(app, ClassificationApp):
      draw(_roc_plot, plots_dir, app, f, present, groups, out)
    draw(_curves_plot, plots_dir, f, present, groups, out)
  if auto and auto.get('curve'):
    draw(_auto_plot, plots_dir, auto, out)
  return out


def _depth_plot(plots_dir: Path, app: App, rows: Sequence[dict], arms: Sequence[str],
                out: list) -> None:
  """Metric vs tuning depth (scratch, fc8 ... conv1), one line per training fraction."""
  if isinstance(app, CimtApp):
    panels = [m for m in app.metrics if m.key in ('li_error_um', 'ma_error_um')]
  else:
    panels = [m for m in app.metrics if m.key == app.primary]
  keyed = [(m.key, f'{m.label}' + (f' ({m.unit})' if m.unit else ''), m.label) for m in panels]
  if not any((r.get('metrics') or {}).get(k, {}).get('value') is not None
             for r in rows for k, *_ in keyed):
    keyed = [('test_auc', 'test patch AUC', 'test patch AUC')]
  fig, axes = plt.subplots(1, len(keyed), figsize=(6.2 * len(keyed), 4.4), squeeze=False)
  x = np.arange(len(arms))
  for ax, (key, ylabel, label) in zip(axes[0], keyed):
    for f in sorted({r['fraction'] for r in rows}):
      ys, lo, hi = [], [], []
      for a in arms:
        r = next((r for r in rows if r['fraction'] == f and r['arm'] == a), {})
        if key == 'test_auc':
          e = r.get('test_auc') or {}
          v, s = e.get('mean'), e.get('sd') or 0.0
          ys.append(v)
          lo.append(None if v is None else v - s)
          hi.append(None if v is None else v + s)
        else:
          e = (r.get('metrics') or {}).get(key) or {}
          ys.append(e.get('value'))
          lo.append(e.get('low', e.get('value')))
          hi.append(e.get('high', e.get('value')))
      ok = np.asarray([y is not None for y in ys])
      if not ok.any():
        continue
      y = np.asarray([np.nan if v is None else v for v in ys], float)
      err = np.asarray([[0 if v is None or low is None else v - low for v, low in zip(ys, lo)],
                        [0 if v is None or h is None else h - v for v, h in zip(ys, hi)]])
      ax.errorbar(x[ok], y[ok], yerr=err[:, ok], marker='o', capsize=3,
                  label=f'fraction {f:g}')
    ax.set_xticks(x, arms)
    ax.set_xlabel('arm (scratch, then fine-tuning from the head fc8 down to all layers)')
    ax.set_ylabel(ylabel)
    ax.set_title(f'{label} vs tuning depth')
    ax.grid(alpha=0.3)
    ax.legend(title='training set')
  note = '95% bootstrap CI over test units' if keyed[0][0] != 'test_auc' else 'mean ± SD over seeds'
  fig.suptitle(f'Test metric per arm ({note})', y=1.02)
  _save(fig, plots_dir, 'depth.png', 'Test metric vs tuning depth, one line per fraction', out)


def _cimt_boxplot(plots_dir: Path, app: CimtApp, f: float, arms: Sequence[str], groups: dict,
                  out: list) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
  arm_units = [_arm_units(app, f, a, groups) for a in arms]
  for ax, key, name in zip(axes, ('li_error_um', 'ma_error_um'),
                           ('lumen-intima (LI)', 'media-adventitia (MA)')):
    data = [app.image_errors(key, units) if units else np.zeros(0) for units in arm_units]
    ax.boxplot([d if d.size else [np.nan] for d in data], showmeans=True)
    ax.set_xticks(np.arange(1, len(arms) + 1), arms)
    ax.set_xlabel('arm')
    ax.set_ylabel('boundary error per test image (µm)')
    ax.set_title(f'{name} boundary error')
    ax.grid(alpha=0.3, axis='y')
    ax.plot([], [], 'g^', label='mean')
    ax.plot([], [], color='C1', label='median')
    ax.legend(loc='upper right')
  fig.suptitle(f'CIMT boundary error per arm, training fraction {f:g} '
               '(box: quartiles; whiskers: 1.5 IQR)', y=1.02)
  _save(fig, plots_dir, f'cimt_boxplot_f{_ftag(f)}.png',
        f'CIMT boundary errors per arm (fraction {f:g})', out)


def _arm_units(app: App, f: float, arm: str, groups: dict) -> list:
  """The test units of one arm at fraction `f`, each with its seeds' results."""
  _, units = _seed_units(app, sorted(groups[(f, arm)], key=lambda r: r.seed))
  return units


def _band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  return np.nanpercentile(curves, 2.5, axis=0), np.nanpercentile(curves, 97.5, axis=0)


def _arm_curves(app: App, f: float, arms: Sequence[str], groups: dict,
                curve: Callable[[list], np.ndarray]) -> Iterator[tuple]:
  """Per arm with test units: `(k, arm, units, curve(units), band)`, where `k` is the arm's
  colour index and `band` the 95% band of `curve` over BAND_BOOT resamples of the test units
  (`(low, high)`, or None when every resample's curve is undefined)."""
  rng = np.random.default_rng(0)
  for k, a in enumerate(arms):
    units = _arm_units(app, f, a, groups)
    if not units:
      continue
    boots = []
    for _ in range(BAND_BOOT):
      try:
        boots.append(curve([units[i] for i in rng.integers(len(units), size=len(units))]))
      except ValueError:
        continue
    yield k, a, units, curve(units), _band(np.asarray(boots)) if boots else None


def _froc_plot(plots_dir: Path, app: DetectionApp, f: float, arms: Sequence[str],
               groups: dict, out: list) -> None:
  fig, ax = plt.subplots(figsize=(7.5, 5))
  max_fp = max(app.fp_rates) * 1.25
  grid = np.linspace(0, max_fp, 101)

  def grid_curve(us):
    return np.mean([metrics.froc_on_grid(app.curve([u[s] for u in us]), max_fp)['sensitivity']
                    for s in range(len(us[0]))], axis=0)

  for k, a, _, sensitivity, band in _arm_curves(app, f, arms, groups, grid_curve):
    ax.step(grid, sensitivity, where='post', color=f'C{k}', label=a)
    if band:
      ax.fill_between(grid, *band, step='post', color=f'C{k}', alpha=0.15)
  ax.set_xlabel('false positives per image (frame/volume)')
  ax.set_ylabel('sensitivity (share of lesions detected)')
  ax.set_ylim(0, 1.02)
  ax.set_title(f'FROC per arm, training fraction {f:g}\n(shaded: 95% bootstrap band over test '
               'units)')
  ax.grid(alpha=0.3)
  ax.legend(title='arm')
  _save(fig, plots_dir, f'froc_f{_ftag(f)}.png', f'FROC curves per arm (fraction {f:g})', out)


def _roc_plot(plots_dir: Path, app: ClassificationApp, f: float, arms: Sequence[str],
              groups: dict, out: list) -> None:
  fig, ax = plt.subplots(figsize=(6.5, 6))
  grid = np.linspace(0, 1, 101)

  def tpr_on_grid(us):
    curves = []
    for s in range(len(us[0])):
      fpr, tpr, _ = metrics.roc_curve(*app.pooled([u[s] for u in us]))
      curves.append(np.interp(grid, fpr, tpr))
    return np.mean(curves, axis=0)

  for k, a, units, tpr, band in _arm_curves(app, f, arms, groups, tpr_on_grid):
    auc = app.value(app.primary, units)
    ax.plot(grid, tpr, color=f'C{k}', label=f'{a} (AUC {auc:.3f})')
    if band:
      ax.fill_between(grid, *band, color=f'C{k}', alpha=0.15)
  ax.plot([0, 1], [0, 1], 'k:', lw=1, label='chance')
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate (sensitivity)')
  ax.set_title(f'ROC per arm, training fraction {f:g}\n(shaded: 95% bootstrap band over test '
               'units)')
  ax.grid(alpha=0.3)
  ax.legend(title='arm', loc='lower right')
  _save(fig, plots_dir, f'roc_f{_ftag(f)}.png', f'ROC curves per arm (fraction {f:g})', out)


def _curves_plot(plots_dir: Path, f: float, arms: Sequence[str], groups: dict,
                 out: list) -> None:
  fig, ax = plt.subplots(figsize=(7.5, 4.6))
  drawn = False
  for k, a in enumerate(arms):
    for j, r in enumerate(sorted(groups[(f, a)], key=lambda r: r.seed)):
      rows = [x for x in _metrics_rows(r.dir) if 'val_auc' in x]
      if rows:
        ax.plot([x['step'] for x in rows], [x['val_auc'] for x in rows], marker='.',
                color=f'C{k}', alpha=1.0 if j == 0 else 0.4, label=a if j == 0 else None)
        drawn = True
  if not drawn:
    plt.close(fig)
    return
  ax.set_xlabel('training step')
  ax.set_ylabel('validation patch AUC (mean one-vs-rest)')
  ax.set_title(f'Validation AUC during training, fraction {f:g} (one line per seed)')
  ax.grid(alpha=0.3)
  ax.legend(title='arm')
  _save(fig, plots_dir, f'val_auc_f{_ftag(f)}.png',
        f'Validation AUC during training (fraction {f:g})', out)


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
