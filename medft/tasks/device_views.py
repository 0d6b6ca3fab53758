"""Test-time views cut on the device: the patches of `augment.cut_view` and `pe.vessel_cut`.

The host path cuts every view of every candidate with `scipy.ndimage.map_coordinates`, one
call per channel and crop, in Python: for the paper's 216 views it ran at a fraction of the
network's speed. Here the frames (or PE cubes) of a split are stacked once and put on the
devices (`Source`), and each patch travels as a few numbers (`box` / `vessel` descriptors);
the sampling runs inside the same compiled function as the network (`medft.trainer`).

Same patches as the host path, to float tolerance: linear interpolation with coordinates
clamped to each item's own extent (scipy's order=1, mode='nearest'), then the host path's
rounding to uint8 levels. The host computes in float64, the device in float32, so a level
can differ by one where the exact value lies within ~1e-3 of a half level (tests/
test_device_views.py bounds how often). Patches come out float32 with integer values 0..255,
as `medft.preprocess.prepare` takes them.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from medft import parallel
from medft.tasks import augment

# A split's stacked items may take at most this many MiB per device; a larger split is cut
# on the host (logged), since a stack is held on every device for the whole evaluation.
MAX_STACK_MB = 4096


@dataclasses.dataclass(frozen=True)
class Source:
  """A split's items stacked for the device: `stack` (N, *extent, [C]) padded to the largest
  item, `limits` (N, ndim) int32 each item's own extent, and how its patches are cut.

  `kind` is 'box' (2-D frames, `box_patches`) or 'vessel' (3-D HU cubes, `vessel_patches`);
  `size` the patch side; `window` the HU window of 'vessel' patches.
  """
  kind: str
  stack: np.ndarray
  limits: np.ndarray
  size: int
  window: tuple[float, float] = (0.0, 255.0)

  @property
  def static(self) -> tuple:
    """What the compiled cut depends on besides array shapes."""
    return (self.kind, self.size, tuple(float(w) for w in self.window))


def stack_items(arrays: Sequence[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
  """Arrays of one rank padded (with zeros, never read) to the largest of each axis."""
  spatial = np.array([a.shape for a in arrays]) if len(arrays) else np.zeros((0, 1), int)
  shape = spatial.max(axis=0) if len(arrays) else np.ones(1, int)
  out = np.zeros((len(arrays), *shape), dtype)
  for k, a in enumerate(arrays):
    out[(k, *(slice(0, s) for s in a.shape))] = a
  return out, spatial.astype(np.int32)


def fits(stack_bytes: int) -> bool:
  """Whether a stack of `stack_bytes` may go on every device; logs why not."""
  if stack_bytes <= MAX_STACK_MB * 2**20:
    return True
  logging.info('The split\'s stacked frames or cubes take %.0f MiB (> %d MiB per device): its '
               'views are cut on the host.', stack_bytes / 2**20, MAX_STACK_MB)
  return False


# ---- sampling -----------------------------------------------------------------------------


def sample_linear(stack: jax.Array, limits: jax.Array, item: jax.Array,
                  coords: Sequence[jax.Array]) -> jax.Array:
  """Linear interpolation of `stack[item]` at `coords`, clamped to the item's extent.

  `stack` (N, *extent, [C]), `limits` (N, ndim), `item` (B,), `coords` ndim arrays
  (B, *grid) in voxel units. Returns (B, *grid, [C]) float32. Matches scipy's
  `map_coordinates(order=1, mode='nearest')`.
  """
  ndim = len(coords)
  grid = coords[0].shape[1:]
  lims = limits[item]                              # (B, ndim)
  item = item.reshape((-1,) + (1,) * len(grid))
  lows, highs, fracs = [], [], []
  for d, c in enumerate(coords):
    top = lims[:, d].reshape((-1,) + (1,) * len(grid)) - 1
    c = jnp.clip(c, 0.0, top.astype(jnp.float32))
    low = jnp.clip(jnp.floor(c).astype(jnp.int32), 0, top)
    lows.append(low)
    highs.append(jnp.minimum(low + 1, top))
    fracs.append(c - low.astype(jnp.float32))
  out = 0.0
  for corner in itertools.product((0, 1), repeat=ndim):
    index = [highs[d] if bit else lows[d] for d, bit in enumerate(corner)]
    weight = 1.0
    for d, bit in enumerate(corner):
      weight = weight * (fracs[d] if bit else 1.0 - fracs[d])
    value = stack[(item, *index)].astype(jnp.float32)
    if value.ndim > weight.ndim:  # channels last
      weight = weight[..., None]
    out = out + weight * value
  return out


def _levels(x: jax.Array) -> jax.Array:
  """Rounded to uint8 levels as the host path stores patches, kept float32."""
  return jnp.clip(jnp.round(x), 0.0, 255.0)


def _orientation_tables(size: int) -> np.ndarray:
  """(8, 2, size, size): for each orientation, the crop (row, col) shown at each pixel."""
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
  return np.stack([np.stack([augment.orient(rows, k), augment.orient(cols, k)])
                   for k in range(augment.NUM_ORIENTATIONS)]).astype(np.int32)


def box_patches(stack: jax.Array, limits: jax.Array, desc: dict, size: int) -> jax.Array:
  """`augment.cut_view` patches: desc `item` (B,), `centre` (B, 2) yx of the shifted crop,
  `side` (B,) crop side in pixels (view scale x box), `orientation` (B,) 0..7."""
  tables = jnp.asarray(_orientation_tables(size))[desc['orientation']]  # (B, 2, S, S)
  offsets = tables.astype(jnp.float32) - (size - 1) / 2.0
  spacing = (desc['side'] / size)[:, None, None]
  centre = desc['centre'].astype(jnp.float32)
  rows = centre[:, 0, None, None] + offsets[:, 0] * spacing
  cols = centre[:, 1, None, None] + offsets[:, 1] * spacing
  return _levels(sample_linear(stack, limits, desc['item'], (rows, cols)))


def vessel_patches(stack: jax.Array, limits: jax.Array, desc: dict, size: int,
                   window: tuple[float, float]) -> jax.Array:
  """`pe.vessel_cut` patches: desc `item` (B,) cube, `origin` (B, 3) voxel coords of the
  patch centre, `rows` and `cols` (B, 2, 3) the voxel step per patch pixel of each plane's
  rows and columns (cross-section, longitudinal)."""
  grid = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
  lo, hi = window
  planes = []
  for p in range(2):
    r, c = desc['rows'][:, p], desc['cols'][:, p]          # (B, 3)
    coords = [desc['origin'][:, d, None, None] + grid[None, :, None] * r[:, d, None, None]
              + grid[None, None, :] * c[:, d, None, None] for d in range(3)]
    hu = sample_linear(stack, limits, desc['item'], coords)
    planes.append(_levels((hu - lo) * (255.0 / (hi - lo))))
  return jnp.stack([planes[0], planes[1], planes[1]], axis=-1)


def patches(source_static: tuple, stack: jax.Array, limits: jax.Array, desc: dict
            ) -> jax.Array:
  """The patches of `desc` from a `Source`'s arrays (`source_static` = `Source.static`)."""
  kind, size, window = source_static
  if kind == 'box':
    return box_patches(stack, limits, desc, size)
  if kind == 'vessel':
    return vessel_patches(stack, limits, desc, size, window)
  raise ValueError(f'unknown view source kind {kind!r}')


_cut = jax.jit(patches, static_argnums=0)


def cut(source: Source, desc: dict[str, np.ndarray], chunk: int = 4096) -> np.ndarray:
  """uint8 patches of `desc` cut on the default device (fixed sets, e.g. validation)."""
  stack, limits = jnp.asarray(source.stack), jnp.asarray(source.limits)
  n = len(desc['item'])
  outs = []
  for start in range(0, n, chunk):
    part = {k: v[start:start + chunk] for k, v in desc.items()}
    rows = len(part['item'])
    if n > chunk:  # one compiled shape for every chunk
      part = parallel.pad_rows(part, chunk)
    out = np.asarray(_cut(source.static, stack, limits, part)).astype(np.uint8)
    outs.append(out[:rows])
  if not outs:
    return np.zeros((0, source.size, source.size, 3), np.uint8)
  return np.concatenate(outs)
