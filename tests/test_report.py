"""The report on results.json files written by real tiny task runs of every application.

One session fixture runs a tiny synthetic study per application (polyp: a real 2-arm sweep,
scratch vs scratch_xavier; PE and frames: one real run, placed under two arm names;
CIMT: the sweep of tests/test_sweep.py covers it with real arms), then every test reads the
files those runs wrote. Nothing here writes a results.json by hand, so a key no task writes
cannot make a test pass. The statistics tests (null, planted difference, CIMT subject shift)
are in tests/test_report_stats.py.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from PIL import Image

import medft
from configs import frames, pe, polyp
from medft import apps, metrics
from medft.errors import InputFileError, MissingInputError, NotOursError
from medft.report import build_report

N_BOOT = 50
TINY = {'model.width': 0.125, 'input_size': 67, 'model.init_scheme': 'he',
        'optim.base_lr': 0.003, 'train.steps': 4, 'train.batch': 8, 'train.eval_every': 2,
        'train.log_every': 2, 'train.checkpoint_every': 1000, 'train.workers': 1,
        'data.test_share': 0.5, 'sweep.report': False}
APPS = {
    'polyp': (polyp, 'scratch+scratch_xavier', {
        'task.patch_size': 24, 'task.scales': (1.0,), 'task.shift_steps': (0,),
        'task.orientations': 1}),
    'pe': (pe, 'scratch', {'task.patch_size': 24}),
    'frames': (frames, 'scratch', {'task.crop_size': 64, 'task.test_crops': 2}),
}
EXPECTED_POINTS = {
    'polyp': ['sensitivity_at_0.01', 'sensitivity_at_0.001', 'auc', 'candidate_recall'],
    'pe': [f'sensitivity_at_{r}' for r in range(1, 6)] + ['auc', 'candidate_recall'],
    'frames': ['sensitivity_at_fpr_0.1', 'sensitivity_at_fpr_0.15', 'sensitivity_at_fpr_0.2',
               'auc'],
}


def _config(app: str, data_dir: Path):
  module, arms, extra = APPS[app]
  c = module.get_config(f'synthetic,arms={arms},fractions=1.0,seeds=0')
  for key, value in {**TINY, **extra, 'data.data_dir': str(data_dir)}.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.fixture(scope='session')
def studies(tmp_path_factory, data_dir):
  """app -> (sweep folder, report dict): tiny real runs, two arms per app."""
  root = tmp_path_factory.mktemp('studies')
  out = {}
  for app in APPS:
    folder = root / app
    medft.sweep(_config(app, data_dir), folder)
    if app != 'polyp':  # one real run, also reported as a second arm (identical predictions)
      shutil.copytree(folder / 'scratch', folder / 'scratch_he')
    out[app] = folder, build_report(folder, n_boot=N_BOOT)
  return out


def _image_ok(path: Path) -> None:
  image = np.asarray(Image.open(path).convert('L'), np.float64)
  assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 5, path


def _results(folder: Path, arm: str) -> dict:
  return json.loads((folder / arm / '1.0' / '0' / 'results.json').read_text())


@pytest.mark.parametrize('app', list(APPS))
def test_report_reads_each_app_from_its_declaration(studies, app):
  folder, report = studies[app]
  spec = apps.get(app)
  results = _results(folder, 'scratch')
  assert results['app'] == report['app'] == app and not apps.missing_keys(spec, results['test'])
  assert [p['key'] for p in report['points']] == EXPECTED_POINTS[app]
  rows = {r['arm']: r for r in report['rows']}
  test = results['test']
  for point in report['points']:
    entry = rows['scratch']['metrics'][point['key']]
    assert entry['low'] <= entry['value'] <= entry['high'], (point, entry)
    assert entry['n_units'] == len(test['per_unit'])
  # The report's numbers are the task's own (same pooled definitions), not re-derived ones.
  m = rows['scratch']['metrics']
  assert m['auc']['value'] == pytest.approx(test['auc'])
  if app in ('polyp', 'pe'):
    per = 'frame' if app == 'polyp' else 'volume'
    for rate, own in test[f'sensitivity_at_fp_per_{per}'].items():
      assert m[f'sensitivity_at_{float(rate):g}']['value'] == pytest.approx(own['value'])
    assert m['candidate_recall']['value'] == pytest.approx(test['candidate_recall'])
    assert test['candidate_recall'] == pytest.approx(
        test['lesions_hit'] / test['num_lesions'])
  else:
    for fpr, own in test['sensitivity_at_fpr'].items():
      assert m[f'sensitivity_at_fpr_{float(fpr):g}']['value'] == pytest.approx(own['value'])
  # The settings that depart from the paper are stated (TINY: input 67, one view per
  # candidate); synthetic videos hold several frames, PE units one volume each.
  md = (folder / 'report.md').read_text()
  assert 'instead of the paper\'s 227x227' in md
  assert ('1 view(s) per candidate' in md) == (app == 'polyp')
  assert report['one_image_per_unit'] == (app == 'pe')
  assert 'To use real ImageNet weights instead' in md  # no pretrained weights here
  # The depth arms are named from the architecture's own units (AlexNet here).
  assert report['tuning_units'][0] == 'conv1' and report['tuning_units'][-1] == 'fc8'
  assert 'arm `fc8` = only the new head trains, `fc7` = fc7 and every unit above it' in md


@pytest.mark.parametrize('app', list(APPS))
def test_all_pairs_tables_with_raw_and_adjusted_p(studies, app):
  folder, report = studies[app]
  compared = [p['key'] for p in report['points'] if p['compared']]
  assert [t['point'] for t in report['pairs']] == compared  # one table per point (1 fraction)
  arms = [r['arm'] for r in report['rows']]
  for table in report['pairs']:
    assert table['correction'] == 'holm'
    assert [(x['a'], x['b']) for x in table['rows']] == [(arms[0], arms[1])]
    x = table['rows'][0]
    assert x['p_raw'] is not None and x['p_adjusted'] >= x['p_raw']
    assert x['n'] == len(_results(folder, 'scratch')['test']['per_unit'])
    if app != 'polyp':  # the same predictions under two names: no difference, no mark
      assert x['difference'] == 0 and x['p_raw'] == 1 and x['mark'] == ''
  md = (folder / 'report.md').read_text()
  assert '## Results per operating point' in md and '## All pairs of arms' in md
  assert '| arm A | arm B | A − B [95% CI] | n | W | p (raw) | p (adj.) | mark |' in md
  assert 'Holm step-down' in md and 'Wilcoxon signed-rank' in md
  assert md.count('### Fraction 1: ') == len(compared)
  if app != 'frames':
    assert ' candidate recall (ceiling) |' in md
  with open(folder / 'report.csv') as f:
    table = list(csv.DictReader(f))
  pair_rows = [r for r in table if r['section'] == 'pair']
  assert len(pair_rows) == len(compared) and all(r['p_adjusted'] for r in pair_rows)
  assert {r['metric'] for r in table if r['section'] == 'point'} == set(EXPECTED_POINTS[app])


@pytest.mark.parametrize('app', list(APPS))
def test_paper_form_plots(studies, app):
  folder, report = studies[app]
  names = {Path(p['file']).name for p in report['plots']}
  curve = 'roc_f1.png' if app == 'frames' else 'froc_f1.png'
  assert {'depth.png', curve, 'convergence_f1.png'} <= names
  md = (folder / 'report.md').read_text()
  for p in report['plots']:
    assert f']({p["file"]})' in md
    _image_ok(folder / p['file'])
  title = next(p['title'] for p in report['plots'] if p['file'].endswith(curve))
  assert {'polyp': 'log 0.0001..10', 'pe': 'linear 0..10', 'frames': 'linear 0..0.5'}[app] in title


def test_bh_correction_is_selectable(studies, tmp_path):
  folder = tmp_path / 'polyp'
  shutil.copytree(studies['polyp'][0], folder)
  report = build_report(folder, n_boot=20, correction='bh')
  assert report['statistics']['correction'] == 'bh'
  assert 'Benjamini-Hochberg' in (folder / 'report.md').read_text()
  for table in report['pairs']:
    raw = [x['p_raw'] for x in table['rows']]
    assert [x['p_adjusted'] for x in table['rows']] == pytest.approx(
        scipy.stats.false_discovery_control(raw, method='bh'))
  with pytest.raises(ValueError, match="report.correction='bonferroni'"):
    build_report(folder, correction='bonferroni')


def test_unfinished_and_missing_runs_are_named(studies, tmp_path):
  folder = tmp_path / 'pe'
  shutil.copytree(studies['pe'][0], folder)
  (folder / 'scratch_he' / '1.0' / '0' / 'results.json').unlink()  # killed: config.json left
  plan = json.loads((folder / 'sweep.json').read_text())
  plan['runs'].append({'arm': 'fc8', 'fraction': 1.0, 'seed': 0, 'dir': 'fc8/1.0/0'})
  (folder / 'sweep.json').write_text(json.dumps(plan))
  report = build_report(folder, n_boot=20)
  status = {r['arm']: r['status'] for r in report['runs']}
  assert status == {'scratch': 'finished', 'scratch_he': 'unfinished', 'fc8': 'missing'}
  md = (folder / 'report.md').read_text()
  assert '| fc8 | 1 | 0 | missing |' in md and '| scratch_he | 1 | 0 | unfinished |' in md
  assert report['pairs'] == []  # one finished arm: nothing to pair


def test_report_refuses_folders_and_files_it_did_not_write(studies, tmp_path):
  with pytest.raises(MissingInputError, match='no such sweep folder'):
    build_report(tmp_path / 'nowhere')
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(MissingInputError, match='empty'):
    build_report(empty)
  foreign = tmp_path / 'photos'
  (foreign / 'holiday').mkdir(parents=True)
  (foreign / 'notes.txt').write_text('mine')
  with pytest.raises(NotOursError, match=f'{foreign}: not a medft sweep folder'):
    build_report(foreign)

  folder = tmp_path / 'study'
  shutil.copytree(studies['frames'][0], folder)
  build_report(folder, n_boot=10)  # replaces its own report
  (folder / 'report.json').unlink()
  (folder / 'report.md').write_text('my own notes')
  with pytest.raises(NotOursError, match='report.md'):
    build_report(folder, n_boot=10)
  assert (folder / 'report.md').read_text() == 'my own notes'
  (folder / 'report.md').unlink()

  (folder / 'sweep.json').write_text(json.dumps({'runs': 'all of them'}))
  with pytest.raises(InputFileError, match=f'{folder / "sweep.json"}: not a medft sweep plan'):
    build_report(folder, n_boot=10)
  (folder / 'sweep.json').unlink()

  results_file = folder / 'scratch' / '1.0' / '0' / 'results.json'
  results = json.loads(results_file.read_text())
  del results['test']['per_unit'][0]['labels']
  results_file.write_text(json.dumps(results))
  with pytest.raises(InputFileError, match=f'{results_file}.*test.per_unit\\[\\].labels'):
    build_report(folder, n_boot=10)
  results_file.write_text('{"arm": "scratch", ')
  with pytest.raises(InputFileError, match=f'{results_file}: not valid JSON'):
    build_report(folder, n_boot=10)
  results_file.write_text(json.dumps({k: v for k, v in results.items() if k != 'app'}))
  with pytest.raises(InputFileError, match='missing key.*app'):
    build_report(folder, n_boot=10)


def test_detection_per_unit_values_add_up_to_the_pooled_sensitivity(studies):
  """The rank test's per-unit sensitivities at an FP rate, lesion-weighted, are the pooled one."""
  folder, _ = studies['pe']
  units = _results(folder, 'scratch')['test']['per_unit']
  spec = apps.get('pe')
  for point in spec.points(_results(folder, 'scratch')['test'])[:5]:
    per_unit = point.per_unit(units)
    lesions = np.asarray([u['num_lesions'] for u in units], float)
    ok = lesions > 0
    assert np.sum(per_unit[ok] * lesions[ok]) / lesions.sum() == pytest.approx(
        point.pooled(units))
  recall = metrics.unit_lesion_sensitivity(units, -np.inf)
  assert np.nansum(recall * [u['num_lesions'] for u in units]) == sum(
      len({i for i in u['lesion_ids'] if i >= 0}) for u in units)


