"""What every part of the benchmark shares: its settings, interleaved timing, the machine's
description and the row format.

A row is one measured case as a dict (name, arch, depth, batch, step_ms, img_per_s, ...);
`make_row` builds it from repeated timings and `format_row` prints it as one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import time
from typing import Any, Callable, Iterator

import jax

NUM_CLASSES = 3


@dataclasses.dataclass(frozen=True)
class Settings:
  archs: tuple[str, ...] = ('alexnet', 'alexnet_torchvision', 'squeezenet1_1')
  batch: int = 32
  width: float = 1.0
  input_size: int = 227
  reps: int = 5
  warmup: int = 1
  depths: str = 'all'            # 'all' arms, or 'few': scratch and the head only
  dense_batches: tuple[int, ...] = (16, 64, 256)  # patches per call in dense CIMT inference
  dense_pixels: int = 512        # ROI pixels timed for each batch size
  dense_single: int = 16         # pixels whose outputs are compared across batch sizes
  pipeline_batches: int = 20
  dtype: str = 'float32'         # compute dtype of the JAX models (params stay float32)


QUICK = Settings(batch=4, width=0.25, reps=2, warmup=1, depths='few', dense_batches=(16,),
                 dense_pixels=32, dense_single=8, pipeline_batches=5)


# ---- timing ------------------------------------------------------------------------------

def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int
                ) -> dict[str, list[float]]:
  """Seconds per call of each function, run round-robin so they share the machine's load.

  Process CPU seconds per call are kept under `name + ':cpu'` (all threads; steadier than
  wall time on a loaded machine, but blind to idle cores).
  """
  times = {key: [] for name in fns for key in (name, name + ':cpu')}
  for r in range(warmup + reps):
    for name, fn in fns.items():
      c0, t0 = time.process_time(), time.perf_counter()
      fn()
      if r >= warmup:
        times[name].append(time.perf_counter() - t0)
        times[name + ':cpu'].append(time.process_time() - c0)
  return times


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
  """Temporarily replaces `obj.name` (used to trace variants of a layer)."""
  saved = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, saved)


# ---- the machine -------------------------------------------------------------------------

def torch_available() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def torch_threads() -> int:
  """JAX's CPU client uses every core this process may run on; torch gets the same."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def device_info() -> dict:
  dev = jax.devices()[0]
  info = {'backend': jax.default_backend(), 'device': dev.device_kind,
          'devices': jax.device_count(), 'cpu_threads': torch_threads(),
          'jax': jax.__version__}
  if torch_available():
    import torch
    info['torch'] = torch.__version__
  return info


def make_row(name: str, arch: str | None, depth: str | None, batch: int,
             seconds: list[float], items: int | None = None,
             cpu_seconds: list[float] | None = None, **extra) -> dict:
  """One row: median step time, images/s (`items` per call, default `batch`), `extra` fields."""
  step = statistics.median(seconds)
  row = {'name': name, 'arch': arch, 'depth': depth, 'batch': batch, 'step_ms': 1e3 * step,
         'img_per_s': (items or batch) / step, 'min_ms': 1e3 * min(seconds), 'reps': len(seconds)}
  if cpu_seconds:
    row['cpu_ms'] = 1e3 * statistics.median(cpu_seconds)
  row.update(extra)
  return row


def _fmt(v, spec: str) -> str:
  return format(v, spec) if isinstance(v, (int, float)) and v is not None else '-'


def format_row(r: dict) -> str:
  if 'phases_s' in r:  # a study row (medft.bench.study)
    shares = '  '.join(f'{k[:-2]} {100 * v:.0f}%' for k, v in r['shares'].items() if v >= 0.005)
    return (f'{r["name"]:38s} {r["runs"]} runs  {r["wall_s"]:.1f} s  train-step share '
            f'{100 * r["train_step_share"]:.0f}%  fixed per run '
            f'{100 * r["per_run_fixed_share"]:.0f}%  | {shares}')
  extra = ''
  for key, label in (('vs_torch', 'vs torch'), ('vs_scratch', 'time vs scratch'),
                     ('forward_vs_scratch', 'forward vs scratch'),
                     ('vs_uncached', 'time vs uncached'),
                     ('vs_train_step', 'vs train step'),
                     ('vs_one_patch_per_call', 'vs 1 patch/call'), ('vs_default', 'vs default'),
                     ('vs_forward', 'vs forward'), ('vs_separate', 'vs separate seeds'),
                     ('vs_host', 'vs host-cut step')):
    if r.get(key) is not None:
      extra += f'  {label} {r[key]:.2f}x'
  if r.get('error'):
    extra += f'  ERROR {r["error"]}'
  return (f'{r["name"]:38s} b={_fmt(r.get("batch"), "<4d")} {_fmt(r.get("step_ms"), "9.1f")} ms '
          f'{_fmt(r.get("img_per_s"), "9.1f")} img/s  compile {_fmt(r.get("compile_s"), ".1f")} s'
          f'{extra}')
