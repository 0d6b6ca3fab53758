"""AlexNet in the two layouts users hold weights for.

`AlexNet` is the BVLC Caffe model of the paper (227x227 input, grouped conv2/4/5, Caffe LRN,
ceil-mode pooling); `AlexNetTorchvision` is torchvision's variant (64/192/384/256/256 filters,
no groups, no LRN, adaptive average pool to 6x6). Parameter names are the paper's layer names,
so a tuning depth such as `conv4` is a key of the parameter tree.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from medft.errors import ConfigError
from medft.models import register
from medft.models.layers import Conv, adaptive_avg_pool, caffe_lrn, max_pool, stage_range

UNITS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')


def kernel_init(scheme: str, std: float):
  """Kernel initialiser for training from scratch: BVLC Gaussian, Xavier or He."""
  if scheme == 'gaussian':
    return nn.initializers.normal(std)
  if scheme == 'xavier':
    return nn.initializers.xavier_uniform()  # Caffe's "xavier" filler is uniform too.
  if scheme == 'he':
    return nn.initializers.he_normal()
  raise ConfigError(f'init scheme {scheme!r}: expected gaussian, xavier or he.')


def _classifier(module: nn.Module, x: jax.Array, train: bool, dropout_first: bool,
                runs: Callable[[str], bool]) -> jax.Array:
  """fc6-fc8. Caffe applies dropout after each ReLU; torchvision before fc6 and fc7.

  Each dropout belongs to the stage of the layer it feeds, and is named after it so that its
  random stream is the same whether or not the stages below ran in the same call.
  """
  s = module.scheme
  dense = lambda n, std, b, name: nn.Dense(  # noqa: E731
      n, dtype=module.dtype, param_dtype=jnp.float32, kernel_init=kernel_init(s, std),
      bias_init=nn.initializers.constant(b), name=name)
  drop = lambda x, layer: nn.Dropout(module.dropout, name=f'dropout_{layer}')(  # noqa: E731
      x, deterministic=not train)
  dropped = ('fc6', 'fc7') if dropout_first else ('fc7', 'fc8')  # layers fed through dropout
  hidden = max(8, int(4096 * module.width))
  for name in ('fc6', 'fc7'):
    if runs(name):
      if name == 'fc6':
        x = x.reshape(x.shape[0], -1)  # flatten in H, W, C order (Flax); converters permute fc6.
      if name in dropped:
        x = drop(x, name)
      x = nn.relu(dense(hidden, 0.005, module.bias_one, name)(x))
  if runs('fc8'):
    if 'fc8' in dropped:
      x = drop(x, 'fc8')
    x = dense(module.num_classes, 0.01, 0.0, 'fc8')(x).astype(jnp.float32)
  return x


@register('alexnet', UNITS)
class AlexNet(nn.Module):
  """BVLC (Caffe) AlexNet. `width` < 1 shrinks every layer, for tests only."""
  num_classes: int
  width: float = 1.0
  dropout: float = 0.5
  scheme: str = 'gaussian'
  bias_one: float = 0.1  # BVLC train_val.prototxt: conv2/4/5 and fc6/7 biases start at 0.1.
  group_impl: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, start: str | None = None,
               stop: str | None = None) -> jax.Array:
    """Logits; or, with `start`/`stop`, only those stages (see `layers.stage_range`)."""
    runs = stage_range(UNITS, start, stop)
    w = lambda n: max(4, int(n * self.width)) // 2 * 2  # noqa: E731  (even: 2 groups)
    conv = lambda n, k, s, p, g, b, name: Conv(  # noqa: E731
        w(n), k, s, p, g, kernel_init=kernel_init(self.scheme, 0.01),
        bias_init=nn.initializers.constant(b), group_impl=self.group_impl, dtype=self.dtype,
        name=name)
    x = x.astype(self.dtype)
    if runs('conv1'):
      x = nn.relu(conv(96, 11, 4, 0, 1, 0.0, 'conv1')(x))
      x = max_pool(caffe_lrn(x), 3, 2, ceil_mode=True)
    if runs('conv2'):
      x = nn.relu(conv(256, 5, 1, 2, 2, self.bias_one, 'conv2')(x))
      x = max_pool(caffe_lrn(x), 3, 2, ceil_mode=True)
    if runs('conv3'):
      x = nn.relu(conv(384, 3, 1, 1, 1, 0.0, 'conv3')(x))
    if runs('conv4'):
      x = nn.relu(conv(384, 3, 1, 1, 2, self.bias_one, 'conv4')(x))
    if runs('conv5'):
      x = max_pool(nn.relu(conv(256, 3, 1, 1, 2, self.bias_one, 'conv5')(x)), 3, 2,
                   ceil_mode=True)
    return _classifier(self, x, train, dropout_first=False, runs=runs)


@register('alexnet_torchvision', UNITS)
class AlexNetTorchvision(nn.Module):
  """torchvision's AlexNet (`torchvision.models.alexnet`), same parameter names."""
  num_classes: int
  width: float = 1.0
  dropout: float = 0.5
  scheme: str = 'gaussian'
  bias_one: float = 0.0
  group_impl: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, start: str | None = None,
               stop: str | None = None) -> jax.Array:
    """Logits; or, with `start`/`stop`, only those stages (see `layers.stage_range`)."""
    runs = stage_range(UNITS, start, stop)
    w = lambda n: max(4, int(n * self.width))  # noqa: E731
    conv = lambda n, k, s, p, name: Conv(  # noqa: E731
        w(n), k, s, p, kernel_init=kernel_init(self.scheme, 0.01), dtype=self.dtype, name=name)
    x = x.astype(self.dtype)
    if runs('conv1'):
      x = max_pool(nn.relu(conv(64, 11, 4, 2, 'conv1')(x)), 3, 2)
    if runs('conv2'):
      x = max_pool(nn.relu(conv(192, 5, 1, 2, 'conv2')(x)), 3, 2)
    if runs('conv3'):
      x = nn.relu(conv(384, 3, 1, 1, 'conv3')(x))
    if runs('conv4'):
      x = nn.relu(conv(256, 3, 1, 1, 'conv4')(x))
    if runs('conv5'):
      x = adaptive_avg_pool(max_pool(nn.relu(conv(256, 3, 1, 1, 'conv5')(x)), 3, 2), (6, 6))
    return _classifier(self, x, train, dropout_first=True, runs=runs)
