"""Folder locks that name their holder and never outlive it: one process per workdir.

A run workdir, a sweep folder (per shard) and a sweep's source model each have a lock file
(`medft.lock`, `.sweep.lock`, `.source_model.lock`). Taking a lock is an OS-level
`fcntl.flock` on that file, held for the life of the process, plus a record of the holder
(host, pid, start time, command) written into the file:

* a second process on the same folder stops at once with `errors.LockedError` naming the
  holder (or, where asked to wait, as shards sharing a source model are, waits while it lives);
* the kernel drops the flock of a process that dies however it dies (SIGKILL included), so a
  lock never hangs anyone. A record left by a dead holder is taken over with a log line;
* on a filesystem without flock (some network and FUSE filesystems: `flock` fails with
  ENOLCK/EOPNOTSUPP) the record alone decides: a holder on this host whose pid is gone
  (`os.kill(pid, 0)`) is taken over; a holder on another host is trusted until its record is
  older than `STALE_S` (a day; a training run refreshes its record at each checkpoint), or
  until the user deletes the lock file the message names.

The file stays after release (emptied), so releasing never races with a process that has just
opened it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from absl import logging

from medft.errors import LockedError

# A record from another host on a filesystem without flock is trusted for this long.
STALE_S = 24 * 3600.0
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _holder() -> dict:
  return {'host': socket.gethostname(), 'pid': os.getpid(), 'since': time.time(),
          'command': ' '.join(sys.argv)[:500]}


def describe(record: dict | None) -> str:
  """'pid 123 on host h since 2026-01-01 10:00:00 UTC (python run.py ...)'."""
  if not record:
    return 'another process (its record is empty)'
  since = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(float(record.get('since', 0))))
  command = f' ({record["command"]})' if record.get('command') else ''
  return f'pid {record.get("pid")} on host {record.get("host")} since {since}{command}'


def _alive(record: dict) -> bool:
  """Whether the holder in `record` may still run (anything unknown counts as alive)."""
  if record.get('host') != socket.gethostname():
    return time.time() - float(record.get('refreshed', record.get('since', 0))) < STALE_S
  try:
    os.kill(int(record['pid']), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, KeyError, ValueError, TypeError):
    return True
  return True


class Lock:
  """An exclusive lock on `path` for `what` (a phrase: 'the workdir /x', 'the sweep /y').

  Use as a context manager, or `acquire()` / `release()`; acquiring a Lock object that holds
  its lock already is a no-op. Two Lock objects on one file exclude each other even within
  one process (flock belongs to the open file).
  """

  def __init__(self, path: str | os.PathLike, what: str):
    self.path = Path(path)
    self.what = what
    self._fd: int | None = None
    self._found: tuple[int, int] | None = None
    self._record: dict = {}

  def __enter__(self) -> 'Lock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self, wait: bool = False, poll_s: float = 1.0, log_every_s: float = 60.0
              ) -> 'Lock':
    """Takes the lock, or raises LockedError naming the holder (with `wait`, waits while the
    holder lives; a holder that dies releases the lock and this process takes it over)."""
    if self._fd is not None:
      return self
    from medft import files  # noqa: PLC0415  (files imports nothing of ours; keep it lazy)
    files.make_dirs(self.path.parent, needs='a lock file')
    try:
      existed = self.path.stat() if self.path.is_file() else None
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise files.resource_error(e, self.path.parent, 'a lock file') from None
    last_log = time.time()
    while True:
      record = _read(fd)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        flocked = True
      except BlockingIOError:
        flocked = False
      except OSError as e:
        if e.errno not in _UNSUPPORTED:
          os.close(fd)
          raise
        flocked = None  # no flock here: the record decides
      if flocked is None and record and record.get('pid') and _alive(record) \
          and record.get('pid') != os.getpid():
        flocked = False
      if flocked is not False:
        break
      if not wait:
        os.close(fd)
        raise LockedError(
            f'{self.what} is in use by {describe(record)} (lock file {self.path}). Wait for '
            'that process to finish or stop it, or use another folder; a lock whose holder '
            'has died is taken over automatically.')
      if time.time() - last_log >= log_every_s:
        logging.info('Waiting for %s: held by %s.', self.what, describe(record))
        last_log = time.time()
      time.sleep(poll_s)
    if record and record.get('pid'):
      logging.warning('Took over the lock of %s (%s) from %s, which is gone.', self.what,
                      self.path, describe(record))
    self._fd = fd
    # An empty lock file left by an earlier run is left as found on release (times included),
    # so a run refused after taking the lock changes nothing in its workdir.
    self._found = (existed.st_atime_ns, existed.st_mtime_ns) \
        if existed is not None and not existed.st_size else None
    self._record = _holder()
    self._write(self._record)
    return self

  def refresh(self) -> None:
    """Renews the record's start time (for filesystems without flock; see STALE_S)."""
    if self._fd is not None:
      self._write({**self._record, 'refreshed': time.time()})

  def _write(self, record: dict) -> None:
    data = json.dumps(record).encode()
    try:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, data, 0)
      os.fsync(self._fd)
    except OSError as e:
      from medft import files  # noqa: PLC0415
      self.release()
      raise files.resource_error(e, self.path.parent, 'a lock file') from None

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)
      if self._found is not None:
        os.utime(self._fd, ns=self._found)
    except OSError:
      pass  # a full disk cannot refuse a truncate to 0; a read-only one leaves the record
    try:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
    except OSError:
      pass  # a filesystem without flock: closing is all there is
    os.close(self._fd)
    self._fd = None


def _read(fd: int) -> dict | None:
  try:
    raw = os.pread(fd, 4096, 0)
  except OSError:
    return None
  try:
    record = json.loads(raw) if raw.strip() else None
  except ValueError:
    return None
  return record if isinstance(record, dict) else None
