"""The study runner: a small sweep finishes, survives a kill without redoing finished runs,
reports with a table and plots; `auto` picks a depth and records its validation curve."""

import csv
import io
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import cimt
from medft import auto_tune, sweep, tuning
from medft.sweep import Run, all_arms, plan, run_config, run_dir, shard_of

ROOT = Path(__file__).resolve().parents[1]
ARMS, FRACTIONS = ('scratch', 'scratch_xavier', 'fc8', 'conv1'), (0.5, 1.0)

# Width-reduced network and a few steps: each run takes seconds on 2 CPU cores.
TINY = {
    'model.width': 0.125, 'input_size': 67, 'task.patch_size': 32, 'model.init_scheme': 'he',
    'optim.base_lr': 0.01, 'train.batch': 8, 'train.steps': 6, 'train.eval_every': 3,
    'train.log_every': 3, 'train.checkpoint_every': 3, 'task.eval_patches_per_class': 4,
    'task.eval_col_stride': 24, 'task.roi_height_mm': 2.0, 'task.patches_per_image': 4,
    'train.workers': 1,
    'pretrain.steps': 4, 'pretrain.batch': 8, 'pretrain.eval_examples': 16,
    'pretrain.log_every': 2, 'pretrain.eval_every': 4, 'sweep.scratch_lr_mult': 2.0,
}
ARG = 'synthetic,pretext,arms=scratch+scratch_xavier+fc8+conv1,fractions=0.5+1.0,seeds=0'


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


def test_scratch_init_scheme_arms():
  c = cimt.get_config('arms=fc8+scratch_he+scratch+scratch_xavier,fractions=1.0')
  assert [r.arm for r in plan(c)] == ['scratch', 'scratch_xavier', 'scratch_he', 'fc8']
  assert all_arms(c)[:4] == ('scratch', 'scratch_gaussian', 'scratch_xavier', 'scratch_he')
  # A sweep that names no arms: plain scratch and the fine-tuning depths, as before.
  default = [r.arm for r in plan(cimt.get_config('fractions=1.0'))]
  assert default[0] == 'scratch' and not any(a.startswith('scratch_') for a in default)
  rc = run_config(c, Run('scratch_xavier', 1.0, 0), '')
  assert (rc.depth, rc.model.init_scheme) == ('scratch', 'xavier')
  assert run_config(c, Run('scratch', 1.0, 0), '').model.init_scheme == c.model.init_scheme
  # sweep.scratch_lr_mult raises scratch arms' rate only, in the run's own config.
  c.sweep.scratch_lr_mult = 10.0
  assert run_config(c, Run('scratch_he', 1.0, 0), '').optim.base_lr == pytest.approx(
      10 * c.optim.base_lr)
  assert run_config(c, Run('fc8', 1.0, 0), '').optim.base_lr == c.optim.base_lr
  with pytest.raises(ValueError, match='scratch_lecun not arms of alexnet'):
    plan(cimt.get_config('arms=scratch_lecun'))


