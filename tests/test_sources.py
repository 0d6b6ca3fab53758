"""Sources as a sweep axis (`sweep.sources`, `medft.sources`): a tiny real sweep of two
self-made source models x two depths plus scratch once, 1 fraction x 1 seed; the report's
sources-at-each-depth tables and plot, rebuilt the same from the folders; a third source
(copied runs) adjusted with the other pairs of its depth only; and bad entries of the field
refused, by name, before anything is written. The network is a ResNet-18 at 1/8 width: two
self-made sources differ in parameters and BatchNorm statistics, and the fine-tuning arms
start from each one's (checked on the runs' first checkpoints' frozen units)."""

import csv
import io
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import tiny
from PIL import Image

from medft import sources, sweep
from medft.errors import ConfigError
from medft.models import get_model
from medft.report import build_report, stats
from medft.sweep import Run, plan, run_dir
from medft.weights import store
from medft.weights.export import read_checkpoint

ARCH, WIDTH, SIZE = 'resnet18', 0.125, 35
DEPTHS = ('fc', 'layer4')
SEEDS = (0,)  # the study's; the plan test has two
N_BOOT = 40


def _source(folder: Path, seed: int) -> Path:
  """A self-made source model: the tiny network's random init at `seed`, with BatchNorm
  statistics drawn at `seed` too (so two sources differ in both), as an artifact."""
  model, _ = get_model(ARCH, 2, width=WIDTH)
  v = model.init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
  rng = np.random.default_rng(seed)
  stats = jax.tree_util.tree_map_with_path(
      lambda p, a: (rng.uniform(0.5, 2.0, a.shape) if p[-1].key == 'var'
                    else rng.normal(0, 0.3, a.shape)).astype(np.float32), v['batch_stats'])
  meta = store.default_meta(ARCH, (SIZE, SIZE))
  meta.source_format, meta.source_file = 'medft', f'random init, seed {seed}'
  return store.save_artifact(folder, jax.tree.map(np.asarray, v['params']), meta,
                             batch_stats=stats)


def _config(data_dir, sources_value: str, arms: str = 'scratch+' + '+'.join(DEPTHS),
            seeds: tuple = SEEDS):
  c = tiny.config(data_dir, steps=2)
  c.arch, c.model.width, c.input_size = ARCH, WIDTH, SIZE
  # Test boundaries from every 64th ROI column in a 2 mm ROI: the test pass is most of a run.
  c.task.eval_col_stride, c.task.eval_patches_per_class, c.task.roi_height_mm = 64, 4, 2.0
  c.train.update(eval_every=2, log_every=2, checkpoint_every=1000)
  c.sweep.update(arms=arms, fractions='1.0', train_units='', seeds='+'.join(map(str, seeds)),
                 sources=sources_value, keep_checkpoints='best', report=False)
  return c


@pytest.fixture(scope='module')
def study(tmp_path_factory, cimt_data_dir):
  root = tmp_path_factory.mktemp('sources')
  a, b = _source(root / 'weights_a', 1), _source(root / 'weights_b', 2)
  value = f'alpha={a},beta={b}'
  folder = root / 'study'
  sweep(_config(cimt_data_dir, value), folder)
  report = build_report(folder, n_boot=N_BOOT)
  return folder, report, {'alpha': str(a), 'beta': str(b)}


def test_plan_and_layout():
  c = _config('/nowhere', 'alpha=/w/a,beta=/w/b', arms='layer4+scratch+fc', seeds=(0, 1))
  runs = plan(c)
  assert [(r.source, r.arm, r.seed) for r in runs] == [
      ('', 'scratch', 0), ('', 'scratch', 1),
      ('alpha', 'fc', 0), ('alpha', 'fc', 1), ('alpha', 'layer4', 0), ('alpha', 'layer4', 1),
      ('beta', 'fc', 0), ('beta', 'fc', 1), ('beta', 'layer4', 0), ('beta', 'layer4', 1)]
  assert Run('layer4', 0.5, 2, 'alpha').path('D') == Path('D/alpha/layer4/0.5/2')
  assert Run('layer4', 0.5, 2, 'alpha').name == 'alpha:layer4'
  assert run_dir('D', 'scratch', 1.0, 0) == Path('D/scratch/1.0/0')  # unchanged
  c.sweep.sources = ''
  assert all(r.source == '' for r in plan(c)) and len(plan(c)) == 3 * 2
  assert sources.split('alpha:fc') == ('alpha', 'fc') and sources.split('fc') == ('', 'fc')


