"""Several pretrained sources as a sweep axis (`sweep.sources`): parsing, checks, run names.

    --config.sweep.sources=imagenet=weights/tv_alexnet,radimagenet=weights/rad,own=runs/export1

Each entry is `name=path`, path a medft weights artifact (a converter's `--out`, an export of a
fine-tuned run, `medft.weights.store`). The sweep then runs every fine-tuning arm once per
source and the scratch arms once (scratch loads no weights):

  DIR/<source>/<arm>/<fraction>/<seed>/   a fine-tuning arm from that source, e.g.
                                          DIR/imagenet/fc7/0.5/0/
  DIR/<scratch arm>/<fraction>/<seed>/    scratch, as in a one-source sweep

A run's name in the report is `<source>:<arm>` (e.g. `imagenet:fc7`); scratch keeps its own.
Scratch runs take the first listed source's input convention (size, channel order,
normalisation: `medft.trainer.initial_params`), as they take init='s in a one-source sweep.

With `sweep.sources` empty nothing changes: the source is `init=` or the sweep's own source
model (`medft.sweep.source_init`) and the layout is DIR/<arm>/<fraction>/<seed>/.

A source name is a folder name beside the arm folders, so it must be folder-safe (a letter,
then letters, digits, `_` or `-`), not an arm name, not start with `scratch` and not be a
folder the sweep or report writes (`plots`, `source_model`). Everything is checked before
anything is written (`check`), each error naming the entry at fault.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from medft.errors import ConfigError

SEP = ':'   # `<source>:<arm>`, the name of a run of one source in the report
NAME = re.compile(r'[A-Za-z][A-Za-z0-9_-]{0,63}')
RESERVED = ('plots', 'source_model')
FIELD = 'sweep.sources'
EXAMPLE = 'e.g. sweep.sources=imagenet=weights/tv_alexnet,own=runs/export1'


def _items(value: Any) -> list[str]:
  if isinstance(value, str):  # ',' or '+' as every list field of a sweep (`sweep.list_items`)
    return [v.strip() for v in value.replace('+', ',').split(',') if v.strip()]
  return [str(v).strip() for v in (value or ())]


def parse(value: Any) -> list[tuple[str, str]]:
  """[(name, path), ...] in the given order from 'name=path,name=path' (or a sequence of
  'name=path'); [] for ''. Syntax only: a ConfigError names the entry at fault."""
  out: list[tuple[str, str]] = []
  for item in _items(value):
    name, eq, path = (s.strip() for s in item.partition('='))
    if not eq or not name or not path:
      raise ConfigError(f'{FIELD}: entry {item!r} is not name=path ({EXAMPLE}).')
    if not NAME.fullmatch(name):
      raise ConfigError(f'{FIELD}: source name {name!r} (entry {item!r}) is not folder-safe: '
                        'use a letter, then letters, digits, _ or - (at most 64).')
    if name.lower().startswith('scratch') or name in RESERVED:
      raise ConfigError(f'{FIELD}: source name {name!r} (entry {item!r}) is reserved (scratch '
                        f'arms, {", ".join(RESERVED)}); choose another name.')
    if any(name == n for n, _ in out):
      raise ConfigError(f'{FIELD}: source name {name!r} is given twice; name each source once.')
    out.append((name, path))
  return out


def names(value: Any) -> list[str]:
  return [n for n, _ in parse(value)]


def check(value: Any, arch: str, arms: Sequence[str], init: str = '') -> dict[str, str]:
  """{name: absolute path} of every source, checked before anything is written: the syntax,
  names that are not arms of `arch`, each path a medft weights artifact of `arch`, no path
  twice, and no init= beside them (which would name a second, unlabelled source)."""
  from medft.weights import store  # noqa: PLC0415  (flax: only when sources are given)
  entries = parse(value)
  if not entries:
    return {}
  if init:
    raise ConfigError(f'init={init} and {FIELD} both name source weights; add it to '
                      f'{FIELD} as one more name=path entry (e.g. mine={init}) and set init="".')
  out: dict[str, str] = {}
  for name, path in entries:
    entry = f'{FIELD}: entry {name}={path}'
    if name in arms:
      raise ConfigError(f'{entry}: {name!r} is an arm of {arch} (its folder would clash with '
                        'the arm\'s); choose another source name.')
    if not Path(path).is_dir():
      raise ConfigError(f'{entry}: no such folder. Pass the --out folder of python -m '
                        'medft.weights.convert or python -m medft.weights.export.')
    if not store.is_artifact(path):
      raise ConfigError(f'{entry}: not a medft weights artifact (no params/ and meta.json '
                        f'written by medft). Convert the file with python -m '
                        f'medft.weights.convert --out=DIR, or export a run with python -m '
                        'medft.weights.export, and name that folder.')
    meta_arch = store.read_meta(path).arch
    if meta_arch != arch:
      raise ConfigError(f'{entry}: holds {meta_arch} weights but arch={arch}; every source of '
                        f'a sweep must be a {arch} (convert or export {arch} weights).')
    full = str(Path(path).absolute())
    twin = next((n for n, p in out.items() if p == full), None)
    if twin:
      raise ConfigError(f'{entry}: the same folder as source {twin!r}; name each artifact once.')
    out[name] = full
  return out


def qualified(source: str, arm: str) -> str:
  """`<source>:<arm>` (the arm itself without a source)."""
  return f'{source}{SEP}{arm}' if source else arm


def split(name: str) -> tuple[str, str]:
  """(source, arm) of a run name; ('', arm) without a source."""
  source, sep, arm = name.rpartition(SEP)
  return (source, arm) if sep else ('', name)
