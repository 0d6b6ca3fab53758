"""medft command line: one arm, a sweep, automatic depth selection or a report, from a config.

  medft --config=cimt:synthetic,depth=scratch,steps=300 --workdir=/tmp/cimt   # installed
  python run.py --config=configs/cimt.py:synthetic,depth=scratch,steps=300 --workdir=/tmp/cimt
  python run.py --config=configs/cimt.py:demo --mode=sweep --workdir=demo     # offline demo
  python run.py --config=configs/cimt.py:demo --mode=auto --workdir=demo      # depth on val AUC
  python run.py --mode=report --workdir=demo                                  # re-assemble
  python run.py --config=configs/imagenet_pretrain.py --mode=pretrain --workdir=weights/in1k

`--config` takes a config file (`configs/cimt.py:ARG` in a source checkout, or a file of your
own) or a config shipped in the package by its name (`cimt:ARG`, `polyp`, `pe`, `frames`,
`imagenet_pretrain`: the files in medft/configs/), which is what works after `pip install`.
The `medft` console script and `python run.py` both run `run()` here. Flags parse here; the
work is one call into the `medft` library.
"""

import ast
import logging as py_logging
import re
import sys
import traceback
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

import medft
import medft.configs
import medft.parallel
from medft.sweep import study_setting

MODES = {
    'train': lambda config, workdir: medft.train(config, workdir),
    'sweep': lambda config, workdir: medft.sweep(config, workdir),
    'auto': lambda config, workdir: medft.auto_tune(config, workdir),
    'report': lambda config, workdir: medft.report.build_report(
        workdir, correction=('holm' if config is None
                             else study_setting(config, 'report', 'correction'))),
    'pretrain': lambda config, workdir: medft.pretrain.pretrain(config, workdir),
}

config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/cimt.py:depth=fc7, or a shipped config by name, '
    f'e.g. cimt:depth=fc7 ({", ".join(medft.configs.NAMES)}).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and results.')
flags.DEFINE_enum('mode', 'train', list(MODES),
                  'train: one arm (config.depth); sweep: every arm x fraction x seed of '
                  'config.sweep, then the report; auto: deepen from fc8 while validation AUC '
                  'improves; report: rebuild report.md/json/csv from --workdir; pretrain: train '
                  'a source model (config.pretrain) into --workdir.')
flags.DEFINE_bool('verbose', False, 'Show Python tracebacks and library debug logs.')
flags.mark_flags_as_required(['workdir'])
FLAGS = flags.FLAGS

# Errors that describe bad input (medft.errors); anything else is a bug and keeps its
# traceback.
USER_ERRORS = (medft.UserError,)


class _QuietLibraries(py_logging.Filter):
  """Drops orbax's per-save INFO chatter unless --verbose."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad --config (its file, argument or a --config.<field>
  override) ends in medft's one-paragraph error instead of a traceback, unless --verbose."""
  verbose = any(re.fullmatch(r'--verbose(=(true|1))?', a, re.IGNORECASE) for a in argv[1:])
  given, argv = argv, [_shipped_config(a) for a in argv]
  renamed = next(((new, old) for new, old in zip(argv, given) if new != old), ('', ''))
  shown = lambda message: message.replace(*renamed) if renamed[0] else message  # noqa: E731
  problem = _config_file_problem(argv)
  if problem and not verbose:
    _flag_exit(shown(problem))
  try:
    args = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config.keys()  # ml_collections defers the error of a config file it cannot load
    return args
  except (flags.Error, OSError, ValueError, TypeError, AttributeError, KeyError) as e:
    if verbose or _raised_in_config_code(e, argv):
      raise
    _flag_exit(shown(_flag_error(e, argv)))


def _shipped_config(arg: str) -> str:
  """`--config=NAME[:ARG]` with NAME a config shipped in medft/configs (no `/`, no `.py`) ->
  `--config=<that file>[:ARG]`; any other argument unchanged."""
  if not arg.startswith('--config='):
    return arg
  name, sep, rest = arg[len('--config='):].partition(':')
  path = medft.configs.path(name)
  return f'--config={path}{sep}{rest}' if path is not None else arg


def _flag_exit(message: str) -> None:
  print(f'medft: error: {message}\n(run with --verbose for the full traceback; --helpshort '
        'lists the flags)', file=sys.stderr)
  sys.exit(1)


def _config_path(argv: list[str]) -> tuple[str, Path] | None:
  """(the --config=... argument, its file) when one is given."""
  arg = next((a for a in argv if a.startswith('--config=')), None)
  if arg is None:
    return None
  return arg, Path(arg.split('=', 1)[1].split(':', 1)[0])


