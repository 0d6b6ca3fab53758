"""A process-wide memo of what a task derives from one example (candidates, labels, resizes).

Every run of a sweep builds its task from the same frames with the same task settings, and the
polyp candidate generator costs ~40 ms a frame: for ~1000 frames that was ~40 s of every run.
Entries are keyed by a digest of the example's arrays and of the whole task config, so a
change to either makes a new entry; the memo holds at most `MAX_BYTES` of derived arrays
(oldest dropped first) and lives only as long as the process.
"""

from __future__ import annotations

import collections
import hashlib
import json
from typing import Any, Callable

import numpy as np

MAX_BYTES = 2 << 30
_entries: collections.OrderedDict[str, tuple[Any, int]] = collections.OrderedDict()
_stats = collections.Counter()


def _digest(kind: str, ex: dict, cfg: Any) -> str:
  h = hashlib.sha1(kind.encode())
  settings = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
  h.update(json.dumps(settings, sort_keys=True, default=repr).encode())
  for key in sorted(ex):
    value = np.asarray(ex[key])
    h.update(f'{key}:{value.dtype}:{value.shape}'.encode())
    h.update(np.ascontiguousarray(value).tobytes())
  return h.hexdigest()


def _nbytes(value: Any) -> int:
  if isinstance(value, np.ndarray):
    return value.nbytes
  if isinstance(value, (tuple, list)):
    return sum(map(_nbytes, value))
  if hasattr(value, '__dict__'):
    return sum(map(_nbytes, vars(value).values()))
  return 0


def get(kind: str, ex: dict, cfg: Any, make: Callable[[], Any]) -> Any:
  """`make()` for example `ex` under task config `cfg`, computed once per process.

  The returned object is shared between callers: treat it as read-only.
  """
  key = _digest(kind, ex, cfg)
  if key in _entries:
    _entries.move_to_end(key)
    _stats['hits'] += 1
    return _entries[key][0]
  _stats['misses'] += 1
  value = make()
  size = _nbytes(value)
  if size <= MAX_BYTES:
    _entries[key] = (value, size)
    _stats['bytes'] += size
    while _stats['bytes'] > MAX_BYTES:
      _stats['bytes'] -= _entries.popitem(last=False)[1][1]
  return value


def stats() -> dict[str, int]:
  """Hits and misses so far in this process, and the entries held."""
  return {'hits': _stats['hits'], 'misses': _stats['misses'], 'entries': len(_entries)}


def clear() -> None:
  _entries.clear()
  _stats.clear()
