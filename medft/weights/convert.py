"""Converts pretrained weights from Caffe, PyTorch, safetensors, Keras or big_vision .npz files
to medft's layout.

    python -m medft.weights.convert --src=bvlc_alexnet.caffemodel --format=caffe \
        --arch=alexnet --out=weights/alexnet_bvlc
    python -m medft.weights.convert --src=../shared/weights/squeezenet_v1.1_imagenet_notop.h5 \
        --format=keras --arch=squeezenet1_1 --out=weights/squeezenet_keras

writes the artifact described in `medft.weights.store` (Flax parameters + `meta.json` with the
input convention of the source) and prints its path. Each reader (`caffe`, `torch`,
`safetensors`, `keras`, `npz`) returns `{source layer: {source param name: array}}` in the source's
own layout; the explicit `TABLES` below say where each source layer goes in the Flax tree and
which layout change (`LAYOUTS`) it needs. Nothing read from a file is ever executed.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
from flax import traverse_util

from medft.errors import ConfigError, InputFileError, MissingInputError, NotOursError
from medft.weights.store import Meta, Params, describe_misfit, refuse_unless_artifact, save_artifact

log = logging.getLogger(__name__)

FORMATS = ('caffe', 'torch', 'safetensors', 'keras', 'npz')
Layers = dict[str, dict[str, np.ndarray]]


# ---------------------------------------------------------------------------
# Layout changes, one per kind of layer
# ---------------------------------------------------------------------------


def _vector(b: np.ndarray, where: str) -> np.ndarray:
  """A bias; Caffe's legacy 4-d blobs store it as (1, 1, 1, n)."""
  if b.ndim == 0 or b.size != b.shape[-1]:
    raise InputFileError(f'{where}: bias has shape {b.shape}, expected a vector.')
  return b.reshape(-1)


def _matrix(w: np.ndarray, where: str) -> np.ndarray:
  """A dense weight (out, in); Caffe's legacy 4-d blobs store it as (1, 1, out, in)."""
  if w.ndim == 4 and w.shape[:2] == (1, 1):
    w = w.reshape(w.shape[2:])
  if w.ndim != 2:
    raise InputFileError(f'{where}: weight has shape {w.shape}, expected (out, in).')
  return w


def _conv_oihw(p: dict, where: str, _: Params) -> dict:
  """Caffe/PyTorch conv: (out, in // groups, kh, kw) -> Flax (kh, kw, in // groups, out)."""
  w = p['weight']
  if w.ndim != 4:
    raise InputFileError(f'{where}: weight has shape {w.shape}, expected (out, in/groups, kh, kw).')
  return {'kernel': w.transpose(2, 3, 1, 0), 'bias': _vector(p['bias'], where)}


def _conv_hwio(p: dict, where: str, _: Params) -> dict:
  """Keras conv: already (kh, kw, in, out)."""
  if p['kernel'].ndim != 4:
    raise InputFileError(f'{where}: kernel has shape {p["kernel"].shape}, expected '
                         '(kh, kw, in, out).')
  return {'kernel': p['kernel'], 'bias': _vector(p['bias'], where)}


def _dense_oi(p: dict, where: str, _: Params) -> dict:
  """Caffe InnerProduct / PyTorch Linear: (out, in) -> Flax Dense (in, out)."""
  return {'kernel': _matrix(p['weight'], where).T, 'bias': _vector(p['bias'], where)}


