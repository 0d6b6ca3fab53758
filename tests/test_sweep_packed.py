"""`sweep.pack_seeds`: a sweep whose seeds train as one packed program writes, per seed, the
run folder its separate run writes (same best parameters and test numbers to float
tolerance), reports from it, resumes an interrupted packed sweep as separate runs, and fails
only the seed whose loss is not finite."""

import json

import numpy as np
import pytest

from configs import cimt
from medft import loop, packed, trainer
from medft.errors import ConfigError
from medft.sweep import Run, run_config, run_dir, sweep

# Width-reduced network, 6 steps, validation every 2 with patience 1 (early stopping can
# end a seed before the others), on the session's synthetic CIMT data.
TINY = {
    'model.width': 0.125, 'input_size': 67, 'task.patch_size': 32, 'model.init_scheme': 'he',
    'optim.base_lr': 0.01, 'train.batch': 8, 'train.steps': 6, 'train.eval_every': 2,
    'train.log_every': 2, 'train.checkpoint_every': 2, 'train.patience': 1,
    'task.eval_patches_per_class': 4, 'task.eval_col_stride': 64, 'data.test_share': 0.25,
    'task.patches_per_image': 4, 'train.workers': 1,
}
ARG = 'synthetic,arms=scratch,fractions=1.0,seeds=0+1'
SEEDS = (0, 1)
TOL = dict(rtol=1e-5, atol=1e-5)  # float tolerance of a vmapped step against its own


def _config(data_dir, **extra):
  c = cimt.get_config(ARG)
  c.update_from_flattened_dict({**TINY, 'data.data_dir': str(data_dir), **extra})
  return c


def _best(run) -> dict:
  """The best checkpoint's parameters (flattened names -> arrays)."""
  import orbax.checkpoint as ocp
  folder = run / 'checkpoints' / 'best'
  with ocp.CheckpointManager(folder.absolute()) as manager:
    tree = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore())
  out = {'/'.join(str(k) for k in path): np.asarray(v) for path, v in _leaves(tree)}
  assert len(out) > 10, out.keys()  # every layer's kernel and bias
  return out


def _leaves(tree, path=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, path + (k,))
  else:
    yield path, tree


def _assert_same_run(a, b):
  """Two run folders of one seed: same rows, results and best parameters (float tolerance)."""
  ra, rb = (json.loads((r / 'results.json').read_text()) for r in (a, b))
  for key in ('steps', 'best_step', 'total_steps', 'seed', 'arm', 'fraction'):
    assert ra[key] == rb[key], key
  np.testing.assert_allclose(ra['val_auc'], rb['val_auc'], **TOL)
  np.testing.assert_allclose(ra['test_auc'], rb['test_auc'], **TOL)
  for key, value in ra['test'].items():
    if isinstance(value, (int, float)):
      np.testing.assert_allclose(value, rb['test'][key], **TOL, err_msg=key)
  rows_a, rows_b = ([json.loads(line) for line in (r / 'metrics.jsonl').open()] for r in (a, b))
  assert [r['step'] for r in rows_a] == [r['step'] for r in rows_b]
  for x, y in zip(rows_a, rows_b):
    np.testing.assert_allclose(x['loss'], y['loss'], **TOL)
    assert x.get('val_auc') == pytest.approx(y.get('val_auc'), abs=1e-5)
  pa, pb = _best(a), _best(b)
  assert pa.keys() == pb.keys()
  for name in pa:
    np.testing.assert_allclose(pa[name], pb[name], **TOL, err_msg=name)
  assert (json.loads((a / 'config.json').read_text())
          == json.loads((b / 'config.json').read_text()))
  assert (b / 'checkpoints' / 'latest').is_dir() and (b / 'timing.json').exists()


@pytest.fixture(scope='module')
def separate(tmp_path_factory, cimt_data_dir):
  """The reference: the same sweep, seeds one after another."""
  folder = tmp_path_factory.mktemp('separate') / 'study'
  sweep(_config(cimt_data_dir, **{'sweep.report': False}), folder)
  return folder


