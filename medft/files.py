"""Writing the files a run leaves behind: atomically, into folders medft marks as its own.

* `write_atomic` and friends write a temporary sibling, fsync it and rename it over the
  target, so a crash leaves the old file or the new one, never half of one; `append_line`
  adds one line to a log (metrics.jsonl) and cuts a failed write back off.
* A full disk or a read-only folder becomes `errors.ResourceError` naming the folder, its
  free space and what the step needs (`resource_error`, `check_space`); the temporary file is
  removed first.
* `write_marker` / `read_marker`: the `.medft` file in every folder medft creates (a run, a
  sweep, a source model, a weights artifact, a synthetic dataset). A folder is overwritten or
  deleted only when it carries the marker of the expected kind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from medft.errors import ResourceError

MARKER = '.medft'
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_NOT_A_FOLDER = (errno.ENOTDIR, errno.EEXIST)


def _mib(n: float) -> str:
  return f'{n / 2**20:.1f} MiB' if n >= 2**20 else f'{n / 2**10:.1f} KiB'


def free_bytes(folder: str | os.PathLike) -> int | None:
  """Free bytes on the filesystem of `folder` (its nearest existing parent), or None."""
  folder = Path(folder).absolute()
  for p in (folder, *folder.parents):
    if p.exists():
      try:
        return shutil.disk_usage(p).free
      except OSError:
        return None
  return None


def _fault(e: BaseException | None) -> OSError | None:
  """The full-disk or read-only OSError behind `e` (itself or what it was raised from)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _FULL + _READ_ONLY:
      return e
    e = e.__cause__ or e.__context__
  return None


def is_resource_fault(e: BaseException) -> bool:
  """Whether `e` (or an exception it was raised from) is a full disk or read-only folder."""
  return _fault(e) is not None


def _resource(code: int, message: str) -> ResourceError:
  err = ResourceError(message)
  err.errno = code
  return err


def resource_error(e: BaseException, folder: str | os.PathLike, step: str,
                   needs: int | None = None) -> BaseException:
  """`e` as a ResourceError naming `folder` and what `step` needs; other errors as they are."""
  if isinstance(e, ResourceError):
    return e
  cause = _fault(e)
  if cause is None and isinstance(e, OSError) and e.errno in _NOT_A_FOLDER:
    cause = e  # only as raised by make_dirs: a file in the way of a folder
  if cause is None:
    return e
  need = f' (about {_mib(needs)})' if needs else ''
  if cause.errno in _FULL:
    free = free_bytes(folder)
    left = f'{_mib(free)} free' if free is not None else 'no space left'
    return _resource(
        cause.errno, f'the disk holding {folder} is full ({left}) and writing {step} needs '
        f'more{need}. Free some space there, or point the run at a folder on a larger disk.')
  if cause.errno in _NOT_A_FOLDER:
    return _resource(
        cause.errno, f'{folder} cannot be created: a file stands where a folder is needed on '
        f'that path ({cause.filename or folder}). Choose a writable folder.')
  return _resource(
      cause.errno, f'{folder} is read-only ({os.strerror(cause.errno)}), so {step}{need} '
      'cannot be written there. Make it writable, or choose a writable folder.')


def check_space(folder: str | os.PathLike, needs: int, step: str) -> None:
  """Raises ResourceError before a write of about `needs` bytes that cannot fit."""
  free = free_bytes(folder)
  if free is not None and free < needs:
    raise _resource(
        errno.ENOSPC, f'the disk holding {folder} has {_mib(free)} free but writing {step} '
        f'needs about {_mib(needs)}. Free some space there, or point the run at a folder on a '
        'larger disk.')


def make_dirs(folder: str | os.PathLike, needs: str = 'its files') -> Path:
  """`mkdir -p folder`, a full disk or read-only parent reported as a ResourceError."""
  folder = Path(folder)
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise resource_error(e, folder, needs) from None
  return folder


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
  """Calls `write(f)` on a temporary sibling, fsyncs it and renames it over `path`."""
  path = Path(path)
  try:
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
  except OSError as e:
    raise resource_error(e, path.parent, path.name) from None
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    Path(tmp).unlink(missing_ok=True)
    if is_resource_fault(e):
      raise resource_error(e, path.parent, path.name) from None
    raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  write_atomic(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + '\n')


def append_line(path: str | os.PathLike, line: str) -> None:
  """Appends `line` + newline in one write; a failed write is cut back off the file."""
  path = Path(path)
  data = (line.rstrip('\n') + '\n').encode()
  try:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  except OSError as e:
    raise resource_error(e, path.parent, path.name) from None
  try:
    size = os.fstat(fd).st_size
    try:
      written = os.write(fd, data)
      if written != len(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
      os.fsync(fd)
    except OSError as e:
      os.ftruncate(fd, size)
      raise resource_error(e, path.parent, path.name, len(data)) from None
  finally:
    os.close(fd)


def write_marker(folder: str | os.PathLike, kind: str) -> None:
  """Marks `folder` as medft's (kind: run, sweep, source_model, weights, synthetic)."""
  path = Path(folder) / MARKER
  if read_marker(folder) != kind:
    from medft import __version__  # noqa: PLC0415  (medft/__init__ imports this module)
    write_json_atomic(path, {'kind': kind, 'medft': __version__, 'created': time.time()})


def read_marker(folder: str | os.PathLike) -> str | None:
  """The kind of medft folder `folder` is, or None when it carries no readable marker."""
  try:
    record = json.loads((Path(folder) / MARKER).read_text())
  except (OSError, ValueError):
    return None
  return record.get('kind') if isinstance(record, dict) else None


def _jsonable(x: Any) -> Any:
  import numpy as np
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, Path):
    return str(x)
  raise TypeError(f'{type(x).__name__} is not JSON serialisable')
