"""ResNet-18 and ResNet-50 in torchvision's layout, and Keras' ResNet50 (v1), with BatchNorm.

Tuning units are the natural stages: `stem` (conv1, bn1, ReLU, 3x3/2 max pool), `layer1` ...
`layer4` (torchvision's residual stages; blocks `block0`, `block1`, ... = its `layer1.0`,
`layer1.1`, ...) and the new head `fc` (global average pool, dropout, dense). ResNet-50 is
torchvision's v1.5: the bottleneck's stride sits on its 3x3 conv. `resnet50_keras` is
`keras.applications.ResNet50` (the layout of the RadImageNet files): v1, stride on the first
1x1 conv, convolutions with biases, BatchNorm epsilon 1.001e-5. Its own arch name, so a
checkpoint of it can never be loaded into the v1.5 network by mistake.

BatchNorm follows `medft.models.batchnorm`: `bn_train` names the units that normalise with
batch statistics when `train=True`, every other unit (frozen) runs in inference mode.
`width` < 1 shrinks every stage, for tests only.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from medft.models import register
from medft.models.alexnet import kernel_init
from medft.models.batchnorm import EPSILON, batch_norm, global_avg_pool, uses_batch_stats
from medft.models.layers import max_pool, stage_range

UNITS = ('stem', 'layer1', 'layer2', 'layer3', 'layer4', 'fc')
KERAS_EPSILON = 1.001e-5  # keras.applications' BatchNormalization epsilon


def conv_init(scheme: str):
  """torchvision's ResNet/DenseNet conv init (Kaiming normal, fan_out) for `he`; else the
  study's Gaussian / Xavier schemes."""
  if scheme == 'he':
    return nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
  return kernel_init(scheme, 0.01)


def conv(module: nn.Module, features: int, kernel: int, stride: int, name: str) -> nn.Conv:
  """Square conv `name` of `module` (a block with `scheme`, `dtype` and, for Keras' ResNet,
  `conv_bias` fields), zero-padded by kernel // 2 as torchvision's; DenseNet's too."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=getattr(module, 'conv_bias', False),
                 kernel_init=conv_init(module.scheme), dtype=module.dtype,
                 param_dtype=jnp.float32, name=name)


class Block(nn.Module):
  """torchvision's BasicBlock (`bottleneck=False`) or Bottleneck; `downsample` adds the
  projection shortcut (`downsample.0` conv 1x1, `downsample.1` BatchNorm)."""
  planes: int
  stride: int
  bottleneck: bool
  downsample: bool
  stride_on_1x1: bool = False  # Keras v1: the bottleneck's first 1x1 conv strides
  conv_bias: bool = False
  scheme: str = 'he'
  bn_epsilon: float = EPSILON
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, batch: bool) -> jax.Array:
    if self.bottleneck:
      s1, s3 = (self.stride, 1) if self.stride_on_1x1 else (1, self.stride)
      y = nn.relu(batch_norm(self, batch, 'bn1')(conv(self, self.planes, 1, s1, 'conv1')(x)))
      y = nn.relu(batch_norm(self, batch, 'bn2')(conv(self, self.planes, 3, s3, 'conv2')(y)))
      y = batch_norm(self, batch, 'bn3')(conv(self, 4 * self.planes, 1, 1, 'conv3')(y))
      out = 4 * self.planes
    else:
      y = nn.relu(batch_norm(self, batch, 'bn1')(
          conv(self, self.planes, 3, self.stride, 'conv1')(x)))
      y = batch_norm(self, batch, 'bn2')(conv(self, self.planes, 3, 1, 'conv2')(y))
      out = self.planes
    if self.downsample:
      x = batch_norm(self, batch, 'downsample_bn')(
          conv(self, out, 1, self.stride, 'downsample_conv')(x))
    return nn.relu(x + y)


class Stage(nn.Module):
  """One residual stage (`layer1` ... `layer4`): `blocks` blocks, the first one strided."""
  planes: int
  blocks: int
  stride: int
  bottleneck: bool
  stride_on_1x1: bool = False
  conv_bias: bool = False
  scheme: str = 'he'
  bn_epsilon: float = EPSILON
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, batch: bool) -> jax.Array:
    out = self.planes * (4 if self.bottleneck else 1)
    for i in range(self.blocks):
      stride = self.stride if i == 0 else 1
      x = Block(self.planes, stride, self.bottleneck,
                downsample=i == 0 and (stride != 1 or x.shape[-1] != out),
                stride_on_1x1=self.stride_on_1x1, conv_bias=self.conv_bias, scheme=self.scheme,
                bn_epsilon=self.bn_epsilon, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                name=f'block{i}')(x, batch)
    return x


class Stem(nn.Module):
  """conv1 (7x7/2), bn1, ReLU, max pool 3x3/2 with padding 1."""
  features: int
  conv_bias: bool = False
  scheme: str = 'he'
  bn_epsilon: float = EPSILON
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, batch: bool) -> jax.Array:
    x = nn.relu(batch_norm(self, batch, 'bn1')(conv(self, self.features, 7, 2, 'conv1')(x)))
    # -inf padding; after the ReLU the same as Keras' zero padding.
    return max_pool(x, 3, 2, padding=1)


class ResNet(nn.Module):
  """A torchvision ResNet; subclasses fix the depth (`blocks`, `bottleneck`)."""
  num_classes: int
  width: float = 1.0
  dropout: float = 0.0
  scheme: str = 'he'
  bn_train: tuple[str, ...] | None = None
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32
  blocks: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False
  stride_on_1x1: bool = False
  conv_bias: bool = False
  bn_epsilon: float = EPSILON

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, start: str | None = None,
               stop: str | None = None) -> jax.Array:
    """Logits; or, with `start`/`stop`, only those stages (see `layers.stage_range`)."""
    runs = stage_range(UNITS, start, stop)
    w = lambda n: max(2, int(n * self.width))  # noqa: E731
    common = dict(conv_bias=self.conv_bias, scheme=self.scheme, bn_epsilon=self.bn_epsilon,
                  bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    batch = lambda unit: uses_batch_stats(self.bn_train, unit, train)  # noqa: E731
    x = x.astype(self.dtype)
    if runs('stem'):
      x = Stem(w(64), name='stem', **common)(x, batch('stem'))
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), self.blocks), start=1):
      unit = f'layer{i}'
      if runs(unit):
        x = Stage(w(planes), blocks, 1 if i == 1 else 2, self.bottleneck,
                  stride_on_1x1=self.stride_on_1x1, name=unit, **common)(x, batch(unit))
    if runs('fc'):
      x = global_avg_pool(x)
      x = nn.Dropout(self.dropout, name='dropout_fc')(x, deterministic=not train)
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                   param_dtype=jnp.float32, name='fc')(x)
    return x


@register('resnet18', UNITS)
class ResNet18(ResNet):
  """torchvision `resnet18`: BasicBlocks (2, 2, 2, 2)."""


@register('resnet50', UNITS)
class ResNet50(ResNet):
  """torchvision `resnet50` (v1.5) and timm's `resnet50`: Bottlenecks (3, 4, 6, 3)."""
  blocks: Sequence[int] = (3, 4, 6, 3)
  bottleneck: bool = True


@register('resnet50_keras', UNITS)
class ResNet50Keras(ResNet):
  """`keras.applications.ResNet50` (v1): stride on the first 1x1 conv, conv biases."""
  blocks: Sequence[int] = (3, 4, 6, 3)
  bottleneck: bool = True
  stride_on_1x1: bool = True
  conv_bias: bool = True
  bn_epsilon: float = KERAS_EPSILON
