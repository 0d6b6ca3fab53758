"""The data config: every field `medft.data.load` reads, with its default and meaning, once.

`config(**overrides)` is the `data` block of an application config (`configs/common.py`), so
every field here can be set on the command line (`--config.data.annotator=A2`); `read(cfg)`
is what the loader makes of such a block or of a plain dict (`data.load({'name': ...})`):
unknown fields are refused, and a field left out or None takes its default. Fields that
hold a map or may be unset are typed placeholders (None until set). Imports no TFDS, so a
config file can use it cheaply.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from ml_collections import config_dict

from medft.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Field:
  """One data field: its default (None = unset, of `kind`) and what it means."""
  default: Any
  doc: str
  kind: type | None = None  # the type of a field whose default is None


FIELDS: dict[str, Field] = {
    'name': Field('', 'TFDS builder name (or a synthetic twin such as synthetic_cimt).'),
    'manual_dir': Field('', 'Folder holding the user\'s download of the public dataset.'),
    'data_dir': Field('', 'Where prepared datasets are cached ("" = $MEDFT_DATA_DIR or '
                      '~/.cache/medft).'),
    'fraction': Field(1.0, 'Share of training units kept (nested across fractions), in (0, 1].'),
    'fraction_unit': Field('', 'What a fraction counts: the split unit (subjects, patients, '
                           'videos, ...) or frames/images (examples of the training units); '
                           '"" = the split unit. See medft.data.splits.'),
    'split_seed': Field(0, 'Seed of the unit-level train/validation/test split.'),
    'val_share': Field(0.2, 'Share of training units held out for validation (the paper\'s '
                       '20%).'),
    'test_share': Field(0.2, 'Share of units held out for testing (the application configs '
                        'hold out half, as the paper did).'),
    'annotator': Field('A1', 'cubs: the annotator whose profiles are read (A1, A1\', A2, A3).'),
    'classes': Field(None, 'frames_folder: class folder -> integer label.', dict),
    'unit_regex': Field(None, 'frames_folder: regex whose first group picks the unit from a '
                        'file stem (None: the stem itself).', str),
    'manifest': Field('', 'manifest_<kind>: your CSV or JSON-lines file, one row per image or '
                      'volume, paths relative to it (see medft.data.manifest).'),
    'split_by': Field('subject', 'manifest_<kind>: the unit of the split, `subject` (the '
                      'manifest\'s subject column) or `image` (each row its own unit; needed '
                      'when there is no subject column).'),
    'synthetic_n': Field(0, 'Size of a synthetic twin (images/volumes); 0 = the generator\'s '
                         'default.'),
    'synthetic_seed': Field(0, 'Seed of the synthetic twin\'s generator.'),
    'synthetic_classes': Field(2, 'Classes of the synthetic frames twin (2: informative and '
                               'non-informative; more adds tinted classes).'),
}


def defaults() -> dict[str, Any]:
  """Every field with its default."""
  return {key: f.default for key, f in FIELDS.items()}


def config(**overrides: Any) -> ml_collections.ConfigDict:
  """The `data` block of a config: every field, its default unless given in `overrides`."""
  unknown = sorted(set(overrides) - set(FIELDS))
  if unknown:
    raise ConfigError(f'Unknown data config fields {unknown}; known: {sorted(FIELDS)}.')
  block = ml_collections.ConfigDict()
  for key, f in FIELDS.items():
    value = overrides.get(key, f.default)
    block[key] = config_dict.placeholder(f.kind) if value is None else value
  return block


def read(cfg: Any) -> dict[str, Any]:
  """A data config (ConfigDict or mapping) as a plain dict of every field, defaults filled in."""
  raw = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
  unknown = sorted(set(raw) - set(FIELDS))
  if unknown:
    raise ConfigError(f'Unknown data config fields {unknown}; known: {sorted(FIELDS)}.')
  return {**defaults(), **{k: v for k, v in raw.items() if v is not None}}
