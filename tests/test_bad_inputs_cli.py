"""More of the bad-input catalogue (issue 15), through the command lines a user types.

Each case runs `run.py`, `python -m medft.weights.convert`, `python -m medft.data.synthetic` or
`python -m medft.bench` as a process of its own (forked from the session's `zygote`, which has
JAX and medft imported) and checks: a non-zero exit, a message that names the
field, value or file and says what to do, no Python traceback, every file of the case folder
(workdir, --out, data_dir, compile cache) byte-identical afterwards (sha256 of each file) and
nothing new in it, and no file in the data folder a preparation may use beside it. The shared
inputs are hashed once more at the end: no case may change them. Two more tests check that a
bug inside the library keeps its traceback (`run.py` catches only `medft.UserError`).

    pytest tests/test_bad_inputs_cli.py     # about a minute on 2 CPU cores
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from medft.models import ARCHS

ROOT = Path(__file__).resolve().parents[1]
TRACEBACK = 'Traceback (most recent call last)'
# A run that would start: width-reduced net, small input and patches, two steps.
TINY = ['--config.model.width=0.125', '--config.input_size=67', '--config.train.steps=2']
TOOLS = {'run': ['run.py'], 'convert': ['-m', 'medft.weights.convert'],
         'synthetic': ['-m', 'medft.data.synthetic'], 'bench': ['-m', 'medft.bench']}
MESSAGE = ('medft: error: ', 'error: ', 'python -m medft.data.synthetic: error: ',
           'python -m medft.bench: error: ', 'python -m medft.weights.convert: error: ')


@dataclasses.dataclass(frozen=True)
class Inputs:
  """Files the cases read, made once per module (and hashed before and after)."""
  root: Path
  frames: Path        # a frames_folder tree (synthetic, 10 frames of 3 videos)
  kvasir_bad: Path    # a Kvasir-SEG tree whose kavsir_bboxes.json is a JSON list
  fumpe_bad: Path     # a FUMPE tree whose PAT002.mat is not a .mat file
  weights: Path       # a small torchvision-layout .safetensors file


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input: the command, what the message must name and what it must advise."""
  name: str
  argv: Callable[[Inputs, Path], list[str]]
  culprit: Callable[[Inputs, Path], list[str]]
  advice: str
  tool: str = 'run'
  setup: Callable[[Inputs, Path], None] | None = None


def _run(config: str, *extra: str, tiny: bool = True):
  """run.py argv; data_dir and workdir inside the case folder (both must stay absent)."""
  def build(inputs: Inputs, case: Path) -> list[str]:
    return [f'--config={config}', *(TINY if tiny else []),
            f'--config.data.data_dir={case}/data',
            *(e.format(inputs=inputs, case=case) for e in extra), f'--workdir={case}/run']
  return build


def _data(config: str, *extra: str):
  """run.py argv for a case that prepares data: data_dir beside the case folder."""
  def build(inputs: Inputs, case: Path) -> list[str]:
    return [f'--config={config}', *TINY, f'--config.data.data_dir={case}_data',
            *(e.format(inputs=inputs, case=case) for e in extra), f'--workdir={case}/run']
  return build


def _args(*parts: str):
  return lambda inputs, case: [p.format(inputs=inputs, case=case) for p in parts]


def _names(*parts: str):
  return lambda inputs, case: [p.format(inputs=inputs, case=case) for p in parts]


def _write(rel: str, content: bytes):
  def setup(inputs: Inputs, case: Path) -> None:
    (case / rel).parent.mkdir(parents=True, exist_ok=True)
    (case / rel).write_bytes(content)
  return setup


