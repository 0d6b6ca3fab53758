"""`python -m medft.bench --quick` runs end to end and writes sane rows."""

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from medft import models, tuning
from medft.bench import cases, core, flops, measure, torch_twin

ROOT = Path(__file__).resolve().parents[1]


def test_peak_table_knows_accelerators_and_not_cpus():
  assert flops.peak_flops('NVIDIA H100 80GB HBM3') == 495e12
  assert flops.peak_flops('NVIDIA H100 PCIe', 'bfloat16') == 756e12
  assert flops.peak_flops('TPU v5 lite') == 197e12
  assert flops.peak_flops('cpu') is None


def test_torch_twins_have_the_units_of_the_medft_models():
  pytest.importorskip('torch')
  s = core.QUICK
  for arch in core.Settings().archs + ('vit_b16',):
    _, units = models.get_model(arch, core.NUM_CLASSES)
    _, torch_units = torch_twin.torch_net(arch, s)
    assert tuple(torch_units) == units
    step = torch_twin.torch_train_step(arch, units[-1], s, batch=2)
    step()  # a frozen trunk still runs forward; only the head has gradients


def _conv_dot_operand_types(stablehlo: str) -> list[set[str]]:
  """Element types of the operands of every convolution and dot_general in a StableHLO text."""
  out = []
  for line in stablehlo.splitlines():
    if 'stablehlo.convolution' in line or 'stablehlo.dot_general' in line:
      operands = line[line.rindex(': (') + 3:line.rindex(') ->')]
      out.append(set(re.findall(r'x([a-z]+[0-9]+)>', operands)))
  return out


def test_bfloat16_bench_computes_in_bfloat16_and_rows_say_so():
  s = dataclasses.replace(core.QUICK, dtype='bfloat16', input_size=67, archs=('alexnet',),
                          reps=1, warmup=0)
  case = cases.jax_train_case('alexnet', 'scratch', s)
  # Forward, input and weight gradients: every conv and matmul of the step takes bf16 operands
  # (XLA:CPU may then compute them in f32; GPUs and TPUs run them in bf16).
  types = _conv_dot_operand_types(case.lowered.as_text())
  assert len(types) > 20 and all(t == {'bf16'} for t in types), types
  state = case.lowered.in_avals[0][0]  # parameters and optimizer state stay float32
  floats = {a.dtype.name for a in jax.tree.leaves((state.params, state.opt_state))} - {'int32'}
  assert floats == {'float32'}
  f32 = cases.jax_train_case('alexnet', 'scratch', dataclasses.replace(s, dtype='float32'))
  assert all(t == {'f32'} for t in _conv_dot_operand_types(f32.lowered.as_text()))
  rows = measure.run(s, use_torch=core.torch_available(), parts=('train',), log=lambda r: None)
  assert {r['name'] for r in rows} == {'train/alexnet/scratch', 'train/alexnet/fc8',
                                       'train/alexnet/fc8/cached', 'infer/alexnet'}
  assert all(r['dtype'] == 'bfloat16' for r in rows)
  if core.torch_available():  # on the CPU the torch twin stays float32
    assert all(r['torch_dtype'] == 'float32' for r in rows if 'vs_torch' in r)


def test_peak_fraction_uses_the_peak_of_the_compute_dtype(monkeypatch):
  monkeypatch.setattr(core, 'device_info',
                      lambda: {'device': 'NVIDIA H100 80GB HBM3', 'devices': 1})
  case = cases.JaxCase(run=lambda: None, compile_s=0.0, flops=(1e12, 'test'), hlo='')
  assert flops.flop_fields(case, 1.0, 'bfloat16')['peak_fraction'] == pytest.approx(1 / 989)
  assert flops.flop_fields(case, 1.0)['peak_fraction'] == pytest.approx(1 / 495)


