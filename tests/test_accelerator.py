"""Accelerator readiness on CPU: bf16 compute, the persistent compilation cache."""

import json
import os
import subprocess
import sys
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
def test_second_run_of_the_same_config_compiles_nothing(cimt_data_dir, tmp_path):
  driver = Path(__file__).with_name('run_train.py')
  env = dict(os.environ, JAX_PLATFORMS='cpu', MEDFT_CACHE_DIR=str(tmp_path / 'cache'))
  for run in ('first', 'second'):
    subprocess.run([sys.executable, str(driver), str(tmp_path / run), str(cimt_data_dir), '6'],
                   env=env, check=True, capture_output=True, timeout=300)
  first = json.loads((tmp_path / 'first' / 'timing.json').read_text())['compile_cache']
  second = json.loads((tmp_path / 'second' / 'timing.json').read_text())['compile_cache']
  assert first['cache_misses'] > 0
  assert second['cache_misses'] == 0, second
  assert second['cache_hits'] >= first['cache_misses']
