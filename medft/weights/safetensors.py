"""Reads a `.safetensors` file holding a torchvision-layout state_dict (timm / Hugging Face).

Uses safetensors' NumPy API: the file is a JSON header plus raw little-endian arrays, so
nothing in it can execute. Names, layouts and the input convention are torchvision's
(see `medft.weights.torch`); PyTorch is not needed. Floating tensors keep their file dtype
(bfloat16 through `ml_dtypes`, which NumPy's own `issubdtype(..., np.floating)` does not
count as floating); the converter casts them to float32 and records the source dtype.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medft.errors import InputFileError, MissingPackageError
from medft.weights.torch import INPUT, group_by_layer  # noqa: F401  (same convention)


def read_layers(path: Path) -> dict[str, dict[str, np.ndarray]]:
  """`{layer: {'weight': ..., 'bias': ...}}`, PyTorch layout."""
  try:
    from safetensors.numpy import load_file
  except ImportError:
    raise MissingPackageError('--format=safetensors needs the safetensors package: pip '
                              'install "medft[weights]" (or pip install safetensors).') from None
  try:
    tensors = load_file(str(path))
  except Exception as e:  # SafetensorError for a bad header, TypeError for bf16 in NumPy, ...
    raise InputFileError(f'{path}: cannot be read as a .safetensors file ({type(e).__name__}: '
                         f'{e}). The file is truncated or of another format.') from None
  floats = {k: np.asarray(v) for k, v in tensors.items() if is_floating(v.dtype)}
  return group_by_layer(floats, path)


def is_floating(dtype: np.dtype) -> bool:
  """float16/32/64 and ml_dtypes' bfloat16 and float8 types (integer buffers are skipped)."""
  import ml_dtypes  # installed with JAX
  try:
    ml_dtypes.finfo(np.dtype(dtype))
  except ValueError:
    return False
  return True
