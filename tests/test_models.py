"""Model building blocks checked against hand-written NumPy definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medft.models import get_model
from medft.models.layers import adaptive_avg_pool, caffe_lrn, grouped_conv, max_pool


def test_caffe_lrn_matches_definition():
  x = np.random.default_rng(0).normal(size=(2, 3, 3, 7)).astype(np.float32) * 20
  want = np.empty_like(x)
  for c in range(7):
    lo, hi = max(0, c - 2), min(7, c + 3)
    s = (x[..., lo:hi] ** 2).sum(-1)
    want[..., c] = x[..., c] / (1 + 1e-4 / 5 * s) ** 0.75
  np.testing.assert_allclose(caffe_lrn(jnp.asarray(x)), want, rtol=1e-5, atol=1e-6)


def test_grouped_conv_split_equals_xla_and_per_group_definition():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 9, 9, 8)).astype(np.float32)
  k = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
  split = grouped_conv(x, k, 1, 1, 2, impl='split')
  xla = grouped_conv(x, k, 1, 1, 2, impl='xla')
  np.testing.assert_allclose(split, xla, rtol=1e-5, atol=1e-5)
  # Group g sees input channels [4g, 4g+4) and produces output channels [3g, 3g+3).
  g1 = grouped_conv(x[..., 4:], k[..., 3:], 1, 1, 1)
  np.testing.assert_allclose(split[..., 3:], g1, rtol=1e-5, atol=1e-5)


def test_ceil_mode_pool_keeps_partial_window():
  x = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1)
  assert max_pool(x, 3, 2).shape == (2, 2, 2, 1)           # floor((6-3)/2)+1
  y = max_pool(x, 3, 2, ceil_mode=True)
  assert y.shape == (2, 3, 3, 1)                           # ceil((6-3)/2)+1
  assert float(y[0, 2, 2, 0]) == float(x[0, 5, 5, 0])      # last window covers rows/cols 4..5


def test_adaptive_avg_pool_bins_like_pytorch():
  x = np.random.default_rng(2).normal(size=(1, 5, 7, 2)).astype(np.float32)
  y = np.asarray(adaptive_avg_pool(jnp.asarray(x), (3, 3)))
  # PyTorch bins for 5 -> 3: [0,2), [1,4), [3,5); for 7 -> 3: [0,3), [2,5), [4,7).
  np.testing.assert_allclose(y[0, 1, 2], x[0, 1:4, 4:7].mean((0, 1)), rtol=1e-5)


@pytest.mark.parametrize('arch,shapes', [
    ('alexnet', {'conv1': (11, 11, 3, 96), 'conv2': (5, 5, 48, 256), 'conv4': (3, 3, 192, 384),
                 'conv5': (3, 3, 192, 256), 'fc6': (9216, 4096), 'fc8': (4096, 3)}),
    ('alexnet_torchvision', {'conv1': (11, 11, 3, 64), 'conv2': (5, 5, 64, 192),
                             'conv5': (3, 3, 256, 256), 'fc6': (9216, 4096)}),
])
def test_alexnet_layouts(arch, shapes):
  model, units = get_model(arch, 3)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 227, 227, 3))))
  params = params['params']
  assert tuple(params) == units
  for name, shape in shapes.items():
    assert params[name]['kernel'].shape == shape


def test_squeezenet_units_and_output():
  model, units = get_model('squeezenet1_1', 2, width=0.25)
  v = model.init(jax.random.key(0), jnp.zeros((1, 67, 67, 3)))
  assert tuple(v['params']) == units
  assert set(v['params']['fire5']) == {'squeeze1x1', 'expand1x1', 'expand3x3'}
  y = model.apply(v, jnp.ones((3, 67, 67, 3)))
  assert y.shape == (3, 2) and bool(jnp.all(y >= 0))  # ReLU before the global average pool


def test_unknown_arch_is_named():
  with pytest.raises(ValueError, match="arch='vgg16'.*alexnet"):
    get_model('vgg16', 2)


def _lrn_by_autodiff(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
  sq = jnp.pad(jnp.square(x), [(0, 0)] * 3 + [(size // 2, size // 2)])
  window = sum(sq[..., i:i + x.shape[-1]] for i in range(size))
  return x / (k + alpha / size * window) ** beta


def test_caffe_lrn_closed_form_gradient_matches_autodiff():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 5, 5, 16)) * 40, jnp.float32)  # LRN far from identity
  g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  y, vjp = jax.vjp(caffe_lrn, x)
  want_y, want_vjp = jax.vjp(_lrn_by_autodiff, x)
  np.testing.assert_array_equal(y, want_y)  # the forward is the same expression
  np.testing.assert_allclose(vjp(g)[0], want_vjp(g)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('shape,window,stride,ceil', [
    ((2, 7, 7, 3), 3, 2, True), ((1, 12, 12, 2), 3, 2, False), ((2, 9, 8, 3), 2, 2, True),
    ((1, 7, 7, 256), 3, 2, True)])  # 256 channels: XLA's select-and-scatter
def test_max_pool_gradient_goes_to_the_first_maximum_like_flax(shape, window, stride, ceil):
  from flax import linen as nn

  from medft.models.layers import pool_padding
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.integers(0, 3, size=shape), jnp.float32)  # many ties
  high = pool_padding(shape[1:3], window, stride, ceil)
  flax_pool = lambda v: nn.max_pool(v, (window, window), (stride, stride),  # noqa: E731
                                    padding=((0, high[0]), (0, high[1])))
  y, vjp = jax.vjp(lambda v: max_pool(v, window, stride, ceil), x)
  want_y, want_vjp = jax.vjp(flax_pool, x)
  np.testing.assert_array_equal(y, want_y)
  g = jnp.asarray(rng.integers(1, 5, size=y.shape), jnp.float32)  # integers: sums are exact
  np.testing.assert_array_equal(vjp(g)[0], want_vjp(g)[0])