def test_two_sources_sweep_reports_sources_at_each_depth(study):
  folder, report, inits = study
  # Scratch ran once (top level, as in a one-source sweep); each depth once per source.
  found = sorted(str(p.parent.relative_to(folder)) for p in folder.glob('**/results.json'))
  assert found == sorted([f'scratch/1.0/{s}' for s in SEEDS]
                         + [f'{n}/{d}/1.0/{s}' for n in inits for d in DEPTHS for s in SEEDS])
  for n, path in inits.items():
    for d in DEPTHS:
      config = json.loads((folder / n / d / '1.0' / '0' / 'config.json').read_text())
      assert config['init'] == path and config['depth'] == d
  plan_file = json.loads((folder / 'sweep.json').read_text())
  assert plan_file['sources'] == [{'name': n, 'init': p} for n, p in inits.items()]
  # Each source's layer4 arm starts from that source: its frozen units (parameters and
  # BatchNorm statistics) are the source's, bit for bit, and differ from the other source's.
  frozen = ('stem', 'layer1', 'layer2', 'layer3')
  for n, path in inits.items():
    best, _ = read_checkpoint(folder / n / 'layer4' / '1.0' / '0', 'best')
    params, _ = store.load_artifact(path)
    want = {'params': params, 'batch_stats': store.load_batch_stats(path)}
    for unit in frozen:
      for key in ('params', 'batch_stats'):
        jax.tree.map(np.testing.assert_array_equal, best[key][unit], want[key][unit])
  a, b = (store.load_artifact(p)[0]['stem'] for p in inits.values())
  assert any(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.any(x != y)), a, b)))

  # The per-fraction tables hold every run name, in order: scratch, then per source its depths.
  arms = ['scratch'] + [f'{n}:{d}' for n in inits for d in DEPTHS]
  assert [r['arm'] for r in report['rows']] == arms
  rows = {r['arm']: r for r in report['rows']}
  primary = report['primary_metric']
  for arm in arms:
    source, depth = sources.split(arm)
    tests = [json.loads((folder / source / depth / '1.0' / str(s) / 'results.json')
                        .read_text())['test'] for s in SEEDS]
    point = next(p for p in _points(tests[0]) if p.key == primary)
    _, units = stats.seed_units(_spec(), list(zip(SEEDS, tests)))
    assert rows[arm]['metrics'][primary]['value'] == pytest.approx(stats.value(point, units))
    assert rows[arm]['seeds'] == list(SEEDS)

  section = report['sources']
  assert [s['name'] for s in section['sources']] == list(inits)
  assert section['depths'] == list(DEPTHS) and 'one tuning depth' in section['family']
  compared = [p['key'] for p in report['points'] if p['compared']]
  assert [(t['depth'], t['point']) for t in section['tables']] == [
      (d, k) for d in DEPTHS for k in compared]
  n_units = rows['scratch']['n_units']
  for t in section['tables']:
    assert t['correction'] == 'holm' and len(t['rows']) == 1  # two sources: one pair
    x = t['rows'][0]
    assert (x['a'], x['b']) == (f'alpha:{t["depth"]}', f'beta:{t["depth"]}')
    assert (x['source_a'], x['source_b']) == ('alpha', 'beta')
    assert x['p_adjusted'] >= x['p_raw'] and x['n'] <= n_units
    assert x['difference'] == pytest.approx(rows[x['a']]['metrics'][t['point']]['value']
                                            - rows[x['b']]['metrics'][t['point']]['value'])
    assert x['mark'] == '' or x['p_adjusted'] < 0.05

  md = (folder / 'report.md').read_text()
  assert '## Sources at each depth: which source, and how deep?' in md
  assert md.count('| depth | source A | source B | A − B [95% CI] |') == len(compared)
  assert '| scratch (reference, no source) |' in md
  assert 'Source `alpha`: its fine-tuning arms `alpha:*`' in md
  csv_rows = list(csv.DictReader(io.StringIO((folder / 'report.csv').read_text())))
  assert sum(r['section'] == 'source_pair' for r in csv_rows) == len(section['tables'])
  plot = next(p for p in report['plots'] if p['file'] == 'plots/sources_f1.png')
  image = np.asarray(Image.open(folder / plot['file']).convert('L'), np.float64)
  assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 5
  assert f']({plot["file"]})' in md

  # --mode=report rebuilds the same report from the folders alone (no sweep.json either).
  (folder / 'sweep.json').rename(folder / 'sweep.json.kept')
  try:
    again = build_report(folder, n_boot=N_BOOT)
  finally:
    (folder / 'sweep.json.kept').rename(folder / 'sweep.json')
  drop = ('generated', 'runs')
  assert {k: v for k, v in again.items() if k not in drop} == {
      k: v for k, v in report.items() if k not in drop}


def _spec():
  from medft import apps
  return apps.get('cimt')


def _points(test):
  return _spec().points(test)


