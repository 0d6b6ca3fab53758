"""Layer-wise freezing: frozen units stay bit-identical and hold no optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import cimt
from medft import parallel, trainer, tuning
from medft.models import get_model
from medft.weights import store

UNITS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')


def _setup(depth):
  config = cimt.get_config(f'depth={depth}')
  model, units = get_model('alexnet', 3, width=0.125, scheme='he')
  params = jax.tree.map(np.asarray, model.init(
      jax.random.key(0), jnp.zeros((1, 67, 67, 3)))['params'])
  tx = tuning.make_optimizer(params, units, depth, config.optim, steps_per_epoch=2)
  meta = store.default_meta('alexnet', (67, 67))
  step, _ = trainer.make_steps(model, tx, meta)
  return params, tx, step


def _size(tree):
  return sum(np.size(x) for x in jax.tree.leaves(tree) if np.ndim(x) > 0)


@pytest.mark.parametrize('depth', tuning.arms(UNITS))
def test_frozen_units_unchanged_and_stateless(depth):
  params, tx, step = _setup(depth)
  opt_state = tx.init(params)
  trained = set(tuning.trained_units(UNITS, depth))
  # The optimizer holds exactly one momentum slot per trained parameter, none for frozen ones.
  assert _size(opt_state) == sum(_size(params[u]) for u in trained)
  state = parallel.replicate(trainer.TrainState(step=np.int32(0), params=params,
                                              opt_state=opt_state))
  rng = np.random.default_rng(0)
  for _ in range(3):
    batch = {'image': rng.integers(0, 256, (4, 40, 40), dtype=np.uint8),
             'label': rng.integers(0, 3, 4).astype(np.int32)}
    state, m = step(state, parallel.shard(batch), jax.random.key(1))
    assert bool(m['finite'][0])
  after = traverse_util.flatten_dict(parallel.unreplicate(state.params), sep='/')
  before = traverse_util.flatten_dict(params, sep='/')
  for path, value in before.items():
    unit = path.split('/')[0]
    if unit in trained:
      assert not np.array_equal(after[path], value), f'{path} should have trained ({depth})'
    else:
      assert after[path].tobytes() == value.tobytes(), f'{path} must be frozen ({depth})'


def test_learning_rates_follow_the_paper():
  optim = cimt.get_config().optim
  ft = tuning.learning_rates(optim, 'fc7')
  assert ft == pytest.approx({'body_weight': 1e-3, 'body_bias': 2e-3,
                              'head_weight': 1e-2, 'head_bias': 2e-2})
  scratch = tuning.learning_rates(optim, 'scratch')
  assert scratch['head_weight'] == pytest.approx(1e-3)


def test_lr_decays_by_095_per_epoch():
  config = cimt.get_config('depth=fc8')
  config.optim.weight_decay = 0.0
  config.optim.momentum = 0.0
  params = {'fc8': {'kernel': np.zeros((2, 2), np.float32), 'bias': np.zeros(2, np.float32)}}
  tx = tuning.make_optimizer(params, ('fc8',), 'fc8', config.optim, steps_per_epoch=3)
  state = tx.init(params)
  grads = jax.tree.map(np.ones_like, params)
  seen = []
  for _ in range(7):
    updates, state = tx.update(grads, state, params)
    seen.append(-float(updates['fc8']['kernel'][0, 0]))
  np.testing.assert_allclose(seen, [0.01] * 3 + [0.0095] * 3 + [0.009025], rtol=1e-6)


def test_unknown_depth_and_unlabelled_parameter():
  with pytest.raises(ValueError, match="depth='fc9'.*scratch or one of conv1"):
    tuning.trained_units(UNITS, 'fc9')
  with pytest.raises(ValueError, match="'conv10/kernel' belongs to no tuning unit"):
    tuning.param_labels({'conv10': {'kernel': np.zeros(1)}}, ('conv1',), 'conv1')


@pytest.mark.parametrize('arch, depth, width, size, kwargs', [
    ('resnet50', 'layer3', 0.0625, 32, {}),
    ('densenet121', 'block3', 0.125, 32, {'block_config': (2, 2, 2, 2)}),
    ('vit_b16', 'blocks6_8', 0.0625, 32, {})])
def test_middle_arm_of_the_modern_networks(arch, depth, width, size, kwargs):
  """A middle arm of ResNet-50, DenseNet-121 (two dense layers per block: the full 58 take
  a minute to compile here) and ViT-B/16 at reduced width, 3 real train steps: frozen units'
  parameters and BatchNorm statistics bit-identical, one optimizer slot per trained parameter
  and none for frozen ones, every trained unit moved (parameters, and the statistics of its
  BatchNorm layers under the default `bn_mode=train`)."""
  from medft.bench import cases
  from medft.bench.core import Settings
  a = cases.arm(arch, depth, Settings(width=width, input_size=size), **kwargs)
  trained = set(tuning.trained_units(a.units, depth))
  assert trained and set(a.units) - trained
  assert _size(a.tx.init(a.params)) == sum(_size(a.params[u]) for u in trained)
  step, _ = trainer.make_steps(a.model, a.tx, a.meta)
  state = parallel.replicate(a.state())
  rng = np.random.default_rng(0)
  for _ in range(3):
    batch = {'image': rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8),
             'label': rng.integers(0, 3, 4).astype(np.int32)}
    state, m = step(state, parallel.shard(batch), jax.random.key(1))
    assert bool(m['finite'][0])
  state = parallel.unreplicate(state)
  pairs = [(state.params, a.params)]
  if a.batch_stats:
    pairs.append((state.batch_stats, a.batch_stats))
  for after, before in pairs:
    for unit in before:
      changed = jax.tree.leaves(jax.tree.map(
          lambda x, y: np.asarray(x).tobytes() != np.asarray(y).tobytes(), after[unit],
          before[unit]))
      if unit in trained:
        assert all(changed), f'{arch} {unit} should have trained ({depth})'
      else:
        assert not any(changed), f'{arch} {unit} must be frozen ({depth})'
