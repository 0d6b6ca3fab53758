"""medft command line: one arm, a sweep, automatic depth selection or a report, from a config.

  python run.py --config=configs/cimt.py:synthetic,depth=scratch,steps=300 --workdir=/tmp/cimt
  python run.py --config=configs/cimt.py:demo --mode=sweep --workdir=demo     # offline demo
  python run.py --config=configs/cimt.py:demo --mode=auto --workdir=demo      # depth on val AUC
  python run.py --mode=report --workdir=demo                                  # re-assemble
  python run.py --config=configs/imagenet_pretrain.py --mode=pretrain --workdir=weights/in1k

Flags parse here; the work is one call into the `medft` library.
"""

import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import medft
import medft.parallel

MODES = {
    'train': lambda config, workdir: medft.train(config, workdir),
    'sweep': lambda config, workdir: medft.sweep(config, workdir),
    'auto': lambda config, workdir: medft.auto_tune(config, workdir),
    'report': lambda config, workdir: medft.report.build_report(workdir),
    'pretrain': lambda config, workdir: medft.pretrain.pretrain(config, workdir),
}

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/cimt.py:depth=fc7.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and results.')
flags.DEFINE_enum('mode', 'train', list(MODES),
                  'train: one arm (config.depth); sweep: every arm x fraction x seed of '
                  'config.sweep, then the report; auto: deepen from fc8 while validation AUC '
                  'improves; report: rebuild report.md/json/csv from --workdir; pretrain: train '
                  'a source model (config.pretrain) into --workdir.')
flags.DEFINE_bool('verbose', False, 'Show Python tracebacks and library debug logs.')
flags.mark_flags_as_required(['workdir'])
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
  medft.parallel.initialize_distributed()
  try:
    if FLAGS.config is None and FLAGS.mode != 'report':
      raise ValueError(f'--mode={FLAGS.mode} needs --config (e.g. configs/cimt.py:demo).')
    MODES[FLAGS.mode](FLAGS.config, FLAGS.workdir)
  except medft.Preempted as e:
    print(f'medft: {e}', file=sys.stderr)
    sys.exit(143)  # 128 + SIGTERM, what a scheduler expects from a preempted job
  except USER_ERRORS as e:
    if FLAGS.verbose:
      raise
    print(f'medft: error: {e}\n(run with --verbose for the full traceback)', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
