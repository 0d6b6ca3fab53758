"""`load(cfg)`: prepare a dataset once, then read it as unit-level train/validation/test splits.

Each builder writes one TFDS split ('full', array_record) whose metadata holds the id and
unit of every example. Train/validation/test are chosen here, at read time, by unit and
deterministically from `split_seed` (see `medft.data.splits`), and the training fraction is
applied to the training units only, so the prepared data never depends on the seed or the
fraction. `synthetic_<app>` / `synthetic_<builder>` names write a synthetic twin into
`<data_dir>/synthetic/<builder>-n<n>-seed<seed>/raw` once and read it through the real builder.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from medft import errors
from medft.data import splits as splits_lib
from medft.data import synthetic
from medft.data.base import FULL_SPLIT, ManualBuilder, check_manual_dir
from medft.data.cad_pe import CadPe
from medft.data.cubs import Cubs, config_name
from medft.data.cvc_clinicdb import CvcClinicdb
from medft.data.frames_folder import FramesFolder, FramesFolderConfig
from medft.data.fumpe import Fumpe
from medft.data.kvasir_seg import KvasirSeg
from medft.data.readers import decode_image_bytes
from medft.errors import ConfigError, InputFileError

BUILDERS: dict[str, type[ManualBuilder]] = {
    cls.name: cls for cls in (Cubs, CvcClinicdb, KvasirSeg, CadPe, Fumpe, FramesFolder)
}
# The builder whose layout `synthetic_<app>` writes.
TWIN_BUILDERS = {'cimt': 'cubs', 'polyp': 'cvc_clinicdb', 'pe': 'cad_pe', 'frames': 'frames_folder'}
DEFAULTS: dict[str, Any] = {
    'name': None,
    'manual_dir': None,
    'data_dir': None,
    'fraction': 1.0,
    # What a fraction counts: the split unit's name (subjects, videos, ...) or frames/images
    # (examples); '' = the split unit. See `medft.data.splits`.
    'fraction_unit': '',
    'split_seed': 0,
    'val_share': 0.2,
    'test_share': 0.2,
    # cubs: annotator whose profiles are read (A1, A1', A2, A3).
    'annotator': 'A1',
    # frames_folder: class folder -> integer label, and regex picking the unit from a stem.
    'classes': None,
    'unit_regex': None,
    # synthetic twins: number of examples (None: per-app default) and generator seed.
    'synthetic_n': None,
    'synthetic_seed': 0,
}


def default_data_dir() -> Path:
  return Path(os.environ.get('MEDFT_DATA_DIR', '~/.cache/medft/tensorflow_datasets')).expanduser()


# ---------------------------------------------------------------------------------------------
# Reading: lazily opened source, split views, the Dataset
# ---------------------------------------------------------------------------------------------


class _Source:
  """The prepared 'full' split, opened on first use; pickles without its open files."""

  def __init__(self, builder: ManualBuilder):
    self._builder_args = (type(builder), builder.data_dir_root, builder.builder_config)
    self._encoded = dict(builder.info.metadata.get('encoded_images', {}))
    self._data = None

  def __getstate__(self):
    return {**self.__dict__, '_data': None}

  def __getitem__(self, index: int) -> dict[str, Any]:
    if self._data is None:
      cls, data_dir, config = self._builder_args
      builder = cls(data_dir=data_dir, config=config, file_format='array_record')
      self._data = builder.as_data_source(split=FULL_SPLIT)
    return self._to_python(self._data[int(index)])

  def _to_python(self, example: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in example.items():
      if key in self._encoded:
        value = decode_image_bytes(value, self._encoded[key])
      elif isinstance(value, bytes):
        value = value.decode('utf-8')
      elif isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        value = value.item()
      out[key] = value
    return out


class SplitView(collections.abc.Sequence):
  """Random-access view of one split: `len(view)`, `view[i]` -> dict of numpy arrays/scalars."""

  def __init__(self, source: _Source, indices: np.ndarray, ids: list[str], units: list[str]):
    self._source = source
    self.indices = np.asarray(indices, dtype=np.int64)
    self.ids = list(ids)
    self.units = list(units)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i):
    if isinstance(i, slice):
      picked = range(len(self))[i]
      return SplitView(self._source, self.indices[i], [self.ids[j] for j in picked],
                       [self.units[j] for j in picked])
    i = int(i)
    if not -len(self) <= i < len(self):
      raise IndexError(f'index {i} out of range for a split of {len(self)} examples')
    return self._source[self.indices[i]]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A loaded dataset: `app`, `splits` ({'train', 'validation', 'test'} -> SplitView), `info`."""

  app: str
  splits: dict[str, SplitView]
  info: dict[str, Any]

  def units(self, split: str) -> list[str]:
    """Unit id of every example of `split`, in example order (for bootstrap over units)."""
    return list(self.splits[split].units)


# ---------------------------------------------------------------------------------------------
# load()
# ---------------------------------------------------------------------------------------------


