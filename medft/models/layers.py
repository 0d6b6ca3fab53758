"""Layers shared by the ImageNet networks: grouped convolution, Caffe LRN, Caffe/PyTorch pooling.

Parameters are stored exactly as `flax.linen.Conv` would store them (`kernel` of shape
`(kh, kw, in // groups, out)`, `bias` of shape `(out,)`), so converted weights do not depend
on which implementation of the grouped convolution runs.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from medft.errors import ConfigError

Initializer = Callable[..., jax.Array]


def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int, groups: int) -> jax.Array:
  """The NHWC/HWIO convolution every layer runs (the benchmark's layout lever swaps it)."""
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=groups)


def _ones_dot(x: jax.Array) -> jax.Array:
  """Sum of `x` over every axis but the last, as a matrix product with a row of ones."""
  rows = x.reshape(-1, x.shape[-1])
  total = jnp.dot(jnp.ones((1, rows.shape[0]), x.dtype), rows,
                  precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
  return total[0].astype(x.dtype)


def _sum_over_positions(x: jax.Array) -> jax.Array:
  if jax.default_backend() == 'cpu':
    return _ones_dot(x)
  return jnp.sum(x, axis=tuple(range(x.ndim - 1)))


# Per-channel sums over batch and positions -- BatchNorm's statistics, and the gradients of
# every per-channel bias and scale -- run as a matrix product with a row of ones on XLA:CPU.
# As a plain reduction (what autodiff of a broadcast gives) XLA:CPU first rewrites it into a
# tree of reduce-windows run by a scalar loop, or fuses it with its producers into a loop
# that walks the channels-last array channel by channel: ~10x slower than the matmul library
# (a ResNet-18 scratch step spent ~40% of its time there; `docs/throughput.md`). GPU and TPU
# keep the plain reduction. Values equal the reduction's up to float summation order.
@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _channel_sum(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  del shape
  return _sum_over_positions(x)


def _channel_sum_fwd(x, shape):
  return _sum_over_positions(x), None


def _channel_sum_bwd(shape, _, g):
  return (jnp.broadcast_to(g, shape),)


_channel_sum.defvjp(_channel_sum_fwd, _channel_sum_bwd)


def channel_sum(x: jax.Array) -> jax.Array:
  """Sum over every axis but the last (channels), [..., C] -> [C]; gradient a broadcast."""
  return _channel_sum(x, x.shape)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def channel_broadcast(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """A per-channel vector [C] broadcast to `shape` [..., C]; its gradient is `channel_sum`."""
  return jnp.broadcast_to(v, shape)


def _channel_broadcast_fwd(v, shape):
  return jnp.broadcast_to(v, shape), None


def _channel_broadcast_bwd(shape, _, g):
  return (_sum_over_positions(g),)


channel_broadcast.defvjp(_channel_broadcast_fwd, _channel_broadcast_bwd)


def grouped_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int, groups: int,
                 impl: str = 'auto') -> jax.Array:
  """Convolution with `groups` channel groups.

  `impl='split'` runs one convolution per group on channel slices and concatenates;
  `impl='xla'` uses `feature_group_count`. On XLA:CPU the split form is several times faster
  (see README, Performance), on GPU/TPU XLA's grouped kernel is the native one, so `'auto'`
  picks `split` on CPU and `xla` elsewhere. Both give the same numbers.
  """
  if groups == 1:
    return conv(x, kernel, stride, padding, 1)
  if impl == 'auto':
    impl = 'split' if jax.default_backend() == 'cpu' else 'xla'
  if impl == 'xla':
    return conv(x, kernel, stride, padding, groups)
  if impl != 'split':
    raise ConfigError(f'grouped conv impl={impl!r}: expected auto, split or xla.')
  xs = jnp.split(x, groups, axis=-1)
  ks = jnp.split(kernel, groups, axis=-1)
  return jnp.concatenate([conv(a, k, stride, padding, 1) for a, k in zip(xs, ks)], axis=-1)


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
    return y + channel_broadcast(bias.astype(self.dtype), y.shape)


def caffe_lrn(x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
              k: float = 1.0) -> jax.Array:
  """Caffe's ACROSS_CHANNELS local response normalisation (NHWC).

  y_c = x_c / (k + alpha / size * sum_{|c'-c| <= size//2} x_{c'}^2) ** beta, zero-padded at
  the channel ends. Computed in float32 whatever the input dtype. The gradient is written
  in closed form (`_lrn_bwd`); XLA:CPU runs autodiff of the pad/slice/pow graph ~5x slower
  (the whole AlexNet train step 1.4x: `python -m medft.bench --levers`, lever lrn=autodiff).
  """
  return _lrn(x.astype(jnp.float32), size, alpha, beta, k).astype(x.dtype)


def _window_sum(v: jax.Array, size: int) -> jax.Array:
  """Sum over the `size` channels centred on each channel, zero-padded at the ends."""
  half = size // 2
  padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(half, half)])
  channels = v.shape[-1]
  return sum(padded[..., i:i + channels] for i in range(size))


def lrn_forward(x, size, alpha, beta, k):
  """The LRN as plain jnp: (output, residuals of the closed-form gradient)."""
  base = k + (alpha / size) * _window_sum(jnp.square(x), size)
  scale = base ** beta
  return x / scale, (x, base, scale)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x, size, alpha, beta, k):
  return lrn_forward(x, size, alpha, beta, k)[0]


def _lrn_bwd(size, alpha, beta, k, residuals, g):
  # dL/dx_j = g_j / scale_j - 2 alpha beta / size * x_j * sum_{c in window(j)} g_c y_c / base_c
  x, base, scale = residuals
  t = g * (x / scale) / base
  return (g / scale - (2.0 * alpha * beta / size) * x * _window_sum(t, size),)


