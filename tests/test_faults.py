"""Faults a real run meets (issue 15): kills and preemption, two processes on one folder, a full
or read-only disk, torn and damaged files, a download folder that changed after preparation.

Each test runs the real path (run.py processes where the exit code or a signal matters, forked
from the session's `zygote`, which has JAX and medft imported; `medft.train` / `medft.sweep`
in-process elsewhere) on the tiny CIMT config.

    pytest tests/test_faults.py      # about a minute and a half on 2 CPU cores
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny

import medft
import medft.validate
from configs import cimt
from medft import data, files, locks, progress

ROOT = Path(__file__).resolve().parents[1]
TRACEBACK = 'Traceback (most recent call last)'
IS_ROOT = hasattr(os, 'geteuid') and os.geteuid() == 0

# A one-arm study with a pretext source model: pretraining long enough (20 steps, a row every
# 2) to be interrupted in the middle, the fine-tuning run short.
SWEEP_ARG = 'synthetic,pretext,arms=fc8,fractions=1.0,seeds=0'
SWEEP = {
    'model.width': 0.125, 'input_size': 67, 'task.patch_size': 32, 'model.init_scheme': 'he',
    'train.batch': 8, 'train.steps': 4, 'train.eval_every': 2, 'train.log_every': 2,
    'train.checkpoint_every': 2, 'task.eval_patches_per_class': 4, 'task.eval_col_stride': 24,
    'task.roi_height_mm': 2.0, 'task.patches_per_image': 4, 'train.workers': 1,
    'pretrain.steps': 20, 'pretrain.batch': 8, 'pretrain.eval_examples': 16,
    'pretrain.log_every': 2, 'pretrain.eval_every': 10, 'pretrain.checkpoint_every': 2,
    'pretrain.workers': 1,
}
# run.py flags of a tiny single run (tests/tiny.py in flag form).
TRAIN = ['--config=configs/cimt.py:synthetic,depth=scratch,batch=8', '--config.model.width=0.125',
         '--config.input_size=67', '--config.task.patch_size=32', '--config.model.init_scheme=he',
         '--config.task.eval_patches_per_class=4', '--config.task.eval_col_stride=24',
         '--config.task.roi_height_mm=2.0',
         '--config.train.workers=1', '--config.train.log_every=2']


def _env() -> dict:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  return env


def _popen(zygote, args: list[str], log: Path):
  """`python run.py *args` (stdout discarded, stderr to `log`), running on."""
  return zygote.popen(['run.py', *args], cwd=ROOT, env=_env(), stderr=log)


def _run(zygote, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
  return zygote.run(['run.py', *args], cwd=ROOT, env=_env(), timeout=timeout)


def _rows(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rows_so_far(path: Path) -> list[dict]:
  """The rows of a metrics.jsonl another process is appending to (a line mid-write skipped)."""
  out = []
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      out.append(json.loads(line))
    except ValueError:
      pass
  return out


def _wait_for(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float = 240):
  deadline = time.time() + timeout
  while not condition():
    assert proc.poll() is None, f'exited before {what}:\n{log.read_text()[-3000:]}'
    assert time.time() < deadline, f'no {what} within {timeout} s'
    time.sleep(0.05)


def _leftovers(folder: Path) -> list[str]:
  """Temporary or half-written files medft or orbax would leave after a failed write."""
  return sorted(str(p) for p in folder.rglob('*')
                if p.name.endswith('.tmp') or 'orbax-checkpoint-tmp' in p.name
                or '.incomplete.' in p.name or p.name.startswith('.medft-prepare-'))


def _report_table(folder: Path) -> list[dict]:
  """report.csv without its timing columns (the only thing a rerun may change)."""
  rows = list(csv.DictReader(io.StringIO((folder / 'report.csv').read_text())))
  return [{k: v for k, v in r.items() if 'wall_s' not in k} for r in rows]


# ---- kills and preemption during a sweep's source-model pretraining ------------------------


@pytest.fixture(scope='module')
def sweep_data(tmp_path_factory, cimt_data_dir):
  return cimt_data_dir


def test_sweep_resumes_after_sigterm_and_sigkill_in_pretraining(sweep_data, tmp_path,
                                                                  zygote):
  folder = tmp_path / 'study'
  args = [f'--config=configs/cimt.py:{SWEEP_ARG}', '--mode=sweep', f'--workdir={folder}',
          *[f'--config.{k}={v}' for k, v in SWEEP.items()],
          f'--config.data.data_dir={sweep_data}']
  metrics = folder / 'source_model' / 'metrics.jsonl'
  record = folder / 'source_model' / 'pretrain.json'
  # The uninterrupted sweep of the same command, alongside (the machine has two cores).
  reference_log = tmp_path / 'reference.log'
  reference = _popen(zygote, [a if not a.startswith('--workdir=') else
                      f'--workdir={tmp_path / "reference"}' for a in args], reference_log)

  try:
    # SIGTERM (a preempted VM) in the middle of pretraining: checkpoint, message, exit 143.
    log = tmp_path / 'sigterm.log'
    proc = _popen(zygote, args, log)
    _wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, proc, log, 'a pretrain row')
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
    stderr = log.read_text()
    assert 'SIGTERM received: pretraining checkpoint saved at step' in stderr, stderr[-3000:]
    assert TRACEBACK not in stderr
    assert not record.exists(), 'pretraining finished before the signal: the test proves nothing'
    term_step = max(r['step'] for r in _rows(metrics))
    assert term_step < SWEEP['pretrain.steps']
    assert list((folder / 'source_model' / 'checkpoints' / 'latest').glob('[0-9]*'))

    # The same command resumes; SIGKILL it later in pretraining (no handler, no cleanup).
    log = tmp_path / 'sigkill.log'
    proc = _popen(zygote, args, log)
    _wait_for(lambda: any(r['step'] > term_step for r in _rows_so_far(metrics)), proc, log,
              'a resumed pretrain row')
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert 'Pretraining resumes at step' in log.read_text()
    assert not record.exists(), 'pretraining finished before SIGKILL: the test proves nothing'

    # The same command again: no wait on the dead holder's lock; the run finishes.
    done = _run(zygote, args, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'Took over the lock of the source model' in done.stderr, done.stderr[-3000:]
    steps = [r['step'] for r in _rows(metrics)]
    assert steps == sorted(set(steps)) and steps[-1] == SWEEP['pretrain.steps']
    assert not _leftovers(folder)

    # The uninterrupted sweep gives the same report table.
    assert reference.wait(timeout=300) == 0, reference_log.read_text()[-3000:]
    assert _report_table(folder) == _report_table(tmp_path / 'reference')
  finally:
    if reference.poll() is None:
      reference.kill()
      reference.wait()


# ---- two processes on one workdir --------------------------------------------------------


def test_second_process_on_a_workdir_stops_at_once_naming_the_first(cimt_data_dir, tmp_path,
                                                                      zygote):
  workdir = tmp_path / 'run'
  # Far more steps than the test lasts (400 finished in ~9 s, sometimes before the SIGTERM
  # came); SIGTERM stops the run at its next log row (every 2 steps), so no step count is waited.
  args = [*TRAIN, '--config.train.steps=100000', '--config.train.eval_every=100000',
          f'--config.data.data_dir={cimt_data_dir}', f'--workdir={workdir}']
  log = tmp_path / 'first.log'
  first = _popen(zygote, args, log)
  try:
    _wait_for(lambda: (workdir / 'metrics.jsonl').exists(), first, log, 'a metrics row')
    start = time.time()
    second = _run(zygote, args, timeout=120)
    seconds = time.time() - start
    assert second.returncode == 1, second.stderr[-3000:]
    assert TRACEBACK not in second.stderr
    message = second.stderr[second.stderr.index('medft: error:'):]
    assert f'pid {first.pid} on host' in message and 'medft.lock' in message, message
    assert f'--workdir={workdir}' in message and 'Wait for that process' in message
    assert seconds < 60, f'the second process took {seconds:.0f} s to stop'
    assert first.poll() is None, 'the first process did not survive the second'
  finally:
    first.send_signal(signal.SIGTERM)
    code = first.wait(timeout=120)
  assert code == 143, log.read_text()[-3000:]
  steps = [r['step'] for r in _rows(workdir / 'metrics.jsonl')]
  assert steps == sorted(set(steps)), 'duplicate or reordered metrics rows'
  assert not _leftovers(workdir)
  assert (workdir / 'medft.lock').read_text() == ''  # released


def test_lock_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path, caplog):
  path = tmp_path / 'medft.lock'
  with locks.Lock(path, 'the folder X'):
    record = json.loads(path.read_text())
    assert record['pid'] == os.getpid() and record['host']
    with pytest.raises(medft.LockedError, match=rf'the folder X is in use by pid {os.getpid()} '
                                                r'on host .* \(lock file .*medft.lock\)'):
      locks.Lock(path, 'the folder X').acquire()
  assert path.read_text() == ''
  # A record left by a process that died (its flock went with it).
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  path.write_text(json.dumps({'host': record['host'], 'pid': dead.pid, 'since': 0.0}))
  caplog.set_level(logging.WARNING, logger='absl')
  with locks.Lock(path, 'the folder X'):
    assert json.loads(path.read_text())['pid'] == os.getpid()
  assert f'Took over the lock of the folder X ({path}) from pid {dead.pid}' in caplog.text


# ---- full and read-only disks ------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs (root only); unmounted afterwards."""
  mount = tmp_path / 'small'
  mount.mkdir()
  if not IS_ROOT or shutil.which('mount') is None:
    pytest.skip('mounting a tmpfs needs root and mount(8)')
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mount)],
                        capture_output=True, text=True)
  if done.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
  yield mount
  subprocess.run(['umount', '-l', str(mount)], check=False)


