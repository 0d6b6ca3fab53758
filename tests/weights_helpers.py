"""Shared by tests/test_weights_*.py: run a converted medft model and compare it, layer by
layer, with the NumPy reference (tests/reference_numpy.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import traverse_util

from medft.models import get_model

SHARED = Path(__file__).resolve().parents[1] / '..' / 'shared'
TOLERANCE = 1e-4  # max abs difference, relative to max(1, max |reference|)


def channels(arch: str, width: float):
  """The channel counts `get_model(arch, width=width)` builds (mirrors its width rule)."""
  if arch == 'alexnet':
    conv = tuple(max(4, int(n * width)) // 2 * 2 for n in (96, 256, 384, 384, 256))
    return conv, max(8, int(4096 * width))
  if arch == 'alexnet_torchvision':
    conv = tuple(max(4, int(n * width)) for n in (64, 192, 384, 256, 256))
    return conv, max(8, int(4096 * width))
  fires = ((16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256),
           (64, 256))
  w = lambda n: max(2, int(n * width))  # noqa: E731
  return w(64), tuple((w(s), w(e)) for s, e in fires)


def flax_forward(arch: str, params, x_nchw: np.ndarray, num_classes: int, **model_kwargs):
  """Logits and `{flax layer path: pre-activation output (NCHW or (N, F))}`."""
  module, _ = get_model(arch, num_classes, **model_kwargs)
  x = np.asarray(x_nchw, np.float32).transpose(0, 2, 3, 1)
  logits, state = module.apply({'params': params}, x, capture_intermediates=True,
                               mutable=['intermediates'])
  acts = {}
  for path, value in traverse_util.flatten_dict(state['intermediates']).items():
    if path[-1] == '__call__' and len(path) > 1:
      y = np.asarray(value[0], np.float64)
      acts['/'.join(path[:-1])] = y.transpose(0, 3, 1, 2) if y.ndim == 4 else y
  return np.asarray(logits, np.float64), acts


def assert_close(name: str, actual: np.ndarray, reference: np.ndarray):
  assert actual.shape == reference.shape, (name, actual.shape, reference.shape)
  scale = max(1.0, float(np.abs(reference).max()))
  diff = float(np.abs(actual - reference).max())
  assert diff <= TOLERANCE * scale, f'{name}: max |diff| {diff:.3g} (scale {scale:.3g})'


def compare(arch, params, ref_logits, ref_acts, names, x_nchw, num_classes, **model_kwargs):
  """Runs medft's model on `x_nchw` and checks every layer in `names` ({flax: source}).

  Checks logits to TOLERANCE in absolute terms too; returns the medft logits.
  """
  logits, acts = flax_forward(arch, params, x_nchw, num_classes, **model_kwargs)
  assert set(names) <= set(acts), sorted(set(names) - set(acts))
  for flax_name, source_name in names.items():
    assert_close(f'{flax_name} ({source_name})', acts[flax_name], ref_acts[source_name])
  assert ref_logits.shape == logits.shape
  assert float(np.abs(logits - ref_logits).max()) <= TOLERANCE
  assert float(np.abs(ref_logits).max()) > 0.05, 'degenerate test: logits are all ~0'
  return logits


def random_input(rng, n: int, size: int) -> np.ndarray:
  return rng.standard_normal((n, 3, size, size)).astype(np.float32)
