"""The bad-input catalogue (issue 7): every way a user can get an input wrong, run for real.

Each case runs `run.py` (or `python -m medft.weights.convert`) as a process of its own from the
repo root (forked from the session's `zygote`, which has JAX and medft imported) and checks what
the user sees: a non-zero exit, one paragraph on stderr that names the culprit (key, value or
file) and says what to do, no Python traceback (unless --verbose), and no file of the workdir
(or the converter's --out) created or changed. The cases of a session
run concurrently in a thread pool (each in its own folders, so the outcome of one case never
depends on another); the test of each case then checks its own outcome.

    pytest tests/test_bad_inputs.py        # about a minute on 2 CPU cores
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import caffe_files
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# A run that must start: width-reduced net, small input and patches, two steps.
TINY = ['--config.model.width=0.125', '--config.input_size=67', '--config.task.patch_size=32',
        '--config.train.steps=2']
TRACEBACK = 'Traceback (most recent call last)'
# Where the one-paragraph message starts: run.py, the converter, argparse (bad converter flag).
MESSAGE_START = re.compile(r'^(medft: error: |error: |python -m medft\.weights\.convert: error: )',
                           re.MULTILINE)
IS_ROOT = hasattr(os, 'geteuid') and os.geteuid() == 0


@dataclasses.dataclass(frozen=True)
class Inputs:
  """Files the cases point at, made once per session."""
  data: Path            # prepared synthetic CIMT twin (data_dir)
  alexnet_10: Path      # artifact: alexnet, width 0.125, 67x67, a 10-class head
  alexnet_w25: Path     # artifact: alexnet, width 0.25 (does not fit a width-0.125 model)
  squeeze_caffe: Path   # a valid caffemodel of a width-reduced squeezenet1_1
  truncated_caffe: Path  # its first half
  other_config: dict    # config.json of a run with another seed
  bad_raw: dict         # 'image' | 'profile' | 'cf' -> copy of `raw` with that file damaged


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input: the command, what its message must name, and what it must advise.

  `argv(inputs, case_dir)` builds the arguments; `case_dir/run` is the workdir and
  `case_dir/out` the converter's --out; `setup(inputs, case_dir)` prepares either.
  """
  name: str
  argv: Callable[[Inputs, Path], list[str]]
  culprit: Callable[[Inputs, Path], list[str]]  # substrings the message must contain
  advice: str                                   # substring saying what to do
  tool: str = 'run'                             # 'run' (run.py) or 'convert'
  env: tuple[tuple[str, str], ...] = ()
  setup: Callable[[Inputs, Path], None] | None = None
  expect: str = 'error'                         # 'error', 'traceback' (--verbose), 'success'
  forbid: str = ''                              # must not be on stderr (e.g. a data read)
  skip: str = ''


def _run_args(config_arg: str, *extra: str, data: bool = True, workdir: str = 'run'):
  """argv builder for run.py (by default with the synthetic twin's prepared data_dir);
  '{inputs.x}' and '{case}' in `extra` are filled in per case."""
  def build(inputs: Inputs, case_dir: Path) -> list[str]:
    data_dir = [f'--config.data.data_dir={inputs.data}'] if data else []
    return [f'--config=configs/cimt.py:{config_arg}', *TINY, *data_dir,
            *(e.format(inputs=inputs, case=case_dir) for e in extra),
            f'--workdir={case_dir / workdir}']
  return build


def _convert_args(src: str, fmt: str, arch: str):
  def build(inputs: Inputs, case_dir: Path) -> list[str]:
    return [f'--src={getattr(inputs, src)}', f'--format={fmt}', f'--arch={arch}',
            f'--out={case_dir / "out"}']
  return build


def _names(*parts: str):
  """Culprit substrings; '{inputs.x}' / '{case}' are filled in per case."""
  return lambda inputs, case_dir: [p.format(inputs=inputs, case=case_dir) for p in parts]


def _cubs(damaged: str, *culprit: str, advice: str) -> Case:
  return Case(f'data_{damaged}', _run_args(
      'depth=scratch', '--config.data.manual_dir={inputs.bad_raw[%s]}' % damaged,
      '--config.data.data_dir={case}_data', data=False),
      _names(*culprit), advice)


def _write_other_run(inputs: Inputs, case_dir: Path) -> None:
  (case_dir / 'run').mkdir(parents=True)
  (case_dir / 'run' / 'config.json').write_text(json.dumps(inputs.other_config))
  (case_dir / 'run' / 'metrics.jsonl').write_text('{"step": 5, "loss": 1.0}\n')


def _write_bad_json(inputs: Inputs, case_dir: Path) -> None:
  (case_dir / 'run').mkdir(parents=True)
  (case_dir / 'run' / 'config.json').write_text('{"arch": ')