def _dense_oi_chw(channels_from: str) -> Callable[[dict, str, Params], dict]:
  """The first dense layer: also permute its input rows from C, H, W order to Flax's H, W, C.

  Caffe and PyTorch flatten the last feature map channel-major, Flax's `reshape` of an NHWC map
  flattens channel-minor; C is the output width of `channels_from`, H = W = sqrt(in / C).
  """
  def layout(p: dict, where: str, converted: Params) -> dict:
    w = _matrix(p['weight'], where)
    channels = converted[channels_from]['kernel'].shape[-1]
    out, inputs = w.shape
    side = math.isqrt(inputs // channels) if inputs % channels == 0 else 0
    if side * side * channels != inputs:
      raise InputFileError(f'{where}: {inputs} inputs are not a square map of the {channels} '
                           f'channels of {channels_from}; the file is not this architecture.')
    w = w.reshape(out, channels, side, side).transpose(2, 3, 1, 0).reshape(inputs, out)
    return {'kernel': w, 'bias': _vector(p['bias'], where)}

  def inverse(p: dict, converted: Params) -> dict:
    kernel = p['kernel']
    inputs, out = kernel.shape
    channels = converted[channels_from]['kernel'].shape[-1]
    side = math.isqrt(inputs // channels)
    w = kernel.reshape(side, side, channels, out).transpose(3, 2, 0, 1).reshape(out, inputs)
    return {'weight': w, 'bias': p['bias']}
  layout.inverse = inverse
  return layout


# The inverse of each layout change (Flax -> source layout; `to_source` applies them), beside
# the change it undoes.
_conv_oihw.inverse = lambda p, _: {'weight': p['kernel'].transpose(3, 2, 0, 1),
                                   'bias': p['bias']}
_dense_oi.inverse = lambda p, _: {'weight': p['kernel'].T, 'bias': p['bias']}


def _conv_oihw_nobias(p: dict, where: str, _: Params) -> dict:
  """torchvision ResNet/DenseNet conv (no bias): (out, in, kh, kw) -> Flax (kh, kw, in, out)."""
  w = p['weight']
  if w.ndim != 4:
    raise InputFileError(f'{where}: weight has shape {w.shape}, expected (out, in, kh, kw).')
  return {'kernel': w.transpose(2, 3, 1, 0)}


def _conv_hwio_nobias(p: dict, where: str, _: Params) -> dict:
  """Keras conv without bias (DenseNet121): already (kh, kw, in, out)."""
  if p['kernel'].ndim != 4:
    raise InputFileError(f'{where}: kernel has shape {p["kernel"].shape}, expected '
                         '(kh, kw, in, out).')
  return {'kernel': p['kernel']}


def _dense_io(p: dict, where: str, _: Params) -> dict:
  """Keras Dense: already (in, out)."""
  if p['kernel'].ndim != 2:
    raise InputFileError(f'{where}: kernel has shape {p["kernel"].shape}, expected (in, out).')
  return {'kernel': p['kernel'], 'bias': _vector(p['bias'], where)}


def _batch_norm(scale: str, bias: str, mean: str, var: str) -> Callable[[dict, str, Params],
                                                                         dict]:
  """BatchNorm: the source's four vectors -> Flax `scale`, `bias` (params) and `mean`, `var`
  (the `batch_stats` collection; `to_variables` moves them there, `BATCH_STATS`)."""
  def layout(p: dict, where: str, _: Params) -> dict:
    vectors = {k: _vector(p[k], where) for k in (scale, bias, mean, var)}
    if len({v.shape for v in vectors.values()}) != 1:
      raise InputFileError(f'{where}: BatchNorm vectors of different lengths '
                           f'{ {k: v.shape[0] for k, v in vectors.items()} }.')
    if (vectors[var] < 0).any():
      raise InputFileError(f'{where}: {var} has negative entries; the file is damaged.')
    return {'scale': vectors[scale], 'bias': vectors[bias], 'mean': vectors[mean],
            'var': vectors[var]}
  layout.source_params = (scale, bias, mean, var)
  return layout


# torch: num_batches_tracked is an integer buffer, which the readers skip.
_bn_torch = _batch_norm('weight', 'bias', 'running_mean', 'running_var')
_bn_keras = _batch_norm('gamma', 'beta', 'moving_mean', 'moving_variance')
# Leaves of a BatchNorm layer that belong to the `batch_stats` collection, not to params.
BATCH_STATS = ('mean', 'var')


# Parameter names each layout reads from a source layer.
_SOURCE_PARAMS = {_conv_oihw: ('weight', 'bias'), _conv_hwio: ('kernel', 'bias'),
                  _dense_oi: ('weight', 'bias'), _conv_oihw_nobias: ('weight',),
                  _conv_hwio_nobias: ('kernel',), _dense_io: ('kernel', 'bias'),
                  _bn_torch: _bn_torch.source_params, _bn_keras: _bn_keras.source_params}


class Row(NamedTuple):
  """One source layer: its name in the file, its Flax path, and its layout change."""
  source: str
  unit: str
  layout: Callable[[dict, str, Params], dict]


# ---------------------------------------------------------------------------
# Conversion tables: source layer name -> Flax path + layout change
# ---------------------------------------------------------------------------

_FIRE_BRANCHES = ('squeeze1x1', 'expand1x1', 'expand3x3')
# torchvision's squeezenet1_1.features index of fire2 ... fire9, and its branch names.
_TORCHVISION_FIRE_INDEX = {2: 3, 3: 4, 4: 6, 5: 7, 6: 9, 7: 10, 8: 11, 9: 12}
_TORCHVISION_FIRE_BRANCH = {'squeeze1x1': 'squeeze', 'expand1x1': 'expand1x1',
                            'expand3x3': 'expand3x3'}


def _squeezenet_rows(conv_layout, conv1: str, fire: Callable[[int, str], str],
                     conv10: str) -> tuple[Row, ...]:
  rows = [Row(conv1, 'conv1', conv_layout)]
  rows += [Row(fire(i, branch), f'fire{i}/{branch}', conv_layout)
           for i in range(2, 10) for branch in _FIRE_BRANCHES]
  return tuple(rows) + (Row(conv10, 'conv10', conv_layout),)


def _resnet_rows(blocks: Sequence[int], bottleneck: bool) -> tuple[Row, ...]:
  """torchvision / timm ResNet state_dict names (`layer1.0.conv1`, `layer2.0.downsample.0`)."""
  rows = [Row('conv1', 'stem/conv1', _conv_oihw_nobias), Row('bn1', 'stem/bn1', _bn_torch)]
  for stage, count in enumerate(blocks, start=1):
    for b in range(count):
      src, dst = f'layer{stage}.{b}', f'layer{stage}/block{b}'
      for i in range(1, 4 if bottleneck else 3):
        rows += [Row(f'{src}.conv{i}', f'{dst}/conv{i}', _conv_oihw_nobias),
                 Row(f'{src}.bn{i}', f'{dst}/bn{i}', _bn_torch)]
      if b == 0 and (bottleneck or stage > 1):  # projection shortcut
        rows += [Row(f'{src}.downsample.0', f'{dst}/downsample_conv', _conv_oihw_nobias),
                 Row(f'{src}.downsample.1', f'{dst}/downsample_bn', _bn_torch)]
  return tuple(rows) + (Row('fc', 'fc', _dense_oi),)


def _keras_resnet50_rows() -> tuple[Row, ...]:
  """keras.applications.ResNet50 layer names (`conv2_block1_0_conv` is the projection)."""
  rows = [Row('conv1_conv', 'stem/conv1', _conv_hwio), Row('conv1_bn', 'stem/bn1', _bn_keras)]
  for stage, count in enumerate((3, 4, 6, 3), start=1):
    for b in range(count):
      src, dst = f'conv{stage + 1}_block{b + 1}', f'layer{stage}/block{b}'
      if b == 0:
        rows += [Row(f'{src}_0_conv', f'{dst}/downsample_conv', _conv_hwio),
                 Row(f'{src}_0_bn', f'{dst}/downsample_bn', _bn_keras)]
      for i in (1, 2, 3):
        rows += [Row(f'{src}_{i}_conv', f'{dst}/conv{i}', _conv_hwio),
                 Row(f'{src}_{i}_bn', f'{dst}/bn{i}', _bn_keras)]
  return tuple(rows) + (Row('predictions', 'fc', _dense_io),)


DENSENET121_BLOCKS = (6, 12, 24, 16)


def _densenet_rows(conv, bn, dense, names: Callable[[str, int, int], str]) -> tuple[Row, ...]:
  """DenseNet-121 rows; `names(kind, block, layer)` gives the source's layer name."""
  rows = [Row(names('conv0', 0, 0), 'stem/conv0', conv),
          Row(names('norm0', 0, 0), 'stem/norm0', bn)]
  for i, layers in enumerate(DENSENET121_BLOCKS, start=1):
    for j in range(1, layers + 1):
      dst = f'block{i}/denselayer{j}'
      rows += [Row(names(kind, i, j), f'{dst}/{kind}', layout)
               for kind, layout in (('norm1', bn), ('conv1', conv), ('norm2', bn), ('conv2', conv))]
    if i < len(DENSENET121_BLOCKS):
      rows += [Row(names('transition_norm', i, 0), f'block{i}/transition_norm', bn),
               Row(names('transition_conv', i, 0), f'block{i}/transition_conv', conv)]
  rows.append(Row(names('norm5', 0, 0), f'block{len(DENSENET121_BLOCKS)}/norm5', bn))
  return tuple(rows) + (Row(names('classifier', 0, 0), 'classifier', dense),)


def _torchvision_densenet_name(kind: str, block: int, layer: int) -> str:
  if kind == 'classifier':
    return 'classifier'
  if kind.startswith('transition_'):
    return f'features.transition{block}.{kind[len("transition_"):]}'
  if block and layer:
    return f'features.denseblock{block}.denselayer{layer}.{kind}'
  return f'features.{kind}'


def _keras_densenet_name(kind: str, block: int, layer: int) -> str:
  fixed = {'conv0': 'conv1/conv', 'norm0': 'conv1/bn', 'norm5': 'bn', 'classifier': 'predictions',
           'transition_norm': f'pool{block + 1}_bn', 'transition_conv': f'pool{block + 1}_conv'}
  if kind in fixed:
    return fixed[kind]
  suffix = {'norm1': '0_bn', 'conv1': '1_conv', 'norm2': '1_bn', 'conv2': '2_conv'}[kind]
  return f'conv{block + 1}_block{layer}_{suffix}'


TABLES: dict[str, dict[str, tuple[Row, ...]]] = {
    'caffe': {
        # BVLC models/bvlc_alexnet (Caffe names = the paper's names).
        'alexnet': (
            Row('conv1', 'conv1', _conv_oihw),
            Row('conv2', 'conv2', _conv_oihw),   # groups=2: weight (256, 48, 5, 5)
            Row('conv3', 'conv3', _conv_oihw),
            Row('conv4', 'conv4', _conv_oihw),   # groups=2
            Row('conv5', 'conv5', _conv_oihw),   # groups=2
            Row('fc6', 'fc6', _dense_oi_chw('conv5')),
            Row('fc7', 'fc7', _dense_oi),
            Row('fc8', 'fc8', _dense_oi),
        ),
        # DeepScale SqueezeNet v1.1 (layer names 'fire2/squeeze1x1', ...).
        'squeezenet1_1': _squeezenet_rows(_conv_oihw, 'conv1', lambda i, b: f'fire{i}/{b}',
                                          'conv10'),
    },
    'torch': {
        # torchvision.models.resnet18 / resnet50 (v1.5; timm's resnet50 uses the same names)
        # and densenet121 state_dicts.
        'resnet18': _resnet_rows((2, 2, 2, 2), bottleneck=False),
        'resnet50': _resnet_rows((3, 4, 6, 3), bottleneck=True),
        'densenet121': _densenet_rows(_conv_oihw_nobias, _bn_torch, _dense_oi,
                                      _torchvision_densenet_name),
        # torchvision.models.alexnet state_dict (layer = name without '.weight' / '.bias').
        'alexnet_torchvision': (
            Row('features.0', 'conv1', _conv_oihw),
            Row('features.3', 'conv2', _conv_oihw),
            Row('features.6', 'conv3', _conv_oihw),
            Row('features.8', 'conv4', _conv_oihw),
            Row('features.10', 'conv5', _conv_oihw),
            Row('classifier.1', 'fc6', _dense_oi_chw('conv5')),
            Row('classifier.4', 'fc7', _dense_oi),
            Row('classifier.6', 'fc8', _dense_oi),
        ),
        # torchvision.models.squeezenet1_1 state_dict.
        'squeezenet1_1': _squeezenet_rows(
            _conv_oihw, 'features.0',
            lambda i, b: f'features.{_TORCHVISION_FIRE_INDEX[i]}.{_TORCHVISION_FIRE_BRANCH[b]}',
            'classifier.1'),
    },
    'keras': {
        # keras.applications ResNet50 (v1, conv biases) and DenseNet121: the layout of the
        # ImageNet and RadImageNet .h5 files.
        'resnet50_keras': _keras_resnet50_rows(),
        'densenet121': _densenet_rows(_conv_hwio_nobias, _bn_keras, _dense_io,
                                      _keras_densenet_name),
        # Keras 2 SqueezeNet ports (rcmalli/keras-squeezenet); the reader normalises layer
        # names 'fire2_squeeze1x1' to 'fire2/squeeze1x1'.
        'squeezenet1_1': _squeezenet_rows(_conv_hwio, 'conv1', lambda i, b: f'fire{i}/{b}',
                                          'conv10'),
    },
}
TABLES['safetensors'] = TABLES['torch']  # same names (timm / Hugging Face exports)


# ---------------------------------------------------------------------------
# ViT-B/16 (medft.models.vit): timm state_dict names and big_vision / vit_jax .npz names
# ---------------------------------------------------------------------------

# Name of the one parameter of a top-level tensor (timm's `cls_token`, big_vision's `cls`):
# the readers file such a tensor as layer `<name>` holding `{TOKEN: array}`.
TOKEN = 'value'


def _token(flax_name: str, source_param: str) -> Callable[[dict, str, Params], dict]:
  """The class token (1, 1, d) or position embedding (1, 1 + patches, d), as they are."""
  def layout(p: dict, where: str, _: Params) -> dict:
    v = p[source_param]
    if v.ndim != 3 or v.shape[0] != 1:
      raise InputFileError(f'{where}: shape {v.shape}, expected (1, tokens, hidden).')
    return {flax_name: v}
  return layout


def _layernorm(weight: str) -> Callable[[dict, str, Params], dict]:
  """LayerNorm: PyTorch's `weight` or Flax's `scale`, and `bias`."""
  def layout(p: dict, where: str, _: Params) -> dict:
    return {'scale': _vector(p[weight], where), 'bias': _vector(p['bias'], where)}
  return layout


def _qkv_split(p: dict, where: str, _: Params) -> dict:
  """timm's fused attention input (3d, d) -> Flax query, key and value kernels (d, d)."""
  w, b = _matrix(p['weight'], where), _vector(p['bias'], where)
  if w.shape[0] != 3 * w.shape[1] or b.shape != (w.shape[0],):
    raise InputFileError(f'{where}: weight {w.shape} and bias {b.shape} are not a fused '
                         'query/key/value projection (3 * hidden, hidden).')
  d = w.shape[1]
  return {name: {'kernel': w[i * d:(i + 1) * d].T, 'bias': b[i * d:(i + 1) * d]}
          for i, name in enumerate(('query', 'key', 'value'))}


def _heads_in(p: dict, where: str, _: Params) -> dict:
  """Flax MultiHeadDotProductAttention query/key/value: (d, heads, hd) -> (d, heads * hd)."""
  k, b = p['kernel'], p['bias']
  if k.ndim != 3 or b.shape != k.shape[1:]:
    raise InputFileError(f'{where}: kernel {k.shape} and bias {b.shape}, expected (hidden, '
                         'heads, head_dim) and (heads, head_dim).')
  return {'kernel': k.reshape(k.shape[0], -1), 'bias': b.reshape(-1)}


def _heads_out(p: dict, where: str, _: Params) -> dict:
  """Flax MultiHeadDotProductAttention out: (heads, hd, d) -> (heads * hd, d)."""
  k = p['kernel']
  if k.ndim != 3:
    raise InputFileError(f'{where}: kernel {k.shape}, expected (heads, head_dim, hidden).')
  return {'kernel': k.reshape(-1, k.shape[-1]), 'bias': _vector(p['bias'], where)}


_timm_cls, _timm_pos = _token('cls', TOKEN), _token('pos_embedding', TOKEN)
_bv_cls, _bv_pos = _token('cls', TOKEN), _token('pos_embedding', 'pos_embedding')
_ln_torch, _ln_flax = _layernorm('weight'), _layernorm('scale')
_SOURCE_PARAMS.update({
    _timm_cls: (TOKEN,), _timm_pos: (TOKEN,), _bv_cls: (TOKEN,), _bv_pos: ('pos_embedding',),
    _ln_flax: ('scale', 'bias'), _heads_in: ('kernel', 'bias'), _heads_out: ('kernel', 'bias')})


def _vit_block(i: int) -> str:
  """Flax path of encoder block `i` (its tuning unit: a group of three blocks)."""
  first = i // 3 * 3
  return f'blocks{first}_{first + 2}/block{i}'


def _vit_rows(patch: Row, cls: Row, pos: Row, block: Callable[[int, str], tuple[Row, ...]],
              norm: Row, head: Row) -> tuple[Row, ...]:
  rows = [patch, cls, pos]
  for i in range(12):
    rows += block(i, _vit_block(i))
  return tuple(rows) + (norm, head)


# timm `vit_base_patch16_224` state_dict (safetensors on the Hugging Face hub, or .pth).
TABLES['torch']['vit_b16'] = _vit_rows(
    Row('patch_embed.proj', 'embed/patch', _conv_oihw),
    Row('cls_token', 'embed', _timm_cls),
    Row('pos_embed', 'embed', _timm_pos),
    lambda i, b: (Row(f'blocks.{i}.norm1', f'{b}/norm1', _ln_torch),
                  Row(f'blocks.{i}.attn.qkv', f'{b}/attn', _qkv_split),
                  Row(f'blocks.{i}.attn.proj', f'{b}/attn/out', _dense_oi),
                  Row(f'blocks.{i}.norm2', f'{b}/norm2', _ln_torch),
                  Row(f'blocks.{i}.mlp.fc1', f'{b}/mlp/fc1', _dense_oi),
                  Row(f'blocks.{i}.mlp.fc2', f'{b}/mlp/fc2', _dense_oi)),
    Row('norm', 'blocks9_11/norm', _ln_torch),
    Row('head', 'head', _dense_oi))
# big_vision / vit_jax `.npz` checkpoints (e.g. the AugReg files timm converts from).
_BV_BLOCK = 'Transformer/encoderblock_{}'
_BV_ATTN = _BV_BLOCK + '/MultiHeadDotProductAttention_1'
TABLES['npz'] = {'vit_b16': _vit_rows(
    Row('embedding', 'embed/patch', _conv_hwio),
    Row('cls', 'embed', _bv_cls),
    Row('Transformer/posembed_input', 'embed', _bv_pos),
    lambda i, b: (Row(f'{_BV_BLOCK.format(i)}/LayerNorm_0', f'{b}/norm1', _ln_flax),
                  Row(f'{_BV_ATTN.format(i)}/query', f'{b}/attn/query', _heads_in),
                  Row(f'{_BV_ATTN.format(i)}/key', f'{b}/attn/key', _heads_in),
                  Row(f'{_BV_ATTN.format(i)}/value', f'{b}/attn/value', _heads_in),
                  Row(f'{_BV_ATTN.format(i)}/out', f'{b}/attn/out', _heads_out),
                  Row(f'{_BV_BLOCK.format(i)}/LayerNorm_2', f'{b}/norm2', _ln_flax),
                  Row(f'{_BV_BLOCK.format(i)}/MlpBlock_3/Dense_0', f'{b}/mlp/fc1', _dense_io),
                  Row(f'{_BV_BLOCK.format(i)}/MlpBlock_3/Dense_1', f'{b}/mlp/fc2', _dense_io)),
    Row('Transformer/encoder_norm', 'blocks9_11/norm', _ln_flax),
    Row('head', 'head', _dense_io))}


def _head(arch: str) -> str:
  from medft.models import ARCHS
  return ARCHS[arch][1][-1]


def guess_arch(format: str, layers: Layers) -> tuple[str, str] | None:
  """`(format, arch)` of the table whose layer names (head aside) the file has, if any.

  The file's own format is tried first, then the others (a file saved in another naming).
  """
  candidates = [(format, a) for a in TABLES[format]] + [
      (f, a) for f in FORMATS if f != format for a in TABLES[f]]
  for fmt, arch in candidates:
    rows = TABLES[fmt][arch]
    body = {r.source for r in rows if r.unit != _head(arch)}
    if body <= set(layers) and (fmt != format or set(layers) <= {r.source for r in rows}):
      return fmt, arch
  return None


def to_flax(layers: Layers, format: str, arch: str, src: str) -> Params:
  """Applies `TABLES[format][arch]` to the layers read from `src`: the parameters (a network
  with BatchNorm also has statistics: `to_variables`)."""
  return to_variables(layers, format, arch, src)[0]


def to_variables(layers: Layers, format: str, arch: str, src: str) -> tuple[Params, Params]:
  """`(params, batch_stats)` of the layers read from `src` (`TABLES[format][arch]`);
  batch_stats is {} for a network without BatchNorm."""
  tables = TABLES[format]
  guess, looks_like = guess_arch(format, layers), ''
  if guess and guess != (format, arch):
    same_naming = guess[0] == format or {guess[0], format} == {'torch', 'safetensors'}
    looks_like = (f' The layout looks like {guess[1]}: pass --arch={guess[1]}.' if same_naming
                  else f' The layout looks like {guess[1]} in {guess[0]} naming.')
  if arch not in tables:
    raise ConfigError(f'{src}: --format={format} converts {", ".join(tables)}, not '
                      f'--arch={arch}.{looks_like}')
  rows, head = tables[arch], _head(arch)
  missing = [r.source for r in rows if r.source not in layers and r.unit != head]
  unexpected = sorted(set(layers) - {r.source for r in rows})
  if missing or unexpected:
    raise InputFileError(
        f'{src}: not a {format} file of {arch}.{looks_like} Layers the {arch} table expects '
        f'but the file lacks: {missing[:8] or "none"}; layers in the file the table does not '
        f'know: {unexpected[:8] or "none"}.')
  converted: Params = {}
  for row in rows:
    if row.source not in layers:
      log.info('%s: no %s (%s) in the file: the head is left out (merge with '
               'dont_load=[%r]).', src, row.source, row.unit, head)
      continue
    where = f'{src}: layer {row.source}'
    wanted = _SOURCE_PARAMS.get(row.layout, ('weight', 'bias'))
    found = layers[row.source]
    if sorted(found) != sorted(wanted):
      raise InputFileError(f'{where} holds {sorted(found)}, expected {list(wanted)}.')
    params = row.layout(found, where, converted)
    unit = converted.setdefault(row.unit, {})  # rows may share a path (ViT's cls and pos)
    for name, value in traverse_util.flatten_dict(params, sep='/').items():  # and nest (qkv)
      unit[name] = np.ascontiguousarray(value, dtype=np.float32)
  flat = traverse_util.flatten_dict(converted, sep='/')
  for path, value in flat.items():
    if not np.isfinite(value).all():
      raise InputFileError(f'{src}: {path} holds NaN or infinite values; the file is damaged.')
  stats = {k: v for k, v in flat.items() if k.rpartition('/')[2] in BATCH_STATS}
  params = {k: v for k, v in flat.items() if k not in stats}
  return (traverse_util.unflatten_dict(params, sep='/'),
          traverse_util.unflatten_dict(stats, sep='/'))


def to_source(params: Params, format: str, arch: str) -> dict[str, np.ndarray]:
  """`TABLES[format][arch]` inverted: Flax `params` as the source's flat tensors in its own
  names and layout (`features.0.weight`, ...), what `to_flax` reads back to `params` exactly.
  A `ConfigError` when the format has no table of `arch`."""
  tables = TABLES.get(format, {})
  writable = [a for a, rows in tables.items() if all(hasattr(r.layout, 'inverse') for r in rows)]
  if arch not in writable:
    raise ConfigError(f'arch={arch} cannot be written in {format} names (medft writes '
                      f'{", ".join(writable) or "no architecture"} in them).')
  flat = traverse_util.flatten_dict(params, sep='/')
  out = {}
  for row in tables[arch]:
    unit = {k[len(row.unit) + 1:]: v for k, v in flat.items() if k.startswith(row.unit + '/')}
    if not unit:
      continue
    for name, value in row.layout.inverse(unit, params).items():
      out[f'{row.source}.{name}'] = np.ascontiguousarray(value, dtype=np.float32)
  return out


# ---------------------------------------------------------------------------
# Checking the converted tree against the model
# ---------------------------------------------------------------------------


def check_fits(params: Params, meta: Meta, src: str, model_kwargs: dict | None = None,
               batch_stats: Params | None = None) -> None:
  """Raises a readable ValueError unless `params` (and `batch_stats`, when given) fit
  `get_model(meta.arch, ...)`'s tree.

  The head may be absent (a "notop" file); everything else must be there with the shape the
  model builds for `meta.input_size` (and `model_kwargs`, e.g. `width` in tests).
  """
  import jax
  import jax.numpy as jnp

  from medft.models import get_model
  module, units = get_model(meta.arch, max(1, meta.num_source_classes), **(model_kwargs or {}))
  x = jax.ShapeDtypeStruct((1, *meta.input_size, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  has_head = units[-1] in params
  missing, unexpected, misshaped = [], [], []
  trees = [(params, variables['params'], '')]
  if batch_stats is not None:
    trees.append((batch_stats, variables.get('batch_stats', {}), 'batch_stats: '))
  for tree, expected, label in trees:
    flat_expected = traverse_util.flatten_dict(expected, sep='/')
    flat = traverse_util.flatten_dict(tree, sep='/')
    missing += sorted(label + k for k in flat_expected
                      if k not in flat and (has_head or not k.startswith(units[-1] + '/')))
    unexpected += sorted(label + k for k in flat if k not in flat_expected)
    misshaped += sorted(f'{label}{k}: converted {flat[k].shape}, {meta.arch} expects '
                        f'{tuple(flat_expected[k].shape)}' for k in flat
                        if k in flat_expected and flat[k].shape != tuple(flat_expected[k].shape))
  if missing or unexpected or misshaped:
    raise InputFileError(describe_misfit(
        f'{src}: the converted weights do not fit {meta.arch} '
        f'(input {meta.input_size[0]}x{meta.input_size[1]}):', missing, unexpected, misshaped,
        'The file holds another variant of the network (channel widths, groups or input size '
        'differ); check --arch.', limit=8, sep='; '))


# ---------------------------------------------------------------------------
# Reading and converting
# ---------------------------------------------------------------------------


def _digests(path: Path) -> tuple[str, str]:
  sha1, sha256 = hashlib.sha1(), hashlib.sha256()
  with path.open('rb') as f:
    for chunk in iter(lambda: f.read(1 << 22), b''):
      sha1.update(chunk)
      sha256.update(chunk)
  return sha1.hexdigest(), sha256.hexdigest()


def read_weights(src: str | Path, format: str, arch: str, *, model_kwargs: dict | None = None,
                 input_size: tuple[int, int] | None = None, convention: str = ''
                 ) -> tuple[Params, Meta]:
  """Reads `src` and returns `(params, meta)` in medft's layout, checked against the model
  (`read_variables` also returns the BatchNorm statistics of networks that have them)."""
  params, _, meta = read_variables(src, format, arch, model_kwargs=model_kwargs,
                                   input_size=input_size, convention=convention)
  return params, meta


def read_variables(src: str | Path, format: str, arch: str, *,
                   model_kwargs: dict | None = None, input_size: tuple[int, int] | None = None,
                   convention: str = '') -> tuple[Params, Params, Meta]:
  """Reads `src` and returns `(params, batch_stats, meta)` in medft's layout, checked against
  the model; batch_stats is {} for a network without BatchNorm.

  `convention` names another input convention the weights were trained with than the
  format's own (`reader.CONVENTIONS`, e.g. `radimagenet` for the RadImageNet Keras files,
  which keras.applications' `preprocess_input` does not describe).

  `input_size` overrides the source's training input size (it sets the fc6 shape of the
  Caffe AlexNet); `model_kwargs` go to `get_model` for the check (tests use `width`).
  """
  from medft.weights import caffe, keras, npz, safetensors, torch
  readers = {'caffe': caffe, 'torch': torch, 'safetensors': safetensors, 'keras': keras,
             'npz': npz}
  if format not in readers:
    raise ConfigError(f'--format={format!r} is unknown; choose one of {", ".join(FORMATS)}.')
  from medft.models import ARCHS
  if arch not in ARCHS:
    raise ConfigError(f'--arch={arch!r} is unknown; choose one of {", ".join(ARCHS)}.')
  path = Path(src)
  if not path.is_file():
    raise MissingInputError(f'--src={src}: no such file.')
  reader = readers[format]
  conventions = getattr(reader, 'CONVENTIONS', {})
  if convention and arch not in conventions.get(convention, {}):
    known = [f'{c} ({", ".join(a)})' for c, a in conventions.items()]
    raise ConfigError(f'--convention={convention!r} is not known for --format={format} '
                      f'--arch={arch}; known: {"; ".join(known) or "none"}. Leave it out for '
                      "the format's own convention.")
  sha1, sha256 = _digests(path)
  layers = reader.read_layers(path)
  source_dtype = ','.join(sorted({str(np.asarray(v).dtype) for d in layers.values()
                                  for v in d.values()}))
  # float32 whatever the source dtype
  params, batch_stats = to_variables(layers, format, arch, str(path))
  if format == 'caffe':
    caffe.log_provenance(path, sha1, arch)
  if arch == 'squeezenet1_1' and format != 'keras':
    log.info('%s: the %s SqueezeNet pools in ceil mode; build squeezenet1_1 with '
             'ceil_mode=True to reproduce its activations exactly.', path, format)
  head = params.get(_head(arch))
  meta = Meta(arch=arch, source_format=format, source_file=path.name, source_sha256=sha256,
              num_source_classes=int(head['kernel'].shape[-1]) if head else 0,
              source_dtype=source_dtype,
              **(conventions[convention][arch] if convention else reader.INPUT[arch]))
  if input_size is not None:
    meta.input_size = tuple(input_size)
  fit = getattr(ARCHS[arch][0], 'fit_input_size', None)  # ViT: position grid <-> input size
  if fit is not None:
    params, size = fit(params, input_size, str(path))
    meta.input_size = tuple(size)
  check_fits(params, meta, str(path), model_kwargs, batch_stats)
  if source_dtype != 'float32':
    log.info('%s: source tensors are %s; converted to float32 (recorded in meta.json as '
             'source_dtype).', path, source_dtype)
  log.info('%s: %d parameter arrays converted to %s (%s, %d source classes).', path,
           len(traverse_util.flatten_dict(params)), arch, format, meta.num_source_classes)
  return params, batch_stats, meta


def convert(src: str | Path, format: str, arch: str, out: str | Path, *,
            overwrite: bool = False, model_kwargs: dict | None = None,
            input_size: tuple[int, int] | None = None, convention: str = '') -> Path:
  """Converts `src` and writes the artifact to `out`; returns its path."""
  out = Path(out)
  if out.exists() and not overwrite:
    raise NotOursError(f'--out={out} already exists; choose another folder or remove it.')
  if out.exists():  # checked before reading --src: a refused --out costs nothing
    refuse_unless_artifact(out)
  params, batch_stats, meta = read_variables(src, format, arch, model_kwargs=model_kwargs,
                                             input_size=input_size, convention=convention)
  return save_artifact(out, params, meta, overwrite=overwrite, batch_stats=batch_stats)


def main(argv: Sequence[str] | None = None) -> int:
  from medft.models import ARCHS
  parser = argparse.ArgumentParser(
      prog='python -m medft.weights.convert', description=__doc__.split('\n\n')[0])
  parser.add_argument('--src', required=True, help='the weights file to convert')
  parser.add_argument('--format', required=True, choices=FORMATS)
  parser.add_argument('--arch', required=True, choices=sorted(ARCHS))
  parser.add_argument('--out', required=True, help='folder to create for the artifact')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')
  parser.add_argument('--input_size', type=int, default=0, metavar='SIDE',
                      help="network input side in pixels (default: the source's own)")
  parser.add_argument('--convention', default='', metavar='NAME',
                      help="the input convention the weights were trained with when it is not "
                           "the format's own: radimagenet (RadImageNet's Keras ResNet50 / "
                           'DenseNet121: BGR, 0..255 minus the ImageNet BGR mean, over 255)')
  args = parser.parse_args(argv)
  if args.input_size < 0:
    parser.error(f'--input_size={args.input_size}: expected a side in pixels > 0 (or leave it '
                 "out for the source's own input size).")
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  try:
    out = convert(args.src, args.format, args.arch, args.out, overwrite=args.overwrite,
                  input_size=(args.input_size,) * 2 if args.input_size > 0 else None,
                  convention=args.convention)
  except (ValueError, OSError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