CIMT = 'configs/cimt.py:synthetic,depth=scratch'
CASES = [
    # ---- numbers out of range: refused before the workdir, data or compile cache ----------
    Case('steps_negative', _run('configs/cimt.py:synthetic,depth=scratch,steps=-5', tiny=False),
         _names('train.steps=-5', 'an integer >= 0'), 'Fix: give steps > 0'),
    Case('steps_zero', _run(CIMT, '--config.train.steps=0'),
         _names('train.steps=0', 'train.epochs=0.0', 'would not train'), 'Fix: give steps > 0'),
    Case('epochs_negative', _run(CIMT, '--config.train.epochs=-1'),
         _names('train.epochs=-1.0', '>= 0'), 'Fix:'),
    Case('patience_zero', _run(CIMT, '--config.train.patience=0'),
         _names('train.patience=0', 'an integer >= 1'), 'early stopping'),
    Case('eval_every_zero', _run(CIMT, '--config.train.eval_every=0'),
         _names('train.eval_every=0', 'an integer >= 1'), 'train.eval_every=100'),
    Case('checkpoint_every_negative', _run(CIMT, '--config.train.checkpoint_every=-1'),
         _names('train.checkpoint_every=-1', '>= 1'), 'a positive number of steps'),
    Case('dropout_above_one', _run(CIMT, '--config.model.dropout=1.5'),
         _names('model.dropout=1.5', 'in [0, 1)'), 'model.dropout=0.5'),
    Case('dtype_unknown', _run(CIMT, '--config.dtype=float17'),
         _names("dtype='float17'", 'float32, bfloat16 or float16'), 'use float32'),
    Case('input_size_too_small', _run(CIMT, '--config.input_size=16'),
         _names('input_size=16', 'at least 39 for alexnet'), '--config.input_size=39'),
    Case('seed_negative', _run('configs/cimt.py:synthetic,depth=scratch,seed=-1'),
         _names('seed=-1', '>= 0'), 'seed=0'),
    Case('val_share_zero', _run(CIMT, '--config.data.val_share=0'),
         _names('data.val_share=0.0', 'in (0, 1)'), 'holds out 0.2'),
    Case('shares_leave_no_training', _run(CIMT, '--config.data.val_share=0.5',
                                          '--config.data.test_share=0.5'),
         _names('data.val_share=0.5', 'data.test_share=0.5', 'below 1'), 'Fix:'),
    Case('init_scheme_unknown', _run(CIMT, '--config.model.init_scheme=kaiming'),
         _names("model.init_scheme='kaiming'", 'gaussian, xavier or he'), 'Fix:'),
    Case('unit_regex_invalid', _run('configs/frames.py:synthetic,depth=scratch',
                                    '--config.data.unit_regex=(vid'),
         _names("data.unit_regex='(vid'", 'regular expression'), 'Fix:'),
    # ---- the study's lists and blocks ------------------------------------------------------
    Case('sweep_duplicate_arms', _run('configs/cimt.py:synthetic,arms=fc8+fc8', '--mode=sweep'),
         _names("sweep.arms='fc8+fc8'", 'without duplicates'), 'list fc8 once'),
    Case('sweep_fraction_above_one', _run('configs/cimt.py:synthetic,depth=scratch,'
                                          'fractions=0.5+1.5', '--mode=sweep'),
         _names("sweep.fractions='0.5+1.5'", 'in (0, 1]'), 'sweep.fractions=0.25,0.5,1.0'),
    Case('sweep_bad_shard', _run('configs/cimt.py:synthetic,arms=scratch', '--mode=sweep',
                                 '--config.sweep.shard=3/2'),
         _names("sweep.shard='3/2'", '0 <= i < n'), 'e.g. 0/4'),
    Case('auto_patience_zero', _run('configs/cimt.py:synthetic,pretext', '--mode=auto',
                                    '--config.auto.patience=0'),
         _names('auto.patience=0', '>= 1'), 'depths in a row'),
    Case('pretrain_steps_zero', _run('configs/imagenet_pretrain.py:steps=0', '--mode=pretrain',
                                     tiny=False),
         _names('pretrain.steps=0', '>= 1'), 'pretrain.steps=300'),
    # ---- config files ----------------------------------------------------------------------
    Case('config_syntax_error', _args('--config={case}/mine.py', '--workdir={case}/run'),
         _names('{case}/mine.py', 'not valid Python', 'line 2'), 'fix the file',
         setup=_write('mine.py', b'def get_config(arg=None):\n  return {\n')),
    Case('config_without_get_config', _args('--config={case}/mine.py', '--workdir={case}/run'),
         _names('{case}/mine.py', 'defines no get_config()'), 'def get_config(arg=None)',
         setup=_write('mine.py', b'"""My settings."""\nSTEPS = 10\n')),
    Case('mode_without_config', _args('--mode=train', '--workdir={case}/run'),
         _names('--mode=train'), 'needs --config'),
    # ---- damaged or mismatched data: refused while reading, named by file -------------------
    Case('unit_regex_matches_no_frame', _data(
        'configs/frames.py:depth=scratch', '--config.data.manual_dir={inputs.frames}',
        r'--config.data.unit_regex=^(patient\d+)_'),
         _names('data.unit_regex=', 'matches 0 of the 10 frames', '{inputs.frames}'),
         '--config.data.unit_regex=""'),
    Case('kvasir_boxes_wrong_shape', _data(
        'configs/polyp.py:depth=scratch', '--config.data.manual_dir={inputs.kvasir_bad}'),
         _names('{inputs.kvasir_bad}/kavsir_bboxes.json', 'holds a JSON list'), 're-download it'),
    Case('fumpe_garbage_mask', _data(
        'configs/pe.py:depth=scratch', '--config.data.name=fumpe',
        '--config.data.manual_dir={inputs.fumpe_bad}'),
         _names('{inputs.fumpe_bad}/GroundTruth/PAT002.mat', 'not a MATLAB .mat file'),
         'replace this file'),
    Case('manifest_bad_rows', _data(
        'configs/frames.py:depth=scratch', '--config.data.name=manifest_classification',
        '--config.data.manifest={case}/mine/frames.csv'),
         _names('{case}/mine/frames.csv', "line 2: image 'nope.png': no such file",
                'line 3: empty subject'), 'Fix these rows',
         setup=_write('mine/frames.csv', b'image,label,subject\nnope.png,a,s1\nnope.png,b,\n')),
    Case('manifest_of_another_app', _run(
        'configs/polyp.py:depth=scratch', '--config.data.name=manifest_classification',
        '--config.data.manifest={case}/frames.csv'),
         _names("data.name='manifest_classification'", 'yields frames examples'),
         '--config=configs/frames.py'),
    # ---- the other command lines: never write over what medft did not write ---------------
    Case('synthetic_n_zero', _args('--app=cimt', '--out={case}/twin', '--n=0'),
         _names('--n=0'), 'at least one example', tool='synthetic'),
    Case('synthetic_into_a_real_download', _args('--app=cimt', '--out={case}/CUBS', '--n=2'),
         _names('--out={case}/CUBS', 'medft did not write'), 'Choose a new or empty folder',
         tool='synthetic', setup=_write('CUBS/IMAGES/clin_0001_L.tiff', b'the real image')),
    Case('convert_overwrite_foreign_folder', _args(
        '--src={inputs.weights}', '--format=safetensors', '--arch=alexnet_torchvision',
        '--out={case}/photos', '--overwrite'),
         _names('--out={case}/photos', 'not a medft weights folder'), 'choose another --out',
         tool='convert', setup=_write('photos/holiday.jpg', b'not weights')),
    Case('convert_overwrite_unmarked_meta', _args(
        '--src={inputs.weights}', '--format=safetensors', '--arch=alexnet_torchvision',
        '--out={case}/w', '--overwrite'),
         _names('--out={case}/w', "written_by='medft'"), 'move that folder away yourself',
         tool='convert', setup=_write('w/meta.json', b'{"arch": "alexnet"}')),
    Case('bench_unknown_arch', _args('--archs=vgg16', '--quick'),
         _names('--archs', "'vgg16' unknown", ', '.join(ARCHS.names())),
         'comma list', tool='bench'),
]
assert len({c.name for c in CASES}) == len(CASES)


