"""Reads big_vision / vit_jax `.npz` checkpoints (flattened Flax trees, `/`-joined names).

Names are those of the vit_jax ViT, which the AugReg files (`gs://vit_models/augreg/*.npz`,
the source of timm's `vit_base_patch16_224`) use: `embedding/kernel`, `cls`,
`Transformer/posembed_input/pos_embedding`, `Transformer/encoderblock_N/LayerNorm_0/scale`,
`.../MultiHeadDotProductAttention_1/query/kernel` (hidden, heads, head_dim), `.../out/kernel`
(heads, head_dim, hidden), `.../MlpBlock_3/Dense_0/kernel`, `Transformer/encoder_norm/scale`,
`head/kernel`. A `params/` prefix on every name (big_vision's own checkpoints) is dropped.
Read with `numpy.load(allow_pickle=False)`: an object array (pickled Python) is refused,
never loaded. Input convention (`INPUT`): pixels in [-1, 1], i.e. RGB on 0..1 minus 0.5 over
0.5, at 224x224 (the same as timm's copy).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from medft.errors import InputFileError
from medft.weights.safetensors import is_floating
from medft.weights.torch import INPUT as _TORCH_INPUT

INPUT = {'vit_b16': _TORCH_INPUT['vit_b16']}
TOKEN = 'value'  # = convert.TOKEN: the one parameter of a top-level tensor such as `cls`


def read_layers(path: Path) -> dict[str, dict[str, np.ndarray]]:
  """`{layer: {param: array}}`: `a/b/kernel` -> layer `a/b`, param `kernel`; a top-level
  array (`cls`) -> layer `cls`, param `value`. Non-floating arrays (step counters) are
  skipped."""
  try:
    archive = np.load(path, allow_pickle=False)
    arrays = None
    if isinstance(archive, np.lib.npyio.NpzFile):  # not a bare .npy array
      with archive:
        arrays = {name: archive[name] for name in archive.files}
  except ValueError as e:  # object arrays, and files of no numpy format, need pickle
    raise InputFileError(f'{path}: not a .npz of plain numeric arrays ({e}); medft never loads '
                         'pickled objects. Re-save the weights with numpy.savez.') from None
  except (OSError, zipfile.BadZipFile, EOFError) as e:
    raise InputFileError(f'{path}: cannot be read as a .npz file ({type(e).__name__}: {e}). '
                         'The file is truncated or of another format.') from None
  if not arrays:
    raise InputFileError(f'{path}: holds no named arrays; expected a .npz checkpoint '
                         '(numpy.savez of the flattened parameters).')
  if all(name.startswith('params/') for name in arrays):
    arrays = {name[len('params/'):]: v for name, v in arrays.items()}
  layers: dict[str, dict[str, np.ndarray]] = {}
  for name, value in arrays.items():
    if not is_floating(value.dtype):
      continue
    layer, _, param = name.rpartition('/')
    if not param:
      raise InputFileError(f'{path}: array name {name!r} ends in "/"; expected names such as '
                           '"Transformer/encoder_norm/scale".')
    layers.setdefault(layer or name, {})[param if layer else TOKEN] = value
  if not layers:
    raise InputFileError(f'{path}: holds no floating-point arrays; expected weights.')
  return layers
