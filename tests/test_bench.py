"""`python -m medft.bench --quick` runs end to end and writes sane rows."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from medft import bench, models, tuning

ROOT = Path(__file__).resolve().parents[1]


def test_peak_table_knows_accelerators_and_not_cpus():
  assert bench.peak_flops('NVIDIA H100 80GB HBM3') == 495e12
  assert bench.peak_flops('NVIDIA H100 PCIe', 'bfloat16') == 756e12
  assert bench.peak_flops('TPU v5 lite') == 197e12
  assert bench.peak_flops('cpu') is None


def test_torch_twins_have_the_units_of_the_medft_models():
  pytest.importorskip('torch')
  s = bench.QUICK
  for arch in bench.Settings().archs:
    _, units = models.get_model(arch, bench.NUM_CLASSES)
    _, torch_units = bench.torch_net(arch, s)
    assert tuple(torch_units) == units
    step = bench.torch_train_step(arch, units[-1], s, batch=2)
    step()  # a frozen trunk still runs forward; only the head has gradients


@pytest.mark.slow
def test_quick_bench_writes_every_row(tmp_path):
  out = tmp_path / 'bench.json'
  proc = subprocess.run([sys.executable, '-m', 'medft.bench', '--quick', f'--out={out}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())
  by_name = {r['name']: r for r in rows}
  expected = ['pipeline/cimt/train_batch', 'dense/cimt/one_patch_per_call', 'dense/cimt/batch16']
  for arch in bench.QUICK.archs:
    _, units = models.get_model(arch, bench.NUM_CLASSES)
    expected += [f'train/{arch}/{d}' for d in ('scratch', units[-1])] + [f'infer/{arch}']
    assert set(tuning.arms(units)) >= {'scratch', units[-1]}
  assert sorted(by_name) == sorted(expected)
  with_torch = bench.torch_available()
  for row in rows:
    for key in ('name', 'arch', 'depth', 'batch', 'step_ms', 'img_per_s'):
      assert key in row, (row['name'], key)
    assert row['step_ms'] > 0 and math.isfinite(row['img_per_s']) and row['img_per_s'] > 0
    if row['name'].startswith(('train/', 'infer/')):
      assert row['compile_s'] > 0
      if with_torch:
        assert row['torch_img_per_s'] > 0
        assert row['vs_torch'] == pytest.approx(row['img_per_s'] / row['torch_img_per_s'])
  # Frozen units get no backward pass: the head-only arm compiles to the forward's
  # convolutions and matmuls plus the head's weight gradient.
  for arch in bench.QUICK.archs:
    _, units = models.get_model(arch, bench.NUM_CLASSES)
    head = by_name[f'train/{arch}/{units[-1]}']
    assert head['hlo_conv_dot'] == head['fwd_conv_dot'] + 1
    assert by_name[f'train/{arch}/scratch']['hlo_conv_dot'] > head['hlo_conv_dot'] + 1
  assert by_name['pipeline/cimt/train_batch']['vs_train_step'] > 0
  assert by_name['dense/cimt/batch16']['max_abs_diff_vs_one'] < 1e-4
