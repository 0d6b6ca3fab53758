"""Atomic writes for the files a run leaves behind (no half-written file after a crash)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
  """Calls `write(f)` on a temporary sibling, fsyncs it and renames it over `path`."""
  path = Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  write_atomic(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + '\n')


def _jsonable(x: Any) -> Any:
  import numpy as np
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, Path):
    return str(x)
  raise TypeError(f'{type(x).__name__} is not JSON serialisable')
