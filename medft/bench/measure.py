"""The measurements: every arm's train step and inference against the torch twin, the CIMT
input pipeline against the step that consumes it, dense CIMT inference against one patch per
call, and `run`, which puts them (and the levers) together into rows.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import numpy as np

from medft import parallel, trainer, tuning
from medft.bench import torch_twin
from medft.bench.cases import (
  JaxCase,
  arm,
  build_model,
  jax_cached_case,
  jax_predict_case,
  jax_train_case,
)
from medft.bench.core import (
  Settings,
  device_info,
  format_row,
  interleaved,
  make_row,
  torch_available,
)
from medft.bench.flops import count_ops, flop_fields
from medft.bench.levers import bench_levers
from medft.data import synthetic


def arms_to_run(units: Sequence[str], s: Settings) -> tuple[str, ...]:
  if s.depths == 'all':
    return tuning.arms(units)
  return ('scratch', units[-1])


def cached_arms(units: Sequence[str], s: Settings) -> tuple[str, ...]:
  """Arms timed with a warm feature cache too: the head only (and one deeper in a full run)."""
  return (units[-1],) if s.depths == 'few' else (units[-1], units[-2])


def bench_cached(arch: str, depth: str, s: Settings, uncached: JaxCase, scratch: JaxCase
                 ) -> dict:
  """`train/<arch>/<depth>/cached`, interleaved with the scratch and the uncached arm step:
  `vs_scratch` and `vs_uncached` are same-load ratios of step times."""
  case = jax_cached_case(arch, depth, s)
  t = interleaved({'jax': case.run, 'scratch': scratch.run, 'uncached': uncached.run},
                  s.reps, s.warmup)
  step = statistics.median(t['jax'])
  row = make_row(f'train/{arch}/{depth}/cached', arch, depth, s.batch, t['jax'],
                 cpu_seconds=t['jax:cpu'], compile_s=case.compile_s)
  row['vs_scratch'] = step / statistics.median(t['scratch'])
  row['vs_uncached'] = step / statistics.median(t['uncached'])
  return row


def bench_train(arch: str, s: Settings, use_torch: bool, log: Callable) -> list[dict]:
  """Every arm of `arch`: the train step, side by side with the torch twin.

  The head-only arm is also timed interleaved with the scratch step and the forward pass, so
  its `vs_scratch` (step time / scratch step time) and `forward_vs_scratch` are same-load
  ratios: what a frozen trunk costs, and the floor of that cost without a feature cache.
  """
  _, units = build_model(arch, s)
  predict = jax_predict_case(arch, s)
  fwd_ops = count_ops(predict.hlo)
  scratch = None
  rows = []
  for depth in arms_to_run(units, s):
    case = jax_train_case(arch, depth, s)
    if depth == 'scratch':
      scratch = case
    fns = {'jax': case.run}
    if use_torch:
      fns['torch'] = torch_twin.torch_train_step(arch, depth, s, s.batch)
    if depth == units[-1] and scratch is not None:
      fns.update(scratch=scratch.run, forward=predict.run)
    t = interleaved(fns, s.reps, s.warmup)
    row = make_row(f'train/{arch}/{depth}', arch, depth, s.batch, t['jax'],
                   cpu_seconds=t['jax:cpu'], compile_s=case.compile_s,
                   hlo_conv_dot=count_ops(case.hlo), fwd_conv_dot=fwd_ops,
                   **flop_fields(case, statistics.median(t['jax']), s.dtype))
    if 'scratch' in t:
      scratch_s = statistics.median(t['scratch'])
      row['vs_scratch'] = statistics.median(t['jax']) / scratch_s
      row['forward_vs_scratch'] = statistics.median(t['forward']) / scratch_s
    rows.append(torch_twin.compare(row, t.get('torch'), s.batch, s))
    log(rows[-1])
    if depth in cached_arms(units, s) and scratch is not None:
      rows.append(bench_cached(arch, depth, s, case, scratch))
      log(rows[-1])
  fns = {'jax': predict.run}
  if use_torch:
    fns['torch'] = torch_twin.torch_predict(arch, s, s.batch)
  t = interleaved(fns, s.reps, s.warmup)
  row = make_row(f'infer/{arch}', arch, 'forward', s.batch, t['jax'],
                 cpu_seconds=t['jax:cpu'], compile_s=predict.compile_s,
                 **flop_fields(predict, statistics.median(t['jax']), s.dtype))
  rows.append(torch_twin.compare(row, t.get('torch'), s.batch, s))
  log(rows[-1])
  return rows


def bench_packed(s: Settings, log: Callable, seeds: int = 2) -> list[dict]:
  """`sweep` seeds packed into one vmapped step against the same seeds' separate steps, per
  arm of each architecture (scratch and the head; interleaved, same load). `vs_separate`:
  packed img/s over separate img/s."""
  from medft.bench.cases import jax_packed_case
  rows = []
  for arch in s.archs:
    _, units = build_model(arch, s)
    for depth in ('scratch', units[-1]):
      single = jax_train_case(arch, depth, s)
      packed = jax_packed_case(arch, depth, s, seeds)

      def separate():
        for _ in range(seeds):
          single.run()
      t = interleaved({'packed': packed.run, 'separate': separate}, s.reps, s.warmup)
      n = seeds * s.batch
      sep = make_row(f'packed/{arch}/{depth}/separate', arch, depth, s.batch, t['separate'],
                     items=n, cpu_seconds=t['separate:cpu'], seeds=seeds,
                     compile_s=single.compile_s)
      row = make_row(f'packed/{arch}/{depth}', arch, depth, s.batch, t['packed'], items=n,
                     cpu_seconds=t['packed:cpu'], seeds=seeds, compile_s=packed.compile_s,
                     **flop_fields(packed, statistics.median(t['packed']), s.dtype))
      row['vs_separate'] = row['img_per_s'] / sep['img_per_s']
      for r in (sep, row):
        log(r)
        rows.append(r)
  return rows


# ---- CIMT: input pipeline and dense inference --------------------------------------------

def cimt_task():
  from medft.configs import cimt as cimt_config
  from medft.tasks.cimt import CimtTask
  examples = synthetic.cimt_examples(6, height=160, width=192)
  cfg = cimt_config.get_config().task
  return CimtTask({'train': examples[:4], 'test': examples[4:]}, cfg, seed=0)


def bench_pipeline(s: Settings, consumer_rows: list[dict], log: Callable) -> list[dict]:
  """CimtTask.train_batch batches/s on one host thread vs the train step that consumes them."""
  task = cimt_task()
  task.train_batch(0, s.batch)
  seconds = []
  for i in range(1, s.pipeline_batches + 1):
    t0 = time.perf_counter()
    task.train_batch(i, s.batch)
    seconds.append(time.perf_counter() - t0)
  row = make_row('pipeline/cimt/train_batch', None, None, s.batch, seconds, threads=1)
  if consumer_rows:
    fastest = min(consumer_rows, key=lambda r: r['step_ms'])
    row['consumer'] = fastest['name']
    row['vs_train_step'] = fastest['step_ms'] / row['step_ms']
  log(row)
  return [row]


def bench_dense(s: Settings, log: Callable, arch: str = 'alexnet') -> list[dict]:
  """Every ROI pixel of a CIMT scan: patches in batches vs one patch per call.

  Throughput is measured on the first `dense_pixels` ROI pixels (the same pixels for every
  batch size) and projected to the whole ROI (`scan_s`); `max_abs_diff_vs_one` compares the
  batched probabilities with the one-patch-per-call ones.
  """
  task = cimt_task()
  scan = task.scans['test'][0]
  a = arm(arch, 'scratch', s)
  _, p_predict = trainer.make_steps(a.model, a.tx, a.meta)
  pparams = parallel.replicate(a.weights)
  roi_rows, cols = task.roi_rows(scan), scan.columns[::task.cfg.eval_col_stride]
  rr, cc = np.meshgrid(roi_rows, cols, indexing='ij')
  patches = scan.windows[rr.ravel(), cc.ravel()]
  timed = patches[:s.dense_pixels]
  n_dev = parallel.local_devices()
  batches = sorted({n_dev} | {b for b in s.dense_batches if n_dev <= b <= len(timed)})
  classify = {b: (lambda x, b=b: parallel.predict_in_batches(p_predict, pparams, x, b))
              for b in batches}
  compile_s = {}
  for b, fn in classify.items():
    t0 = time.perf_counter()
    fn(timed[:b])
    compile_s[b] = time.perf_counter() - t0
  want = classify[n_dev](timed[:s.dense_single])
  t = interleaved({f'batch{b}': (lambda fn=fn: fn(timed)) for b, fn in classify.items()},
                  max(1, s.reps // 2), 0)
  rows = []
  for b in batches:
    got = classify[b](timed[:max(b, s.dense_single)])[:s.dense_single]
    name = 'one_patch_per_call' if b == n_dev else f'batch{b}'
    row = make_row(f'dense/cimt/{name}', arch, 'forward', b, t[f'batch{b}'],
                   items=len(timed), cpu_seconds=t[f'batch{b}:cpu'], pixels=len(timed),
                   roi_pixels=len(patches), compile_s=compile_s[b],
                   max_abs_diff_vs_one=float(np.max(np.abs(got - want))))
    row['scan_s'] = len(patches) / row['img_per_s']
    rows.append(row)
  for row in rows:
    row['vs_one_patch_per_call'] = row['img_per_s'] / rows[0]['img_per_s']
    log(row)
  return rows


# ---- everything --------------------------------------------------------------------------

def run(s: Settings, use_torch: bool | None = None, levers: bool = False, parts=None,
        log: Callable[[dict], None] | None = None, only_levers: Sequence[str] = (),
        lever_archs: Sequence[str] = ('alexnet',)) -> list[dict]:
  """All benchmark rows (what each part measures: `medft.bench.cli`)."""
  use_torch = torch_available() if use_torch is None else use_torch
  printed = log or (lambda r: print(format_row(r), flush=True))
  info = device_info()

  def log(row):  # every row records the machine and the compute dtype it was measured with
    row.update(info, dtype=s.dtype)
    printed(row)

  parallel.check_batch(s.batch)
  parts = ('train', 'pipeline', 'dense') if parts is None else parts
  rows = []
  if 'train' in parts:
    for arch in s.archs:
      rows += bench_train(arch, s, use_torch, log)
  if 'pipeline' in parts:
    consumers = [r for r in rows if r['name'].startswith('train/alexnet/')]
    rows += bench_pipeline(s, consumers, log)
  if 'dense' in parts:
    rows += bench_dense(s, log)
  if 'views' in parts:
    from medft.bench.views import bench_views
    rows += bench_views(s, log)
  if 'packed' in parts:
    rows += bench_packed(s, log)
  if 'study' in parts:
    from medft.bench.study import bench_study
    rows += bench_study(s, log)
  if levers or 'levers' in parts:
    for arch in lever_archs:
      rows += bench_levers(s, log, arch=arch, only=only_levers)
  return rows
