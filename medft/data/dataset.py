"""`load(cfg)`: prepare a dataset once, then read it as unit-level train/validation/test splits.

Each builder writes one TFDS split ('full', array_record) whose metadata holds the id and
unit of every example. Train/validation/test are chosen here, at read time, by unit and
deterministically from `split_seed` (see `medft.data.splits`), and the training fraction is
applied to the training units only, so the prepared data never depends on the seed or the
fraction. `synthetic_<app>` / `synthetic_<builder>` names write a synthetic twin into
`<data_dir>/synthetic/<builder>-n<n>-seed<seed>/raw` once and read it through the real builder.

Prepared data follows its source: beside each prepared copy, `medft_source.json` holds a
fingerprint of the download folder it came from (every file's relative name, size and
modification time). When the download folder no longer matches, the dataset is prepared
again into a fresh temporary folder, which then replaces the old copy by renames, so a
reader never sees half a copy; the log says so. A copy prepared before fingerprints existed
gets one recorded on first use. A damaged copy (unreadable dataset_info.json or array_record
files) is an `InputFileError` naming the file and saying to delete the copy.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from medft import errors, files, progress
from medft.data import schema, synthetic
from medft.data import splits as splits_lib
from medft.data.base import BUILDERS, FULL_SPLIT, ManualBuilder, check_manual_dir
from medft.data.readers import decode_image_bytes
from medft.errors import ConfigError, InputFileError

FINGERPRINT_FILE = 'medft_source.json'

# The builder whose layout `synthetic_<app>` writes.
TWIN_BUILDERS = {'cimt': 'cubs', 'polyp': 'cvc_clinicdb', 'pe': 'cad_pe', 'frames': 'frames_folder'}


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
    # A classification builder's class name -> label map (frames_folder, manifest), or None.
    classes = builder.info.metadata.get('classes')
    self.classes = {str(k): int(v) for k, v in dict(classes).items()} if classes else None
    self._data = None
    self.prepared_dir = str(builder.data_dir)

  def __getstate__(self):
    return {**self.__dict__, '_data': None}

  def __getitem__(self, index: int) -> dict[str, Any]:
    if self._data is None:
      cls, data_dir, config = self._builder_args
      builder = cls(data_dir=data_dir, config=config, file_format='array_record')
      with _damaged_copy(self.prepared_dir):
        self._data = builder.as_data_source(split=FULL_SPLIT)
    with _damaged_copy(self.prepared_dir):
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

  @property
  def classes(self) -> dict[str, int] | None:
    """The dataset's class name -> label map (its builder's metadata `classes`), or None."""
    return self._source.classes

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
  """The data config with its defaults (`medft.data.schema`), its values checked."""
  merged = schema.read(cfg)
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
  return BUILDERS.names() + twins


def synthetic_layouts() -> list[str]:
  return [layout for layouts in synthetic.APP_LAYOUTS.values() for layout in layouts]


def _reads_manifest(name: str) -> bool:
  """Whether dataset `name` is a manifest dataset (`medft.data.manifest_builders`)."""
  return name in BUILDERS and getattr(BUILDERS[name], 'READS_MANIFEST', False)


def _check_no_manifest(cfg: dict[str, Any]) -> None:
  """The manifest fields, refused for a dataset that would ignore them."""
  manifests = ', '.join(n for n in BUILDERS.names() if _reads_manifest(n))
  if cfg['manifest']:
    raise ConfigError(f'data.manifest={cfg["manifest"]!r} is read only by the manifest datasets '
                      f'({manifests}), not by data.name={cfg["name"]!r}; set data.name to one of '
                      'them, or remove data.manifest.')
  if cfg['split_by'] != 'subject':
    raise ConfigError(f'data.split_by={cfg["split_by"]!r} applies to the manifest datasets '
                      f'({manifests}); {cfg["name"]!r} splits by its own unit. Remove it.')


def app_of(name: str) -> str | None:
  """The application whose examples dataset `name` yields; None for an unknown name (which
  `load` refuses naming the choices). Prepares nothing."""
  if name in BUILDERS:
    return BUILDERS[name].APP
  target = name.removeprefix('synthetic_')
  builder_name = TWIN_BUILDERS.get(target, target)
  if name.startswith('synthetic_') and builder_name in BUILDERS and not _reads_manifest(
      builder_name):
    return BUILDERS[builder_name].APP
  return None


def _make_builder(builder_name: str, cfg: dict[str, Any], data_dir: Path) -> ManualBuilder:
  cls = BUILDERS[builder_name]
  return cls(data_dir=str(data_dir), config=cls.config_from(cfg), file_format='array_record')


def _resolve(cfg: dict[str, Any]) -> tuple[str, Path | None, Path, dict[str, Any] | None]:
  """(builder name, manual dir, data dir, synthetic description or None) for a config."""
  name = cfg['name']
  data_dir = Path(cfg['data_dir']).expanduser() if cfg['data_dir'] else default_data_dir()
  if _reads_manifest(name):  # paths relative to the manifest: its folder is the manual dir
    from medft.data.manifest_builders import manifest_root  # noqa: PLC0415
    return name, manifest_root(cfg), data_dir, None
  _check_no_manifest(cfg)
  if name in BUILDERS:
    manual = Path(cfg['manual_dir']).expanduser() if cfg['manual_dir'] else None
    return name, manual, data_dir, None
  target = name.removeprefix('synthetic_')
  builder_name = TWIN_BUILDERS.get(target, target)
  if (not name.startswith('synthetic_') or builder_name not in BUILDERS
      or _reads_manifest(builder_name)):  # a manifest dataset has no synthetic twin
    raise ConfigError(f'Unknown dataset {name!r}; use one of {dataset_names()}.')
  if cfg['manual_dir']:
    raise ConfigError(f'{name!r} writes its own raw data; remove manual_dir={cfg["manual_dir"]!r}.')
  app = BUILDERS[builder_name].APP
  n = int(cfg['synthetic_n'] or synthetic.DEFAULT_N[app])
  seed = int(cfg['synthetic_seed'])
  k = int(cfg['synthetic_classes'])  # the frames twin's class count (2: the paper's)
  root = data_dir / 'synthetic' / (f'{builder_name}-n{n}-seed{seed}' + (f'-k{k}' if k != 2
                                                                         else ''))
  if builder_name == 'frames_folder':
    cfg['classes'] = cfg['classes'] or synthetic.frames_classes(k)
    cfg['unit_regex'] = cfg['unit_regex'] or synthetic.FRAMES_UNIT_REGEX
  if not (root / 'raw').is_dir():
    _check_writable(data_dir, None)
  raw = synthetic.write_cached(app, root / 'raw', n=n, seed=seed, layout=builder_name,
                               classes=k)
  return builder_name, raw, root / 'tfds', {'app': app, 'layout': builder_name, 'n': n,
                                            'seed': seed, 'raw_dir': str(raw)}


def prepare(cfg: Any) -> ManualBuilder:
  """Prepares the dataset of `cfg` if needed (once per data_dir) and returns its builder."""
  cfg = _read_config(cfg)
  builder_name, manual_dir, data_dir, _ = _resolve(cfg)
  return _prepared_builder(builder_name, cfg, manual_dir, data_dir)


def fingerprint(folder: Path, paths: Sequence[Path] | None = None) -> dict[str, Any]:
  """Every file under `folder`: relative name, size, modification time (and their digest).

  With `paths` (a manifest's files), only those files and the files of those folders, named
  relative to `folder` where they lie inside it.
  """
  if paths is None:
    found = sorted(folder.rglob('*'))
  else:
    found = sorted({f for p in paths for f in ([p] if p.is_file() else p.rglob('*'))})
  entries = []
  for path in found:
    if path.is_file():
      st = path.stat()
      name = path.relative_to(folder) if path.is_relative_to(folder) else path
      entries.append([str(name), st.st_size, st.st_mtime_ns])
  digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
  return {'source_dir': str(folder.resolve()), 'files': len(entries),
          'bytes': sum(e[1] for e in entries), 'sha256': digest, 'entries': entries}


def _fingerprint_changes(held: dict, now: dict) -> str:
  """'2 files changed (e.g. IMAGES/a.tiff), 1 added' between two fingerprints."""
  old = {e[0]: tuple(e[1:]) for e in held.get('entries', [])}
  new = {e[0]: tuple(e[1:]) for e in now['entries']}
  parts = []
  for what, names in (('changed', [n for n in new if n in old and old[n] != new[n]]),
                      ('added', [n for n in new if n not in old]),
                      ('removed', [n for n in old if n not in new])):
    if names:
      parts.append(f'{len(names)} {what} (e.g. {names[0]})')
  return ', '.join(parts) or 'the folder moved'


@contextlib.contextmanager
def _damaged_copy(where):
  """Turns a read failure of prepared data into an InputFileError naming it and the fix."""
  try:
    yield
  except (InputFileError, IndexError, KeyboardInterrupt):
    raise
  except Exception as e:  # TFDS/array_record raise many types for a damaged file
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise InputFileError(
        f'the prepared data in {where} cannot be read ({type(e).__name__}: {reason}); the copy '
        'is damaged (a torn or edited file). Delete that folder and repeat the command: medft '
        'prepares it again from its download folder.') from e


def _open_builder(builder_name, cfg, data_dir) -> ManualBuilder:
  """The builder of a dataset; a damaged dataset_info.json of its prepared copy is named."""
  try:
    builder = _make_builder(builder_name, cfg, data_dir)
    if (Path(builder.data_dir) / 'dataset_info.json').is_file():
      _ = builder.info.splits[FULL_SPLIT].num_examples, builder.info.metadata['ids']
    return builder
  except InputFileError:
    raise
  except Exception as e:  # TFDS raises protobuf, JSON and OS errors for a damaged info file
    found = sorted(Path(data_dir).glob(f'{builder_name}/**/dataset_info.json'))
    if not found:
      raise
    info = found[0]
    raise InputFileError(
        f'{info} cannot be read ({type(e).__name__}: {str(e).strip()[:200]}); the prepared '
        f'copy is damaged. Delete {info.parent} and repeat the command: medft prepares it '
        'again from its download folder.') from e


def _source_paths(builder: ManualBuilder, manual_dir: Path | None) -> list[Path] | None:
  """The files a builder reads (a manifest's rows), fingerprinted instead of all of manual_dir."""
  listed = getattr(builder, 'source_paths', None)
  return listed(manual_dir) if listed is not None and manual_dir is not None else None


def _check_writable(data_dir: Path, manual_dir: Path | None,
                    paths: Sequence[Path] | None = None) -> None:
  """A read-only or full data_dir is reported before TFDS starts writing into it."""
  files.make_dirs(data_dir, 'the prepared dataset')
  needs = fingerprint(manual_dir, paths)['bytes'] if manual_dir and manual_dir.is_dir() else 0
  if not os.access(data_dir, os.W_OK | os.X_OK):
    raise files.resource_error(OSError(13, 'read-only'), data_dir, 'the prepared dataset', needs)
  if needs:  # the prepared copy holds the encoded images: about the download's size
    files.check_space(data_dir, needs, f'the prepared dataset (from {manual_dir})')


def _prepare(builder_name, cfg, manual_dir, data_dir) -> ManualBuilder:
  builder = _make_builder(builder_name, cfg, data_dir)
  check_manual_dir(builder.name, manual_dir, builder.REQUIRED,
                   builder.MANUAL_DOWNLOAD_INSTRUCTIONS, prepared_dir=builder.data_dir)
  if hasattr(builder, 'validate_source'):  # a manifest: every row decoded before writing
    builder.validate_source(manual_dir)
  paths = _source_paths(builder, manual_dir)
  _check_writable(data_dir, manual_dir, paths)
  logging.info('Preparing %s from %s into %s (once; later runs read the prepared copy).',
               builder.name, manual_dir, builder.data_dir)
  counter = progress.Progress(f'preparing {builder.name}', 'examples')
  lister, loader = type(builder)._list_records, type(builder)._load_example

  def listed(self, root):  # progress of TFDS' example loop, without touching TFDS
    records = lister(self, root)
    counter.total = len(records)
    return records

  def counted(self, record):
    example = loader(self, record)
    counter.update(1)
    return example
  builder._list_records = listed.__get__(builder)
  builder._load_example = counted.__get__(builder)
  # TFDS writes into an `incomplete.*` folder and renames it only after success, so a
  # failed preparation leaves nothing that a later run would read.
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  counter.done()
  builder = _make_builder(builder_name, cfg, data_dir)
  _write_fingerprint(Path(builder.data_dir), manual_dir, paths)
  return builder


def _write_fingerprint(prepared: Path, manual_dir: Path | None,
                       paths: Sequence[Path] | None = None) -> None:
  if manual_dir is None:
    return
  try:
    files.write_json_atomic(prepared / FINGERPRINT_FILE, fingerprint(manual_dir, paths))
  except OSError as e:  # a read-only shared copy: it stays usable, only unchecked
    logging.warning('Could not record the source fingerprint of %s (%s).', prepared, e)


def _prepared_builder(builder_name, cfg, manual_dir, data_dir) -> ManualBuilder:
  builder = _open_builder(builder_name, cfg, data_dir)
  # Same test as `builder.is_prepared()`, without its warning about a folder not yet made.
  prepared = Path(builder.data_dir)
  if not (prepared / 'dataset_info.json').is_file():
    return _prepare(builder_name, cfg, manual_dir, data_dir)
  if manual_dir is None or not manual_dir.is_dir():
    return builder  # the prepared copy alone (the download was moved away): nothing to check
  record = prepared / FINGERPRINT_FILE
  paths = _source_paths(builder, manual_dir)
  now = fingerprint(manual_dir, paths)
  try:
    held = json.loads(record.read_text()) if record.is_file() else None
  except (ValueError, UnicodeDecodeError):
    held = {}  # damaged: prepare again, as after a change
  if held is None:
    logging.info('%s has no source fingerprint (prepared by an older medft); recording the '
                 'current state of %s.', prepared, manual_dir)
    _write_fingerprint(prepared, manual_dir, paths)
    return builder
  if held.get('sha256') == now['sha256']:  # same files; the folder itself may have moved
    return builder
  logging.warning('The download folder %s changed since %s was prepared (%s); preparing it '
                  'again.', manual_dir, prepared, _fingerprint_changes(held, now))
  return _reprepare(builder_name, cfg, manual_dir, data_dir, prepared)


def _reprepare(builder_name, cfg, manual_dir, data_dir, prepared: Path) -> ManualBuilder:
  """Prepares into a fresh folder beside the old copy, then swaps the two by renames."""
  _check_writable(data_dir, manual_dir,
                  _source_paths(_make_builder(builder_name, cfg, data_dir), manual_dir))
  fresh_root = Path(tempfile.mkdtemp(prefix='.medft-prepare-', dir=data_dir))
  try:
    fresh = Path(_prepare(builder_name, cfg, manual_dir, fresh_root).data_dir)
    stale = prepared.with_name(f'.{prepared.name}.stale-{os.getpid()}')
    os.rename(prepared, stale)
    os.rename(fresh, prepared)
    shutil.rmtree(stale, ignore_errors=True)
  finally:
    shutil.rmtree(fresh_root, ignore_errors=True)
  return _make_builder(builder_name, cfg, data_dir)


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
  if n_full:
    source[n_full - 1]  # a torn array_record file fails here, named, rather than mid-training
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
