"""What a study costs, phase by phase (`python -m medft.bench --parts=study`).

For every application a small real sweep runs on its synthetic twin (`medft.sweep`: a source
model pretrained on pretext crops, then scratch, the head and all layers, two training
fractions; a width-reduced AlexNet, tens of steps). The time goes in phases:
  prepare     writing and preparing the synthetic dataset (TFDS, once per data folder)
  source      pretraining the source model (once per sweep)
  data        a run's `data.load` and task construction (candidates, views, ...)
  setup       model, weights, optimizer, feature cache, resume
  compile     the first train step (compilation, or a persistent-cache hit)
  train_steps the rest of the train steps (and the input pipeline's waits)
  validation  cutting the validation patches and every validation evaluation
  checkpoint  latest/best checkpoints
  test        test-time views and the app's metrics
  report      `report.build_report` of the sweep
One row per application: each phase's seconds and share of the wall time, `train_step_share`
(train steps over wall time), and `per_run_fixed_s`: what each run pays again although the
sweep's other runs paid it already (data, setup and compile beyond the first run).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from medft.bench.core import Settings

RUN_PHASES = ('data_s', 'setup_s', 'compile_s', 'train_steps_s', 'validation_s',
              'checkpoint_s', 'test_s')
DESIGN = 'arms=scratch+fc8+conv1,fractions=0.5+1.0,seeds=0'
# Run-level phases a sweep could pay once instead of once per run.
FIXED = ('data_s', 'setup_s', 'compile_s')

_TINY = {
    'model.width': 0.125, 'input_size': 67, 'model.init_scheme': 'he', 'optim.base_lr': 0.003,
    'train.batch': 8, 'train.log_every': 10, 'train.workers': 1,
    'pretrain.batch': 8, 'pretrain.eval_examples': 16, 'pretrain.log_every': 5,
    'pretrain.workers': 1,
}
_APPS = {
    'cimt': {'task.patch_size': 32, 'task.eval_patches_per_class': 10,
             'task.eval_col_stride': 8, 'task.patches_per_image': 50},
    'polyp': {'task.patch_size': 24, 'task.scales': (1.0, 1.5), 'task.shift_steps': (0,),
              'task.orientations': 2, 'task.val_max_patches': 400},
    'pe': {'task.patch_size': 16, 'task.widths_mm': (10.0, 15.0), 'task.rotations': 3,
           'task.val_max_patches': 400},
    'frames': {'task.test_crops': 20, 'task.crops_per_frame': 20},
}


def study_config(app: str, data_dir: Path, steps: int, design: str = DESIGN):
  import importlib
  module = importlib.import_module(f'medft.configs.{app}')
  c = module.get_config(f'synthetic,{design}')
  c.pretrain.source = 'pretext'  # the offline source model (only cimt takes it as an arg)
  settings = {**_TINY, **_APPS[app], 'data.data_dir': str(data_dir), 'train.steps': steps,
              'train.eval_every': max(1, steps // 2), 'train.checkpoint_every': steps,
              'pretrain.steps': steps, 'pretrain.eval_every': steps,
              'pretrain.checkpoint_every': steps}
  c.update_from_flattened_dict(settings)
  c.sweep.report = False  # timed on its own below
  return c


def phase_rows(app: str, timings: list[dict], prepare_s: float, source_s: float,
               report_s: float, wall_s: float) -> dict:
  """One application's row from its runs' timing.json `phases` and the sweep-level times."""
  phases = {'prepare_s': prepare_s, 'source_s': source_s, 'report_s': report_s}
  for name in RUN_PHASES:
    phases[name] = sum(t['phases'].get(name, 0.0) for t in timings)
  accounted = sum(phases.values())
  phases['other_s'] = max(0.0, wall_s - accounted)
  fixed = {name: sum(t['phases'].get(name, 0.0) for t in timings[1:]) for name in FIXED}
  return {
      'name': f'study/{app}', 'arch': 'alexnet', 'depth': None, 'batch': 8, 'runs': len(timings),
      'wall_s': wall_s, 'phases_s': phases,
      'shares': {k: v / wall_s for k, v in phases.items()},
      'train_step_share': phases['train_steps_s'] / wall_s,
      'per_run_fixed_s': fixed, 'per_run_fixed_share': sum(fixed.values()) / wall_s,
      'compile_cache': [t.get('compile_cache') for t in timings],
  }


def bench_study(s: Settings, log: Callable[[dict], None], apps=tuple(_APPS),
                steps: int = 0, design: str = DESIGN) -> list[dict]:
  import json

  from medft import data
  from medft.pretrain import describe
  from medft.report import build_report
  from medft.sweep import sweep
  steps = steps or (4 if s.batch < 16 else 30)
  rows = []
  for app in apps:
    root = Path(tempfile.mkdtemp(prefix=f'medft-bench-study-{app}-'))
    try:
      c = study_config(app, root / 'data', steps, design)
      t0 = time.time()
      data.load(c.data)  # writes the twin and prepares it: what the first run would pay
      prepare_s = time.time() - t0
      sweep(c, root / 'sweep')
      report_t = time.time()
      build_report(root / 'sweep')
      report_s = time.time() - report_t
      wall_s = time.time() - t0
      runs = sorted((root / 'sweep').glob('*/*/*/timing.json'))
      timings = [json.loads(f.read_text()) for f in runs]
      record = describe(json.loads((root / 'sweep' / 'sweep.json').read_text())
                                 .get('init') or '')
      source_s = record.get('pretrain', {}).get('wall_s') or 0.0
      row = phase_rows(app, timings, prepare_s, source_s, report_s, wall_s)
      log(row)
      rows.append(row)
    finally:
      shutil.rmtree(root, ignore_errors=True)
  return rows
