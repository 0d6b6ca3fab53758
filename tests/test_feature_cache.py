"""Frozen-trunk feature cache: staged models, exact lookups, invalidation, training results."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tiny

import medft
from medft import feature_cache
from medft.models import get_model
from medft.weights import store


@pytest.mark.parametrize('arch', ['alexnet', 'alexnet_torchvision', 'squeezenet1_1'])
def test_trunk_then_rest_equals_the_whole_network_with_dropout(arch):
  model, units = get_model(arch, 3, width=0.25, dropout=0.5)
  x = jax.random.normal(jax.random.key(0), (4, 67, 67, 3))
  params = model.init(jax.random.key(1), x)['params']
  rngs = {'dropout': jax.random.key(5)}
  whole = model.apply({'params': params}, x, train=True, rngs=rngs)
  for below, unit in zip(units, units[1:]):
    features = model.apply({'params': params}, x, train=True, stop=below, rngs=rngs)
    rest = model.apply({'params': params}, features, train=True, start=unit, rngs=rngs)
    np.testing.assert_array_equal(rest, whole, err_msg=f'{arch} split below {unit}')
  with pytest.raises(ValueError, match='fc9'):
    model.apply({'params': params}, x, stop='fc9')


class _CountingTrunk:
  def __init__(self):
    self.rows = 0

  def __call__(self, patches):
    self.rows += len(patches)
    sums = patches.reshape(len(patches), -1).sum(1, keepdims=True)
    return (sums * np.array([1, 2])).astype(np.float32)


def _patches(seed, n=6):
  return np.random.default_rng(seed).integers(0, 256, (n, 5, 5), dtype=np.uint8)


def test_cache_computes_each_distinct_patch_once_and_returns_the_same_features():
  trunk = _CountingTrunk()
  cache = feature_cache.FeatureCache(trunk, 'k', 'memory', max_bytes=2**20)
  a = _patches(0)
  batch = np.concatenate([a, a[:2]])  # a repeat inside one batch is computed once
  first = cache.features(batch)
  np.testing.assert_array_equal(first, _CountingTrunk()(batch))
  assert trunk.rows == 6 and (cache.hits, cache.misses) == (2, 6)
  again = cache.features(a[::-1])
  np.testing.assert_array_equal(again, first[:6][::-1])
  assert trunk.rows == 6 and cache.stats()['hit_rate'] == pytest.approx(8 / 14)
  changed = a.copy()
  changed[0, 0, 0] ^= 1  # one pixel differs: a different patch, computed afresh
  cache.features(changed[:1])
  assert trunk.rows == 7


def test_cache_stops_storing_at_its_size_bound_but_still_answers():
  trunk = _CountingTrunk()
  cache = feature_cache.FeatureCache(trunk, 'k', 'memory', max_bytes=3 * 8)
  out = cache.features(_patches(1))
  assert len(cache) == 3 and out.shape == (6, 2)
  cache.features(_patches(1))
  assert trunk.rows == 6 + 3


def test_folder_cache_persists_merges_and_survives_a_damaged_file(tmp_path, caplog):
  one = feature_cache.FeatureCache(_CountingTrunk(), 'abc', str(tmp_path), 2**20)
  one.features(_patches(0))
  other = feature_cache.FeatureCache(_CountingTrunk(), 'abc', str(tmp_path), 2**20)
  other.features(_patches(1))
  one.save()
  other.save()  # merges what `one` wrote meanwhile
  trunk = _CountingTrunk()
  warm = feature_cache.FeatureCache(trunk, 'abc', str(tmp_path), 2**20)
  assert len(warm) == 12
  warm.features(np.concatenate([_patches(0), _patches(1)]))
  assert trunk.rows == 0
  assert not list(tmp_path.glob('.*.tmp'))
  (tmp_path / 'abc.npz').write_bytes(b'not a zip file')
  with caplog.at_level(logging.WARNING):
    rebuilt = feature_cache.FeatureCache(_CountingTrunk(), 'abc', str(tmp_path), 2**20)
  assert len(rebuilt) == 0 and 'abc.npz' in caplog.text and 'rebuilt' in caplog.text


def test_fingerprint_follows_every_frozen_bit_and_the_description():
  params = {'conv1': {'kernel': np.ones((3, 3), np.float32), 'bias': np.zeros(3, np.float32)}}
  base = feature_cache.fingerprint(params, {'stop': 'conv1'})
  nudged = jax.tree.map(np.copy, params)
  nudged['conv1']['kernel'][1, 1] = np.nextafter(np.float32(1), np.float32(2))
  assert feature_cache.fingerprint(nudged, {'stop': 'conv1'}) != base
  assert feature_cache.fingerprint(params, {'stop': 'conv2'}) != base
  assert feature_cache.fingerprint(jax.tree.map(np.copy, params), {'stop': 'conv1'}) == base


def _source(tmp_path, seed=7):
  folder = tmp_path / f'w{seed}'
  if folder.exists():
    return str(folder)
  model, _ = get_model('alexnet', 3, width=0.125, scheme='he')
  params = jax.tree.map(np.asarray, model.init(jax.random.key(seed), np.zeros((1, 67, 67, 3)))
                        ['params'])
  store.save_artifact(folder, params, store.default_meta('alexnet', (67, 67)))
  return str(folder)


def _train(data_dir, workdir, init, cache, depth='fc7', feature_cache_mb=2048, **task):
  config = tiny.config(data_dir, steps=12, depth=depth, init=init)
  config.train.eval_every = 6
  config.train.feature_cache = cache
  config.train.feature_cache_mb = feature_cache_mb
  config.task.update(task)
  results = medft.train(config, workdir)
  mngr = ocp.CheckpointManager((workdir / 'checkpoints' / 'latest').absolute())
  params = mngr.restore(mngr.latest_step())['state']['params']
  mngr.close()
  timing = json.loads((workdir / 'timing.json').read_text())
  return results, jax.tree.map(np.asarray, params), timing['feature_cache']


def test_cached_arm_trains_like_the_uncached_arm_and_a_warm_cache_is_exact(
    cimt_data_dir, tmp_path):
  init = _source(tmp_path)
  folder = str(tmp_path / 'cache')
  ref, ref_params, none = _train(cimt_data_dir, tmp_path / 'off', init, '')
  cold, cold_params, cold_stats = _train(cimt_data_dir, tmp_path / 'cold', init, folder)
  warm, warm_params, warm_stats = _train(cimt_data_dir, tmp_path / 'warm', init, folder)
  assert none is None
  # Entries: the training patches computed, plus the fixed validation patches.
  assert cold_stats['misses'] > 0 and cold_stats['entries'] > cold_stats['misses']
  assert warm_stats == {**cold_stats, 'hits': cold_stats['hits'] + cold_stats['misses'],
                        'misses': 0, 'hit_rate': 1.0}
  # Warm and cold serve the same trunk outputs: bit-identical training.
  for a, b in zip(jax.tree.leaves(cold_params), jax.tree.leaves(warm_params)):
    assert a.tobytes() == b.tobytes()
  assert cold['val_auc'] == warm['val_auc']
  # Against the uncached step (one fused program): equal to float32 rounding; frozen units
  # bit-identical to the file.
  for unit in ('conv1', 'conv5', 'fc6'):
    for name in ('kernel', 'bias'):
      assert cold_params[unit][name].tobytes() == ref_params[unit][name].tobytes()
  for unit in ('fc7', 'fc8'):
    np.testing.assert_allclose(cold_params[unit]['kernel'], ref_params[unit]['kernel'],
                               rtol=1e-4, atol=1e-6)
  assert cold['val_auc'] == pytest.approx(ref['val_auc'], abs=1e-3)


def test_new_weights_or_a_new_cut_never_reuse_features(cimt_data_dir, tmp_path):
  folder = str(tmp_path / 'cache')
  _train(cimt_data_dir, tmp_path / 'a', _source(tmp_path, 7), folder)
  *_, other_weights = _train(cimt_data_dir, tmp_path / 'b', _source(tmp_path, 8), folder)
  *_, other_cut = _train(cimt_data_dir, tmp_path / 'c', _source(tmp_path, 7), folder,
                         depth='fc8')
  assert other_weights['hits'] == 0 and other_cut['hits'] == 0
  assert len(list((tmp_path / 'cache').glob('*.npz'))) == 3


def test_arms_without_a_frozen_trunk_run_without_the_cache(cimt_data_dir, tmp_path):
  *_, stats = _train(cimt_data_dir, tmp_path / 'all', _source(tmp_path), 'memory',
                     depth='conv1')
  assert stats is None


def test_unwritable_cache_folder_is_refused_by_name(cimt_data_dir, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(ValueError, match='train.feature_cache=.*file/sub'):
    _train(cimt_data_dir, tmp_path / 'r', _source(tmp_path), str(blocker / 'sub'))
  assert not (tmp_path / 'r').exists()  # refused before the workdir was written
  with pytest.raises(ValueError, match="train.feature_cache=' ' is invalid.* without surrounding"):
    _train(cimt_data_dir, tmp_path / 'r', _source(tmp_path), ' ')
  assert not (tmp_path / 'r').exists()
  with pytest.raises(ValueError, match=r'train.feature_cache_mb=0 is invalid.*> 0'):
    _train(cimt_data_dir, tmp_path / 'r', _source(tmp_path), 'memory', feature_cache_mb=0)
  assert not (tmp_path / 'r').exists()


def test_bf16_features_round_trip_exactly():
  model, _ = get_model('alexnet', 3, width=0.125, dtype=jnp.bfloat16)
  x = jnp.ones((2, 67, 67, 3))
  params = model.init(jax.random.key(0), x)['params']
  f = model.apply({'params': params}, x, stop='fc7')
  assert f.dtype == jnp.bfloat16
  assert jnp.array_equal(f.astype(jnp.float32).astype(jnp.bfloat16), f)


def test_a_fixed_training_pool_is_served_from_the_cache_after_its_first_pass(
    cimt_data_dir, tmp_path):
  *_, stats = _train(cimt_data_dir, tmp_path / 'pool', _source(tmp_path), 'memory',
                     fixed_pool=True, patches_per_image=2)
  assert stats['misses'] <= 2 * 24  # at most the pool: 2 patches x (fewer than 24) scans
  assert stats['hits'] + stats['misses'] == 12 * 8 and stats['hit_rate'] > 0.5


@pytest.mark.slow
def test_cached_arm_on_four_devices_matches_one(cimt_data_dir, tmp_path, zygote):
  from test_train import _params, _run
  args = ['depth=fc7', f'init={_source(tmp_path)}', 'model.dropout=0',
          'train.feature_cache=memory', 'task.fixed_pool=true', 'task.patches_per_image=2']
  _run(zygote, tmp_path / 'one', cimt_data_dir, 12, *args)
  _run(zygote, tmp_path / 'four', cimt_data_dir, 12, *args, devices=4)
  one, four = _params(tmp_path / 'one'), _params(tmp_path / 'four')
  for k in one:
    np.testing.assert_allclose(four[k], one[k], rtol=2e-4, atol=2e-5, err_msg=k)
  stats = [json.loads((tmp_path / d / 'timing.json').read_text()) for d in ('one', 'four')]
  assert stats[1]['devices'] == 4
  assert stats[0]['feature_cache'] == stats[1]['feature_cache']
  assert stats[0]['feature_cache']['hits'] > 0