def _read_only_parent(inputs: Inputs, case_dir: Path) -> None:
  (case_dir / 'locked').mkdir()
  (case_dir / 'locked').chmod(0o555)


def _file_parent(inputs: Inputs, case_dir: Path) -> None:
  (case_dir / 'notes.txt').write_text('a file, not a folder\n')


def _empty_folder(inputs: Inputs, case_dir: Path) -> None:
  (case_dir / 'weights').mkdir()


CASES = [
    # ---- config ----------------------------------------------------------------------------
    Case('unknown_config_arg', _run_args('synthetic,bogus=1'), _names("'bogus'"), 'known:'),
    Case('wrong_type_arg', _run_args('synthetic,batch=abc'), _names("batch='abc'"),
         'expected an integer'),
    Case('depth_not_in_arch', _run_args('synthetic,depth=fc9'), _names("'fc9'"),
         'choose scratch or one of'),
    Case('batch_not_divisible', _run_args('synthetic,depth=scratch,batch=3'),
         _names('train.batch=3', '2 devices'), 'use a multiple of 2',
         env=(('XLA_FLAGS', '--xla_force_host_platform_device_count=2'),)),
    # fraction fails before any data is read: its data_dir must not even be created.
    Case('fraction_zero', _run_args('synthetic,fraction=0', '--config.data.data_dir={case}/data',
                                    data=False), _names('fraction=0', '(0, 1]'), 'pass e.g.',
         forbid='dataset_info'),
    Case('fraction_above_one', _run_args('synthetic,fraction=1.5',
                                         '--config.data.data_dir={case}/data', data=False),
         _names('fraction=1.5', '(0, 1]'), 'pass e.g.', forbid='dataset_info'),
    Case('unknown_arch', _run_args('synthetic,arch=vgg16'), _names("'vgg16'"),
         'choose one of alexnet'),
    Case('unknown_override_field', _run_args('synthetic', '--config.train.batchh=16'),
         _names('--config.train.batchh', "'batchh'"), 'Did you mean "batch"'),
    Case('wrong_type_override', _run_args('synthetic', '--config.train.eval_every=often'),
         _names('--config.train.eval_every=often'), 'Give a value of the type'),
    Case('missing_config_file',
         lambda inputs, case_dir: ['--config=configs/cimt_typo.py:synthetic',
                                   f'--workdir={case_dir / "run"}'],
         _names('configs/cimt_typo.py'), 'pass an existing file'),
    # ---- weights ---------------------------------------------------------------------------
    Case('init_missing_folder', _run_args('synthetic,depth=fc7,init=/nonexistent/medft/w'),
         _names('init=/nonexistent/medft/w', 'no such folder'), 'python -m medft.weights.convert'),
    Case('init_without_meta', _run_args('synthetic,depth=fc7', '--config.init={case}/weights'),
         _names('init={case}/weights', 'meta.json'), 'python -m medft.weights.convert',
         setup=_empty_folder),
    Case('init_wrong_arch', _run_args('synthetic,depth=conv10,arch=squeezenet1_1',
                                      '--config.init={inputs.alexnet_10}'),
         _names('init={inputs.alexnet_10}', 'alexnet', 'arch=squeezenet1_1'), 'set arch=alexnet'),
    Case('init_other_width', _run_args('synthetic,depth=fc7', '--config.init={inputs.alexnet_w25}'),
         _names('init={inputs.alexnet_w25}', 'mis-shaped', 'conv1/kernel'), 'width'),
    Case('finetune_without_init', _run_args('synthetic,depth=fc7'), _names('depth=fc7', 'init='),
         'pass init=<folder'),
    Case('convert_truncated', _convert_args('truncated_caffe', 'caffe', 'squeezenet1_1'),
         _names('{inputs.truncated_caffe}'), 'truncated', tool='convert'),
    Case('convert_wrong_arch', _convert_args('squeeze_caffe', 'caffe', 'alexnet'),
         _names('{inputs.squeeze_caffe}', 'not a caffe file of alexnet'),
         'pass --arch=squeezenet1_1', tool='convert'),
    Case('convert_other_width', _convert_args('squeeze_caffe', 'caffe', 'squeezenet1_1'),
         _names('{inputs.squeeze_caffe}', 'mis-shaped', 'conv1/kernel'), 'check --arch',
         tool='convert'),
    Case('convert_unknown_format', _convert_args('squeeze_caffe', 'onnx', 'squeezenet1_1'),
         _names("--format", "'onnx'"), 'choose from', tool='convert'),
    Case('convert_format_mismatch', _convert_args('squeeze_caffe', 'keras', 'squeezenet1_1'),
         _names('{inputs.squeeze_caffe}', 'Keras HDF5'), 'not an HDF5 file', tool='convert'),
    # ---- data ------------------------------------------------------------------------------
    Case('cubs_no_manual_dir', _run_args('depth=scratch', '--config.data.data_dir={case}/data',
                                         data=False),
         _names('manual_dir', "'cubs'", 'Download CUBS', 'IMAGES/<id>.tiff', '{case}/data'),
         '--config.data.manual_dir='),
    Case('cubs_manual_dir_missing', _run_args(
        'depth=scratch', '--config.data.manual_dir={case}/CUBS',
        '--config.data.data_dir={case}/data', data=False),
         _names('{case}/CUBS', 'does not exist', 'Download CUBS', 'SEGMENTATIONS'),
         'extract it'),
    _cubs('image', '{inputs.bad_raw[image]}/IMAGES/clin_0001_L.tiff', advice='replace this file'),
    _cubs('profile', '{inputs.bad_raw[profile]}/SEGMENTATIONS/A1/clin_0001_L-LI.txt',
          advice='expected two rows'),
    _cubs('cf', '{inputs.bad_raw[cf]}/CF/clin_0001_L_CF.txt',
          advice='expected exactly one number'),
    Case('empty_split_after_fraction', _run_args('synthetic,fraction=0.01'),
         _names('fraction=0.01', 'train split empty'), 'need fraction >='),
    # ---- workdir ---------------------------------------------------------------------------
    Case('workdir_not_writable', _run_args('synthetic,depth=scratch', workdir='locked/run'),
         _names('{case}/locked'), 'choose a writable folder', setup=_read_only_parent,
         skip='root ignores folder permissions' if IS_ROOT else ''),
    Case('workdir_under_a_file', _run_args('synthetic,depth=scratch', workdir='notes.txt/run'),
         _names('{case}/notes.txt'), 'choose a writable folder', setup=_file_parent),
    Case('workdir_other_config', _run_args('synthetic,depth=scratch'),
         _names('--workdir={case}/run', 'seed'), 'Use a new --workdir', setup=_write_other_run),
    Case('feature_cache_under_a_file', _run_args(
        'synthetic,depth=fc8', '--config.init={inputs.alexnet_10}',
        '--config.train.feature_cache={case}/notes.txt/cache'),
         _names('train.feature_cache={case}/notes.txt/cache'), 'give a writable folder',
         setup=_file_parent),
    Case('workdir_damaged_config', _run_args('synthetic,depth=scratch'),
         _names('{case}/run/config.json', 'not valid JSON'), 'Use an empty --workdir',
         setup=_write_bad_json),
    # ---- --verbose shows the traceback; a head of another class count is not an error ------
    Case('verbose_traceback', lambda inputs, case_dir: [
        *_run_args('synthetic,depth=fc9')(inputs, case_dir), '--verbose'],
         _names("'fc9'"), '', expect='traceback'),
    Case('head_other_class_count', lambda inputs, case_dir: [
        *_run_args('synthetic,depth=fc8', '--config.init={inputs.alexnet_10}')(inputs, case_dir),
        '--config.task.eval_patches_per_class=4', '--config.task.eval_col_stride=32',
        '--config.task.roi_height_mm=2.0',
        '--config.train.batch=8', '--config.train.workers=1'],
         _names(), '', expect='success'),
]
assert len({c.name for c in CASES}) == len(CASES)


