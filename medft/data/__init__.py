"""Datasets of the four applications as TFDS builders, read without TensorFlow.

    from medft import data
    ds = data.load({'name': 'synthetic_cimt', 'fraction': 0.5, 'split_seed': 0})
    ds.app, len(ds.splits['train']), ds.splits['train'][0]['image'].shape, ds.units('test')

Builders: cubs (CIMT), cvc_clinicdb and kvasir_seg (polyps), cad_pe and fumpe (PE),
frames_folder (frame classification); `synthetic_<app>` or `synthetic_<builder>` reads a
synthetic twin through the same builder. Your own data: manifest_classification,
manifest_detection, manifest_volumes and manifest_cimt read the files a CSV/JSON-lines manifest
lists (`data.manifest`; `medft.data.manifest` for the format, `manifest_builders` for the
builders). See `medft.data.dataset` for splits and fractions,
`medft.data.schema` for the fields of a data config.
"""

import importlib

# Loaded on first use (PEP 562): `medft.data.schema` (what a config file imports) needs no TFDS.
_LAZY = {
    'ManualDirError': 'medft.data.base',
    **{name: 'medft.data.dataset' for name in (
        'BUILDERS', 'Dataset', 'SplitView', 'dataset_names', 'default_data_dir', 'load',
        'prepare', 'study_fractions')},
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
  if name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
  else:  # a submodule, e.g. medft.data.dataset
    try:
      value = importlib.import_module(f'{__name__}.{name}')
    except ModuleNotFoundError as e:
      if e.name != f'{__name__}.{name}':
        raise  # the submodule exists but a package it needs is missing
      raise AttributeError(f'module {__name__} has no attribute {name!r}') from None
  globals()[name] = value
  return value
