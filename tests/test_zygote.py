"""The fork server of the command-line tests (tests/zygote.py) gives what a fresh `python` gives:
the same exit status and output of run.py, the environment, working directory and sys.path it
is handed, its own pid, and the status of a signal that ended it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''import json, os, sys
import jax
print(json.dumps({'devices': len(jax.devices()), 'cwd': os.getcwd(), 'path0': sys.path[0],
                  'name': __name__, 'argv': sys.argv, 'pid': os.getpid(),
                  'env': os.environ.get('PROBE_VALUE'), 'gone': 'MEDFT_CACHE_DIR' in os.environ}))
print('to stderr', file=sys.stderr)
if sys.argv[1:] == ['sleep']:
  import time
  time.sleep(120)
raise SystemExit(7)
'''


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1', **extra)
  return env


def test_run_py_error_matches_a_fresh_interpreter(zygote, tmp_path):
  command = ['run.py', '--config=configs/cimt.py:synthetic,depth=fc9',
             f'--workdir={tmp_path / "run"}']
  forked = zygote.run(command, env=_env(), cwd=ROOT, timeout=240)
  fresh = subprocess.run([sys.executable, *command], env=_env(), cwd=ROOT, capture_output=True,
                         text=True, timeout=240)
  assert forked.returncode == fresh.returncode == 1
  assert 'medft: error:' in forked.stderr and "'fc9'" in forked.stderr
  assert (forked.stdout, forked.stderr) == (fresh.stdout, fresh.stderr)
  assert not (tmp_path / 'run').exists()


def test_child_gets_its_environment_folder_and_pid(zygote, tmp_path):
  script = tmp_path / 'probe.py'
  script.write_text(PROBE)
  env = _env(PROBE_VALUE='x', XLA_FLAGS='--xla_force_host_platform_device_count=3')
  del env['MEDFT_CACHE_DIR']  # set for the server (conftest); the child has only what it is given
  done = zygote.run([str(script), 'a', 'b'], env=env, cwd=tmp_path, timeout=120)
  assert done.returncode == 7, done.stderr
  seen = json.loads(done.stdout)
  assert seen['devices'] == 3  # XLA_FLAGS of this child, read when its backend starts
  assert (seen['cwd'], seen['path0']) == (str(tmp_path), str(tmp_path))
  assert (seen['name'], seen['argv']) == ('__main__', [str(script), 'a', 'b'])
  assert (seen['env'], seen['gone']) == ('x', False)
  assert seen['pid'] not in (os.getpid(), zygote._server.pid)
  assert done.stderr == 'to stderr\n'


def test_signal_ends_the_child_as_it_ends_a_process(zygote, tmp_path):
  script = tmp_path / 'probe.py'
  script.write_text(PROBE)
  log = tmp_path / 'out.log'
  proc = zygote.popen([str(script), 'sleep'], env=_env(), stdout=log, stderr=log, cwd=tmp_path)
  deadline = time.time() + 120
  while 'to stderr' not in log.read_text():
    assert proc.poll() is None and time.time() < deadline, log.read_text()
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(timeout=60) == -signal.SIGKILL
  assert '"pid": %d' % proc.pid in log.read_text()