def _read_config(cfg: Any) -> dict[str, Any]:
  raw = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
  unknown = sorted(set(raw) - set(DEFAULTS))
  if unknown:
    raise ConfigError(f'Unknown data config fields {unknown}; known: {sorted(DEFAULTS)}.')
  merged = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
  if not merged['name']:
    raise ConfigError(f'The data config needs a name: one of {dataset_names()}.')
  # Checked before anything is read or prepared, so a typo costs no preparation time.
  if not 0 < float(merged['fraction']) <= 1:
    raise ConfigError(f'data.fraction={merged["fraction"]} is outside (0, 1]: it is the share of '
                      'training subjects kept; pass e.g. fraction=0.25, 0.5 or 1.0.')
  for key in ('val_share', 'test_share'):
    if not 0 <= float(merged[key]) < 1:
      raise ConfigError(f'data.{key}={merged[key]} is outside [0, 1); pass e.g. {key}=0.2.')
  if merged['fraction_unit']:
    splits_lib.check_fraction_unit(merged['fraction_unit'])
  return merged


def dataset_names() -> list[str]:
  """Every name `load` accepts."""
  twins = [f'synthetic_{n}' for n in [*TWIN_BUILDERS, *synthetic_layouts()]]
  return sorted(BUILDERS) + twins


def synthetic_layouts() -> list[str]:
  return [layout for layouts in synthetic.APP_LAYOUTS.values() for layout in layouts]


def _make_builder(builder_name: str, cfg: dict[str, Any], data_dir: Path) -> ManualBuilder:
  cls = BUILDERS[builder_name]
  config = None
  if cls is Cubs:
    config = config_name(cfg['annotator'])
  elif cls is FramesFolder:
    if not cfg['classes']:
      raise ConfigError(
          'frames_folder needs config field `classes`, a class folder -> label map such as '
          "{'informative': 1, 'non_informative': 0}."
      )
    config = FramesFolderConfig(classes=dict(cfg['classes']), unit_regex=cfg['unit_regex'])
  return cls(data_dir=str(data_dir), config=config, file_format='array_record')


def _resolve(cfg: dict[str, Any]) -> tuple[str, Path | None, Path, dict[str, Any] | None]:
  """(builder name, manual dir, data dir, synthetic description or None) for a config."""
  name = cfg['name']
  data_dir = Path(cfg['data_dir']).expanduser() if cfg['data_dir'] else default_data_dir()
  if name in BUILDERS:
    manual = Path(cfg['manual_dir']).expanduser() if cfg['manual_dir'] else None
    return name, manual, data_dir, None
  target = name.removeprefix('synthetic_')
  builder_name = TWIN_BUILDERS.get(target, target)
  if not name.startswith('synthetic_') or builder_name not in BUILDERS:
    raise ConfigError(f'Unknown dataset {name!r}; use one of {dataset_names()}.')
  if cfg['manual_dir']:
    raise ConfigError(f'{name!r} writes its own raw data; remove manual_dir={cfg["manual_dir"]!r}.')
  app = BUILDERS[builder_name].APP
  n = int(cfg['synthetic_n'] or synthetic.DEFAULT_N[app])
  seed = int(cfg['synthetic_seed'])
  root = data_dir / 'synthetic' / f'{builder_name}-n{n}-seed{seed}'
  if builder_name == 'frames_folder':
    cfg['classes'] = cfg['classes'] or dict(synthetic.FRAMES_CLASSES)
    cfg['unit_regex'] = cfg['unit_regex'] or synthetic.FRAMES_UNIT_REGEX
  raw = synthetic.write_cached(app, root / 'raw', n=n, seed=seed, layout=builder_name)
  return builder_name, raw, root / 'tfds', {'app': app, 'layout': builder_name, 'n': n,
                                            'seed': seed, 'raw_dir': str(raw)}


def prepare(cfg: Any) -> ManualBuilder:
  """Prepares the dataset of `cfg` if needed (once per data_dir) and returns its builder."""
  cfg = _read_config(cfg)
  builder_name, manual_dir, data_dir, _ = _resolve(cfg)
  return _prepared_builder(builder_name, cfg, manual_dir, data_dir)


def _prepared_builder(builder_name, cfg, manual_dir, data_dir) -> ManualBuilder:
  builder = _make_builder(builder_name, cfg, data_dir)
  # Same test as `builder.is_prepared()`, without its warning about a folder not yet made.
  if not (Path(builder.data_dir) / 'dataset_info.json').is_file():
    check_manual_dir(builder.name, manual_dir, builder.REQUIRED,
                     builder.MANUAL_DOWNLOAD_INSTRUCTIONS, prepared_dir=builder.data_dir)
    # TFDS writes into an `incomplete.*` folder and renames it only after success, so a
    # failed preparation leaves nothing that a later run would read.
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    builder = _make_builder(builder_name, cfg, data_dir)
  elif manual_dir is not None:
    prepared_from = builder.info.metadata.get('source_dir')
    if prepared_from and Path(prepared_from) != manual_dir.resolve():
      logging.warning('%s in %s was prepared from %s, not from manual_dir=%s; delete %s to '
                      'prepare it again.', builder.name, builder.data_dir, prepared_from,
                      manual_dir, builder.data_dir)
  return builder


