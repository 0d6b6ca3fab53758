"""ViT-B/16 (Dosovitskiy et al. 2021) in the timm / big_vision layout, as a study network.

Patch embedding (16x16 conv, stride 16), a class token, a learned position embedding, 12
pre-LN encoder blocks (multi-head self-attention, then an MLP with exact (erf) GELU, each
with a residual), a final LayerNorm and a linear head on the class token. LayerNorms use
eps 1e-6, as timm's and big_vision's ViTs do. big_vision itself computes GELU with the tanh
approximation; medft follows timm (which serves the same AugReg weights), a difference of
under 1e-3 per activation.

Tuning units: `embed` (patch embedding, class token, position embedding), the 12 blocks in
four groups of three (`blocks0_2` ... `blocks9_11`; the final LayerNorm belongs to the last
group) and `head`. Groups rather than single blocks keep a study at six arms plus scratch,
the size of the paper's AlexNet study (8 units), and each arm still moves the frozen/trained
boundary by a quarter of the encoder. Each unit is a top-level submodule named after itself,
so `tuning.param_labels` matches every parameter path to exactly one unit.

Stages (`start`/`stop`, see `layers.stage_range`): `embed` outputs the token sequence
(batch, 1 + patches, hidden); each block group the sequence after its blocks, the last one
only the normalised class token (batch, hidden), which is what the head reads (and what a
frozen-trunk feature cache keeps).

Input size: any side >= 16; the patch grid is floor(side / 16) (a conv without padding drops
the last side mod 16 pixels), and the position embedding is built for that grid. Weights of
another input size are fitted by `fit_input_size` (bilinear resize of the position grid,
as timm and big_vision do when fine-tuning at a new resolution); the converter applies it
for `--input_size`, and without one records the source's own size (224, or 384 for a
384-px file).
`width` < 1 shrinks hidden size, heads and MLP, for tests only; depth stays 12 so that every
unit exists.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from medft.errors import ConfigError, InputFileError
from medft.models import register
from medft.models.alexnet import kernel_init
from medft.models.layers import Conv, stage_range

PATCH = 16
DEPTH = 12
GROUP = 3  # blocks per tuning unit
LN_EPS = 1e-6
UNITS = (('embed',) + tuple(f'blocks{i}_{i + GROUP - 1}' for i in range(0, DEPTH, GROUP))
         + ('head',))


def sizes(width: float) -> tuple[int, int, int]:
  """(hidden, heads, mlp) of ViT-B at `width` (1.0: 768, 12, 3072)."""
  heads = max(2, round(12 * width))
  hidden = max(4 * heads, round(768 * width) // heads * heads)
  return hidden, heads, max(8, round(3072 * width))


def grid_of(input_size: tuple[int, int]) -> tuple[int, int]:
  """Patch grid of an input: floor(side / 16) each way."""
  h, w = (int(s) for s in input_size)
  if min(h, w) < PATCH:
    raise ConfigError(f'input_size={h}x{w}: ViT-B/16 needs at least {PATCH} pixels a side.')
  return h // PATCH, w // PATCH


class Embed(nn.Module):
  """Patches -> tokens, class token first, plus the learned position embedding."""
  hidden: int
  scheme: str = 'xavier'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = Conv(self.hidden, PATCH, stride=PATCH, kernel_init=kernel_init(self.scheme, 0.02),
             dtype=self.dtype, name='patch')(x)
    b, gh, gw, d = x.shape
    cls = self.param('cls', nn.initializers.zeros, (1, 1, d), jnp.float32)
    pos = self.param('pos_embedding', nn.initializers.normal(0.02), (1, 1 + gh * gw, d),
                     jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)),
                         x.reshape(b, gh * gw, d)], axis=1)
    return x + pos.astype(self.dtype)


def _dense(module: nn.Module, features: int, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=module.dtype, param_dtype=jnp.float32,
                  kernel_init=kernel_init(module.scheme, 0.02), name=name)


def _norm(module: nn.Module, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, dtype=module.dtype, param_dtype=jnp.float32, name=name)


class Attention(nn.Module):
  """Multi-head self-attention with separate (hidden, hidden) query/key/value/out kernels."""
  hidden: int
  heads: int
  scheme: str = 'xavier'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    hd = d // self.heads
    q, k, v = (_dense(self, d, name)(x).reshape(b, n, self.heads, hd)
               for name in ('query', 'key', 'value'))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) / math.sqrt(hd)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, n, d)
    return _dense(self, d, 'out')(out)


class Mlp(nn.Module):
  hidden: int
  mlp: int
  scheme: str = 'xavier'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.gelu(_dense(self, self.mlp, 'fc1')(x), approximate=False)
    return _dense(self, self.hidden, 'fc2')(x)


class EncoderBlock(nn.Module):
  """Pre-LN block: x + attn(norm1(x)), then + mlp(norm2(.))."""
  hidden: int
  heads: int
  mlp: int
  scheme: str = 'xavier'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + Attention(self.hidden, self.heads, self.scheme, self.dtype, name='attn')(
        _norm(self, 'norm1')(x))
    return x + Mlp(self.hidden, self.mlp, self.scheme, self.dtype, name='mlp')(
        _norm(self, 'norm2')(x))


class BlockGroup(nn.Module):
  """Blocks `first` .. `first + GROUP - 1`; the last group ends with the final LayerNorm on
  the class token."""
  first: int
  hidden: int
  heads: int
  mlp: int
  scheme: str = 'xavier'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.first, self.first + GROUP):
      x = EncoderBlock(self.hidden, self.heads, self.mlp, self.scheme, self.dtype,
                       name=f'block{i}')(x)
    if self.first + GROUP == DEPTH:
      x = _norm(self, 'norm')(x[:, 0])
    return x


def grid_side(pos: np.ndarray, where: str = 'pos_embedding') -> int:
  """Side of the square patch grid of a (1, 1 + side^2, d) position embedding."""
  pos = np.asarray(pos)
  if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[1] < 2:
    raise InputFileError(f'{where}: shape {pos.shape}, expected (1, 1 + patches, hidden).')
  side = math.isqrt(pos.shape[1] - 1)
  if side * side != pos.shape[1] - 1:
    raise InputFileError(f'{where}: {pos.shape[1] - 1} patch positions are not a square grid; '
                         'medft reads square grids only.')
  return side


def resize_grid(pos: np.ndarray, grid: tuple[int, int], where: str = 'pos_embedding'
                ) -> np.ndarray:
  """A (1, 1 + gh * gw, d) position embedding resized to `grid`: bilinear (half-pixel
  centres, no antialiasing: PyTorch's `interpolate(mode='bilinear', align_corners=False)`)
  on the square patch grid; the class token's entry is kept as it is."""
  pos = np.asarray(pos)
  side = grid_side(pos, where)
  if (side, side) == tuple(grid):
    return pos
  d = pos.shape[2]
  cells = jnp.asarray(pos[0, 1:].reshape(side, side, d), jnp.float32)
  resized = jax.image.resize(cells, (*grid, d), 'linear', antialias=False)
  return np.concatenate([pos[:, :1], np.asarray(resized, pos.dtype).reshape(1, -1, d)], axis=1)


@register('vit_b16', UNITS)
class ViT(nn.Module):
  """ViT-B/16. `dropout` is the head's input dropout (timm's `drop_rate`); the blocks have
  none, as in the AugReg weights' fine-tuning setting."""
  num_classes: int
  width: float = 1.0
  dropout: float = 0.0
  scheme: str = 'xavier'  # big_vision's Dense init; position embedding N(0, 0.02), cls 0.
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, start: str | None = None,
               stop: str | None = None) -> jax.Array:
    """Logits; or, with `start`/`stop`, only those stages (see `layers.stage_range`)."""
    runs = stage_range(UNITS, start, stop)
    hidden, heads, mlp = sizes(self.width)
    x = x.astype(self.dtype)
    if runs('embed'):
      x = Embed(hidden, self.scheme, self.dtype, name='embed')(x)
    for unit, first in zip(UNITS[1:-1], range(0, DEPTH, GROUP)):
      if runs(unit):
        x = BlockGroup(first, hidden, heads, mlp, self.scheme, self.dtype, name=unit)(x)
    if runs('head'):
      x = nn.Dropout(self.dropout, name='dropout_head')(x, deterministic=not train)
      x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=nn.initializers.normal(0.01), name='head')(x).astype(jnp.float32)
    return x

  @staticmethod
  def fit_input_size(params: dict[str, Any], input_size: tuple[int, int] | None,
                     where: str = 'weights') -> tuple[dict[str, Any], tuple[int, int] | None]:
    """`(params, input size)`: with an `input_size`, the position embedding resized to its
    patch grid (`resize_grid`; nothing else depends on the input size); with None, the
    source's own size (16 x its grid side, e.g. 224 for 197 tokens, 384 for 577) and
    `params` as they are."""
    embed = params.get('embed')
    if not embed or 'pos_embedding' not in embed:
      return params, input_size
    where = f'{where}: embed/pos_embedding'
    if input_size is None:
      side = PATCH * grid_side(embed['pos_embedding'], where)
      return params, (side, side)
    pos = resize_grid(embed['pos_embedding'], grid_of(input_size), where)
    return {**params, 'embed': {**embed, 'pos_embedding': pos}}, tuple(input_size)
