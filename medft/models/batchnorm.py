"""BatchNorm of the study networks (ResNet, DenseNet): which units normalise with batch
statistics, and how they are averaged across devices.

A network with BatchNorm holds two attributes that the trainer sets per arm
(`bn_settings`):
  `bn_train`      units whose BatchNorm uses batch statistics (and updates its running
                  averages in the `batch_stats` collection) when called with `train=True`;
                  None = every unit (plain Flax behaviour, e.g. for a direct `apply`).
  `bn_axis_name`  the pmap axis whose devices average the batch statistics (`'batch'` in
                  the trainer, `medft.parallel.AXIS`); None outside pmap.
With `train=False`, and in a unit not in `bn_train`, BatchNorm runs in inference mode with
its running statistics: a frozen unit is a fixed function of its input, so its parameters and
statistics stay bit-identical and the feature cache of a frozen trunk stays exact.

`model.bn_mode` (configs) picks `bn_train` for the trained units of an arm:
  `train` (default): batch statistics, running averages updated, as torchvision's
      fine-tuning recipe and a scratch network need (a scratch ResNet in inference-mode
      BatchNorm would train with its initial statistics, i.e. unnormalised);
  `frozen`: running statistics even in trained units, for per-step batches too small for
      stable batch statistics (the affine scale/bias still train).
Frozen units run in inference mode under either mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from medft.models import layers

BN_MODES = ('train', 'frozen')
# torchvision's BatchNorm2d: momentum 0.1 (Flax counts the other way: 0.9), eps 1e-5.
MOMENTUM = 0.9
EPSILON = 1e-5


def uses_batch_stats(bn_train: Sequence[str] | None, unit: str, train: bool) -> bool:
  """Whether `unit`'s BatchNorm normalises with batch statistics in this call."""
  return train and (bn_train is None or unit in bn_train)


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm` over the channels (last axis), computed as Flax computes it --
  same variables (`scale`, `bias`; `batch_stats` `mean`, `var`), statistics in float32 as
  E[x^2] - E[x]^2 (clipped at 0) averaged over `axis_name`, running averages updated except
  while initialising -- with every per-channel sum through `layers.channel_sum` /
  `layers.channel_broadcast`, which XLA:CPU runs as matrix products rather than as its slow
  reductions (~2x on a ResNet-18 step; `docs/throughput.md`)."""
  use_running_average: bool
  momentum: float = MOMENTUM
  epsilon: float = EPSILON
  axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      count = x.size // features
      moments = jnp.stack([layers.channel_sum(x32), layers.channel_sum(x32 * x32)]) / count
      if self.axis_name is not None and not self.is_initializing():
        moments = jax.lax.pmean(moments, self.axis_name)
      mean, var = moments[0], jnp.maximum(0.0, moments[1] - jnp.square(moments[0]))
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    mul = jax.lax.rsqrt(var + self.epsilon) * scale
    y = (x32 - layers.channel_broadcast(mean, x.shape)) * layers.channel_broadcast(mul, x.shape)
    return (y + layers.channel_broadcast(bias, x.shape)).astype(self.dtype)


def batch_norm(module: nn.Module, batch: bool, name: str) -> BatchNorm:
  """BatchNorm layer `name` of `module` (a block with `bn_epsilon`, `bn_axis_name` and `dtype`
  fields): batch statistics averaged over `bn_axis_name` when `batch`, else running ones."""
  return BatchNorm(use_running_average=not batch, epsilon=module.bn_epsilon,
                   axis_name=module.bn_axis_name if batch else None, dtype=module.dtype,
                   name=name)


def has_batchnorm(model: nn.Module) -> bool:
  """Whether `model` is a study network with BatchNorm (it has the `bn_train` attribute)."""
  return any(f.name == 'bn_train' for f in dataclasses.fields(model))


def bn_settings(trained: Sequence[str], bn_mode: str, axis_name: str | None) -> dict:
  """Model kwargs for an arm training `trained` units under `model.bn_mode`."""
  if bn_mode not in BN_MODES:
    raise ValueError(f'model.bn_mode={bn_mode!r}: expected one of {", ".join(BN_MODES)}.')
  return dict(bn_train=tuple(trained) if bn_mode == 'train' else (), bn_axis_name=axis_name)


def split_variables(variables: dict) -> tuple[dict, dict]:
  """(params, batch_stats) of a Flax variables dict; batch_stats is {} without BatchNorm."""
  return variables['params'], variables.get('batch_stats', {})


# What the trainer evaluates, keeps as its best checkpoint and caches trunk features of (its
# "weights"): for a network without BatchNorm the parameter tree itself (top-level keys =
# tuning units, as before), with BatchNorm Flax's variables {'params', 'batch_stats'}. No
# tuning unit is called 'params', so the two cannot be confused.
def weights_tree(params: Any, batch_stats: Any) -> Any:
  """The weights of a network: `params`, or with BatchNorm statistics both as variables."""
  return {'params': params, 'batch_stats': batch_stats} if batch_stats else params


def is_variables(weights: Any) -> bool:
  return isinstance(weights, Mapping) and 'params' in weights


def as_variables(weights: Any) -> dict:
  """Flax variables for `model.apply` from weights (`weights_tree`) or a plain params tree."""
  return dict(weights) if is_variables(weights) else {'params': weights}


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over H and W in float32 (NHWC -> NC)."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