@pytest.fixture(scope='module')
def swept(tmp_path_factory, cimt_data_dir, zygote):
  """A sweep killed mid-way in a process of its own (`python run.py`, forked from the session's
  `zygote`), then finished in-process; on the session's prepared synthetic data."""
  root = tmp_path_factory.mktemp('sweep')
  folder, data_dir, log = root / 'study', cimt_data_dir, root / 'sweep.log'
  cmd = [str(ROOT / 'run.py'), f'--config={ROOT}/configs/cimt.py:{ARG}', '--mode=sweep',
         f'--workdir={folder}', *_flags(data_dir)]
  proc = zygote.popen(cmd, cwd=ROOT, stderr=log, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  deadline = time.time() + 240
  while len(list(folder.glob('*/*/*/results.json'))) < 2:
    assert proc.poll() is None, log.read_text()[-3000:]
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
      depth, scheme = tuning.arm_settings(arm)  # scratch_xavier: depth scratch, xavier init
      assert (results['arm'], results['fraction']) == (depth, f)
      config = json.loads((run / 'config.json').read_text())
      assert config['model']['init_scheme'] == (scheme or 'he')
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


def test_sweep_report_has_tables_and_paper_form_plots(swept):
  folder, _, _, report = swept
  assert report['app'] == 'cimt' and report['unit_name'] == 'subject'
  md = (folder / 'report.md').read_text()
  assert 'NOT ImageNet' in md and 'medft-pretext' in md
  # sweep.scratch_lr_mult=2: the scratch runs trained at 0.02, fine-tuning at 0.01; the report
  # says so.
  rates = {arm: json.loads((folder / arm / '1.0' / '0' / 'config.json').read_text())['optim'][
      'base_lr'] for arm in ARMS}
  assert rates == {'scratch': 0.02, 'scratch_xavier': 0.02, 'fc8': 0.01, 'conv1': 0.01}
  assert 'Scratch arms learn at 0.02 in every layer' in md
  # Per operating point: LI, MA and CIMT error with intervals, per fraction.
  assert md.count('| arm | seeds | LI error (µm) | MA error (µm) | CIMT error (µm) |') == 2
  assert '### Mean ± SD over test images (the paper\'s form)' in md
  for arm in ARMS:
    assert f'| {arm} ' in md or f'**{arm}' in md
  # All pairs of the 4 arms, per fraction and point, with raw and adjusted p.
  tables = report['pairs']
  assert [(t['fraction'], t['point']) for t in tables] == [
      (f, k) for f in FRACTIONS for k in ('li_error_um', 'ma_error_um', 'cimt_error_um')]
  test_subjects = {r['n_units'] for r in report['rows']}
  for t in tables:
    assert len(t['rows']) == 6 and t['correction'] == 'holm'
    for x in t['rows']:
      assert x['n'] in test_subjects  # subjects ranked, not images
      assert x['p_adjusted'] >= x['p_raw'] and (x['mark'] == '' or x['p_adjusted'] < 0.05)
  assert md.count('| arm A | arm B | A − B [95% CI] | n | W | p (raw) | p (adj.) | mark |') == 6
  rows = list(csv.DictReader(io.StringIO((folder / 'report.csv').read_text())))
  assert sum(r['section'] == 'pair' for r in rows) == 6 * 6
  assert report['plots'], 'no plot was drawn'
  for plot in report['plots']:
    assert f']({plot["file"]})' in md
    image = np.asarray(Image.open(folder / plot['file']).convert('L'), np.float64)
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 5, f'{plot["file"]} looks blank'
  names = {Path(p['file']).name for p in report['plots']}
  assert {'box_f0p5.png', 'box_f1.png', 'convergence_f0p5.png', 'convergence_f1.png',
          'depth.png'} <= names


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


def test_report_shows_roi_edge_share_and_fraction_unit_when_the_task_writes_them(swept, tmp_path):
  """Keys the CIMT task adds (per-image roi_edge_share, fraction_unit): read when present."""
  folder = tmp_path / 'study'
  shutil.copytree(swept[0], folder, ignore=shutil.ignore_patterns('checkpoints'))
  for results_file in folder.glob('*/*/*/results.json'):
    results = json.loads(results_file.read_text())
    results['fraction_unit'] = 'patients'
    for k, image in enumerate(results['test']['per_image']):
      image['roi_edge_share'] = 0.25 * (k % 2)
    results_file.write_text(json.dumps(results))
  from medft.report import build_report
  report = build_report(folder, n_boot=20)
  md = (folder / 'report.md').read_text()
  assert 'share of columns whose boundary touched the ROI edge' in md
  assert 'training patients' in md
  shares = [r['metrics']['roi_edge_share']['value'] for r in report['rows'] if r['metrics']]
  assert shares and all(0 < s < 0.25 for s in shares)
  assert 'roi_edge_share' not in {t['point'] for t in report['pairs']}  # stated, not tested


def test_report_robustness_section_pairs_the_fractions_on_the_same_test_subjects(swept):
  """Finding 2 in the report: each arm's loss from fraction 1 to 0.5 (the same test subjects
  at both: one resample serves both), fine-tuning against scratch, adjusted in one family.
  The numbers must be those of an independent paired bootstrap of the two fractions."""
  from medft import apps, metrics
  from medft.report import stats
  folder, _, _, report = swept
  robust = report['robustness']
  assert (robust['fraction_small'], robust['fraction_large']) == (0.5, 1.0)
  assert [r['arm'] for r in robust['rows']] == list(ARMS)
  assert [(p['fine_tuned'], p['scratch']) for p in robust['pairs']] == [
      ('fc8', 'scratch'), ('fc8', 'scratch_xavier'), ('conv1', 'scratch'),
      ('conv1', 'scratch_xavier')]
  point = next(p for p in apps.get('cimt').points(
      json.loads((folder / 'fc8/1.0/0/results.json').read_text())['test'])
               if p.key == robust['point'])
  spec = apps.get('cimt')

  def units(arm, fraction):
    test = json.loads((folder / arm / fraction / '0' / 'results.json').read_text())['test']
    return stats.seed_units(spec, [(0, test)])

  for row in robust['rows']:
    (names_l, large), (names_s, small) = units(row['arm'], '1.0'), units(row['arm'], '0.5')
    assert names_l == names_s and len(names_l) == robust['n_units']  # the same test subjects
    alone = metrics.paired_bootstrap(lambda us: stats.value(point, us), large, small,
                                     n_boot=robust['n_boot'])
    sign = 1 if point.higher_is_better else -1
    assert row['loss'] == pytest.approx(sign * alone['difference'], abs=1e-9)
    bounds = sorted([sign * alone['low'], sign * alone['high']])
    assert [row['low'], row['high']] == pytest.approx(bounds, abs=1e-9)
  for p in robust['pairs']:
    assert p['p_adjusted'] >= p['p_bootstrap'] and (p['mark'] == '' or p['p_adjusted'] < 0.05)
    loss = {r['arm']: r['loss'] for r in robust['rows']}
    assert p['difference'] == pytest.approx(loss[p['scratch']] - loss[p['fine_tuned']])
  md = (folder / 'report.md').read_text()
  assert "## Robustness to a smaller training set (the paper's finding 2)" in md
  assert md.count('| fc8 | scratch | ') == 1  # the robustness table only
  rows = list(csv.DictReader(io.StringIO((folder / 'report.csv').read_text())))
  assert [(r['arm'], r['versus']) for r in rows if r['section'] == 'robustness_pair'] == [
      (p['fine_tuned'], p['scratch']) for p in robust['pairs']]
  assert sum(r['section'] == 'robustness_loss' for r in rows) == len(ARMS)