# ---- inputs and snapshots --------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, str | None]:
  """Every path under `folder`: sha256 of files, None for folders."""
  if not folder.exists():
    return {}
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          if p.is_file() else None for p in sorted(folder.rglob('*'))}


@pytest.fixture(scope='module')
def inputs(tmp_path_factory) -> Inputs:
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  pytest.importorskip('pydicom')
  from medft.data import synthetic
  root = tmp_path_factory.mktemp('cli_inputs')
  frames = synthetic.write('frames', root / 'frames', n=10)
  kvasir = synthetic.write('polyp', root / 'kvasir', n=2, layout='kvasir_seg')
  (kvasir / 'kavsir_bboxes.json').write_text('[{"height": 10}]')
  fumpe = synthetic.write('pe', root / 'fumpe', n=2, layout='fumpe')
  (fumpe / 'GroundTruth' / 'PAT002.mat').write_bytes(b'MATLAB 5.0 MAT-file' + bytes(100))
  weights = root / 'alexnet.safetensors'
  safetensors_numpy.save_file({'features.0.weight': np.zeros((4, 3, 11, 11), np.float32)},
                              str(weights))
  return Inputs(root, frames, kvasir, fumpe, weights)


@dataclasses.dataclass
class Outcome:
  case_dir: Path
  argv: list[str]
  returncode: int
  stderr: str
  before: dict
  after: dict
  beside: dict       # the data folder beside the case folder (`<case>_data`)
  seconds: float


