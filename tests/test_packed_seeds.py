"""Packed seeds: S seeds of one arm trained as one vmapped program equal their separate steps."""

import jax
import numpy as np
import tiny

from medft import parallel, trainer, tuning


def _setup(tmp_path, depth='scratch'):
  c = tiny.config(tmp_path, steps=10, depth=depth)
  model, units = trainer.build_model(c)
  tx = tuning.make_optimizer(*_params(c, model, units, 0)[:1], units, depth, c.optim, 4)
  return c, model, units, tx


def _params(c, model, units, seed):
  c = c.copy_and_resolve_references()
  c.seed = seed
  return trainer.initial_params(c, model, units)


def _batches(seed, steps, batch=8, size=32):
  rng = np.random.default_rng(seed)
  return [{'image': rng.integers(0, 256, (batch, size, size, 3), np.uint8),
           'label': rng.integers(0, 3, batch).astype(np.int32)} for _ in range(steps)]


def test_packed_seeds_equal_separate_runs(tmp_path):
  """Two seeds (own init, own batches, own dropout keys; the tiny net has dropout) for 4
  steps: every parameter of each packed seed equals its separate run to float tolerance."""
  c, model, units, tx = _setup(tmp_path)
  seeds, steps = (0, 1), 4
  step, _ = trainer.make_steps(model, tx, _params(c, model, units, 0)[1])
  packed_step, _ = trainer.make_steps(model, tx, _params(c, model, units, 0)[1], pack=2)
  separate, states = [], []
  for seed in seeds:
    params, _ = _params(c, model, units, seed)
    state = trainer.TrainState.create(params, tx)
    states.append(state)
    pstate = parallel.replicate(state)
    for b in _batches(seed, steps):
      pstate, _ = step(pstate, parallel.to_devices(parallel.shard(b)), jax.random.key(seed))
    separate.append(parallel.unreplicate(pstate.params))
  pstate = parallel.replicate_packed(states)
  keys = jax.numpy.stack([jax.random.key(s) for s in seeds])  # each seed's own run key
  all_batches = [_batches(seed, steps) for seed in seeds]
  for k in range(steps):
    batch = parallel.to_devices(parallel.shard_packed([bs[k] for bs in all_batches]))
    pstate, metrics = packed_step(pstate, batch, keys)
  assert metrics['loss'].shape == (1, 2)
  packed = parallel.unreplicate(pstate.params)
  for s in range(len(seeds)):
    mine = jax.tree.map(lambda x: x[s], packed)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(separate[s])):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(separate[0]),
                                                jax.tree.leaves(separate[1]))]
  assert max(moved) > 1e-3  # the two seeds are different runs


def test_packed_seeds_cut_their_views_on_the_device_as_separate_runs(tmp_path):
  """With `task.views_on='device'` (polyp) the packed step cuts each seed's patches from one
  shared training stack; each packed seed equals its separate step (3 steps). Dropout off:
  the separate step is then the one tests/test_device_views.py compiles (seeds' own dropout
  keys are checked above)."""
  import test_device_views as dv

  task = dv._polyp_task(orientations=2, shift_steps=(0,))
  c = dv._tiny_polyp_config(tmp_path, 'device')
  c.model.dropout = 0.0
  model, units = trainer.build_model(c)
  meta = _params(c, model, units, 0)[1]
  tx = tuning.make_optimizer(_params(c, model, units, 0)[0], units, 'scratch', c.optim, 100)
  source = task.train_views_on_device()
  placed = parallel.replicate((source.stack, source.limits))
  step, _ = trainer.make_steps(model, tx, meta, views=source.static)
  packed_step, _ = trainer.make_steps(model, tx, meta, views=source.static, pack=2)
  seeds, steps = (0, 1), 3
  batches = {s: [task.train_batch(10 * s + k, 8) for k in range(steps)] for s in seeds}
  separate, states = [], []
  for seed in seeds:
    state = trainer.TrainState.create(_params(c, model, units, seed)[0], tx)
    states.append(state)
    pstate = parallel.replicate(state)
    for b in batches[seed]:
      pstate, _ = step(pstate, parallel.to_devices(parallel.shard(b)), jax.random.key(seed),
                       *placed)
    separate.append(parallel.unreplicate(pstate.params))
  pstate = parallel.replicate_packed(states)
  keys = jax.numpy.stack([jax.random.key(s) for s in seeds])
  for k in range(steps):
    batch = parallel.to_devices(parallel.shard_packed([batches[s][k] for s in seeds]))
    pstate, _ = packed_step(pstate, batch, keys, *placed)
  packed = parallel.unreplicate(pstate.params)
  for s in range(len(seeds)):
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[s], packed)),
                    jax.tree.leaves(separate[s])):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
