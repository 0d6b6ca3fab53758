"""The trainer end to end: devices, processes, resume, init=, guards (tiny CIMT config)."""

import itertools
import json
import os
import random
import signal
import socket
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import tiny

import medft
from medft.models import get_model
from medft.weights import store

DRIVER = Path(__file__).with_name('run_train.py')
_LOGS = itertools.count()


def _run(zygote, workdir, data_dir, steps, *overrides, devices=1, env=None, wait=True):
  """`python tests/run_train.py ...` as a process of its own (forked from the session's
  `zygote`), with `devices` host devices; its output goes to `workdir`-<n>.log."""
  e = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
           JAX_PLATFORMS='cpu', **(env or {}))
  cmd = [str(DRIVER), str(workdir), str(data_dir), str(steps), *overrides]
  log = Path(f'{workdir}-{next(_LOGS)}.log')
  log.parent.mkdir(parents=True, exist_ok=True)
  proc = zygote.popen(cmd, env=e, stdout=log, stderr=log, cwd=Path.cwd())
  proc.log = log
  if not wait:
    return proc
  proc.wait(timeout=300)
  out = log.read_text()
  assert proc.returncode == 0, out[-3000:]
  return out


def _params(workdir):
  with np.load(Path(workdir, 'final_params.npz')) as f:
    return {k: f[k] for k in f.files}


def _results(workdir):
  r = json.loads(Path(workdir, 'results.json').read_text())
  r.pop('checkpoints')
  return r


@pytest.fixture(scope='module')
def one_device_run(tmp_path_factory, cimt_data_dir, zygote):
  wd = tmp_path_factory.mktemp('one') / 'run'
  _run(zygote, wd, cimt_data_dir, 20, 'model.dropout=0')
  return wd


@pytest.mark.slow
def test_four_devices_match_one(one_device_run, cimt_data_dir, tmp_path, zygote):
  _run(zygote, tmp_path / 'four', cimt_data_dir, 20, 'model.dropout=0', devices=4)
  one, four = _params(one_device_run), _params(tmp_path / 'four')
  assert one.keys() == four.keys()
  for k in one:
    np.testing.assert_allclose(four[k], one[k], rtol=2e-4, atol=2e-5, err_msg=k)
  assert not np.array_equal(one['conv1/kernel'], _params(one_device_run)['conv1/kernel'] + 1)