def _run_case(case: Case, inputs: Inputs, case_dir: Path, zygote) -> Outcome:
  case_dir.mkdir(parents=True)
  if case.setup:
    case.setup(inputs, case_dir)
  argv = case.argv(inputs, case_dir)
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  # The compile cache lives in the case folder, so that touching it shows.
  env.update(JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1', MEDFT_CACHE_DIR=str(case_dir / 'cache'),
             MEDFT_DATA_DIR=str(case_dir / 'default_data'))
  before = _snapshot(case_dir)
  start = time.time()
  proc = zygote.run([*TOOLS[case.tool], *argv], cwd=ROOT, env=env, timeout=240)
  seconds = time.time() - start
  beside = Path(f'{case_dir}_data')
  return Outcome(case_dir, argv, proc.returncode, proc.stderr, before, _snapshot(case_dir),
                 {k: v for k, v in _snapshot(beside).items() if v is not None}, seconds)


@pytest.fixture(scope='module')
def outcomes(request, inputs, tmp_path_factory, zygote) -> dict[str, Outcome]:
  """Runs the cases selected in this session, a few at a time (each in its own folder)."""
  selected = {item.callspec.params['case'].name for item in request.session.items
              if item.module is request.module and hasattr(item, 'callspec')
              and 'case' in item.callspec.params}
  todo = [c for c in CASES if c.name in selected]
  base = tmp_path_factory.mktemp('cli_cases')
  inputs_before = _snapshot(inputs.root)
  with concurrent.futures.ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 2))) as pool:
    futures = {c.name: pool.submit(_run_case, c, inputs, base / c.name, zygote) for c in todo}
    done = {name: f.result() for name, f in futures.items()}
  assert _snapshot(inputs.root) == inputs_before, 'a case changed the shared inputs'
  return done


def _message(stderr: str) -> str:
  """The user-facing message: from its start (anywhere on a line: progress bars share the
  line) to the end of stderr."""
  starts = [stderr.find(m) for m in MESSAGE if m in stderr]
  assert starts, f'no error message on stderr:\n{stderr[-3000:]}'
  return stderr[min(starts):]


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, inputs: Inputs, outcomes: dict[str, Outcome]):
  out = outcomes[case.name]
  shown = f'argv: {out.argv}\nrc={out.returncode}\nstderr:\n{out.stderr[-4000:]}'
  assert out.returncode not in (0, None), shown
  assert TRACEBACK not in out.stderr, shown
  message = _message(out.stderr)
  for culprit in case.culprit(inputs, out.case_dir):
    assert culprit in message, f'{culprit!r} not named:\n{message}'
  assert case.advice in message, f'no advice {case.advice!r}:\n{message}'
  assert out.after == out.before, f'{case.name} changed its folder:\n{out.before}\n{out.after}'
  assert not out.beside, f'{case.name} left files in its data folder: {sorted(out.beside)}'
  assert out.seconds < 120, f'{case.name} took {out.seconds:.0f} s'


# ---- bugs stay bugs ---------------------------------------------------------------------------


def _run_with(patch: str, tmp_path: Path, zygote) -> subprocess.CompletedProcess:
  """run.py in a process of its own after `patch` replaced a library function."""
  code = ('import runpy, sys\n'
          'import medft.validate\n'
          f'{patch}\n'
          f"sys.argv = ['run.py', '--config=configs/cimt.py:synthetic,depth=scratch', "
          f"'--workdir={tmp_path / 'run'}']\n"
          "runpy.run_path('run.py', run_name='__main__')\n")
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'MEDFT_CACHE_DIR': str(tmp_path / 'cache')}
  return zygote.run(['-c', code], cwd=ROOT, env=env, timeout=240)


def test_an_internal_bug_keeps_its_traceback(tmp_path, zygote):
  """A KeyError inside the library is a bug: its traceback is printed, not a user error."""
  proc = _run_with('def broken(*a, **k):\n  raise KeyError("internal-bug-key")\n'
                   'medft.validate.check_config = broken', tmp_path, zygote)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert TRACEBACK in proc.stderr and "KeyError: 'internal-bug-key'" in proc.stderr
  assert 'medft: error:' not in proc.stderr
  assert not (tmp_path / 'run').exists()


def test_a_user_error_from_the_same_place_is_one_paragraph(tmp_path, zygote):
  """The control: the same call raising a UserError prints the message, no traceback."""
  proc = _run_with('def refuse(*a, **k):\n  raise medft.validate.ConfigError("field x=1 is bad")\n'
                   'medft.validate.check_config = refuse', tmp_path, zygote)
  assert proc.returncode == 1
  assert 'medft: error: field x=1 is bad' in proc.stderr and TRACEBACK not in proc.stderr
