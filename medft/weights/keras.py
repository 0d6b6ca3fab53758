"""Reads Keras 2 HDF5 weights (`model.save_weights('x.h5')`, `model.save('x.h5')`,
`keras.applications`-style downloads) with h5py (the `weights` extra of medft).

Keras 2 lists the layers in the root attribute `layer_names` and each layer's arrays in its
group's `weight_names` attribute; the arrays sit at `<layer>/<weight name>`, which gives
either style of nesting (`conv1/kernel:0` or `conv1/conv1_3/kernel:0`, and for layer names
with a slash `fire2/squeeze1x1/fire2/squeeze1x1_3/kernel:0`). Files without those
attributes are walked instead. Layer names `fire2_squeeze1x1` are read as `fire2/squeeze1x1`.
Kernels are already (kh, kw, in, out), as Flax wants them. Only datasets are read: HDF5
holds no code.

The SqueezeNet v1.1 port in `../shared/weights` comes from the DeepScale Caffe model, so
its input convention (`INPUT`) is Caffe's: BGR, 0..255, minus (104, 117, 123), 227x227.
It is a "notop" file: no `conv10` head. It converts without one (`num_source_classes` 0),
and `merge_params(loaded, init, dont_load=['conv10'])` keeps the freshly initialised head,
which is what the fine-tuning arm does anyway; merging it without `dont_load` fails and
names `conv10/kernel` and `conv10/bias` as missing.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from medft.errors import InputFileError, MissingPackageError

INPUT = {'squeezenet1_1': dict(channel_order='BGR', scale=255.0, mean=(104.0, 117.0, 123.0),
                               std=(1.0, 1.0, 1.0), input_size=(227, 227))}

# keras.applications' own conventions (`keras.applications.<net>.preprocess_input`):
# ResNet50 'caffe' mode (BGR, 0..255 minus the ImageNet BGR mean), DenseNet121 'torch' mode
# (RGB, 0..1, ImageNet mean/std). RadImageNet's published fine-tuning code feeds both
# networks `imagenet_utils.preprocess_input` (caffe mode) of 0..255 pixels and then rescales
# by 1/255 (ImageDataGenerator applies `preprocessing_function` before `rescale`): BGR,
# 0..255 pixels minus (103.939, 116.779, 123.68), divided by 255, i.e. `RADIMAGENET`.
# The file does not say which it was trained with; medft records the keras.applications one.
INPUT['resnet50_keras'] = dict(channel_order='BGR', scale=255.0, mean=(103.939, 116.779, 123.68),
                               std=(1.0, 1.0, 1.0), input_size=(224, 224))
INPUT['densenet121'] = dict(channel_order='RGB', scale=1.0, mean=(0.485, 0.456, 0.406),
                            std=(0.229, 0.224, 0.225), input_size=(224, 224))
RADIMAGENET = dict(channel_order='BGR', scale=255.0, mean=(103.939, 116.779, 123.68),
                   std=(255.0, 255.0, 255.0), input_size=(224, 224))
# Other input conventions the converter can record (`--convention=NAME`), by network.
CONVENTIONS = {'radimagenet': {'resnet50_keras': RADIMAGENET, 'densenet121': RADIMAGENET}}


class _NotKerasWeights(ValueError):
  """A readable file that is not what medft expects (as opposed to a damaged one)."""


# Over 3x AlexNet's fc6 in float64 (9216 x 4096 x 8 bytes): no weights array of a supported
# network is larger. HDF5 declares shapes freely (a few-kB file can claim terabytes of fill
# value) and can keep values in other files, so a dataset is checked before it is read.
_MAX_ARRAY_BYTES = 1 << 30


def _values(dataset, path: Path) -> np.ndarray:
  """A dataset's values, refusing sizes no weights file holds and data the file lacks."""
  if dataset.external or dataset.is_virtual:  # e.g. /dev/zero, or any file on this machine
    raise _NotKerasWeights(f'{path}: {dataset.name} keeps its values in other files; medft '
                           'reads weights only from the file itself. Re-save the weights.')
  nbytes = math.prod(dataset.shape or ()) * dataset.dtype.itemsize
  if nbytes > _MAX_ARRAY_BYTES:
    raise _NotKerasWeights(f'{path}: {dataset.name} claims shape {dataset.shape} ({nbytes} '
                           'bytes), larger than any weights array; the file is damaged or not '
                           'a weights file.')
  # Uncompressed values take their full size in the file; deflate shrinks at most ~1000x.
  stored = dataset.id.get_storage_size()
  if stored < (nbytes if dataset.compression is None else nbytes // 1024):
    raise _NotKerasWeights(f'{path}: {dataset.name} claims {nbytes} bytes but the file stores '
                           f'{stored}; the file is damaged or truncated.')
  return dataset[()]


_FIRE = re.compile(r'(fire\d+)[/_](squeeze1x1|expand1x1|expand3x3)')


def _layer_name(name: str) -> str:
  match = _FIRE.fullmatch(name)
  return f'{match[1]}/{match[2]}' if match else name


def _param_name(weight_name: str) -> str:
  """'fire2/squeeze1x1_3/kernel:0' -> 'kernel'."""
  return weight_name.rsplit('/', 1)[-1].split(':')[0]


def _decode(names) -> list[str]:
  return [n.decode('utf-8') if isinstance(n, bytes) else str(n) for n in names]


def _read(h5py, f, path: Path) -> dict[str, dict[str, np.ndarray]]:
  root = f['model_weights'] if 'model_weights' in f else f
  if 'layer_names' not in root.attrs and isinstance(root.get('layers'), h5py.Group):
    raise _NotKerasWeights(f'{path}: a Keras 3 `.weights.h5` file; medft reads Keras 2 HDF5. '
                           f'Save the weights with tf.keras / Keras 2 '
                           f'(`model.save_weights("x.h5")`).')
  arrays: list[tuple[str, str, np.ndarray]] = []  # (layer, param, array)
  if 'layer_names' in root.attrs:
    for layer in _decode(root.attrs['layer_names']):
      group = root[layer]
      for weight in _decode(group.attrs.get('weight_names', [])):
        arrays.append((_layer_name(layer), _param_name(weight), _values(group[weight], path)))
  else:
    def visit(name, obj):
      if isinstance(obj, h5py.Dataset):
        parts = name.split('/')
        layer = '/'.join(parts[:2]) if len(parts) > 2 and _FIRE.fullmatch(
            '/'.join(parts[:2])) else parts[0]
        arrays.append((_layer_name(layer), _param_name(name), _values(obj, path)))
    root.visititems(visit)
  layers: dict[str, dict[str, np.ndarray]] = {}
  for layer, param, value in arrays:
    key = f'{layer}/{param}'
    if param in layers.get(layer, {}):
      raise _NotKerasWeights(f'{path}: layer {layer!r} has two arrays named {param!r}.')
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.floating):
      raise _NotKerasWeights(f'{path}: {key} is {value.dtype}, expected floating-point weights.')
    layers.setdefault(layer, {})[param] = value.astype(np.float32)
  if not layers:
    raise _NotKerasWeights(f'{path}: an HDF5 file without Keras layer weights.')
  return layers


def read_layers(path: Path) -> dict[str, dict[str, np.ndarray]]:
  """`{layer: {'kernel': ..., 'bias': ...}}`, Keras layout (kh, kw, in, out)."""
  try:
    import h5py
  except ImportError:
    raise MissingPackageError('--format=keras needs h5py, an optional extra of medft: '
                              'pip install "medft[weights]" (or pip install h5py).') from None
  try:
    with h5py.File(path, 'r') as f:
      return _read(h5py, f, path)
  except _NotKerasWeights:
    raise
  except Exception as e:  # h5py raises OSError, KeyError, ValueError, ... for damaged files
    raise InputFileError(f'{path}: cannot be read as Keras HDF5 weights ({type(e).__name__}: '
                         f'{e}). The file is truncated or not an HDF5 file.') from None
