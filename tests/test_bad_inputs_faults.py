"""The bad-input catalogue, continued (issue 15): workdir lifecycle, locks, damaged files of a
run or of prepared data, read-only folders, through the real command line.

Same contract as tests/test_bad_inputs.py, whose machinery this reuses: a non-zero exit, one
paragraph naming the culprit and the fix, no traceback, and every file of the case folder
byte-identical afterwards (content, size and modification time), with nothing left behind.

    pytest tests/test_bad_inputs_faults.py      # about a minute on 2 CPU cores
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bad_inputs import IS_ROOT, TRACEBACK, Case, Inputs, _message, _names, _run_args

from configs import cimt
from medft import files
from medft.configs import common

CAN_MOUNT = IS_ROOT and shutil.which('mount') is not None
NO_MOUNT = '' if CAN_MOUNT else 'a read-only tmpfs needs root and mount(8)'
_MOUNTS: list[Path] = []
_HOLDERS: list[subprocess.Popen] = []


def _args(config_arg: str, *extra: str, mode: str = 'train', workdir: str | None = 'run',
          data: bool = True):
  """run.py argv (tiny network; the session's prepared data unless `data=False`)."""
  def build(inputs: Inputs, case_dir: Path) -> list[str]:
    argv = _run_args(config_arg, *extra, data=data, workdir='run')(inputs, case_dir)
    argv = [a for a in argv if not a.startswith('--workdir=')]
    where = '' if workdir == '' else str(case_dir / workdir)
    return [*argv, f'--mode={mode}', f'--workdir={where}']
  return build


def _config_json(argv: list[str]) -> dict:
  """config.json of the run that `argv` starts (what the trainer writes for it)."""
  arg = next(a for a in argv if a.startswith('--config=')).split(':', 1)[1]
  config = cimt.get_config(arg)
  for a in argv:
    if a.startswith('--config.'):
      key, value = a[len('--config.'):].split('=', 1)
      common.set_field(config, key, value)
  return json.loads(config.to_json_best_effort(sort_keys=True))


# ---- setups ------------------------------------------------------------------------------


def _read_only(inputs: Inputs, case_dir: Path) -> None:
  (case_dir / 'ro').mkdir()
  subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', str(case_dir / 'ro')],
                 check=True)
  _MOUNTS.append(case_dir / 'ro')


def _file_parent(inputs: Inputs, case_dir: Path) -> None:
  (case_dir / 'notes.txt').write_text('a file, not a folder\n')


def _foreign(inputs: Inputs, case_dir: Path) -> None:
  (case_dir / 'run').mkdir()
  (case_dir / 'run' / 'thesis.tex').write_text('\\documentclass{article}\n')


HOLDER = '''
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'since': time.time(),
                         'command': 'python run.py (the first run)'}).encode())
time.sleep(300)
'''


def _locked(inputs: Inputs, case_dir: Path) -> None:
  """A live process holding the workdir's lock, as a running medft would."""
  run = case_dir / 'run'
  run.mkdir()
  files.write_marker(run, 'run')
  holder = subprocess.Popen([sys.executable, '-c', HOLDER, str(run / 'medft.lock')])
  _HOLDERS.append(holder)
  deadline = time.time() + 60
  while not (run / 'medft.lock').exists() or not (run / 'medft.lock').stat().st_size:
    assert time.time() < deadline and holder.poll() is None, 'the lock holder did not start'
    time.sleep(0.05)
  with open(run / 'medft.lock', 'rb') as f:  # held: a non-blocking flock must fail
    with pytest.raises(BlockingIOError):
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  (case_dir / 'holder.pid').write_text(str(holder.pid))


def _run_folder(case_argv, **write):
  """A run folder of the exact config `case_argv` starts, with files `write` (name -> text)."""
  def setup(inputs: Inputs, case_dir: Path) -> None:
    run = case_dir / 'run'
    run.mkdir()
    files.write_marker(run, 'run')
    (run / 'medft.lock').write_text('')
    (run / 'config.json').write_text(json.dumps(_config_json(case_argv(inputs, case_dir))))
    for name, text in write.items():
      (run / name.replace('__', '/')).parent.mkdir(parents=True, exist_ok=True)
      (run / name.replace('__', '/')).write_text(text)
  return setup


def _source_model_folder(inputs: Inputs, case_dir: Path) -> None:
  run = case_dir / 'run'
  (run / 'weights').mkdir(parents=True)
  files.write_marker(run, 'source_model')
  (run / 'weights' / 'meta.json').write_text('{}')
  (run / 'pretrain.json').write_text('{"settings": {"arch": ')


