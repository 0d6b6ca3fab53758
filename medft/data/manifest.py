"""A researcher's own data as a manifest: one row per image or volume, checked row by row.

A manifest is a CSV file (header line, then one row per example) or a JSON-lines file (one
JSON object per line) beside the data. Paths are relative to the manifest's folder (absolute
paths are accepted too). The `subject` column names the unit of independence: the split into
train/validation/test is by subject, so images of one subject never fall into two splits.
The four kinds and their columns (`KINDS`):

    classification  image,label,subject                               -> frames
    detection       image,mask,subject                                -> polyp
    volumes         volume,mask,subject                               -> pe
    cimt            image,li,ma,calibration_mm_per_px,subject         -> cimt

Without a `subject` column a manifest is refused unless the user states `split_by='image'`
(each row its own unit; the report then says that intervals may be optimistic). `read`
checks the header and every row (missing or empty values, files that do not exist, labels,
calibration, duplicates) and raises one `InputFileError` naming the manifest and each bad
row by line number, so nothing is prepared from a manifest with a bad row; the builders
(`medft.data.manifest_builders`) then decode every file before the first example is written.

Classification labels are class names or integers. Integers are kept as given and must be
0..K-1, each used; otherwise the sorted class names become 0..K-1. The name -> integer map is
stored as `classes` in the dataset metadata (as `frames_folder` stores its own). Reads no TFDS.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

from medft.errors import ConfigError, InputFileError

SUBJECT = 'subject'
SPLIT_BY = ('subject', 'image')
SUFFIXES = {'.csv': 'csv', '.jsonl': 'jsonl', '.ndjson': 'jsonl'}
MAX_SHOWN = 10  # bad rows listed in one error


@dataclasses.dataclass(frozen=True)
class Kind:
  """One manifest kind: its application, its columns besides `subject`, which hold paths."""
  name: str
  app: str
  columns: tuple[str, ...]
  paths: tuple[str, ...]
  folders: tuple[str, ...] = ()  # path columns that may name a folder (a DICOM series)

  @property
  def header(self) -> str:
    return ','.join((*self.columns, SUBJECT))


KINDS = {
    'classification': Kind('classification', 'frames', ('image', 'label'), ('image',)),
    'detection': Kind('detection', 'polyp', ('image', 'mask'), ('image', 'mask')),
    'volumes': Kind('volumes', 'pe', ('volume', 'mask'), ('volume', 'mask'),
                    folders=('volume', 'mask')),
    'cimt': Kind('cimt', 'cimt', ('image', 'li', 'ma', 'calibration_mm_per_px'),
                 ('image', 'li', 'ma')),
}


@dataclasses.dataclass(frozen=True)
class Row:
  """One example of a manifest: its line, id (first path, as written), unit, values, files."""
  line: int
  id: str
  unit: str
  values: dict[str, str]
  paths: dict[str, Path]


@dataclasses.dataclass(frozen=True)
class Manifest:
  """A checked manifest: where it is, its digest, kind, rows and (classification) classes."""
  path: Path
  sha256: str
  kind: Kind
  split_by: str
  rows: tuple[Row, ...]
  classes: dict[str, int] | None = None

  def label(self, row: Row) -> int:
    return self.classes[row.values['label']]


class BadRows:
  """Collects (line, reason) pairs; `raise_if_any` reports them in one InputFileError."""

  def __init__(self, path: Path):
    self.path = path
    self.found: list[tuple[int, str]] = []

  def add(self, line: int, reason: str) -> None:
    self.found.append((line, reason))

  def raise_if_any(self, what: str = 'nothing was prepared') -> None:
    if not self.found:
      return
    found = sorted(self.found)
    shown = '\n'.join(f'  line {line}: {reason}' for line, reason in found[:MAX_SHOWN])
    more = f'\n  ... and {len(found) - MAX_SHOWN} more' if len(found) > MAX_SHOWN else ''
    lines = sorted({line for line, _ in found})
    raise InputFileError(
        f'Manifest {self.path} has {len(lines)} bad row{"s" * (len(lines) > 1)} ({what}):\n'
        f'{shown}{more}\nFix these rows (line numbers count the header as line 1) and repeat '
        'the command.')


def manifest_path(value: str) -> Path:
  """The manifest file named by `data.manifest`, checked to exist and to be CSV or JSON-lines."""
  if not value:
    raise ConfigError('A manifest dataset (data.name=manifest_<kind>) needs data.manifest, the '
                      'CSV or JSON-lines file listing your images, e.g. '
                      '--config.data.manifest=/path/to/manifest.csv.')
  path = Path(value).expanduser()
  if path.suffix.lower() not in SUFFIXES:
    raise ConfigError(f'data.manifest={value!r}: expected a .csv or .jsonl file (one row per '
                      'image or volume).')
  if not path.is_file():
    raise InputFileError(f'Manifest {path} does not exist (data.manifest={value!r}); give the '
                         'path of your CSV or JSON-lines manifest.')
  return path.resolve()


def _parse_csv(text: str, bad: BadRows) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
  reader = csv.reader(io.StringIO(text))
  header: list[str] | None = None
  rows = []
  for fields in reader:
    if not any(f.strip() for f in fields):
      continue  # blank line
    if header is None:
      header = [f.strip() for f in fields]
      continue
    if len(fields) != len(header):
      bad.add(reader.line_num, f'{len(fields)} fields, the header has {len(header)} '
              f'({",".join(header)})')
      continue
    rows.append((reader.line_num, dict(zip(header, (f.strip() for f in fields)))))
  return header or [], rows


def _parse_jsonl(text: str, bad: BadRows) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
  header: dict[str, None] = {}  # every key in order of first appearance
  rows = []
  for line_no, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except ValueError as e:
      bad.add(line_no, f'not valid JSON ({e})')
      continue
    if not isinstance(obj, dict):
      bad.add(line_no, f'a JSON {type(obj).__name__}, expected an object {{"column": value}}')
      continue
    header.update(dict.fromkeys(str(k).strip() for k in obj))
    rows.append((line_no, {str(k).strip(): '' if v is None else str(v).strip()
                           for k, v in obj.items()}))
  return list(header), rows


def _check_header(path: Path, header: list[str], kind: Kind, split_by: str) -> None:
  expected = f'{kind.header} (data.name=manifest_{kind.name})'
  if not header:
    raise InputFileError(f'Manifest {path} is empty; expected a header line {expected} and '
                         'one row per example.')
  duplicated = sorted({c for c in header if header.count(c) > 1})
  if duplicated:
    raise InputFileError(f'Manifest {path} names columns {duplicated} twice; expected '
                         f'{expected}.')
  missing = [c for c in kind.columns if c not in header]
  if missing:
    raise InputFileError(f'Manifest {path} lacks the columns {missing} (it has {header}); '
                         f'expected {expected}.')
  unknown = [c for c in header if c not in (*kind.columns, SUBJECT)]
  if unknown:
    raise InputFileError(f'Manifest {path} has unknown columns {unknown}; a {kind.name} '
                         f'manifest has exactly {expected}. Remove or rename them.')
  if SUBJECT not in header and split_by == 'subject':
    raise InputFileError(
        f'Manifest {path} has no `subject` column. The subject (patient, video) is the unit of '
        'independence: splits and confidence intervals are by subject, so images of one '
        'subject must not fall into both training and test. Add a subject column, or, if '
        'every image really comes from a different subject, state '
        '--config.data.split_by=image (each image its own unit; the report says so).')


def _number(text: str) -> float | None:
  try:
    value = float(text)
  except ValueError:
    return None
  return value if math.isfinite(value) else None


def _classes(labels: list[str]) -> tuple[dict[str, int] | None, str]:
  """Class name -> integer of the labels seen; (None, reason) when they cannot be mapped."""
  names = sorted(set(labels))
  if len(names) < 2:
    return None, (f'has {len(names)} class ({", ".join(names)}); classification needs at '
                  'least 2')
  try:
    ints = {name: int(name) for name in names}
  except ValueError:  # class names: sorted names -> 0..K-1
    return {name: i for i, name in enumerate(names)}, ''
  values = sorted(set(ints.values()))
  if values != list(range(len(values))) or len(values) != len(names):
    return None, (f'has integer labels {values}; integer labels are kept as given and must '
                  f'be 0..{len(values) - 1}, each used (or write them as class names)')
  return ints, ''


def read(value: str, kind_name: str, split_by: str = 'subject') -> Manifest:
  """Reads and checks the manifest `value` of kind `kind_name` (see the module docstring)."""
  kind = KINDS[kind_name]
  if split_by not in SPLIT_BY:
    raise ConfigError(f'data.split_by={split_by!r}: choose subject or image.')
  path = manifest_path(value)
  raw = path.read_bytes()
  try:
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise InputFileError(f'Manifest {path} is not UTF-8 text ({e}); save it as UTF-8 CSV or '
                         'JSON lines.') from None
  bad = BadRows(path)
  parse = _parse_csv if SUFFIXES[path.suffix.lower()] == 'csv' else _parse_jsonl
  header, parsed = parse(text, bad)
  _check_header(path, header, kind, split_by)
  if not parsed and not bad.found:
    raise InputFileError(f'Manifest {path} has a header but no rows; add one row per example '
                         f'({kind.header}).')
  rows, first_line = [], {}
  for line, values in parsed:
    reasons = []
    for column in (*kind.columns, *((SUBJECT,) if split_by == 'subject' else ())):
      if not values.get(column, ''):
        reasons.append(f'empty {column}' if column in values else f'no {column} value')
    paths = {}
    for column in kind.paths:
      if not values.get(column):
        continue
      file = (path.parent / values[column]).resolve()
      exists = file.exists() if column in kind.folders else file.is_file()
      if not exists:
        what = 'file or folder' if column in kind.folders else 'file'
        reasons.append(f'{column} {values[column]!r}: no such {what} ({file})')
      paths[column] = file
    calibration = values.get('calibration_mm_per_px')
    if calibration and not ((v := _number(calibration)) is not None and v > 0):
      reasons.append(f'calibration_mm_per_px {calibration!r} is not a positive number (mm per '
                     'pixel, e.g. 0.06)')
    first = kind.paths[0]
    if first in paths:
      if paths[first] in first_line:
        reasons.append(f'{first} {values[first]!r} is listed again (first on line '
                       f'{first_line[paths[first]]}); one row per {first}')
      first_line.setdefault(paths[first], line)
    for reason in reasons:
      bad.add(line, reason)
    if not reasons:
      unit = values[SUBJECT] if split_by == 'subject' else values[first]
      rows.append(Row(line=line, id=values[first], unit=unit, values=dict(values),
                      paths=paths))
  bad.raise_if_any()
  classes = None
  if kind.name == 'classification':
    classes, reason = _classes([r.values['label'] for r in rows])
    if classes is None:
      raise InputFileError(f'Manifest {path} {reason}.')
  return Manifest(path=path, sha256=hashlib.sha256(raw).hexdigest(), kind=kind,
                  split_by=split_by, rows=tuple(rows), classes=classes)


def config_key(manifest: Manifest) -> dict[str, Any]:
  """What names a manifest's prepared copy: its path, contents digest, kind and split."""
  return {'kind': manifest.kind.name, 'manifest': str(manifest.path),
          'sha256': manifest.sha256, 'split_by': manifest.split_by}
