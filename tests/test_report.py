"""The report on hand-made sweep folders: seeds pooled, paired tests, missing runs, plots."""

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from medft.report import build_report
from medft.sweep import run_dir


def _write_run(folder: Path, arm: str, fraction: float, seed: int, test: dict,
               val_auc: float = 0.8) -> None:
  d = run_dir(folder, arm, fraction, seed)
  d.mkdir(parents=True)
  (d / 'config.json').write_text('{}')
  (d / 'metrics.jsonl').write_text(''.join(
      json.dumps({'step': s, 'loss': 1.0 / s, 'val_auc': val_auc - 0.1 / s}) + '\n'
      for s in (10, 20, 30)))
  (d / 'results.json').write_text(json.dumps({
      'arm': arm, 'depth': arm, 'arch': 'alexnet', 'fraction': fraction, 'seed': seed,
      'dataset': 'synthetic', 'init': None, 'steps': 30, 'total_steps': 30, 'best_step': 30,
      'val_auc': val_auc, 'test_auc': test.get('auc'), 'test': test}))
  (d / 'timing.json').write_text(json.dumps({'wall_s': 12.0}))


def _plan(folder: Path, runs) -> None:
  (folder / 'sweep.json').write_text(json.dumps({'arch': 'alexnet', 'runs': [
      {'arm': a, 'fraction': f, 'seed': s, 'dir': str(run_dir('.', a, f, s))}
      for a, f, s in runs]}))


def _cimt_test(rng, mean_error: float, n_subjects: int = 8) -> dict:
  per_image = []
  for subject in range(n_subjects):
    for side in 'LR':
      li, ma = rng.normal(mean_error, 5), rng.normal(mean_error * 1.5, 5)
      per_image.append({'id': f's{subject}_{side}', 'unit': f's{subject}',
                        'li_error_um': li, 'ma_error_um': ma, 'cimt_error_um': abs(ma - li)})
  return {'auc': 0.9 - mean_error / 1000, 'per_image': per_image,
          'li_error_um': {'mean': mean_error, 'sd': 5.0, 'n': len(per_image)}}


def _image_ok(path: Path) -> None:
  image = np.asarray(Image.open(path).convert('L'), np.float64)
  assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 5, path


def test_cimt_report_pools_seeds_compares_arms_and_names_missing_runs(tmp_path):
  rng = np.random.default_rng(0)
  errors = {'scratch': 100.0, 'fc8': 60.0, 'conv1': 80.0}
  for arm, error in errors.items():
    for seed in (0, 1):
      if (arm, seed) != ('conv1', 1):
        _write_run(tmp_path, arm, 1.0, seed, _cimt_test(rng, error))
  # conv1 seed 1 started but was killed; fc6 was planned but never started.
  killed = run_dir(tmp_path, 'conv1', 1.0, 1)
  killed.mkdir(parents=True)
  (killed / 'config.json').write_text('{}')
  (killed / 'metrics.jsonl').write_text('{"step": 10, "loss": 1.0}\n')
  _plan(tmp_path, [(a, 1.0, s) for a in ('scratch', 'fc8', 'fc6', 'conv1') for s in (0, 1)])

  report = build_report(tmp_path, n_boot=300)

  status = {(r['arm'], r['seed']): r['status'] for r in report['runs']}
  assert status[('conv1', 1)] == 'unfinished' and status[('fc6', 0)] == 'missing'
  rows = {r['arm']: r for r in report['rows']}
  assert list(rows) == ['scratch', 'fc8', 'fc6', 'conv1']  # the paper's order
  assert rows['fc8']['is_best'] and rows['fc6']['n_seeds'] == 0
  assert rows['scratch']['n_seeds'] == 2 and rows['conv1']['n_seeds'] == 1
  li = rows['fc8']['metrics']['li_error_um']
  assert li['low'] < li['value'] < li['high'] and abs(li['value'] - 60) < 5
  comp = next(c for c in report['comparisons'] if c['arm'] == 'fc8' and c['versus'] == 'scratch')
  assert comp['li_error_um']['bootstrap']['difference'] < -30
  assert comp['li_error_um']['wilcoxon']['p_value'] < 0.01
  assert comp['li_error_um']['bootstrap']['p_value'] < 0.05

  md = (tmp_path / 'report.md').read_text()
  assert '| fc6 | 1 | 0 | missing |' in md and '| conv1 | 1 | 1 | unfinished |' in md
  assert '### CIMT table in the paper\'s form' in md and '60.' in md
  assert 'No finished run used pretrained weights' in md
  with open(tmp_path / 'report.csv') as f:
    table = list(csv.DictReader(f))
  assert [r['arm'] for r in table] == ['scratch', 'fc8', 'fc6', 'conv1']
  assert float(table[1]['vs_scratch_li_error_um_diff']) < -30  # fc8, the best arm
  assert table[0]['vs_best_li_error_um_diff'] == ''  # scratch vs best = fc8's row, mirrored
  assert {Path(p['file']).name for p in report['plots']} >= {
      'depth.png', 'cimt_boxplot_f1.png', 'val_auc_f1.png'}
  for p in report['plots']:
    _image_ok(tmp_path / p['file'])


