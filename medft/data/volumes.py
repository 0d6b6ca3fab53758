"""What the CT (PE) builders share: optional readers, the feature spec, HU and clot labels."""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import tensorflow_datasets as tfds

from medft.data.masks import label_components
from medft.errors import InputFileError, MissingPackageError

PE_EXTRA = 'medft[pe]'


def require(module: str, purpose: str) -> ModuleType:
  """Imports an optional reader (pynrrd, pydicom, ...) or says which pip extra provides it."""
  try:
    return importlib.import_module(module)
  except ImportError as err:
    raise MissingPackageError(
        f'{purpose} needs the optional package {module!r}; install it with '
        f'`pip install "{PE_EXTRA}"` (or `pip install {module if module != "nrrd" else "pynrrd"}`).'
    ) from err


def pe_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'volume': tfds.features.Tensor(shape=(None, None, None), dtype=np.int16, encoding='zlib'),
      'spacing': tfds.features.Tensor(shape=(3,), dtype=np.float32, encoding='bytes'),
      'labels': tfds.features.Tensor(shape=(None, None, None), dtype=np.int32, encoding='zlib'),
      'id': tfds.features.Text(),
      'unit': tfds.features.Text(),
  })


def to_int16(values: np.ndarray) -> np.ndarray:
  """Rounds and clips HU values to int16."""
  values = np.asarray(values)
  if np.issubdtype(values.dtype, np.integer):
    values = values.astype(np.int64)
  else:  # np.rint keeps small float dtypes, which cannot hold every HU value exactly
    values = np.rint(values.astype(np.float64))
  info = np.iinfo(np.int16)
  return np.clip(values, info.min, info.max).astype(np.int16)


def clot_labels(reference: np.ndarray) -> np.ndarray:
  """One integer per clot: a binary reference is split into connected components (3-D, full
  connectivity); a reference that already holds several ids is kept as it is."""
  reference = np.asarray(reference)
  values = np.unique(reference)
  if np.all(np.isin(values, (0, 1))) or reference.dtype == bool:
    return label_components(reference)
  if values.min() < 0:
    raise InputFileError(f'Clot reference holds negative labels {values[values < 0][:5]}.')
  return reference.astype(np.int32)
