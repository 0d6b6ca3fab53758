"""Turns uint8 patches into the network input that a set of weights expects (on device).

Patches leave the host as uint8 (4x less to copy than float32); here they are repeated to
3 channels when greyscale (as in the paper), resized to the network input, put in the
weights' channel order and scale, and normalised with the weights' mean and std.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from medft.weights.store import Meta


def prepare(patches: jax.Array, meta: Meta, input_size: tuple[int, int]) -> jax.Array:
  """uint8 `(B, h, w)` or `(B, h, w, 3)` RGB patches -> float32 `(B, H, W, 3)` net input."""
  x = patches.astype(jnp.float32)
  if x.ndim == 3:
    x = jnp.repeat(x[..., None], 3, axis=-1)
  if tuple(x.shape[1:3]) != tuple(input_size):
    x = jax.image.resize(x, (x.shape[0], *input_size, 3), method='bilinear', antialias=False)
  if meta.channel_order == 'BGR':
    x = x[..., ::-1]
  x = x * (meta.scale / 255.0)
  return (x - jnp.asarray(meta.mean, jnp.float32)) / jnp.asarray(meta.std, jnp.float32)
