"""A fork server for the command-line tests: `python run.py ...` without a fresh interpreter.

Most command-line cases (the bad-input catalogue, the fault tests) spend the bulk of their time
importing JAX, Flax, TFDS and medft before they reach the line under test. This module starts
one server process per test session that imports those once (PRELOAD below; no JAX backend is
created, no thread is started) and then forks a child per command. The child is a separate
process like the one `subprocess` would start: its own pid, environment (replaced wholesale),
working directory, stdout/stderr files and exit status; it executes the script or module as
`__main__` through `runpy`, so `run.py`'s own code (flag parsing, the error paragraph,
`sys.exit`, signal handlers) runs as from the shell, an uncaught exception prints its traceback
and exits 1, and a signal ends it as it would end `python run.py`. What is shared is only the
pre-imported modules (so a test that a command does not import a module needs a fresh
`subprocess` instead).

    runner = Zygote(ROOT, env)                # one per session (conftest's `zygote` fixture)
    done = runner.run(['run.py', '--workdir=...'], env=env, timeout=240)   # CompletedProcess
    proc = runner.popen(['run.py', ...], env=env, stderr=log_path)         # Popen-like

A command is `[script.py, *args]`, `['-m', module, *args]` or `['-c', code, *args]`, as after
`python`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Imported by the server before it forks: what run.py, the converter, the trainer, the data
# reader and the report import (none of them starts a thread or writes a file on import).
PRELOAD = ('jax', 'jax.numpy', 'flax', 'optax', 'numpy', 'ml_collections',
           'ml_collections.config_flags', 'absl.app', 'absl.flags', 'medft', 'medft.parallel',
           'medft.validate', 'tensorflow_datasets', 'grain', 'orbax.checkpoint', 'medft.data',
           'medft.pretrain', 'medft.report')


# ---- the server (runs in its own interpreter: `python tests/zygote.py`) ---------------------


def _serve() -> dict | None:
  """Reads one JSON request a line on stdin, forks a child for each; answers with the child's
  pid and, later, its exit status. Returns the request in a child; None when stdin closes."""
  import importlib
  import threading
  for name in PRELOAD:
    importlib.import_module(name)
  import gc
  # The preloaded objects stay out of the collector's sight: a child's collections and its
  # interpreter teardown then do not touch (and so copy) every page of the shared heap.
  gc.freeze()
  out = os.fdopen(os.dup(1), 'w', buffering=1)
  # A fork copies only the calling thread: with others running, a child could inherit a held
  # lock. So no thread may be started by the imports.
  threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
  out.write(json.dumps({'ready': os.getpid()} if not threads else {'threads': threads}) + '\n')
  if threads:
    return None
  running: dict[int, int] = {}
  pending = b''
  while True:
    while running:
      pid, status, usage = os.wait4(-1, os.WNOHANG)
      if not pid:
        break
      out.write(json.dumps({'id': running.pop(pid),
                            'returncode': os.waitstatus_to_exitcode(status),
                            'cpu_s': usage.ru_utime + usage.ru_stime}) + '\n')
    if not select.select([0], [], [], 0.02)[0]:
      continue
    chunk = os.read(0, 1 << 16)
    if not chunk:
      for pid in running:
        os.kill(pid, 9)
      return None
    pending += chunk
    while b'\n' in pending:
      line, pending = pending.split(b'\n', 1)
      request = json.loads(line)
      pid = os.fork()
      if pid == 0:
        out.close()
        return request
      running[pid] = request['id']
      out.write(json.dumps({'id': request['id'], 'pid': pid}) + '\n')


def _become(request: dict) -> None:
  """In the child: the process `python <command>` would be, up to running its __main__."""
  null = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null, 0)
  os.close(null)
  for fd, path in ((1, request['stdout']), (2, request['stderr'])):
    if fd == 2 and path == request['stdout'] and path != os.devnull:
      os.dup2(1, 2)  # one file for both, as stderr=subprocess.STDOUT
      continue
    target = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)  # emptied by the client
    os.dup2(target, fd)
    os.close(target)
  os.chdir(request['cwd'])
  os.environ.clear()
  os.environ.update(request['env'])
  command = request['command']
  # sys.path[0] as the interpreter sets it: the script's folder, the working directory (-m) or
  # '' (-c).
  sys.path[0] = {'-m': os.getcwd(), '-c': ''}.get(command[0]) or str(
      Path(command[0]).resolve().parent)


def _main() -> None:
  sys.path[0] = os.getcwd()  # not tests/: the server sees what `python run.py` would see
  request = _serve()
  if request is None:
    return
  _become(request)
  import runpy
  command = request['command']
  if command[0] == '-m':
    sys.argv = [command[1], *command[2:]]
    runpy.run_module(command[1], run_name='__main__', alter_sys=True)
  elif command[0] == '-c':
    sys.argv = ['-c', *command[2:]]
    exec(compile(command[1], '<string>', 'exec'), {'__name__': '__main__',
                                                   '__builtins__': __builtins__})
  else:
    sys.argv = list(command)
    runpy.run_path(command[0], run_name='__main__')


# ---- the client (in the test process) -------------------------------------------------------


class Zygote:
  """One server process; `run` and `popen` may be called from several threads."""

  def __init__(self, cwd: Path, env: dict[str, str]):
    self.cwd = Path(cwd)
    self._tmp = tempfile.TemporaryDirectory(prefix='medft-zygote-')
    self._server = subprocess.Popen([sys.executable, __file__], cwd=cwd, env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    ready = json.loads(self._server.stdout.readline() or '{}')
    assert 'ready' in ready, f'the zygote server did not start: {ready}'
    self._lock = threading.Lock()
    self._next = 0
    self._pids: dict[int, int] = {}
    self._codes: dict[int, int] = {}
    self.cpu_s: dict[int, float] = {}  # CPU seconds of each finished command (by its number)
    self._changed = threading.Condition()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self) -> None:
    for line in self._server.stdout:
      answer = json.loads(line)
      with self._changed:
        if 'pid' in answer:
          self._pids[answer['id']] = answer['pid']
        else:
          self._codes[answer['id']] = answer['returncode']
          self.cpu_s[answer['id']] = answer['cpu_s']
        self._changed.notify_all()

  def popen(self, command: list[str], env: dict[str, str], stdout: Path | None = None,
            stderr: Path | None = None, cwd: Path | None = None) -> ForkedProcess:
    """Starts `python <command>` as a forked child; output to the given files (or discarded)."""
    for path in (stdout, stderr):
      if path is not None:
        Path(path).write_bytes(b'')  # there (and empty) once this returns, as with open('w')
    with self._lock:
      self._next += 1
      ident = self._next
      request = {'id': ident, 'command': [str(c) for c in command], 'env': dict(env),
                 'cwd': str(cwd or self.cwd),
                 'stdout': str(stdout or os.devnull), 'stderr': str(stderr or os.devnull)}
      self._server.stdin.write(json.dumps(request).encode() + b'\n')
      self._server.stdin.flush()
    with self._changed:
      self._changed.wait_for(lambda: ident in self._pids or self._server.poll() is not None)
      assert ident in self._pids, 'the zygote server died'
    return ForkedProcess(self, ident, self._pids[ident], [sys.executable, *command])

  def run(self, command: list[str], env: dict[str, str], timeout: float,
          cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`subprocess.run([python, *command], capture_output=True, text=True, timeout=...)`."""
    with tempfile.TemporaryDirectory(dir=self._tmp.name) as folder:
      out, err = Path(folder, 'stdout'), Path(folder, 'stderr')
      proc = self.popen(command, env, stdout=out, stderr=err, cwd=cwd)
      try:
        code = proc.wait(timeout)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
      return subprocess.CompletedProcess(proc.args, code, out.read_text(), err.read_text())

  def close(self) -> None:
    self._server.stdin.close()
    self._server.wait(timeout=60)
    self._tmp.cleanup()


class ForkedProcess:
  """The parts of `subprocess.Popen` the tests use: pid, poll, wait, send_signal, kill."""

  def __init__(self, zygote: Zygote, ident: int, pid: int, args: list[str]):
    self._zygote, self._id, self.pid, self.args = zygote, ident, pid, args
    self.returncode: int | None = None

  def poll(self) -> int | None:
    with self._zygote._changed:
      self.returncode = self._zygote._codes.get(self._id)
    return self.returncode

  def wait(self, timeout: float | None = None) -> int:
    deadline = None if timeout is None else time.time() + timeout
    with self._zygote._changed:
      done = self._zygote._changed.wait_for(
          lambda: self._id in self._zygote._codes or self._zygote._server.poll() is not None,
          timeout)
      if not done or self._id not in self._zygote._codes:
        if deadline is not None and time.time() >= deadline:
          raise subprocess.TimeoutExpired(self.args, timeout)
        raise AssertionError('the zygote server died')
      self.returncode = self._zygote._codes[self._id]
    return self.returncode

  def send_signal(self, sig: int) -> None:
    if self.poll() is None:
      os.kill(self.pid, sig)

  def kill(self) -> None:
    self.send_signal(9)


if __name__ == '__main__':
  _main()