def load(cfg: Any) -> Dataset:
  """Loads `cfg.name` as unit-level train/validation/test splits (see the module docstring)."""
  cfg = _read_config(cfg)
  builder_name, manual_dir, data_dir, twin = _resolve(cfg)
  builder = _prepared_builder(builder_name, cfg, manual_dir, data_dir)
  meta = builder.info.metadata
  ids, units = list(meta['ids']), list(meta['units'])
  n_full = builder.info.splits[FULL_SPLIT].num_examples
  if len(ids) != n_full:
    raise InputFileError(f'{builder.data_dir}: metadata lists {len(ids)} examples, the data has '
                         f'{n_full}; delete this folder and prepare again.')
  seed, fraction = int(cfg['split_seed']), float(cfg['fraction'])
  by_split, kept_ids, counts = _assign(cfg, ids, units)
  source = _Source(builder)
  views = {}
  for split, kept in by_split.items():
    kept_set = set(kept)
    indices = [i for i, unit in enumerate(units) if unit in kept_set
               and (split != 'train' or kept_ids is None or ids[i] in kept_ids)]
    share = {'validation': cfg['val_share'], 'test': cfg['test_share']}.get(split, 1.0)
    if not indices and share > 0:
      raise InputFileError(
          f'Split {split!r} of {builder.name} is empty (fraction={fraction}, '
          f'split_seed={seed}); the dataset has {len(set(units))} units.'
      )
    views[split] = SplitView(source, np.asarray(indices), [ids[i] for i in indices],
                             [units[i] for i in indices])
  info = {
      'name': cfg['name'],
      'builder': builder.name,
      'config': builder.builder_config.name if builder.builder_config else None,
      'version': str(builder.version),
      'app': meta['app'],
      'split_seed': seed,
      'val_share': float(cfg['val_share']),
      'test_share': float(cfg['test_share']),
      'fraction': fraction,
      'units': {split: list(kept) for split, kept in by_split.items()},
      'num_examples': {split: len(view) for split, view in views.items()},
      'num_train_units_before_fraction': counts['train_units'],
      # The unit a fraction counts, and how many of them training had and kept.
      'fraction_unit': cfg['fraction_unit'] or 'units',
      'fraction_units_before': counts['before'],
      'fraction_units_kept': counts['kept'],
      'source_dir': meta.get('source_dir'),
      'prepared_dir': str(builder.data_dir),
      'synthetic': twin,
  }
  return Dataset(app=meta['app'], splits=views, info=info)


def _assign(cfg: dict[str, Any], ids: list[str], units: list[str]
            ) -> tuple[dict[str, list[str]], set[str] | None, dict[str, int]]:
  """Units of each split with the training fraction applied; the kept training example ids
  (None when the fraction counts split units); counts: training units before the fraction,
  and fraction units before and kept."""
  seed, fraction = int(cfg['split_seed']), float(cfg['fraction'])
  unit = cfg['fraction_unit'] or 'units'
  by_split = splits_lib.split_units(units, seed, float(cfg['val_share']),
                                    float(cfg['test_share']))
  train = by_split['train']
  if unit not in splits_lib.EXAMPLE_UNITS:
    by_split['train'] = splits_lib.keep_fraction(train, fraction, seed, unit)
    return by_split, None, {'train_units': len(train), 'before': len(train),
                            'kept': len(by_split['train'])}
  train_set = set(train)
  train_ids = [x for x, u in zip(ids, units) if u in train_set]
  kept_ids = set(splits_lib.keep_fraction(train_ids, fraction, seed, unit))
  by_split['train'] = sorted({u for x, u in zip(ids, units) if x in kept_ids})
  return by_split, kept_ids, {'train_units': len(train), 'before': len(train_ids),
                              'kept': len(kept_ids)}


def study_fractions(cfg: Any, fractions: Sequence[float], counts: Sequence[str] = ()
                    ) -> list[float]:
  """Every training fraction of a study, checked on the data before the first run trains.

  `counts` (`sweep.train_units`) become the fractions that keep exactly that many training
  units (`splits.count_fraction`). Every fraction is applied to this dataset's split; those
  that keep no training unit are refused together in one ConfigError naming the counts.
  """
  cfg = _read_config(cfg)
  builder_name, manual_dir, data_dir, _ = _resolve(cfg)
  meta = _prepared_builder(builder_name, cfg, manual_dir, data_dir).info.metadata
  ids, units = list(meta['ids']), list(meta['units'])
  unit = cfg['fraction_unit'] or 'units'
  n_train = _assign({**cfg, 'fraction': 1.0}, ids, units)[2]['before']
  wanted = sorted({*map(float, fractions),
                   *(splits_lib.count_fraction(k, n_train, unit) for k in counts)})
  refused = []
  for fraction in wanted:
    try:
      _assign({**cfg, 'fraction': fraction}, ids, units)
    except errors.ConfigError as e:
      refused.append(str(e))
  if refused:
    raise errors.ConfigError(f'sweep.fractions on {cfg["name"]} ({n_train} training {unit}): '
                             + ' '.join(refused) + ' Drop or raise these fractions, or use '
                             'sweep.train_units=1 for a single-unit arm.')
  return wanted
