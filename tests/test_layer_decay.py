"""Layer-wise learning-rate decay (`optim.layer_decay`): hand-worked rates per unit, and
decay 1.0 is today's optimizer bit for bit."""

import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import cimt
from medft import errors, tuning, validate

UNITS = ('a', 'b', 'c', 'head')


def _params():
  return {u: {'kernel': np.zeros((2, 3), np.float32), 'bias': np.zeros(3, np.float32)}
          for u in UNITS}


def _optim(**kw):
  optim = ml_collections.ConfigDict(dict(
      base_lr=0.1, head_lr_mult=1.0, bias_lr_mult=2.0, momentum=0.0, weight_decay=0.0,
      lr_decay_per_epoch=1.0, layer_decay=0.5))
  optim.update(kw)
  return optim


def _first_updates(optim, depth):
  params = _params()
  tx = tuning.make_optimizer(params, UNITS, depth, optim, steps_per_epoch=1)
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  return {u: (float(np.unique(updates[u]['kernel'])[0]), float(np.unique(updates[u]['bias'])[0]))
          for u in UNITS}


def test_each_unit_learns_at_the_rate_above_it_times_the_factor():
  # plain SGD, gradient 1: the update is -lr; head 0.1, c 0.05, b 0.025, a 0.0125; biases x2
  got = _first_updates(_optim(), 'a')
  want = {'head': 0.1, 'c': 0.05, 'b': 0.025, 'a': 0.0125}
  for unit, lr in want.items():
    assert got[unit] == pytest.approx((-lr, -2 * lr), rel=1e-6), unit
  # a deeper arm still freezes below its depth; the head keeps its fine-tuning multiple
  got = _first_updates(_optim(head_lr_mult=10.0), 'b')
  assert got['a'] == (0.0, 0.0)
  assert got['b'] == pytest.approx((-0.025, -0.05)) and got['c'] == pytest.approx((-0.05, -0.1))
  assert got['head'] == pytest.approx((-1.0, -2.0))


def test_learning_rates_and_labels_per_unit():
  rates = tuning.learning_rates(_optim(), 'b', UNITS)
  assert rates == pytest.approx({'head_weight': 0.1, 'head_bias': 0.2, 'c_weight': 0.05,
                                 'c_bias': 0.1, 'b_weight': 0.025, 'b_bias': 0.05,
                                 'a_weight': 0.0125, 'a_bias': 0.025})
  labels = traverse_util.flatten_dict(tuning.param_labels(_params(), UNITS, 'b', True), sep='/')
  assert labels['a/kernel'] == tuning.FROZEN and labels['b/kernel'] == 'b_weight'
  assert labels['c/bias'] == 'c_bias' and labels['head/kernel'] == 'head_weight'
  # scratch arms ignore the decay (nothing there is pretrained): the paper's rates
  paper = {'body_weight': 0.1, 'body_bias': 0.2, 'head_weight': 0.1, 'head_bias': 0.2}
  assert tuning.learning_rates(_optim(), 'scratch', UNITS) == pytest.approx(paper)
  assert _first_updates(_optim(), 'scratch')['a'] == pytest.approx((-0.1, -0.2))


def _paper_optimizer(params, units, depth, optim, steps_per_epoch):
  """The paper's optimizer written out with optax (what make_optimizer built before layer
  decay): body / head rates, biases x 2, weight decay on weights, staircase lr decay."""
  head = optim.base_lr * (optim.head_lr_mult if depth != 'scratch' else 1.0)
  rates = {'body_weight': optim.base_lr, 'body_bias': optim.base_lr * optim.bias_lr_mult,
           'head_weight': head, 'head_bias': head * optim.bias_lr_mult}
  transforms = {tuning.FROZEN: optax.set_to_zero()}
  for label, lr in rates.items():
    sgd = optax.sgd(optax.exponential_decay(lr, steps_per_epoch, optim.lr_decay_per_epoch,
                                            staircase=True), momentum=optim.momentum)
    transforms[label] = (optax.chain(optax.add_decayed_weights(optim.weight_decay), sgd)
                         if label.endswith('weight') else optax.chain(sgd))
  return optax.multi_transform(transforms, tuning.param_labels(params, units, depth))