def _detection_test(rng, quality: float, n_units: int = 6) -> dict:
  units = []
  for u in range(n_units):
    n_cand, n_lesions = 30, 3
    lesion_ids = np.full(n_cand, -1)
    lesion_ids[:n_lesions * 2] = np.repeat(np.arange(n_lesions), 2)
    scores = rng.random(n_cand) + quality * (lesion_ids >= 0)
    units.append({'unit': f'v{u}', 'scores': scores.tolist(), 'lesion_ids': lesion_ids.tolist(),
                  'num_lesions': n_lesions, 'num_images': 10})
  return {'auc': 0.5 + quality / 4, 'per_unit': units, 'fp_rates': [0.25, 0.5, 1.0],
          'sensitivity_at_1fp': {'value': 0.5 + quality / 4, 'ci95': {'low': 0.4, 'high': 0.9}}}


def _classification_test(rng, quality: float, n_units: int = 6) -> dict:
  units = []
  for u in range(n_units):
    labels = rng.integers(0, 2, 40)
    units.append({'unit': f'v{u}', 'labels': labels.tolist(),
                  'scores': (rng.random(40) + quality * labels).tolist()})
  return {'auc': 0.5 + quality / 4, 'per_unit': units}


def test_detection_and_classification_reports(tmp_path):
  rng = np.random.default_rng(1)
  for name, make, plot in (('det', _detection_test, 'froc_f0p5.png'),
                           ('cls', _classification_test, 'roc_f0p5.png')):
    folder = tmp_path / name
    for arm, quality in (('scratch', 0.2), ('fc8', 1.5)):
      _write_run(folder, arm, 0.5, 0, make(rng, quality))
    report = build_report(folder, n_boot=200)
    assert report['app'] in ('detection', 'classification')
    rows = {r['arm']: r for r in report['rows']}
    assert rows['fc8']['is_best']
    primary = report['primary_metric']
    assert rows['fc8']['metrics'][primary]['value'] > rows['scratch']['metrics'][primary]['value']
    comp = next(c for c in report['comparisons'] if c['arm'] == 'fc8')
    assert comp[primary]['bootstrap']['difference'] > 0
    assert plot in {Path(p['file']).name for p in report['plots']}
    _image_ok(folder / 'plots' / plot)
    if name == 'det':  # a task's own summary numbers become extra columns
      assert 'sensitivity_at_1fp' in rows['fc8']['extra']


def test_report_of_an_empty_or_unfinished_folder(tmp_path):
  _plan(tmp_path, [('scratch', 1.0, 0), ('fc8', 1.0, 0)])
  report = build_report(tmp_path, n_boot=50)
  assert {r['status'] for r in report['runs']} == {'missing'}
  md = (tmp_path / 'report.md').read_text()
  assert 'No run has finished yet' in md and '0 of 2 runs finished' in md


def test_malformed_unit_data_is_reported_not_fatal(tmp_path):
  rng = np.random.default_rng(2)
  for arm in ('scratch', 'fc8'):
    test = _detection_test(rng, 1.0)
    for unit in test['per_unit']:
      del unit['num_images']  # a task that forgot a field
    _write_run(tmp_path, arm, 1.0, 0, test)
  report = build_report(tmp_path, n_boot=20)
  entry = report['rows'][0]['metrics']['froc_sensitivity']
  assert entry['value'] is None and 'KeyError' in entry['error']
  assert (tmp_path / 'report.md').exists()