@pytest.mark.slow
def test_two_processes_match_one(one_device_run, cimt_data_dir, tmp_path, zygote):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  procs = [_run(zygote, tmp_path / 'multi', cimt_data_dir, 20, 'model.dropout=0', wait=False,
                env={'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
                     'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': str(i)}) for i in range(2)]
  outs = [(p.wait(timeout=300), p.log.read_text())[1] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
  one, multi = _params(one_device_run), _params(tmp_path / 'multi')
  for k in one:
    np.testing.assert_allclose(multi[k], one[k], rtol=2e-4, atol=2e-5, err_msg=k)
  assert _results(tmp_path / 'multi')['best_step'] == _results(one_device_run)['best_step']


def _latest_logged_step(workdir):
  f = Path(workdir, 'metrics.jsonl')
  if not f.exists():
    return 0
  lines = [line for line in f.read_text().splitlines() if line.strip()]
  return json.loads(lines[-1])['step'] if lines else 0


@pytest.mark.slow
def test_resume_after_kill_is_bit_identical(cimt_data_dir, tmp_path, zygote):
  steps, args = 30, ('train.log_every=1',)
  _run(zygote, tmp_path / 'ref', cimt_data_dir, steps, *args)
  rng = random.Random(0)
  kills = [(signal.SIGKILL, rng.randint(3, 12)), (signal.SIGKILL, rng.randint(13, 27)),
           (signal.SIGTERM, rng.randint(3, 27))]
  for i, (sig, at) in enumerate(kills):
    wd = tmp_path / f'killed{i}'
    proc = _run(zygote, wd, cimt_data_dir, steps, *args, wait=False)
    while proc.poll() is None and _latest_logged_step(wd) < at:
      time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert not Path(wd, 'results.json').exists(), f'run finished before the kill at {at}'
    if sig == signal.SIGTERM:  # the preemption notice checkpoints before exiting
      latest = [p.name for p in Path(wd, 'checkpoints', 'latest').iterdir()
                if p.name.isdigit()]
      assert latest and int(latest[0]) >= at, latest
    _run(zygote, wd, cimt_data_dir, steps, *args)
    ref, got = _params(tmp_path / 'ref'), _params(wd)
    for k in ref:
      assert got[k].tobytes() == ref[k].tobytes(), f'{k} differs after a kill at step {at}'
    assert _results(wd) == _results(tmp_path / 'ref')


def test_fine_tuning_from_init_keeps_frozen_tensors_of_the_file(cimt_data_dir, tmp_path):
  model, units = get_model('alexnet', 3, width=0.125, scheme='he')
  source = jax.tree.map(np.asarray, model.init(jax.random.key(7), np.zeros((1, 67, 67, 3)))
                        ['params'])
  store.save_artifact(tmp_path / 'w', source, store.default_meta('alexnet', (67, 67)))
  config = tiny.config(cimt_data_dir, steps=10, depth='fc7', init=str(tmp_path / 'w'))
  medft.train(config, tmp_path / 'run')
  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager((tmp_path / 'run' / 'checkpoints' / 'latest').absolute())
  params = mngr.restore(mngr.latest_step())['state']['params']
  for unit in units[:units.index('fc7')]:
    for name in ('kernel', 'bias'):
      assert np.asarray(params[unit][name]).tobytes() == source[unit][name].tobytes(), unit
  assert not np.array_equal(params['fc7']['kernel'], source['fc7']['kernel'])
  assert not np.array_equal(params['fc8']['kernel'], source['fc8']['kernel'])  # re-initialised


def test_init_that_does_not_fit_is_explained(cimt_data_dir, tmp_path):
  model, _ = get_model('alexnet', 5, width=0.25)
  other = jax.tree.map(np.asarray, model.init(jax.random.key(0), np.zeros((1, 67, 67, 3)))
                       ['params'])
  store.save_artifact(tmp_path / 'w', other, store.default_meta('alexnet', (67, 67)))
  config = tiny.config(cimt_data_dir, steps=2, depth='fc8', init=str(tmp_path / 'w'))
  with pytest.raises(ValueError, match=r'mis-shaped \(14\): conv1/bias: file \(24,\) vs model '
                                       r'\(12,\)'):
    medft.train(config, tmp_path / 'run')


def test_non_finite_loss_stops_with_step_and_arm(cimt_data_dir, tmp_path, monkeypatch):
  config = tiny.config(cimt_data_dir, steps=10)
  config.optim.base_lr = float('inf')
  # medft.validate refuses lr=inf up front; bypassed to reach the in-loop guard, which catches
  # non-finite values that only arise during training.
  monkeypatch.setattr(medft.validate, 'check_config', lambda *args, **kwargs: None)
  with pytest.raises(medft.NonFiniteError, match=r'arm scratch: non-finite .* at step \d+'):
    medft.train(config, tmp_path / 'run')
  config.train.skip_nonfinite = True
  result = medft.train(config, tmp_path / 'skip')
  assert result['steps'] == 10  # every step skipped, none applied
  rows = [json.loads(line) for line in (tmp_path / 'skip' / 'metrics.jsonl').open()]
  assert sum(r['skipped_nonfinite'] for r in rows) == 10


def test_workdir_of_another_config_is_refused_untouched(cimt_data_dir, tmp_path):
  medft.train(tiny.config(cimt_data_dir, steps=2), tmp_path / 'run')
  before = {p: p.stat().st_mtime_ns for p in (tmp_path / 'run').rglob('*')}
  with pytest.raises(ValueError, match=r'different config \(differs in: train.steps\)'):
    medft.train(tiny.config(cimt_data_dir, steps=3), tmp_path / 'run')
  assert {p: p.stat().st_mtime_ns for p in (tmp_path / 'run').rglob('*')} == before