# ---- session inputs ------------------------------------------------------------------------


def _artifact(out: Path, width: float, num_classes: int) -> Path:
  import jax
  import jax.numpy as jnp

  from medft.models import get_model
  from medft.weights import store
  model, _ = get_model('alexnet', num_classes, width=width)
  params = model.init(jax.random.key(0), jnp.zeros((1, 67, 67, 3)), train=False)['params']
  meta = store.default_meta('alexnet', (67, 67))
  meta.num_source_classes = num_classes
  return store.save_artifact(out, jax.tree.map(np.asarray, params), meta)


def make_inputs(cimt_data_dir: Path, tmp_path_factory) -> Inputs:
  """The files the catalogue's cases read (conftest's session fixture `catalogue_inputs`)."""
  from configs import cimt
  base = tmp_path_factory.mktemp('bad_inputs')
  raw = next((cimt_data_dir / 'synthetic').glob('cubs-*')) / 'raw'
  bad_raw = {}
  for kind, (rel, junk) in {
      'image': ('IMAGES/clin_0001_L.tiff', b'II*\x00 this is not a TIFF any more'),
      'profile': ('SEGMENTATIONS/A1/clin_0001_L-LI.txt', b'10 11 12\n5.0 6.0\n'),
      'cf': ('CF/clin_0001_L_CF.txt', b'0.06 mm/px\n'),
  }.items():
    bad_raw[kind] = base / f'raw_bad_{kind}'
    shutil.copytree(raw, bad_raw[kind])
    (bad_raw[kind] / rel).write_bytes(junk)
  caffe = caffe_files.write_convolution_net(base / 'squeezenet_small.caffemodel',
                                            caffe_files.small_squeezenet())
  truncated = base / 'truncated.caffemodel'
  truncated.write_bytes(caffe.read_bytes()[:caffe.stat().st_size // 2])
  other = cimt.get_config('synthetic,depth=scratch,seed=7')
  return Inputs(
      data=cimt_data_dir, alexnet_10=_artifact(base / 'alexnet_10', 0.125, 10),
      alexnet_w25=_artifact(base / 'alexnet_w25', 0.25, 3), squeeze_caffe=caffe,
      truncated_caffe=truncated, bad_raw=bad_raw,
      other_config=json.loads(other.to_json_best_effort(sort_keys=True)))


@pytest.fixture(scope='module')
def inputs(catalogue_inputs) -> Inputs:
  return catalogue_inputs


# ---- running the cases ---------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
  case_dir: Path
  argv: list[str]
  returncode: int
  stdout: str
  stderr: str
  before: dict
  after: dict
  seconds: float


def _snapshot(folder: Path) -> dict:
  """Every path under `folder`: (size, mtime) of files, None for folders."""
  out = {}
  for path in sorted(folder.rglob('*')):
    st = path.lstat()
    out[str(path.relative_to(folder))] = None if path.is_dir() else (st.st_size, st.st_mtime_ns)
  return out


def _run_case(case: Case, inputs: Inputs, case_dir: Path, zygote) -> Outcome:
  case_dir.mkdir(parents=True)
  if case.setup:
    case.setup(inputs, case_dir)
  argv = case.argv(inputs, case_dir)
  cmd = ['run.py'] if case.tool == 'run' else ['-m', 'medft.weights.convert']
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1', **dict(case.env))
  before = _snapshot(case_dir)
  start = time.time()
  proc = zygote.run([*cmd, *argv], cwd=ROOT, env=env, timeout=240)
  seconds = time.time() - start
  after = _snapshot(case_dir)
  if case.setup is _read_only_parent:
    (case_dir / 'locked').chmod(0o755)  # so that pytest can clean up
  return Outcome(case_dir, argv, proc.returncode, proc.stdout, proc.stderr, before, after, seconds)


@pytest.fixture(scope='module')
def outcomes(request, inputs, tmp_path_factory, zygote) -> dict[str, Outcome]:
  """Runs the cases selected in this session, a few at a time (each in its own folder)."""
  selected = {item.callspec.params['case'].name for item in request.session.items
              if item.module is request.module and hasattr(item, 'callspec')
              and 'case' in item.callspec.params}
  todo = [c for c in CASES if c.name in selected and not c.skip]
  base = tmp_path_factory.mktemp('cases')
  workers = max(2, min(4, os.cpu_count() or 2))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = {c.name: pool.submit(_run_case, c, inputs, base / c.name, zygote) for c in todo}
    return {name: f.result() for name, f in futures.items()}


def _message(stderr: str) -> str:
  """The user-facing message: from its first line to the end of stderr."""
  match = MESSAGE_START.search(stderr)
  assert match, f'no error message on stderr:\n{stderr[-3000:]}'
  return stderr[match.start():]


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, inputs: Inputs, outcomes: dict[str, Outcome]):
  if case.skip:
    pytest.skip(case.skip)
  out = outcomes[case.name]
  shown = f'argv: {out.argv}\nrc={out.returncode}\nstderr:\n{out.stderr[-4000:]}'
  if case.expect == 'success':
    # The pretrained head (10 classes) is dropped and a 3-class head initialised; no error.
    assert out.returncode == 0, shown
    assert TRACEBACK not in out.stderr, shown
    results = json.loads((out.case_dir / 'run' / 'results.json').read_text())
    assert results['init'] == str(inputs.alexnet_10) and results['steps'] == 2, results
    return
  assert out.returncode != 0, shown
  if case.expect == 'traceback':  # the traceback, ending in the exception and its message
    assert TRACEBACK in out.stderr, shown
    message = out.stderr[out.stderr.rindex(TRACEBACK):]
  else:
    assert TRACEBACK not in out.stderr, shown
    message = _message(out.stderr)
    assert '\n\n' not in message.strip(), f'not one paragraph:\n{message}'
  for culprit in case.culprit(inputs, out.case_dir):
    assert culprit in message, f'{culprit!r} not named:\n{message}'
  assert case.advice in message, f'no advice {case.advice!r}:\n{message}'
  if case.forbid:
    assert case.forbid not in out.stderr, shown
  assert out.after == out.before, (
      f'{case.name} changed its folders: before {out.before}, after {out.after}')
  assert out.seconds < 120, f'{case.name} took {out.seconds:.0f} s'  # fails early, no hang
