"""Per-channel sums as matrix products (`layers.channel_sum`, `layers.channel_broadcast`) and
the BatchNorm built on them (`batchnorm.BatchNorm`): values and gradients equal the plain
reductions' and `flax.linen.BatchNorm`'s (the layer it replaces: same variables, statistics,
running averages, outputs and gradients) to float32 summation order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from medft.models import batchnorm, layers

RTOL, ATOL = 2e-5, 1e-5


def _x(shape=(4, 9, 7, 6), seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(1.5, 2.0, shape).astype(np.float32))


def test_channel_sum_and_broadcast_values_and_gradients():
  x = _x()
  np.testing.assert_allclose(layers.channel_sum(x), np.asarray(x).sum((0, 1, 2)), RTOL, ATOL)
  w = _x(seed=1)
  v = jnp.arange(6, dtype=jnp.float32)
  got = jax.grad(lambda v: jnp.sum(layers.channel_broadcast(v, x.shape) * w))(v)
  np.testing.assert_allclose(got, np.asarray(w).sum((0, 1, 2)), RTOL, ATOL)
  got = jax.grad(lambda x: jnp.sum(layers.channel_sum(x) * v))(x)
  np.testing.assert_array_equal(got, np.broadcast_to(np.asarray(v), x.shape))


@pytest.mark.parametrize('train', [True, False])
def test_batchnorm_equals_flax_batchnorm(train):
  x = _x()
  ours = batchnorm.BatchNorm(use_running_average=not train)
  flax_bn = nn.BatchNorm(use_running_average=not train, momentum=batchnorm.MOMENTUM,
                         epsilon=batchnorm.EPSILON)
  variables = flax_bn.init(jax.random.key(0), x)
  assert jax.tree.map(np.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
      np.shape, variables)
  rng = np.random.default_rng(3)
  variables = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 2.0, a.shape), a.dtype),
                           variables)
  g = _x(seed=2)

  def run(module):
    def loss(params, x):
      y, updated = module.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                x, mutable=['batch_stats'])
      return jnp.sum(y * g), (y, updated['batch_stats'])
    (_, (y, stats)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        variables['params'], x)
    return y, stats, grads

  for got, want in zip(jax.tree.leaves(run(ours)), jax.tree.leaves(run(flax_bn))):
    np.testing.assert_allclose(got, want, 1e-4, 1e-4)
