"""The study runner: a small sweep finishes, survives a kill without redoing finished runs,
reports with a table and plots; `auto` picks a depth and records its validation curve."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import cimt
from medft import auto_tune, sweep
from medft.sweep import Run, plan, run_config, run_dir, shard_of

ROOT = Path(__file__).resolve().parents[1]
ARMS, FRACTIONS = ('scratch', 'fc8', 'conv1'), (0.5, 1.0)

# Width-reduced network and a few steps: each run takes seconds on 2 CPU cores.
TINY = {
    'model.width': 0.125, 'input_size': 67, 'task.patch_size': 32, 'model.init_scheme': 'he',
    'optim.base_lr': 0.01, 'train.batch': 8, 'train.steps': 6, 'train.eval_every': 3,
    'train.log_every': 3, 'train.checkpoint_every': 3, 'task.eval_patches_per_class': 4,
    'task.eval_col_stride': 24, 'task.patches_per_image': 4, 'train.workers': 1,
    'pretrain.steps': 4, 'pretrain.batch': 8, 'pretrain.eval_examples': 16,
    'pretrain.log_every': 2, 'pretrain.eval_every': 4,
}
ARG = 'synthetic,pretext,arms=scratch+fc8+conv1,fractions=0.5+1.0,seeds=0'


def _config(data_dir, **extra):
  c = cimt.get_config(ARG)
  for key, value in {**TINY, 'data.data_dir': str(data_dir), **extra}.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _flags(data_dir):
  return [f'--config.{k}={v}' for k, v in {**TINY, 'data.data_dir': data_dir}.items()]


def _mtimes(folder: Path) -> dict:
  return {str(p.relative_to(folder)): p.stat().st_mtime_ns
          for p in folder.glob('*/*/*/*') if p.name in ('results.json', 'metrics.jsonl')}


def test_plan_and_shards_cover_every_run_once():
  c = cimt.get_config('arms=conv1+scratch+fc8,fractions=1.0+0.25,seeds=0+1')
  runs = plan(c)
  assert len(runs) == 3 * 2 * 2
  assert [r.arm for r in runs[:6:2]] == ['scratch', 'fc8', 'conv1']  # the paper's order
  shards = [shard_of(runs, f'{i}/3') for i in range(3)]
  assert sorted(map(repr, sum(shards, []))) == sorted(map(repr, runs))
  assert run_dir('D', 'fc7', 0.5, 2) == Path('D/fc7/0.5/2')
  with pytest.raises(ValueError, match='not arms of alexnet'):
    plan(cimt.get_config('arms=fc9'))
  with pytest.raises(ValueError, match='i/n'):
    shard_of(runs, '3')


def test_run_config_drops_study_blocks():
  c = cimt.get_config('demo')
  rc = run_config(c, Run('fc6', 0.5, 3), '/w')
  assert (rc.depth, rc.data.fraction, rc.seed, rc.init) == ('fc6', 0.5, 3, '/w')
  assert 'sweep' not in rc and 'pretrain' not in rc and 'auto' not in rc


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
  """A sweep killed mid-way in a subprocess, then finished in-process."""
  root = tmp_path_factory.mktemp('sweep')
  folder, data_dir = root / 'study', root / 'data'
  cmd = [sys.executable, str(ROOT / 'run.py'), f'--config={ROOT}/configs/cimt.py:{ARG}',
         '--mode=sweep', f'--workdir={folder}', *_flags(data_dir)]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  deadline = time.time() + 240
  while len(list(folder.glob('*/*/*/results.json'))) < 2:
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    assert time.time() < deadline, 'the sweep subprocess made no progress'
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed = _mtimes(folder)
  report = sweep(_config(data_dir), folder)
  return folder, data_dir, killed, report


def test_sweep_resumes_without_redoing_finished_runs(swept):
  folder, data_dir, killed, report = swept
  finished = {k: v for k, v in killed.items() if k.endswith('results.json')}
  assert 2 <= len(finished) < len(ARMS) * len(FRACTIONS)
  after = _mtimes(folder)
  for name, mtime in killed.items():
    if name.endswith('results.json') or name.replace('metrics.jsonl', 'results.json') in finished:
      assert after[name] == mtime, f'{name} was redone after the restart'
  for arm in ARMS:
    for f in FRACTIONS:
      run = run_dir(folder, arm, f, 0)
      results = json.loads((run / 'results.json').read_text())
      assert (results['arm'], results['fraction']) == (arm, f)
      lines = (run / 'metrics.jsonl').read_text().splitlines()
      steps = [json.loads(line)['step'] for line in lines]
      assert steps == sorted(set(steps)), f'{run}: duplicated or reordered metric rows'
  assert (folder / 'source_model' / 'weights' / 'meta.json').exists()
  meta = json.loads((folder / 'source_model' / 'weights' / 'meta.json').read_text())
  assert meta['source_format'] == 'medft-pretext'

  # A run whose results.json is lost is finished again; no other run is touched.
  lost = run_dir(folder, 'fc8', 0.5, 0) / 'results.json'
  lost.unlink()
  before = _mtimes(folder)
  sweep(_config(data_dir), folder)
  again = _mtimes(folder)
  assert lost.exists()
  changed = {k for k in again if again[k] != before.get(k)}
  assert changed <= {'fc8/0.5/0/results.json', 'fc8/0.5/0/metrics.jsonl'}, changed

  # A changed run setting must not silently reuse the old runs.
  with pytest.raises(ValueError, match='different config'):
    sweep(_config(data_dir, **{'optim.base_lr': 0.02}), folder)


def test_sweep_report_has_table_and_readable_plots(swept):
  folder, _, _, report = swept
  md = (folder / 'report.md').read_text()
  assert '| arm |' in md and '### CIMT table in the paper\'s form' in md
  assert 'NOT ImageNet' in md and 'medft-pretext' in md
  for arm in ARMS:
    assert f'| {arm} ' in md or f'**{arm}**' in md
  rows = (folder / 'report.csv').read_text().splitlines()
  assert len(rows) == 1 + len(ARMS) * len(FRACTIONS)
  assert report['plots'], 'no plot was drawn'
  for plot in report['plots']:
    assert f']({plot["file"]})' in md
    image = np.asarray(Image.open(folder / plot['file']).convert('L'), np.float64)
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 5, f'{plot["file"]} looks blank'
  assert any('cimt_boxplot' in p['file'] for p in report['plots'])


def test_auto_chooses_a_depth_and_records_the_curve(swept):
  folder, data_dir, _, _ = swept
  # A tolerance no AUC gain can beat: fc8, then fc7 fails to improve -> stop, choose fc8.
  c = _config(data_dir, **{'auto.tolerance': 1.0, 'data.fraction': 1.0})
  out = auto_tune(c, folder)
  record = json.loads((folder / 'auto.json').read_text())
  assert record['chosen'] == out['chosen'] == 'fc8'
  assert [p['arm'] for p in record['curve']] == ['fc8', 'fc7']
  assert record['curve'][0]['reused'] and not record['curve'][1]['reused']
  assert all(np.isfinite(p['val_auc']) and 'results' not in p for p in record['curve'])
  assert record['total_steps'] == sum(p['steps'] for p in record['curve'])
  assert record['restart_from_pretrained'] and 'stopped' in record
  assert record['test'] and 'li_error_um' in record['test']
  md = (folder / 'report.md').read_text()
  assert '## Automatic depth choice' in md and 'Against the sweep' in md


@pytest.mark.parametrize('study', [sweep, auto_tune])
def test_bad_keep_checkpoints_is_refused_before_anything_is_deleted(study, tmp_path):
  config = cimt.get_config('synthetic,pretext')
  config.sweep.keep_checkpoints = 'bset'
  kept = tmp_path / 'source_model' / 'checkpoints'
  kept.mkdir(parents=True)
  with pytest.raises(ValueError, match="sweep.keep_checkpoints='bset'.*all, best or none"):
    study(config, tmp_path)
  assert kept.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ['source_model']
