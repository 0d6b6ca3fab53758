"""Reads a `.safetensors` file holding a torchvision-layout state_dict (timm / Hugging Face).

Uses safetensors' NumPy API: the file is a JSON header plus raw little-endian arrays, so
nothing in it can execute. Names, layouts and the input convention are torchvision's
(see `medft.weights.torch`); PyTorch is not needed.
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
    raise MissingPackageError('--format=safetensors needs the safetensors package: '
                      'pip install "medft[weights]" (or pip install safetensors).') from None
  try:
    tensors = load_file(str(path))
  except Exception as e:  # SafetensorError for a bad header, TypeError for bf16 in NumPy, ...
    raise InputFileError(f'{path}: cannot be read as a .safetensors file ({type(e).__name__}: '
                     f'{e}). The file is truncated or of another format; bfloat16 files need '
                     f're-saving as float32.') from None
  floats = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()
            if np.issubdtype(v.dtype, np.floating)}
  return group_by_layer(floats, path)