def test_a_run_whose_output_is_constant_is_named_as_learning_nothing(tmp_path, data_dir,
                                                                    studies):
  """SqueezeNet from the paper's Gaussian init (std 0.01): its activations vanish through the
  fire modules, so every test candidate gets the same score (as in the real Kvasir study's
  scratch_gaussian arm). The report must say that arm learned nothing; the AlexNet arms of
  the session's polyp study (scores that vary) are not named."""
  c = _config('polyp', data_dir)
  c.arch, c.depth, c.sweep.arms = 'squeezenet1_1', 'scratch', 'scratch_gaussian'
  medft.sweep(c, tmp_path / 'study')
  report = build_report(tmp_path / 'study', n_boot=N_BOOT)
  assert [(r['arm'], r['constant_seeds']) for r in report['rows']] == [('scratch_gaussian', [0])]
  alive_folder, alive = studies['polyp']
  assert all(r['constant_seeds'] == [] for r in alive['rows'])
  assert 'learned nothing' not in (alive_folder / 'report.md').read_text()
  scores = np.concatenate([u['scores'] for u in _results(tmp_path / 'study', 'scratch_gaussian')[
      'test']['per_unit']])
  assert np.unique(scores).size == 1 and report['rows'][0]['test_auc']['mean'] == 0.5
  md = (tmp_path / 'study' / 'report.md').read_text()
  assert '**Runs that learned nothing**' in md and '| scratch_gaussian | 1 | 0 |' in md