def test_packed_sweep_equals_separate_runs(separate, cimt_data_dir, tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(trainer, 'train_prepared', lambda run: calls.append(run) or 1 / 0)
  folder = tmp_path / 'study'
  report = sweep(_config(cimt_data_dir, **{'sweep.pack_seeds': True}), folder)
  assert not calls, 'a seed trained on its own'
  for seed in SEEDS:
    run = run_dir(folder, 'scratch', 1.0, seed)
    _assert_same_run(run_dir(separate, 'scratch', 1.0, seed), run)
    assert json.loads((run / 'timing.json').read_text())['packed_seeds'] == list(SEEDS)
  # Seed 0 stops early (patience 1) while seed 1 trains on: per-seed early stopping.
  steps = [json.loads((run_dir(folder, 'scratch', 1.0, s) / 'results.json').read_text())['steps']
           for s in SEEDS]
  assert steps == [4, 6], steps
  assert report['rows'] and (folder / 'report.md').exists()
  assert '| scratch ' in (folder / 'report.md').read_text()


def test_interrupted_packed_sweep_resumes_as_separate_runs(separate, cimt_data_dir, tmp_path,
                                                           monkeypatch):
  # SIGTERM seen at the 3rd step: every seed saves its latest checkpoint, then Preempted.
  ticks = []
  real = loop.stop_for_sigterm
  monkeypatch.setattr(loop, 'stop_for_sigterm',
                      lambda flag, fetch: real(flag, fetch) or len(ticks.append(1) or ticks) == 3)
  folder = tmp_path / 'study'
  config = _config(cimt_data_dir, **{'sweep.pack_seeds': True, 'sweep.report': False})
  with pytest.raises(loop.Preempted, match='packed seeds 0, 1 saved their checkpoints at '
                     'step 3'):
    sweep(config, folder)
  for seed in SEEDS:
    run = run_dir(folder, 'scratch', 1.0, seed)
    assert not (run / 'results.json').exists()
    assert [p.name for p in (run / 'checkpoints' / 'latest').iterdir()] == ['3']
  monkeypatch.setattr(loop, 'stop_for_sigterm', real)
  resumed = []
  real_prepared = trainer.train_prepared
  monkeypatch.setattr(trainer, 'train_prepared',
                      lambda run: resumed.append(run.loop.step) or real_prepared(run))
  sweep(config, folder)
  assert resumed == [3, 3]  # each seed resumed on its own from its checkpoint
  for seed in SEEDS:
    _assert_same_run(run_dir(separate, 'scratch', 1.0, seed), run_dir(folder, 'scratch', 1.0,
                                                                      seed))


def test_non_finite_seed_fails_alone(cimt_data_dir, tmp_path, monkeypatch):
  """Seed 1 starts from a non-finite weight: it fails (failed.json) as its separate run
  would; seed 0 finishes."""
  real = trainer.initial_variables

  def poisoned(config, model, units):
    params, batch_stats, meta = real(config, model, units)
    if config.seed == 1:
      params['fc8']['bias'] = params['fc8']['bias'] * np.nan
    return params, batch_stats, meta
  monkeypatch.setattr(trainer, 'initial_variables', poisoned)
  folder = tmp_path / 'study'
  sweep(_config(cimt_data_dir, **{'sweep.pack_seeds': True, 'sweep.report': False}),
              folder)
  failed = json.loads((run_dir(folder, 'scratch', 1.0, 1) / 'failed.json').read_text())
  assert 'arm scratch seed 1: non-finite loss or update at step 1' in failed['error']
  assert (run_dir(folder, 'scratch', 1.0, 0) / 'results.json').exists()


def test_pack_seeds_value_is_checked_before_anything_is_written(cimt_data_dir, tmp_path):
  c = _config(cimt_data_dir)
  c.sweep.unlock()
  del c.sweep['pack_seeds']
  c.sweep.pack_seeds = 'yes'
  with pytest.raises(ConfigError, match=r'sweep\.pack_seeds.*yes.*True or False'):
    sweep(c, tmp_path / 'study')
  assert not (tmp_path / 'study').exists()


def test_feature_cache_arms_train_their_seeds_separately():
  """The cached step trains from one run's trunk features: such arms are not packed (the
  sweep logs why and runs the seeds one after another); scratch and conv1 cache nothing."""
  c = cimt.get_config(ARG)
  c.train.feature_cache = 'memory'
  reasons = {arm: packed.fallback_reason(run_config(c, Run(arm, 1.0, 0), '')) for arm in
             ('scratch', 'conv1', 'fc7')}
  assert reasons['scratch'] == reasons['conv1'] == ''
  assert 'train.feature_cache' in reasons['fc7']