_lrn.defvjp(lambda x, size, alpha, beta, k: lrn_forward(x, size, alpha, beta, k), _lrn_bwd)


def pool_padding(hw: tuple[int, int], window: int, stride: int, ceil_mode: bool
                 ) -> tuple[int, int]:
  """Padding after the last row and column: 0, or Caffe's partial last window (ceil mode)."""
  high = []
  for n in hw:
    if ceil_mode:
      out = math.ceil((n - window) / stride) + 1
      if (out - 1) * stride >= n:  # Caffe: the last window must start inside the input.
        out -= 1
    else:
      out = (n - window) // stride + 1
    high.append(max(0, (out - 1) * stride + window - n))
  return high[0], high[1]


# Below this many channels the max-pool gradient is written as strided slices and pads; from
# it on, XLA's select-and-scatter. Measured on XLA:CPU (jaxlib 0.10, AlexNet/SqueezeNet at
# 227 px, whole train step): slices win on wide maps with few channels (SqueezeNet 1.4x,
# torchvision AlexNet 1.15x), select-and-scatter on 256-channel maps (Caffe AlexNet's pool2
# and pool5 lose ~10% with slices).
SLICES_VJP_MAX_CHANNELS = 256


def max_pool(x: jax.Array, window: int, stride: int, ceil_mode: bool = False,
             padding: int = 0) -> jax.Array:
  """Max pooling (NHWC); `padding` pads each side with -inf (PyTorch's `MaxPool2d(padding)`,
  the ResNet and DenseNet stems), `ceil_mode` adds Caffe's partial last window.

  Values and gradients are those of `flax.linen.max_pool`: the gradient of each window goes
  to its first maximum in row-major order, as XLA's select-and-scatter does. (With slices,
  where windows overlap the contributions are summed in another order, so a gradient may
  differ in the last bit.)
  """
  hw = (x.shape[1] + 2 * padding, x.shape[2] + 2 * padding)
  high = pool_padding(hw, window, stride, ceil_mode)
  pads = ((padding, padding + high[0]), (padding, padding + high[1]))
  if x.shape[-1] < SLICES_VJP_MAX_CHANNELS:
    return _max_pool(x, window, stride, pads)
  if any(map(any, pads)):
    return nn.max_pool(x, (window, window), (stride, stride), padding=pads)
  return nn.max_pool(x, (window, window), (stride, stride))


def _pool_windows(x, window, stride, pads):
  """-inf padded input and, per window offset (row-major), the strided slice it selects."""
  neg_inf = jnp.array(-jnp.inf, x.dtype)
  (top, bottom), (left, right) = pads
  xp = jax.lax.pad(x, neg_inf, ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
  oh = (xp.shape[1] - window) // stride + 1
  ow = (xp.shape[2] - window) // stride + 1
  offsets = [(i, j) for i in range(window) for j in range(window)]
  slices = [jax.lax.slice(xp, (0, i, j, 0),
                          (xp.shape[0], i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1,
                           xp.shape[3]), (1, stride, stride, 1)) for i, j in offsets]
  return xp.shape, offsets, slices


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, pads):
  return _max_pool_fwd(x, window, stride, pads)[0]


def _max_pool_fwd(x, window, stride, pads):
  _, _, slices = _pool_windows(x, window, stride, pads)
  out = slices[0]
  for s in slices[1:]:
    out = jnp.maximum(out, s)
  return out, (x, out)


def _max_pool_bwd(window, stride, pads, residuals, g):
  x, out = residuals
  padded_shape, offsets, slices = _pool_windows(x, window, stride, pads)
  # Offset of the first maximum of each window in row-major order (select-and-scatter with
  # `ge` keeps the first), materialised once rather than re-derived by every consumer.
  index_type = jnp.int8 if len(offsets) < 127 else jnp.int32
  first = jnp.full(out.shape, len(offsets), index_type)
  for k in reversed(range(len(offsets))):
    first = jnp.where(slices[k] == out, jnp.asarray(k, index_type), first)
  first = jax.lax.optimization_barrier(first)
  (oh, ow), zero = out.shape[1:3], jnp.zeros((), g.dtype)
  grad = None
  for k, (i, j) in enumerate(offsets):  # window offset (i, j) scatters to rows i + stride * m
    placed = jax.lax.pad(jnp.where(first == k, g, zero), zero, (
        (0, 0, 0), (i, padded_shape[1] - i - (oh - 1) * stride - 1, stride - 1),
        (j, padded_shape[2] - j - (ow - 1) * stride - 1, stride - 1), (0, 0, 0)))
    grad = placed if grad is None else grad + placed
  (top, _), (left, _) = pads
  return (grad[:, top:top + x.shape[1], left:left + x.shape[2]],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


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


def stage_range(units: Sequence[str], start: str | None, stop: str | None
                ) -> Callable[[str], bool]:
  """Which stages a call runs: `start` .. `stop` (inclusive; None = the first / last unit).

  A model's stages are its tuning units, each ending where the unit's deterministic output is
  (after its ReLU/pool/LRN, before any dropout), so `model(x, stop=u)` is the frozen-trunk
  feature a fine-tuning arm can cache and `model(f, start=v)` the rest of the network.
  """
  for name in (start, stop):
    if name is not None and name not in units:
      raise ValueError(f'stage {name!r} is not a unit of this network ({", ".join(units)}).')
  lo = units.index(start) if start else 0
  hi = units.index(stop) if stop else len(units) - 1
  if lo > hi:
    raise ValueError(f'stages start={start} stop={stop} are in the wrong order.')
  return lambda unit: lo <= units.index(unit) <= hi
