"""Reads the learned weights of a Caffe `.caffemodel` (a binary `NetParameter` protobuf).

Both forms of the file are read: the current one (`NetParameter.layer`, `LayerParameter`,
blobs in field 7) and the V1 one (`NetParameter.layers`, `V1LayerParameter`, blobs in field 6;
BVLC's `bvlc_alexnet.caffemodel` is of this kind), including V0 layers nested in V1 ones.
A blob's shape comes from `BlobShape` or the legacy num/channels/height/width fields, its
values from packed float `data` or packed double `double_data`. Blobs keep Caffe's layout:
convolution (out, in / groups, kh, kw), inner product (out, in); blob 0 is the `weight` and
blob 1 the `bias`. The schema is medft's own subset of Caffe's (`medft/third_party/caffe`), so
neither Caffe nor protoc is needed.

Input convention of the BVLC models (`INPUT`): BGR channel order, 0..255 pixels, minus the
per-channel mean (B, G, R) = (104, 117, 123), no division (std 1), 227x227 crops. Caffe
itself subtracts a per-pixel mean image (`ilsvrc_2012_mean.binaryproto`, 256x256x3); medft
reduces that image to its per-channel means, (104.0, 116.7, 122.7), rounded to whole values
as in Caffe's own Python examples and in later ports of these weights.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from medft.errors import InputFileError

log = logging.getLogger(__name__)

# SHA-1 of BVLC's models/bvlc_alexnet/bvlc_alexnet.caffemodel (its readme lists it).
BVLC_ALEXNET_SHA1 = '9116a64c0fbe4459d18f4bb6b56d647b63920377'

_BVLC_INPUT = dict(channel_order='BGR', scale=255.0, mean=(104.0, 117.0, 123.0),
                   std=(1.0, 1.0, 1.0), input_size=(227, 227))
INPUT = {'alexnet': _BVLC_INPUT, 'squeezenet1_1': _BVLC_INPUT}

_MAX_PROTOBUF_BYTES = 2**31 - 1  # protobuf cannot parse a message larger than 2 GiB


def _blob_array(blob, where: str) -> np.ndarray:
  """One BlobProto as a float32 array, checking that its shape matches its data."""
  if blob.HasField('shape'):
    shape = tuple(int(d) for d in blob.shape.dim)
  elif any(blob.HasField(f) for f in ('num', 'channels', 'height', 'width')):
    shape = (blob.num, blob.channels, blob.height, blob.width)
  else:
    shape = None
  if len(blob.data) and len(blob.double_data):
    raise InputFileError(f'{where} holds both float and double data; the file is damaged.')
  values = blob.double_data if len(blob.double_data) else blob.data
  if shape is None:
    shape = (len(values),)
  if any(d < 0 for d in shape):
    raise InputFileError(f'{where} has a negative dimension {shape}; the file is damaged.')
  count = math.prod(shape)  # exact Python int: a huge claimed shape cannot overflow
  if count != len(values):
    raise InputFileError(f'{where} claims shape {shape} ({count} values) but holds {len(values)} '
                         f'values; the file is damaged or truncated.')
  dtype = np.float64 if len(blob.double_data) else np.float32
  return np.asarray(values, dtype=dtype).astype(np.float32, copy=False).reshape(shape)


def _looks_like_text(head: bytes) -> bool:
  try:
    text = head.decode('utf-8')
  except UnicodeDecodeError:
    return False
  return all(c.isprintable() or c.isspace() for c in text)


def read_net(path: Path):
  """Parses `path` as a Caffe NetParameter, with readable errors for anything else."""
  from google.protobuf.message import DecodeError

  from medft.third_party.caffe import schema

  size = path.stat().st_size
  if size == 0:
    raise InputFileError(f'{path}: the file is empty; expected a binary .caffemodel.')
  if size > _MAX_PROTOBUF_BYTES:
    raise InputFileError(f'{path}: {size} bytes is more than a protobuf message can hold (2 GiB); '
                         f'not a .caffemodel.')
  data = path.read_bytes()
  try:
    return schema.NetParameter.FromString(data)
  except DecodeError as e:
    hint = (' It looks like text: a .prototxt describes the network but holds no weights; '
            'pass the binary .caffemodel.' if _looks_like_text(data[:512]) else
            ' The file is truncated, damaged or not a binary Caffe model (.caffemodel).')
    raise InputFileError(f'{path}: cannot be parsed as a Caffe NetParameter ({e}).{hint}') from None


def read_layers(path: Path) -> dict[str, dict[str, np.ndarray]]:
  """`{layer name: {'weight': ..., 'bias': ...}}` for every layer with blobs, Caffe layout."""
  from medft.third_party.caffe import schema

  net = read_net(path)
  entries = []  # (name, type, blobs) in file order, V1 first (a file holds one form)
  for layer in net.layers:
    if layer.HasField('layer') and not layer.name:  # V0 nested in V1
      entries.append((layer.layer.name, layer.layer.type, layer.layer.blobs))
    else:
      entries.append((layer.name, schema.V1_LAYER_TYPES.get(layer.type, str(layer.type)),
                      layer.blobs))
  entries += [(layer.name, layer.type, layer.blobs) for layer in net.layer]
  layers: dict[str, dict[str, np.ndarray]] = {}
  for name, kind, blobs in entries:
    if not len(blobs):
      continue
    if name in layers:
      raise InputFileError(f'{path}: two layers named {name!r} hold weights; the file is damaged.')
    names = ['weight', 'bias'] + [f'blob{i}' for i in range(2, len(blobs))]
    layers[name] = {n: _blob_array(b, f'{path}: layer {name!r} ({kind}) blob {i}')
                    for i, (n, b) in enumerate(zip(names, blobs))}
  if not layers:
    raise InputFileError(f'{path}: parsed as a Caffe NetParameter but holds no layer with weights '
                         f'({len(entries)} layers); expected a trained .caffemodel.')
  order = [name for name, _, _ in entries]
  if 'pool1' in order and 'norm1' in order and order.index('pool1') < order.index('norm1'):
    log.warning('%s: pools before LRN, like CaffeNet (bvlc_reference_caffenet); medft\'s '
                'alexnet normalises before pooling as BVLC AlexNet does, so activations differ.',
                path)
  return layers


def log_provenance(path: Path, sha1: str, arch: str) -> None:
  """Says whether `path` is the BVLC AlexNet release; a different file is converted anyway."""
  if arch != 'alexnet':
    return
  if sha1 == BVLC_ALEXNET_SHA1:
    log.info('%s: SHA-1 %s is BVLC\'s bvlc_alexnet.caffemodel.', path, sha1)
  else:
    log.warning('%s: SHA-1 %s is not BVLC\'s bvlc_alexnet.caffemodel (%s); converting it '
                'anyway as a BVLC-layout AlexNet.', path, sha1, BVLC_ALEXNET_SHA1)
