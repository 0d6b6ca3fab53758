"""Layers shared by the ImageNet networks: grouped convolution, Caffe LRN, Caffe/PyTorch pooling.

Parameters are stored exactly as `flax.linen.Conv` would store them (`kernel` of shape
`(kh, kw, in // groups, out)`, `bias` of shape `(out,)`), so converted weights do not depend
on which implementation of the grouped convolution runs.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

Initializer = Callable[..., jax.Array]


def _conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int, groups: int) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=groups)


def grouped_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int, groups: int,
                 impl: str = 'auto') -> jax.Array:
  """Convolution with `groups` channel groups.

  `impl='split'` runs one convolution per group on channel slices and concatenates;
  `impl='xla'` uses `feature_group_count`. On XLA:CPU the split form is several times faster
  (see README, Performance), on GPU/TPU XLA's grouped kernel is the native one, so `'auto'`
  picks `split` on CPU and `xla` elsewhere. Both give the same numbers.
  """
  if groups == 1:
    return _conv(x, kernel, stride, padding, 1)
  if impl == 'auto':
    impl = 'split' if jax.default_backend() == 'cpu' else 'xla'
  if impl == 'xla':
    return _conv(x, kernel, stride, padding, groups)
  if impl != 'split':
    raise ValueError(f'grouped conv impl={impl!r}: expected auto, split or xla.')
  xs = jnp.split(x, groups, axis=-1)
  ks = jnp.split(kernel, groups, axis=-1)
  return jnp.concatenate([_conv(a, k, stride, padding, 1) for a, k in zip(xs, ks)], axis=-1)


class Conv(nn.Module):
  """Square convolution with symmetric zero padding and optional channel groups."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  groups: int = 1
  kernel_init: Initializer = nn.initializers.normal(0.01)
  bias_init: Initializer = nn.initializers.zeros
  group_impl: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    if in_features % self.groups or self.features % self.groups:
      raise ValueError(f'{self.name}: {in_features} -> {self.features} channels do not split '
                       f'into {self.groups} groups.')
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init,
                        (k, k, in_features // self.groups, self.features), jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    y = grouped_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                     self.padding, self.groups, self.group_impl)
    return y + bias.astype(self.dtype)


def caffe_lrn(x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
              k: float = 1.0) -> jax.Array:
  """Caffe's ACROSS_CHANNELS local response normalisation (NHWC).

  y_c = x_c / (k + alpha / size * sum_{|c'-c| <= size//2} x_{c'}^2) ** beta, zero-padded at
  the channel ends. Computed in float32 whatever the input dtype.
  """
  half = size // 2
  sq = jnp.square(x.astype(jnp.float32))
  padded = jnp.pad(sq, [(0, 0)] * (x.ndim - 1) + [(half, half)])
  channels = x.shape[-1]
  window_sum = sum(padded[..., i:i + channels] for i in range(size))
  scale = (k + (alpha / size) * window_sum) ** beta
  return (x.astype(jnp.float32) / scale).astype(x.dtype)


def max_pool(x: jax.Array, window: int, stride: int, ceil_mode: bool = False) -> jax.Array:
  """Max pooling without padding; `ceil_mode` adds Caffe's partial last window."""
  pads = []
  for n in x.shape[1:3]:
    if ceil_mode:
      out = math.ceil((n - window) / stride) + 1
      if (out - 1) * stride >= n:  # Caffe: the last window must start inside the input.
        out -= 1
    else:
      out = (n - window) // stride + 1
    pads.append((0, max(0, (out - 1) * stride + window - n)))
  return nn.max_pool(x, (window, window), (stride, stride), padding=pads) if any(
      p[1] for p in pads) else nn.max_pool(x, (window, window), (stride, stride))


def adaptive_avg_pool(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """PyTorch's AdaptiveAvgPool2d (bins [floor(i*n/o), ceil((i+1)*n/o)) ) on NHWC input."""
  h, w = x.shape[1:3]
  if (h, w) == tuple(out_hw):
    return x
  rows = []
  for i in range(out_hw[0]):
    r0, r1 = (i * h) // out_hw[0], -(-((i + 1) * h) // out_hw[0])
    cols = []
    for j in range(out_hw[1]):
      c0, c1 = (j * w) // out_hw[1], -(-((j + 1) * w) // out_hw[1])
      cols.append(jnp.mean(x[:, r0:r1, c0:c1, :], axis=(1, 2)))
    rows.append(jnp.stack(cols, axis=1))
  return jnp.stack(rows, axis=1)