@pytest.mark.parametrize('depth', ['scratch', 'conv3', 'fc8'])
def test_decay_one_is_the_papers_optimizer_bit_for_bit(depth):
  """optim.layer_decay=1.0 (the default), a config without the field and the paper's
  optimizer written out give the same state and updates over several momentum /
  weight-decay steps."""
  units = ('conv1', 'conv2', 'conv3', 'fc8')
  rng = np.random.default_rng(0)
  params = {u: {'kernel': rng.normal(size=(3, 4)).astype(np.float32),
                'bias': rng.normal(size=4).astype(np.float32)} for u in units}
  with_field = cimt.get_config(f'depth={depth}').optim
  assert with_field.layer_decay == 1.0
  without = ml_collections.ConfigDict({k: v for k, v in with_field.items()
                                       if k != 'layer_decay'})
  states, results = [], []
  for tx in (tuning.make_optimizer(params, units, depth, with_field, steps_per_epoch=2),
             tuning.make_optimizer(params, units, depth, without, steps_per_epoch=2),
             _paper_optimizer(params, units, depth, with_field, steps_per_epoch=2)):
    state, p, out = tx.init(params), params, []
    for step in range(4):
      grads = jax.tree.map(lambda x, s=step: np.full_like(x, 0.3 * (s + 1)) - x, p)
      updates, state = tx.update(grads, state, p)
      p = jax.tree.map(lambda a, u: a + u, p, updates)
      out.append(updates)
    states.append(state)
    results.append(out)
  assert (tuning.param_labels(params, units, depth) ==
          tuning.param_labels(params, units, depth, per_unit=False))
  for other in (1, 2):
    assert jax.tree.structure(states[0]) == jax.tree.structure(states[other])
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[other])):
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize('value', [0.0, 1.5, -0.5])
def test_out_of_range_decay_is_refused_by_name(value):
  config = cimt.get_config('synthetic,pretext')
  config.optim.layer_decay = value
  with pytest.raises(errors.ConfigError, match=rf'optim.layer_decay={value}.*in \(0, 1\]'):
    validate.check_config(config, 'sweep')


def test_layerwise_is_a_sweep_arm_that_trains_every_unit_with_decay():
  from medft.sweep import default_arms, plan, run_config
  c = cimt.get_config('synthetic,arms=fc8+layerwise+scratch')
  validate.check_config(c, 'sweep')
  runs = plan(c)
  assert list(dict.fromkeys(r.arm for r in runs)) == ['scratch', 'fc8', 'layerwise']
  assert 'layerwise' not in default_arms(c)  # the paper's study stays the default
  layerwise = next(r for r in runs if r.arm == 'layerwise')
  run = run_config(c, layerwise, init='weights')
  assert (run.depth, run.optim.layer_decay) == ('conv1', 0.65)
  fc8 = next(r for r in runs if r.arm == 'fc8')
  assert run_config(c, fc8, init='weights').optim.layer_decay == 1.0
  c.sweep.layer_decay = 0.8
  assert run_config(c, layerwise, init='weights').optim.layer_decay == 0.8
  c.sweep.layer_decay = 0.0
  with pytest.raises(errors.ConfigError, match=r'sweep.layer_decay=0.0.*in \(0, 1\]'):
    validate.check_config(c, 'sweep')


def test_layerwise_is_not_a_depth_of_one_run():
  config = cimt.get_config('synthetic,depth=layerwise')
  with pytest.raises(errors.ConfigError, match='layerwise is an arm of a sweep.*depth=conv1'):
    validate.check_config(config, 'train')
