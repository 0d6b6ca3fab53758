"""DenseNet-121 in torchvision's layout (also `keras.applications.DenseNet121`'s), with BatchNorm.

Tuning units: `stem` (conv0 7x7/2, norm0, ReLU, max pool 3x3/2), `block1` ... `block3` (dense
block i and the transition after it: norm, ReLU, 1x1 conv halving the channels, 2x2 average
pool), `block4` (dense block 4, norm5 and the final ReLU) and the new head `classifier`
(global average pool, dropout, dense). A dense layer (`denselayer1` ...) is norm1, ReLU, 1x1
conv to `bn_size` x growth, norm2, ReLU, 3x3 conv to growth channels, concatenated to its
input. Keras' DenseNet121 is the same network (no conv biases; BatchNorm epsilon 1.001e-5
rather than 1e-5, which changes activations by ~1e-8 relative, far below float32 rounding of
the rest of the network, so both load into this one model).

BatchNorm follows `medft.models.batchnorm`. `width` < 1 scales the growth rate and the stem,
for tests only.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from medft.models import register
from medft.models.batchnorm import EPSILON, batch_norm, global_avg_pool, uses_batch_stats
from medft.models.layers import max_pool, stage_range
from medft.models.resnet import conv

UNITS = ('stem', 'block1', 'block2', 'block3', 'block4', 'classifier')


class DenseLayer(nn.Module):
  growth: int
  bn_size: int = 4
  scheme: str = 'he'
  bn_epsilon: float = EPSILON
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, batch: bool) -> jax.Array:
    y = conv(self, self.bn_size * self.growth, 1, 1, 'conv1')(
        nn.relu(batch_norm(self, batch, 'norm1')(x)))
    y = conv(self, self.growth, 3, 1, 'conv2')(nn.relu(batch_norm(self, batch, 'norm2')(y)))
    return jnp.concatenate([x, y], axis=-1)


class DenseStage(nn.Module):
  """Dense block `layers` deep, then the transition (`last=False`) or norm5 and ReLU."""
  layers: int
  growth: int
  last: bool
  bn_size: int = 4
  scheme: str = 'he'
  bn_epsilon: float = EPSILON
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, batch: bool) -> jax.Array:
    common = dict(scheme=self.scheme, bn_epsilon=self.bn_epsilon,
                  bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    for i in range(1, self.layers + 1):
      x = DenseLayer(self.growth, self.bn_size, name=f'denselayer{i}', **common)(x, batch)
    if self.last:
      return nn.relu(batch_norm(self, batch, 'norm5')(x))
    x = nn.relu(batch_norm(self, batch, 'transition_norm')(x))
    x = conv(self, x.shape[-1] // 2, 1, 1, 'transition_conv')(x)
    return nn.avg_pool(x, (2, 2), (2, 2))


class Stem(nn.Module):
  features: int
  scheme: str = 'he'
  bn_epsilon: float = EPSILON
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, batch: bool) -> jax.Array:
    x = nn.relu(batch_norm(self, batch, 'norm0')(conv(self, self.features, 7, 2, 'conv0')(x)))
    return max_pool(x, 3, 2, padding=1)


@register('densenet121', UNITS)
class DenseNet121(nn.Module):
  num_classes: int
  width: float = 1.0
  dropout: float = 0.0
  scheme: str = 'he'
  bn_train: tuple[str, ...] | None = None
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32
  block_config: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  init_features: int = 64
  bn_size: int = 4
  bn_epsilon: float = EPSILON

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, start: str | None = None,
               stop: str | None = None) -> jax.Array:
    """Logits; or, with `start`/`stop`, only those stages (see `layers.stage_range`)."""
    runs = stage_range(UNITS, start, stop)
    w = lambda n: max(2, int(n * self.width))  # noqa: E731
    common = dict(scheme=self.scheme, bn_epsilon=self.bn_epsilon,
                  bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    batch = lambda unit: uses_batch_stats(self.bn_train, unit, train)  # noqa: E731
    x = x.astype(self.dtype)
    if runs('stem'):
      x = Stem(w(self.init_features), name='stem', **common)(x, batch('stem'))
    for i, layers in enumerate(self.block_config, start=1):
      unit = f'block{i}'
      if runs(unit):
        x = DenseStage(layers, w(self.growth_rate), last=i == len(self.block_config),
                       bn_size=self.bn_size, name=unit, **common)(x, batch(unit))
    if runs('classifier'):
      x = global_avg_pool(x)
      x = nn.Dropout(self.dropout, name='dropout_classifier')(x, deterministic=not train)
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                   param_dtype=jnp.float32, name='classifier')(x)
    return x
