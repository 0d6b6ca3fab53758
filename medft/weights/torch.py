"""Reads a PyTorch state_dict (`.pth` / `.pt`), e.g. torchvision's `alexnet-owt-7be5be79.pth`.

Loaded with `torch.load(..., weights_only=True)`, which refuses pickled code: a file that
holds a whole pickled model (rather than its `state_dict()`) is rejected, never executed.
PyTorch is an optional extra (`pip install "medft[torch]"`); a `.safetensors` copy of the
same weights converts without it (`--format=safetensors`).

Names are torchvision's (`features.0.weight`, `classifier.6.bias`, ...); tensors keep
PyTorch's layout: conv (out, in / groups, kh, kw), linear (out, in). Input convention of
torchvision's ImageNet weights (`INPUT`): RGB, 0..1 pixels, ImageNet mean/std, 224x224. The
classifier (`classifier.6` of AlexNet, `classifier.1` of SqueezeNet) has 1000 ImageNet
classes; `Meta.num_source_classes` records it. torchvision's SqueezeNet pools in ceil mode:
build `squeezenet1_1` with `ceil_mode=True` to reproduce its activations exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medft.errors import InputFileError, MissingPackageError

_TORCHVISION_INPUT = dict(channel_order='RGB', scale=1.0, mean=(0.485, 0.456, 0.406),
                          std=(0.229, 0.224, 0.225), input_size=(224, 224))
# timm's ViT-B/16 (AugReg, `vit_base_patch16_224`): inputs in [-1, 1] = 0..1 minus 0.5 over 0.5.
_TIMM_VIT_INPUT = dict(channel_order='RGB', scale=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                       input_size=(224, 224))
INPUT = {'alexnet_torchvision': _TORCHVISION_INPUT, 'squeezenet1_1': _TORCHVISION_INPUT,
         'vit_b16': _TIMM_VIT_INPUT}
# torchvision's ResNet-18/50 and DenseNet-121 ImageNet weights (timm's resnet50 too).
INPUT.update({arch: _TORCHVISION_INPUT for arch in ('resnet18', 'resnet50', 'densenet121')})

# Keys under which training scripts commonly nest the state_dict in a checkpoint.
_NESTED_KEYS = ('state_dict', 'model_state_dict', 'model')


def import_torch():
  try:
    import torch
  except ImportError:
    raise MissingPackageError('--format=torch needs PyTorch, an optional extra of medft: '
                              'pip install "medft[torch]" (or pip install torch). A '
                              '.safetensors copy of the weights converts without it '
                              '(--format=safetensors).') from None
  return torch


def group_by_layer(tensors: dict[str, np.ndarray], src: Path) -> dict[str, dict[str, np.ndarray]]:
  """`{'features.0.weight': w}` -> `{'features.0': {'weight': w}}`; strips DataParallel's
  `module.` prefix. A top-level tensor (timm's `cls_token`) is a layer of its own holding
  `{'value': tensor}` (`convert.TOKEN`)."""
  if tensors and all(k.startswith('module.') for k in tensors):
    tensors = {k[len('module.'):]: v for k, v in tensors.items()}
  layers: dict[str, dict[str, np.ndarray]] = {}
  for name, value in tensors.items():
    layer, _, param = name.rpartition('.')
    if not name or not param:
      raise InputFileError(f'{src}: tensor name {name!r} is not "<layer>.<param>"; expected a '
                           f'torchvision-style state_dict.')
    layers.setdefault(layer or name, {})[param if layer else 'value'] = value
  if not layers:
    raise InputFileError(f'{src}: holds no tensors; expected a state_dict.')
  return layers


def read_layers(path: Path) -> dict[str, dict[str, np.ndarray]]:
  """`{layer: {'weight': ..., 'bias': ...}}` from a state_dict file, PyTorch layout."""
  torch = import_torch()
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises pickle, zip and runtime errors for bad files
    raise InputFileError(f'{path}: cannot be read as a PyTorch state_dict with weights_only=True '
                         f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}). The '
                         f'file is truncated, not a torch.save file, or holds pickled code (a '
                         f'whole model): save model.state_dict() and convert that.') from None
  for key in _NESTED_KEYS:
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict):
    raise InputFileError(f'{path}: holds a {type(obj).__name__}, expected a state_dict (a dict of '
                         f'tensors).')
  tensors = {}
  for name, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise InputFileError(f'{path}: entry {name!r} is a {type(value).__name__}, expected a '
                           'tensor.')
    if value.is_floating_point():
      tensors[str(name)] = value.detach().to(torch.float32).numpy()
  return group_by_layer(tensors, path)
