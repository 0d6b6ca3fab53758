"""medft command line: one arm, a sweep, or automatic depth selection, from a config file.

  python run.py --config=configs/cimt.py:synthetic,depth=scratch,steps=300 --workdir=/tmp/cimt

Flags parse here; the work is one call into the `medft` library.
"""

import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import medft

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/cimt.py:depth=fc7.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and results.')
flags.DEFINE_enum('mode', 'train', ['train'], 'train: one arm (config.depth).')
flags.DEFINE_bool('verbose', False, 'Show Python tracebacks and library debug logs.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS

# Errors that describe bad input; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, KeyError,
               ImportError, medft.NonFiniteError)


class _QuietLibraries(py_logging.Filter):
  """Drops orbax's per-save INFO chatter unless --verbose."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  del argv
  if not FLAGS.verbose:
    logging.get_absl_handler().addFilter(_QuietLibraries())
  logging.set_verbosity(logging.INFO)
  try:
    medft.train(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    if FLAGS.verbose:
      raise
    print(f'medft: error: {e}\n(run with --verbose for the full traceback)', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