@pytest.mark.slow
def test_quick_bench_writes_every_row(tmp_path):
  out = tmp_path / 'bench.json'
  proc = subprocess.run([sys.executable, '-m', 'medft.bench', '--quick', f'--out={out}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())
  by_name = {r['name']: r for r in rows}
  expected = ['pipeline/cimt/train_batch', 'dense/cimt/one_patch_per_call', 'dense/cimt/batch16']
  for arch in core.QUICK.archs:
    _, units = models.get_model(arch, core.NUM_CLASSES)
    expected += [f'train/{arch}/{d}' for d in ('scratch', units[-1])] + [f'infer/{arch}']
    expected.append(f'train/{arch}/{units[-1]}/cached')
    assert set(tuning.arms(units)) >= {'scratch', units[-1]}
  assert sorted(by_name) == sorted(expected)
  with_torch = core.torch_available()
  assert 'dtype=float32' in proc.stdout.splitlines()[0]
  for row in rows:
    for key in ('name', 'arch', 'depth', 'batch', 'step_ms', 'img_per_s'):
      assert key in row, (row['name'], key)
    assert row['dtype'] == 'float32'
    assert row['step_ms'] > 0 and math.isfinite(row['img_per_s']) and row['img_per_s'] > 0
    if row['name'].startswith(('train/', 'infer/')):
      assert row['compile_s'] > 0
      if with_torch and not row['name'].endswith('/cached'):
        assert row['torch_img_per_s'] > 0
        assert row['vs_torch'] == pytest.approx(row['img_per_s'] / row['torch_img_per_s'])
  # Frozen units get no backward pass: the head-only arm compiles to the forward's
  # convolutions and matmuls plus the head's weight gradient, and for a convolutional head
  # (SqueezeNet's conv10) on XLA:CPU its bias gradient (`layers.channel_sum`: a matmul).
  for arch in core.QUICK.archs:
    _, units = models.get_model(arch, core.NUM_CLASSES)
    head = by_name[f'train/{arch}/{units[-1]}']
    bias_dot = arch.startswith('squeezenet') and jax.default_backend() == 'cpu'
    assert head['hlo_conv_dot'] == head['fwd_conv_dot'] + 1 + bias_dot
    assert by_name[f'train/{arch}/scratch']['hlo_conv_dot'] > head['hlo_conv_dot'] + 1
    cached = by_name[f'train/{arch}/{units[-1]}/cached']
    assert cached['vs_scratch'] > 0 and cached['vs_uncached'] > 0
  assert by_name['pipeline/cimt/train_batch']['vs_train_step'] > 0
  assert by_name['dense/cimt/batch16']['max_abs_diff_vs_one'] < 1e-4


@pytest.mark.bench
def test_study_phases_account_for_the_wall_time_of_a_real_sweep():
  """A two-run polyp sweep (scratch at two fractions: no source model) timed by phase."""
  from medft.bench import study
  rows = []
  study.bench_study(core.QUICK, rows.append, apps=('polyp',), steps=2,
                    design='arms=scratch,fractions=0.5+1.0,seeds=0')
  row, = rows
  phases = row['phases_s']
  assert row['runs'] == 2 and phases['source_s'] == 0
  for name in study.RUN_PHASES + ('prepare_s', 'report_s'):
    assert phases[name] > 0, name
  # The phases cover the wall time (what is left: sweep planning, the plan file, logging).
  assert sum(phases.values()) == pytest.approx(row['wall_s'], rel=1e-6)
  assert phases['other_s'] < 0.15 * row['wall_s']
  assert 0 < row['train_step_share'] < 1
  assert set(row['per_run_fixed_s']) == set(study.FIXED)
  assert row['per_run_fixed_share'] > 0


@pytest.mark.bench
def test_views_bench_rows_compare_host_and_device_paths():
  from medft.bench import views
  rows = []
  views.bench_views(dataclasses.replace(core.QUICK, reps=1, warmup=1, input_size=67),
                    rows.append)
  by_name = {r['name'].split('/')[1]: r for r in rows}
  assert set(by_name) == {'host', 'device', 'forward', 'cut_host', 'cut_device',
                          'train_step_host', 'train_step_device'}
  assert by_name['host']['patches'] == by_name['device']['patches'] > 0
  assert by_name['device']['max_score_diff'] < 1e-3  # the same scores, to patch tolerance
  assert by_name['forward']['vs_forward'] == 1.0
  assert all(r['img_per_s'] > 0 for r in rows)
