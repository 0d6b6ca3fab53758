"""Speed of medft against a PyTorch reference: `python -m medft.bench [--quick] [--out=FILE]
[--dtype=float32|bfloat16]`.

Times, for each architecture and tuning depth (`tuning.arms`), the real pmapped train step of
`trainer.make_steps`; forward-only inference; the CIMT input pipeline (`CimtTask.train_batch`)
against the train step that consumes it; and dense CIMT inference (every ROI pixel, batched)
against classifying the same pixels one patch at a time. `--levers` adds the speed levers
(grouped-conv form, LRN gradient and window sum, XLA:CPU kernel library, conv layout, batch,
buffer donation) on the AlexNet scratch step, each as a ratio against the library's default.

Every time is the median of repeated calls after warm-up; compilation is timed on its own.
When torch is installed the same network (same layout, batch and frozen layers) is trained in
the same process, interleaved call by call with the JAX step so that both see the same machine
load, with as many threads as JAX has cores. `--dtype=bfloat16` builds the JAX models with
bf16 compute (parameters and optimizer state stay float32) and takes the bf16 peak for
`peak_fraction`; the torch twin then runs under bf16 autocast on CUDA and stays float32 on
the CPU (`torch_dtype` in its rows). Expected output: a header line naming the dtype, a table
with one row per case, e.g. `train alexnet scratch  32  ...  img/s ... vs torch 1.6x`, and
with `--out` the same rows as JSON (name, arch, depth, batch, dtype, step_ms, img_per_s,
compile_s, torch_img_per_s, vs_torch, gflop_per_s, peak_fraction, ...).

`--quick` (batch 4, width 0.25, arms scratch and head only, two repetitions) checks that
everything runs in well under three minutes on two CPU cores; its numbers are not meaningful.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

from medft import files
from medft.bench.core import QUICK, Settings, device_info, format_row, torch_available
from medft.bench.measure import run
from medft.bench.torch_twin import torch_dtype


def main(argv: Sequence[str] | None = None) -> list[dict]:
  p = argparse.ArgumentParser(prog='python -m medft.bench', description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='tiny shapes: checks that it runs')
  p.add_argument('--out', default='', help='write the rows as JSON to this file')
  p.add_argument('--levers', action='store_true', help='also measure the CPU speed levers')
  p.add_argument('--parts', default='train,pipeline,dense',
                 help='comma list of train, pipeline, dense, views, packed, study, levers')
  p.add_argument('--only-levers', default='', help='comma list of lever names (default: all)')
  p.add_argument('--lever-archs', default='alexnet', help='comma list of archs for --levers')
  p.add_argument('--archs', default='', help='comma list (default: every architecture)')
  p.add_argument('--batch', type=int, default=0)
  p.add_argument('--reps', type=int, default=0)
  p.add_argument('--depths', choices=('all', 'few'), default=None)
  p.add_argument('--no-torch', action='store_true', help='skip the PyTorch reference')
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32',
                 help='compute dtype of the JAX cases (params and optimizer state: float32)')
  args = p.parse_args(argv)
  s = QUICK if args.quick else Settings()
  changes = {}
  if args.archs:
    changes['archs'] = _arch_list(p, '--archs', args.archs)
  lever_archs = _arch_list(p, '--lever-archs', args.lever_archs)
  if args.batch:
    changes['batch'] = args.batch
  if args.reps:
    changes['reps'] = args.reps
  if args.depths:
    changes['depths'] = args.depths
  changes['dtype'] = args.dtype
  s = dataclasses.replace(s, **changes)
  parts = tuple(x for x in args.parts.split(',') if x)
  use_torch = not args.no_torch and torch_available()
  print(f'medft.bench: dtype={s.dtype} (params float32), {device_info()}, torch reference '
        f'{f"on ({torch_dtype(s)})" if use_torch else "off"}; {s}', flush=True)
  done = []

  def log(row):  # the file is rewritten after every row, so a killed run keeps its rows
    print(format_row(row), flush=True)
    done.append(dict(row))
    if args.out:
      files.write_json_atomic(args.out, done)

  rows = run(s, use_torch=False if args.no_torch else None, levers=args.levers, parts=parts,
             log=log, only_levers=tuple(x for x in args.only_levers.split(',') if x),
             lever_archs=lever_archs)
  if args.out:
    files.write_json_atomic(args.out, rows)
    print(f'wrote {len(rows)} rows to {args.out}')
  return rows


def _arch_list(parser: argparse.ArgumentParser, flag: str, value: str) -> tuple[str, ...]:
  """A comma list of known architectures, each once; anything else ends in parser.error."""
  from medft.models import ARCHS
  archs = tuple(a.strip() for a in value.split(',') if a.strip())
  unknown = [a for a in archs if a not in ARCHS]
  if unknown or not archs or len(set(archs)) != len(archs):
    parser.error(f'argument {flag}: {flag}={value!r}: expected a comma list of distinct '
                 f'architectures from {", ".join(ARCHS)}'
                 + (f' ({", ".join(map(repr, unknown))} unknown)' if unknown else '') + '.')
  return archs
