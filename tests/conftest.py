"""Shared fixtures: one synthetic data cache, one set of bad-input catalogue files and one
fork server for command-line cases (tests/zygote.py) per test session."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
SHARED = TESTS.parent.parent / 'shared'

# One JAX compilation cache for the whole session (in-process runs and subprocesses alike),
# kept out of the user's ~/.cache.
os.environ.setdefault('MEDFT_CACHE_DIR', tempfile.mkdtemp(prefix='medft-test-cache-'))


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """Prepared TFDS data shared by the tests of a session (synthetic twins only)."""
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='session')
def cimt_data_dir(data_dir):
  """`data_dir` with the synthetic CIMT twin already prepared (safe for parallel readers)."""
  import tiny

  from medft import data
  data.load(tiny.config(data_dir).data)
  return data_dir


@pytest.fixture(scope='session')
def catalogue_inputs(cimt_data_dir, tmp_path_factory):
  """The files the bad-input catalogue's cases read (tests/test_bad_inputs.py and
  tests/test_bad_inputs_faults.py; no case writes them)."""
  import test_bad_inputs
  return test_bad_inputs.make_inputs(cimt_data_dir, tmp_path_factory)


@pytest.fixture(scope='session')
def zygote():
  """Starts `python <command>` processes forked from one interpreter that has JAX, Flax and
  medft imported (tests/zygote.py): a command-line case then costs its own work, not the
  imports. Each command gets the environment it is given, in full."""
  import zygote as server
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  runner = server.Zygote(ROOT, env)
  yield runner
  runner.close()