def test_disk_full_workdir_is_named_and_nothing_partial_left(cimt_data_dir, small_disk,
                                                              zygote):
  workdir = small_disk / 'run'
  args = [*TRAIN, '--config.train.steps=4', '--config.train.eval_every=2',
          f'--config.data.data_dir={cimt_data_dir}', f'--workdir={workdir}']
  done = _run(zygote, args)
  assert done.returncode == 1, done.stderr[-3000:]
  assert TRACEBACK not in done.stderr, done.stderr[-3000:]
  message = done.stderr[done.stderr.index('medft: error:'):]
  assert str(small_disk) in message and 'needs about' in message and 'MiB' in message, message
  assert 'larger disk' in message
  assert not _leftovers(small_disk), _leftovers(small_disk)
  assert not list(workdir.glob('checkpoints/*/[0-9]*'))
  # With room on the disk, the same command proceeds on what was left.
  subprocess.run(['mount', '-o', 'remount,size=64m', str(small_disk)], check=True)
  again = _run(zygote, args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.loads((workdir / 'results.json').read_text())['steps'] == 4


# ---- torn and damaged run files ----------------------------------------------------------


@pytest.fixture(scope='module')
def finished_run(cimt_data_dir, tmp_path_factory):
  """A finished tiny run (10 steps, checkpoints at 5 and 10) to damage copies of."""
  workdir = tmp_path_factory.mktemp('finished') / 'run'
  config = tiny.config(cimt_data_dir, steps=10)
  medft.train(config, workdir)
  return config, workdir


def _copy(run: Path, to: Path) -> Path:
  shutil.copytree(run, to)
  return to


def test_torn_last_metrics_line_is_dropped_on_resume(finished_run, tmp_path, caplog,
                                                     monkeypatch):
  config, run = finished_run
  workdir = _copy(run, tmp_path / 'run')
  (workdir / 'results.json').unlink()
  rows = (workdir / 'metrics.jsonl').read_text()
  with (workdir / 'metrics.jsonl').open('a') as f:
    f.write('{"step": 11, "loss": 0.6')  # a crash in the middle of a write
  monkeypatch.setattr(progress, 'EVERY_S', 0.0)  # every evaluation chunk logs its progress
  caplog.set_level(logging.INFO, logger='absl')
  results = medft.train(config, workdir)
  assert (workdir / 'metrics.jsonl').read_text() == rows
  assert 'its last line is torn' in caplog.text
  expected = json.loads((run / 'results.json').read_text())  # evaluated again: the same
  assert {k: v for k, v in results.items() if k != 'checkpoints'} == \
      {k: v for k, v in expected.items() if k != 'checkpoints'}
  assert 'test evaluation:' in caplog.text and 'patches/s' in caplog.text


def test_damaged_metrics_line_results_and_checkpoint_are_named(finished_run, tmp_path):
  config, run = finished_run
  # A damaged line before the last: not a crash artefact; named with its line number.
  workdir = _copy(run, tmp_path / 'metrics')
  (workdir / 'results.json').unlink()
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  lines[0] = lines[0][:10]
  (workdir / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
  with pytest.raises(medft.InputFileError, match=r'metrics.jsonl, line 1, is damaged.*Delete '
                                                 'that line'):
    medft.train(config, workdir)
  # results.json of the wrong shape or torn.
  for junk in ('{"val_auc": 0.5', '[1, 2]'):
    workdir = _copy(run, tmp_path / f'results{len(junk)}')
    (workdir / 'results.json').write_text(junk)
    with pytest.raises(medft.InputFileError, match=r'results.json is damaged .*delete it and '
                                                   'repeat the command'):
      medft.train(config, workdir)
  # A checkpoint whose array files were torn.
  workdir = _copy(run, tmp_path / 'ckpt')
  (workdir / 'results.json').unlink()
  step_dir = next((workdir / 'checkpoints' / 'latest').glob('[0-9]*'))
  for f in step_dir.rglob('*'):
    if f.is_file() and f.stat().st_size > 64:
      f.write_bytes(f.read_bytes()[:f.stat().st_size // 3])
  with pytest.raises(medft.InputFileError, match=rf'checkpoint {step_dir} cannot be read.*'
                                                 rf'delete {step_dir}'):
    medft.train(config, workdir)


def test_workdir_that_trained_nothing_takes_the_corrected_config(finished_run, tmp_path):
  config, run = finished_run
  workdir = tmp_path / 'run'
  workdir.mkdir()
  stale = tiny.config('/elsewhere', steps=10)  # e.g. a bad value that failed after creation
  files.write_marker(workdir, 'run')
  (workdir / 'config.json').write_text(json.dumps(medft.trainer._config_dict(stale)))
  config2 = tiny.config(config.data.data_dir, steps=2)
  assert medft.train(config2, workdir)['steps'] == 2
  assert json.loads((workdir / 'config.json').read_text()) == \
      medft.trainer._config_dict(config2)
  # Once a row or checkpoint exists, the workdir belongs to its config.
  with pytest.raises(ValueError, match='different config'):
    medft.train(tiny.config(config.data.data_dir, steps=3), workdir)


def test_workdir_argument_is_checked(cimt_data_dir, tmp_path):
  config = tiny.config(cimt_data_dir, steps=2)
  with pytest.raises(medft.ConfigError, match='--workdir is empty'):
    medft.train(config, '')
  with pytest.raises(TypeError, match='workdir must be a folder path'):
    medft.train(config, 3)
  (tmp_path / 'notes.txt').write_text('mine\n')
  with pytest.raises(medft.NotOursError, match='folder of other files'):
    medft.train(config, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt']


def test_sweep_whose_every_run_failed_raises(cimt_data_dir, tmp_path, monkeypatch):
  # medft.validate refuses lr=inf up front; bypassed so that the run itself fails in the loop.
  monkeypatch.setattr(medft.validate, 'check_config', lambda *args, **kwargs: None)
  config = cimt.get_config('synthetic,arms=scratch,fractions=1.0,seeds=0')
  base = tiny.config(cimt_data_dir, steps=4)
  for block in ('model', 'task', 'train', 'data'):
    config[block].update(base[block].to_dict())
  config.input_size, config.optim.base_lr = 67, float('inf')
  with pytest.raises(medft.NonFiniteError, match=r'every run of the sweep .* failed \(1\): '
                                                 r'scratch/1.0/0: arm scratch: non-finite'):
    medft.sweep(config, tmp_path / 'study')
  assert (tmp_path / 'study' / 'scratch' / '1.0' / '0' / 'failed.json').exists()


# ---- prepared data -----------------------------------------------------------------------


@pytest.fixture
def download(cimt_data_dir, tmp_path):
  """A CUBS-layout download folder (the synthetic twin's raw files) and a config for it."""
  raw = next((cimt_data_dir / 'synthetic').glob('cubs-*')) / 'raw'
  manual = tmp_path / 'CUBS'
  shutil.copytree(raw, manual)
  cfg = tiny.config(tmp_path / 'tfds').data
  cfg.name, cfg.manual_dir = 'cubs', str(manual)
  return manual, cfg


def test_prepared_copy_follows_its_download_folder(download, caplog):
  manual, cfg = download
  before = data.load(cfg)
  prepared = Path(before.info['prepared_dir'])
  held = json.loads((prepared / data.dataset.FINGERPRINT_FILE).read_text())
  assert held['files'] == sum(1 for p in manual.rglob('*') if p.is_file())
  assert data.load(cfg).info == before.info  # unchanged folder: the copy is reused
  # The user removes a damaged image and its annotations from the download.
  gone = sorted((manual / 'IMAGES').iterdir())[0].stem
  for path in manual.rglob(f'{gone}*'):
    path.unlink()
  caplog.set_level(logging.WARNING)
  after = data.load(cfg)
  assert 'changed since' in caplog.text and 'preparing it again' in caplog.text
  assert after.info['prepared_dir'] == str(prepared)
  assert sum(after.info['num_examples'].values()) == sum(before.info['num_examples'].values()) - 1
  assert gone not in [i for v in after.splits.values() for i in v.ids]
  assert not _leftovers(prepared.parents[2])


@pytest.mark.parametrize('damage', ['dataset_info', 'array_record'])
def test_damaged_prepared_copy_is_named(download, damage):
  manual, cfg = download
  prepared = Path(data.load(cfg).info['prepared_dir'])
  if damage == 'dataset_info':
    target = prepared / 'dataset_info.json'
    target.write_text('{"name": "cu')
  else:
    target = next(prepared.glob('*.array_record*'))
    target.write_bytes(target.read_bytes()[:target.stat().st_size // 2])
  with pytest.raises(medft.InputFileError, match=r'(cannot be read).*(Delete )'):
    data.load(cfg)
  with pytest.raises(medft.InputFileError) as e:
    data.load(cfg)
  assert str(target if damage == 'dataset_info' else prepared) in str(e.value)


def test_progress_lines_have_rate_share_and_eta():
  lines = []
  p = progress.Progress('test evaluation', 'patches', total=200, every_s=0.0,
                        log=lambda fmt, *a: lines.append(fmt % a))
  predict = progress.wrap_predict(lambda x: x, p)
  for _ in range(4):
    predict([0] * 50)
  p.done()
  assert lines[0].startswith('test evaluation: 50/200 patches (25%), ')
  assert 'patches/s, ETA 0:00:0' in lines[0]
  assert lines[-1].startswith('test evaluation: 200 patches in 0:00:00')


def test_damaged_feature_cache_file_is_named_and_rebuilt(tmp_path, caplog):
  import numpy as np

  from medft import feature_cache
  trunk = lambda patches: patches.reshape(len(patches), -1).astype(np.float32) * 2  # noqa: E731
  path = feature_cache.FeatureCache._file(tmp_path, 'k' * 32)
  path.write_bytes(b'PK\x03\x04 torn by a crash')
  caplog.set_level(logging.WARNING, logger='absl')
  cache = feature_cache.FeatureCache(trunk, 'k' * 32, str(tmp_path), 2**20)
  assert f'Feature cache {path} is unreadable (BadZipFile' in caplog.text
  patches = np.arange(24, dtype=np.uint8).reshape(3, 2, 2, 2)
  np.testing.assert_array_equal(cache.features(patches), trunk(patches))
  cache.save()
  again = feature_cache.FeatureCache(trunk, 'k' * 32, str(tmp_path), 2**20)
  assert len(again) == 3 and not _leftovers(tmp_path)