def _config_file_problem(argv: list[str]) -> str:
  """A config file that cannot be a config (syntax error, no get_config), in words; or ''."""
  found = _config_path(argv)
  if found is None or not found[1].is_file():
    return ''  # a missing file: ml_collections' error, handled below
  arg, path = found
  try:
    tree = ast.parse(path.read_bytes(), filename=str(path))
  except SyntaxError as e:
    return (f'{arg}: {path} is not valid Python: {e.msg} at line {e.lineno}'
            f'{f", column {e.offset}" if e.offset else ""}; fix the file.')
  except (OSError, ValueError) as e:
    return f'{arg}: cannot read {path} ({e}); pass a readable config file.'
  defines = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
  defines |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
              if isinstance(t, ast.Name)}
  defines |= {(a.asname or a.name) for n in tree.body if isinstance(n, ast.ImportFrom)
              for a in n.names}
  if 'get_config' not in defines:
    return (f'{arg}: {path} defines no get_config(); a config file is a Python module with '
            '`def get_config(arg=None) -> ml_collections.ConfigDict` (see configs/cimt.py).')
  return ''


def _raised_in_config_code(e: Exception, argv: list[str]) -> bool:
  """A builtin error raised by the config file's own code (not a UserError): a bug in that
  code, which keeps its traceback."""
  found = _config_path(argv)
  if found is None:
    return False
  chain = [e]
  while chain[-1].__context__ is not None:
    chain.append(chain[-1].__context__)
  target = found[1].resolve()
  for err in chain:
    if isinstance(err, medft.UserError):
      return False
    frames = traceback.extract_tb(err.__traceback__)
    if frames and Path(frames[-1].filename).resolve() == target:
      return True
  return False


def _flag_error(e: Exception, argv: list[str]) -> str:
  """The culprit and the fix, without ml_collections' embedded traceback."""
  config_arg = next((a for a in argv if a.startswith('--config=')), '--config')
  if isinstance(e, OSError):
    reason = ' '.join(line.strip() for line in str(e).splitlines()[-1:])
    return (f'{config_arg}: cannot load the config file ({reason}); pass an existing file, '
            'e.g. --config=configs/cimt.py:synthetic, or a shipped config by name, e.g. '
            f'--config=cimt:synthetic ({", ".join(medft.configs.NAMES)}).')
  chain = [e]
  while chain[-1].__context__ is not None:
    chain.append(chain[-1].__context__)
  wrapped = [i for i, c in enumerate(chain) if 'Error whilst parsing config file' in str(c)]
  if wrapped and wrapped[-1] + 1 < len(chain):  # raised inside get_config(arg)
    return f'{config_arg}: {chain[wrapped[-1] + 1]}'
  if isinstance(e, (AttributeError, KeyError)):  # --config.<field> names no field
    text = str(e).replace("\\'", "'")
    name = (re.findall(r"'(\w+)'", text) or ['?'])[0]
    hint = re.search(r'Did you mean "\w+" instead of "\w+"\?', text)
    culprits = [a.split('=', 1)[0] for a in argv
                if a.startswith('--config.') and name in re.split(r'[.=]', a[2:])]
    return (f'{", ".join(culprits) or "a --config.<field> override"}: the config has no field '
            f'{name!r}.{" " + hint.group(0) if hint else ""} Overrides must name an existing '
            'field of the config file (e.g. --config.train.batch=16).')
  if str(e).startswith('flag --config.'):  # a value absl cannot convert to the field's type
    return f'{e}. Give a value of the type of that field in the config file.'
  return str(e)


def main(argv):
  del argv
  if not FLAGS.verbose:
    logging.get_absl_handler().addFilter(_QuietLibraries())
  logging.set_verbosity(logging.INFO)
  medft.parallel.initialize_distributed()
  try:
    if FLAGS.config is None and FLAGS.mode != 'report':
      raise medft.ConfigError(f'--mode={FLAGS.mode} needs --config (e.g. '
                              'configs/cimt.py:demo, or cimt:demo).')
    MODES[FLAGS.mode](FLAGS.config, FLAGS.workdir)
  except medft.Preempted as e:
    print(f'medft: {e}', file=sys.stderr)
    sys.exit(143)  # 128 + SIGTERM, what a scheduler expects from a preempted job
  except USER_ERRORS as e:
    if FLAGS.verbose:
      raise
    print(f'medft: error: {e}\n(run with --verbose for the full traceback)', file=sys.stderr)
    sys.exit(1)


def run() -> None:
  """The `medft` console script (and `python run.py`, `python -m medft`)."""
  entry = sys.modules['__main__']
  if not entry.__doc__:  # the console script's wrapper: --help shows this module's usage
    entry.__doc__ = __doc__
  for name in ('config', 'workdir', 'mode', 'verbose'):  # listed by --helpshort
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
