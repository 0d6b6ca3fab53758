"""FLOP counting: the FLOPs of a lowered step, achieved FLOP/s and the fraction of the
device's peak.

XLA's cost analysis where the backend has one, else the convolutions and matmuls of the
StableHLO text; `count_ops` counts them in an optimised HLO module (frozen units' backward
passes must be absent from it).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from medft.bench import core

if TYPE_CHECKING:
  from medft.bench.cases import JaxCase


# Dense peak TFLOP/s by device_kind substring, for float32 (TF32 tensor cores: XLA's default
# precision on these GPUs) and bfloat16. TPUs run float32 matmuls as bfloat16 passes by default.
PEAK_TFLOPS = (
    ('H100 PCIe', {'float32': 378.0, 'bfloat16': 756.0}),
    ('H100', {'float32': 495.0, 'bfloat16': 989.0}),
    ('H200', {'float32': 495.0, 'bfloat16': 989.0}),
    ('A100', {'float32': 156.0, 'bfloat16': 312.0}),
    ('TPU v4', {'float32': 275.0, 'bfloat16': 275.0}),
    ('TPU v5 lite', {'float32': 197.0, 'bfloat16': 197.0}),
    ('TPU v5e', {'float32': 197.0, 'bfloat16': 197.0}),
)


def peak_flops(device_kind: str, dtype: str = 'float32') -> float | None:
  """Peak FLOP/s of one device of this kind, or None when unknown (e.g. any CPU)."""
  for key, peaks in PEAK_TFLOPS:
    if key.lower() in device_kind.lower():
      return peaks[dtype] * 1e12
  return None


def lowered_flops(lowered) -> tuple[float | None, str]:
  """FLOPs of one call and where the number comes from.

  XLA's cost analysis of the lowered program where the backend offers one (CPU: it agrees
  with the compiled program's within 1%; JAX has already dropped frozen units' gradients);
  else the convolutions and matmuls of the StableHLO text (GPU, where the compiled
  convolutions are cuDNN calls that the analysis cannot see).
  """
  try:
    cost = lowered.cost_analysis()
  except Exception:  # noqa: BLE001 -- backends without an analysis raise different errors
    cost = None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get('flops')
  if flops and flops > 0:
    return float(flops), 'xla_cost_analysis'
  flops = stablehlo_flops(lowered.as_text())
  return (flops, 'stablehlo_conv_dot') if flops else (None, '')


_TENSOR = re.compile(r'tensor<([0-9x]+)x[a-z][a-z0-9]*>')


def stablehlo_flops(text: str) -> float:
  """2 x multiply-adds of every convolution and dot_general in a StableHLO module."""
  total = 0
  for line in text.splitlines():
    is_conv = 'stablehlo.convolution' in line
    if not is_conv and 'stablehlo.dot_general' not in line:
      continue
    shapes = [tuple(int(d) for d in m.split('x'))
              for m in _TENSOR.findall(line[line.rindex(': ('):])]
    lhs, rhs, out = shapes[0], shapes[1], shapes[-1]
    if is_conv:  # per output: kernel window x input features of its group
      kernel_dims = re.search(r'x\[([^\]]*)\]->', line).group(1).split(', ')
      total += 2 * math.prod(out) * math.prod(rhs) // rhs[kernel_dims.index('o')]
    else:
      contracting = re.search(r'contracting_dims = \[([0-9, ]*)\] x', line).group(1)
      total += 2 * math.prod(out) * math.prod(
          lhs[int(d)] for d in contracting.split(',') if d.strip())
  return float(total)


def count_ops(hlo: str) -> int:
  """Convolutions and matmuls in an optimised HLO module (fused ones and cuDNN calls too)."""
  return (hlo.count(' convolution(') + hlo.count(' dot(')
          + hlo.count('custom_call_target="__cudnn$conv'))


def flop_fields(case: JaxCase, step_s: float, dtype: str = 'float32') -> dict:
  info = core.device_info()
  flops, source = case.flops
  if not flops:
    return {'gflop_per_s': None, 'peak_fraction': None}
  achieved = flops / step_s  # the program of one device; every device runs it
  peak = peak_flops(info['device'], dtype)
  return {'gflop_per_s': achieved * 1e-9 * info['devices'], 'flops_source': source,
          'peak_fraction': achieved / peak if peak else None}
