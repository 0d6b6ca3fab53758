"""Shared fixtures: one synthetic data cache per test session."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
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
