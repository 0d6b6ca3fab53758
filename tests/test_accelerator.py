"""Accelerator readiness on CPU: bf16 compute, the persistent compilation cache."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tiny

import medft
from medft.models import get_model
from medft.weights import store


def _latest(workdir):
  mngr = ocp.CheckpointManager((Path(workdir) / 'checkpoints' / 'latest').absolute())
  return mngr.restore(mngr.latest_step())


def _losses(workdir):
  return [json.loads(line)['loss'] for line in (Path(workdir) / 'metrics.jsonl').open()]


@pytest.mark.slow
def test_bfloat16_trains_like_float32_and_keeps_float32_state(cimt_data_dir, tmp_path):
  results = {}
  for dtype in ('float32', 'bfloat16'):
    config = tiny.config(cimt_data_dir, steps=60)
    config.dtype = dtype
    results[dtype] = medft.train(config, tmp_path / dtype)
  losses = _losses(tmp_path / 'bfloat16')
  assert np.mean(losses[-3:]) < 0.8 * losses[0], losses  # it trains
  # Stated tolerance: validation AUC within 0.05 of the float32 run with the same seed.
  assert abs(results['bfloat16']['val_auc'] - results['float32']['val_auc']) <= 0.05
  state = _latest(tmp_path / 'bfloat16')['state']
  for leaf in jax.tree.leaves(state['params']) + jax.tree.leaves(state['opt_state']):
    if np.ndim(leaf) > 0:
      assert np.asarray(leaf).dtype == np.float32


def test_bfloat16_keeps_frozen_tensors_bit_identical(cimt_data_dir, tmp_path):
  model, units = get_model('alexnet', 3, width=0.125, scheme='he')
  source = jax.tree.map(np.asarray, model.init(jax.random.key(3), np.zeros((1, 67, 67, 3)))
                        ['params'])
  store.save_artifact(tmp_path / 'w', source, store.default_meta('alexnet', (67, 67)))
  config = tiny.config(cimt_data_dir, steps=8, depth='conv5', init=str(tmp_path / 'w'))
  config.dtype = 'bfloat16'
  medft.train(config, tmp_path / 'run')
  params = _latest(tmp_path / 'run')['state']['params']
  for unit in ('conv1', 'conv2', 'conv3', 'conv4'):
    assert np.asarray(params[unit]['kernel']).tobytes() == source[unit]['kernel'].tobytes()
  assert not np.array_equal(params['conv5']['kernel'], source['conv5']['kernel'])


@pytest.mark.slow
def test_second_run_of_the_same_config_compiles_nothing(cimt_data_dir, tmp_path, zygote):
  """Two processes (forked from the session's `zygote`, which has compiled nothing) sharing
  one persistent compile cache."""
  driver = Path(__file__).with_name('run_train.py')
  env = dict(os.environ, JAX_PLATFORMS='cpu', MEDFT_CACHE_DIR=str(tmp_path / 'cache'))
  for run in ('first', 'second'):
    done = zygote.run([str(driver), str(tmp_path / run), str(cimt_data_dir), '6'], env=env,
                      cwd=Path.cwd(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
  first = json.loads((tmp_path / 'first' / 'timing.json').read_text())['compile_cache']
  second = json.loads((tmp_path / 'second' / 'timing.json').read_text())['compile_cache']
  assert first['cache_misses'] > 0
  assert second['cache_misses'] == 0, second
  assert second['cache_hits'] >= first['cache_misses']


def test_profile_shows_train_steps_back_to_back(tmp_path):
  """The loop's steps run back to back in a jax.profiler trace; a host sync per step does not.

  Threshold: median gap < 0.5 x median step. Measured on the 2-core CPU (other jobs running):
  the tiny step takes ~2 ms and its gaps ~0.04 ms, so the margin is >20x and survives a loaded
  machine; a gap of half a step would mean the host, not XLA, sets the pace. The control fetches
  the loss and sleeps after every step, so each gap holds at least that sleep (>= 2 steps).
  """
  from medft.bench import step_trace
  config = tiny.config(tmp_path)
  steps = 20
  free = step_trace.measure(config, steps, tmp_path / 'free')
  assert free['steps_found'] == free['steps_run'] == steps, free
  assert free['median_gap_ms'] < 0.5 * free['median_step_ms'], free
  assert free['dispatched_ahead'] >= 0.5, free  # the host enqueued steps before they were due
  assert step_trace.back_to_back(free)
  sleep_s = max(0.005, 2e-3 * free['median_step_ms'])
  synced = step_trace.measure(config, steps, tmp_path / 'synced', sync_sleep_s=sleep_s)
  assert synced['steps_found'] == steps, synced
  assert synced['median_gap_ms'] >= 0.9e3 * sleep_s, synced
  assert synced['median_gap_ms'] > 10 * max(free['median_gap_ms'], 0.01), (free, synced)
  assert synced['busy_fraction'] < free['busy_fraction']
  assert synced['dispatched_ahead'] == 0.0, synced
  assert not step_trace.back_to_back(synced)
