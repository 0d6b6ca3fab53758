"""SqueezeNet v1.1 (Iandola et al. 2016), the DeepScale layout, with a new `conv10` head.

~50x fewer parameters than AlexNet at AlexNet-level ImageNet accuracy, which makes real
fine-tuning practical on a CPU. Tuning units: `conv1`, `fire2` ... `fire9`, `conv10`.
Pooling is floor-mode ("valid"), as in the Keras port whose weights ship in `../shared`; the
Caffe original uses ceil mode (`ceil_mode=True`); with the global-average-pooled head both work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from medft.models import register
from medft.models.alexnet import kernel_init
from medft.models.layers import Conv, max_pool, stage_range

# (squeeze, expand) filters of fire2 ... fire9.
FIRES = ((16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256))
UNITS = ('conv1',) + tuple(f'fire{i}' for i in range(2, 10)) + ('conv10',)


class Fire(nn.Module):
  squeeze: int
  expand: int
  scheme: str = 'gaussian'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = kernel_init(self.scheme, 0.01)
    x = nn.relu(Conv(self.squeeze, 1, kernel_init=init, dtype=self.dtype, name='squeeze1x1')(x))
    e1 = nn.relu(Conv(self.expand, 1, kernel_init=init, dtype=self.dtype, name='expand1x1')(x))
    e3 = nn.relu(Conv(self.expand, 3, padding=1, kernel_init=init, dtype=self.dtype,
                      name='expand3x3')(x))
    return jnp.concatenate([e1, e3], axis=-1)


@register('squeezenet1_1', UNITS)
class SqueezeNet(nn.Module):
  num_classes: int
  width: float = 1.0
  dropout: float = 0.5
  scheme: str = 'xavier'  # the DeepScale prototxt's filler; Gaussian 0.01 vanishes in 18 layers.
  ceil_mode: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, start: str | None = None,
               stop: str | None = None) -> jax.Array:
    """Logits; or, with `start`/`stop`, only those stages (see `layers.stage_range`)."""
    runs = stage_range(UNITS, start, stop)
    w = lambda n: max(2, int(n * self.width))  # noqa: E731
    x = x.astype(self.dtype)
    if runs('conv1'):
      x = nn.relu(Conv(w(64), 3, stride=2, kernel_init=kernel_init(self.scheme, 0.01),
                       dtype=self.dtype, name='conv1')(x))
      x = max_pool(x, 3, 2, self.ceil_mode)
    for i, (s, e) in enumerate(FIRES, start=2):
      if runs(f'fire{i}'):
        x = Fire(w(s), w(e), self.scheme, self.dtype, name=f'fire{i}')(x)
        if i in (3, 5):
          x = max_pool(x, 3, 2, self.ceil_mode)
    if runs('conv10'):
      x = nn.Dropout(self.dropout, name='dropout_conv10')(x, deterministic=not train)
      # The original head: 1x1 conv to the classes, ReLU, global average pool.
      x = nn.relu(Conv(self.num_classes, 1, kernel_init=nn.initializers.normal(0.01),
                       dtype=self.dtype, name='conv10')(x))
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return x