def _damaged_copy(kind: str):
  def setup(inputs: Inputs, case_dir: Path) -> None:
    shutil.copytree(inputs.data, case_dir / 'data')
    prepared = Path(_prepared(case_dir))
    if kind == 'info':
      (prepared / 'dataset_info.json').write_text('{"name": "cubs", "splits": [')
    else:
      target = next(prepared.glob('*.array_record*'))
      target.write_bytes(target.read_bytes()[:target.stat().st_size // 2])
  return setup


def _prepared(case_dir: Path) -> str:
  return str(next((case_dir / 'data').glob('synthetic/*/tfds/cubs/*/*/dataset_info.json')).parent)


_TRAIN_ARGV = _args('synthetic,depth=scratch')
_PRETEXT = 'synthetic,pretext'

CASES = [
    # ---- workdir argument and folders medft did not write ----------------------------------
    Case('workdir_empty', _args('synthetic,depth=scratch', workdir=''),
         _names('--workdir is empty'), 'e.g. --workdir='),
    Case('sweep_workdir_empty', _args(_PRETEXT, mode='sweep', workdir=''),
         _names('--workdir is empty'), 'e.g. --workdir='),
    Case('pretrain_workdir_empty', _args(_PRETEXT, mode='pretrain', workdir=''),
         _names('--workdir is empty'), 'e.g. --workdir='),
    Case('workdir_foreign_folder', _TRAIN_ARGV, _names('--workdir={case}/run', 'other files'),
         'Use a new or empty --workdir', setup=_foreign),
    Case('sweep_foreign_folder', _args(_PRETEXT, mode='sweep'),
         _names('--workdir={case}/run', 'other files'), 'Use a new or empty --workdir',
         setup=_foreign),
    Case('pretrain_foreign_folder', _args(_PRETEXT, mode='pretrain'),
         _names('--workdir={case}/run', 'other files'), 'Use a new or empty --workdir',
         setup=_foreign),
    Case('workdir_config_not_medft', _TRAIN_ARGV,
         _names('{case}/run/config.json', 'not the config of a medft run'),
         'Use an empty --workdir',
         setup=lambda inputs, case_dir: ((case_dir / 'run').mkdir(),
                                         (case_dir / 'run' / 'config.json').write_text('[1]'))),
    # ---- locks -----------------------------------------------------------------------------
    Case('workdir_locked', _TRAIN_ARGV,
         lambda inputs, case_dir: [f'--workdir={case_dir}/run is in use by pid '
                                   f'{(case_dir / "holder.pid").read_text()} on host',
                                   f'{case_dir}/run/medft.lock', 'the first run'],
         'Wait for that process to finish', setup=_locked),
    # ---- damaged run files -----------------------------------------------------------------
    Case('results_damaged', _TRAIN_ARGV, _names('{case}/run/results.json is damaged'),
         'delete it and repeat the command',
         setup=_run_folder(_TRAIN_ARGV, **{'results.json': '{"arm": "scr'})),
    Case('results_wrong_shape', _TRAIN_ARGV,
         _names('{case}/run/results.json is damaged', 'not the results of a medft run'),
         'delete it and repeat the command',
         setup=_run_folder(_TRAIN_ARGV, **{'results.json': '["scratch", 0.5]'})),
    Case('metrics_line_damaged', _TRAIN_ARGV,
         _names('{case}/run/metrics.jsonl, line 1, is damaged'), 'Delete that line',
         setup=_run_folder(_TRAIN_ARGV, **{'metrics.jsonl': '{"step": 2, "lo\n{"step": 4}\n'})),
    Case('pretrain_record_damaged', _args(_PRETEXT, mode='pretrain'),
         _names('{case}/run/pretrain.json is damaged'), 'delete it and repeat the command',
         setup=_source_model_folder),
    # ---- damaged prepared data -------------------------------------------------------------
    Case('prepared_info_damaged', _args('synthetic,depth=scratch',
                                        '--config.data.data_dir={case}/data', data=False),
         lambda inputs, case_dir: [f'{_prepared(case_dir)}/dataset_info.json cannot be read'],
         'Delete', setup=_damaged_copy('info')),
    Case('prepared_records_damaged', _args('synthetic,depth=scratch',
                                           '--config.data.data_dir={case}/data', data=False),
         lambda inputs, case_dir: [f'the prepared data in {_prepared(case_dir)} cannot be read',
                                   'Riegeli'],
         'Delete that folder and repeat the command', setup=_damaged_copy('records')),
    # ---- read-only folders and files in the way --------------------------------------------
    Case('workdir_read_only', _args('synthetic,depth=scratch', workdir='ro/run'),
         _names('--workdir={case}/ro/run cannot be created', '{case}/ro'),
         'choose a writable folder', setup=_read_only, skip=NO_MOUNT),
    Case('data_dir_read_only', _args('synthetic,depth=scratch',
                                     '--config.data.data_dir={case}/ro/data', data=False),
         _names('{case}/ro/data', 'read-only'), 'choose a writable folder', setup=_read_only,
         skip=NO_MOUNT),
    Case('compile_cache_read_only', _args('synthetic,depth=scratch',
                                          '--config.compile_cache={case}/ro/jax'),
         _names('compile_cache:', '{case}/ro/jax', 'read-only'), '--config.compile_cache=off',
         setup=_read_only, skip=NO_MOUNT),
    Case('compile_cache_under_a_file', _args('synthetic,depth=scratch',
                                             '--config.compile_cache={case}/notes.txt/jax'),
         _names('compile_cache:', '{case}/notes.txt/jax'), '--config.compile_cache=off',
         setup=_file_parent),
    Case('feature_cache_read_only',
         _args('synthetic,depth=fc8', '--config.init={inputs.alexnet_10}',
               '--config.train.feature_cache={case}/ro/cache'),
         _names('train.feature_cache={case}/ro/cache'), 'give a writable folder',
         setup=_read_only, skip=NO_MOUNT),
]
assert len({c.name for c in CASES}) == len(CASES)


@pytest.fixture(scope='module')
def inputs(catalogue_inputs) -> Inputs:
  """The catalogue's session inputs (artifacts, damaged copies), shared with its first part."""
  return catalogue_inputs


def _snapshot(folder: Path) -> dict:
  """Every path under `folder`: (size, mtime, sha256) of files, None for folders."""
  out = {}
  for path in sorted(folder.rglob('*')):
    st = path.lstat()
    out[str(path.relative_to(folder))] = None if path.is_dir() else (
        st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
  return out


@pytest.fixture(scope='module')
def outcomes(request, inputs, tmp_path_factory, zygote):
  """Sets the selected cases up one by one (mounts, lock holders), runs their commands a few
  at a time, and afterwards unmounts and stops what the setups started."""
  selected = {item.callspec.params['case'].name for item in request.session.items
              if item.module is request.module and hasattr(item, 'callspec')
              and 'case' in item.callspec.params}
  todo = [c for c in CASES if c.name in selected and not c.skip]
  base = tmp_path_factory.mktemp('fault_cases')
  try:
    befores = {}
    for c in todo:
      (base / c.name).mkdir(parents=True)
      if c.setup:
        c.setup(inputs, base / c.name)
      befores[c.name] = _snapshot(base / c.name)
    with concurrent.futures.ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 2))) as pool:
      futures = {c.name: pool.submit(_run, c, inputs, base / c.name, zygote) for c in todo}
      results = {name: f.result() for name, f in futures.items()}
    yield {c.name: (base / c.name, *results[c.name], befores[c.name], _snapshot(base / c.name))
           for c in todo}
  finally:
    for holder in _HOLDERS:
      holder.kill()
      holder.wait()
    for mount in _MOUNTS:
      subprocess.run(['umount', '-l', str(mount)], check=False)


def _run(case: Case, inputs: Inputs, case_dir: Path, zygote):
  argv = case.argv(inputs, case_dir)
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1', **dict(case.env))
  start = time.time()
  proc = zygote.run(['run.py', *argv], cwd=Path(__file__).parents[1], env=env, timeout=240)
  return argv, proc, time.time() - start


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, inputs: Inputs, outcomes):
  if case.skip:
    pytest.skip(case.skip)
  case_dir, argv, proc, seconds, before, after = outcomes[case.name]
  shown = f'argv: {argv}\nrc={proc.returncode}\nstderr:\n{proc.stderr[-4000:]}'
  assert proc.returncode == 1, shown
  assert TRACEBACK not in proc.stderr, shown
  message = _message(proc.stderr)
  assert '\n\n' not in message.strip(), f'not one paragraph:\n{message}'
  for culprit in case.culprit(inputs, case_dir):
    assert culprit in message, f'{culprit!r} not named:\n{message}'
  assert case.advice in message, f'no advice {case.advice!r}:\n{message}'
  assert after == before, f'{case.name} changed its folder: before {before}, after {after}'
  assert seconds < 120, f'{case.name} took {seconds:.0f} s'