@pytest.mark.parametrize('value, message', [
    ('alpha', "entry 'alpha' is not name=path"),
    ('1st={a}', "source name '1st'.*not folder-safe"),
    ('a:b={a}', "source name 'a:b'.*not folder-safe"),
    ('scratchy={a}', "source name 'scratchy'.*reserved"),
    ('plots={a}', "source name 'plots'.*reserved"),
    ('alpha={a},alpha={b}', "source name 'alpha' is given twice"),
    ('layer4={a}', "entry layer4=.*is an arm of resnet18"),
    ('alpha={a},beta={missing}', "entry beta=.*missing: no such folder"),
    ('alpha={a},beta={plain}', "entry beta=.*plain: not a medft weights artifact"),
    ('alpha={a},beta={other}', "entry beta=.*holds squeezenet1_1 weights but arch=resnet18"),
    ('alpha={a},beta={a}', "entry beta=.*the same folder as source 'alpha'"),
])
def test_bad_sources_are_refused_before_anything_is_written(tmp_path, value, message):
  a, b = tmp_path / 'a', tmp_path / 'b'
  for folder in (a, b):  # meta.json + params/ is what is_artifact reads (no orbax needed)
    (folder / 'params').mkdir(parents=True)
    (folder / 'meta.json').write_text(json.dumps(store.default_meta(ARCH).to_json()))
  other = tmp_path / 'other'
  (other / 'params').mkdir(parents=True)
  (other / 'meta.json').write_text(json.dumps(store.default_meta('squeezenet1_1').to_json()))
  (tmp_path / 'plain').mkdir()
  c = _config(tmp_path / 'data', value.format(a=a, b=b, missing=tmp_path / 'missing',
                                              plain=tmp_path / 'plain', other=other))
  before = sorted(tmp_path.rglob('*'))
  with pytest.raises(ConfigError, match='sweep.sources.*' + message):
    sweep(c, tmp_path / 'study')
  assert sorted(tmp_path.rglob('*')) == before  # no study folder, nothing written


def test_sources_with_init_or_auto_are_refused(tmp_path):
  from medft import auto_tune
  a = tmp_path / 'a'
  (a / 'params').mkdir(parents=True)
  (a / 'meta.json').write_text(json.dumps(store.default_meta(ARCH).to_json()))
  c = _config(tmp_path / 'data', f'alpha={a}')
  c.init = str(a)
  with pytest.raises(ConfigError, match=f'init={a} and sweep.sources both name source weights'):
    sweep(c, tmp_path / 'study')
  c.init = ''
  with pytest.raises(ConfigError, match='sweep.sources=.*"" for auto'):
    auto_tune(c, tmp_path / 'study')
  assert not (tmp_path / 'study').exists()


def test_three_sources_are_adjusted_within_each_depth(study, tmp_path):
  """A third source (the real runs of `beta` copied as `gamma`, found from the folders: the
  plan does not name it): each depth's table holds its three pairs, their p adjusted together
  (Holm, written out here) and nothing else; raw p is scipy's signed-rank test on the units."""
  folder = tmp_path / 'study'
  shutil.copytree(study[0], folder)
  shutil.copytree(folder / 'beta', folder / 'gamma')
  report = build_report(folder, n_boot=N_BOOT)
  section = report['sources']
  assert [s['name'] for s in section['sources']] == ['alpha', 'beta', 'gamma']
  spec = _spec()
  for t in section['tables']:
    assert [(x['source_a'], x['source_b']) for x in t['rows']] == [
        ('alpha', 'beta'), ('alpha', 'gamma'), ('beta', 'gamma')]
    raw = np.asarray([x['p_raw'] for x in t['rows']])
    order = np.argsort(raw, kind='mergesort')
    holm = np.empty(3)
    holm[order] = np.minimum(1, np.maximum.accumulate((3 - np.arange(3)) * raw[order]))
    assert [x['p_adjusted'] for x in t['rows']] == pytest.approx(holm)
    same = t['rows'][2]  # beta vs its copy: no difference, p = 1
    assert same['difference'] == 0 and same['p_raw'] == 1 and same['mark'] == ''
    x = t['rows'][0]
    values = []
    for source in ('alpha', 'beta'):
      tests = [(s, json.loads((folder / source / t['depth'] / '1.0' / str(s) / 'results.json')
                              .read_text())['test']) for s in SEEDS]
      point = next(p for p in _points(tests[0][1]) if p.key == t['point'])
      values.append(stats.unit_values(point, stats.seed_units(spec, tests)[1]))
    ok = np.isfinite(values[0]) & np.isfinite(values[1])
    assert x['p_raw'] == pytest.approx(scipy.stats.wilcoxon(values[0][ok], values[1][ok]).pvalue)
