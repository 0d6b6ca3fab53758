"""Are train steps back to back? A profiler check of the training loop's feeding path.

  python -m medft.bench.step_trace [--config=demo,depth=scratch] [--steps=20] [--logdir=DIR]
                                   [--sync-sleep-ms=N]

Runs the loop of `medft.trainer.train` without its evaluation and checkpoints: host batches
of the CIMT task cut by grain worker threads (`loop.input_pipeline` over in-memory
synthetic scans), `parallel.prefetch_to_device`, the pmapped train step of
`trainer.make_steps`, and metrics fetched only every `train.log_every` steps. `--config` is
the argument of `configs/cimt.py` (default `demo,depth=scratch`: full-width AlexNet at
67x67, batch 32).
After warm-up (compilation) `--steps` steps are recorded under `jax.profiler.trace(DIR,
create_perfetto_trace=True)`, and the Chrome-trace JSON that JAX writes
(`DIR/plugins/profile/<time>/perfetto_trace.json.gz`, also `<host>.trace.json.gz`) is parsed.

How steps are found (checked on XLA:CPU with one device, JAX 0.10.2): every thunk that an
executable runs is a trace event whose `args` name its `hlo_module` and `run_id` (one per
execution); the module name is read from the lowered train step (`jit__fun`: pmap lowers
through jit in this JAX, so no event is named `train_step`). One step is the span of the
events of one run_id on any thread. Printed as JSON (and returned by `measure`): steps found,
median step, median and max gap between one step's end and the next one's start, busy
fraction (time inside steps over the window from the first start to the last end), and
`dispatched_ahead`, the share of steps whose host dispatch had returned before the previous
step ended (1.0: any gap is the runtime's, not the host's). `back_to_back`: every step found
and median gap < 0.5 x median step. `--sync-sleep-ms=N` is the negative control: after every
step the loss is fetched (`jax.device_get`, a host sync) and the host sleeps N ms before
dispatching the next step. `--set=FIELD=VALUE` overrides any config field (e.g.
`--set=model.width=0.125`). Measured numbers: README, "Performance".
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from medft import loop, parallel, trainer, tuning
from medft.errors import MissingInputError
from medft.weights import store

# ---- setup: the trainer's model, optimizer, step and input pipeline ----------------------

def _task(config: ml_collections.ConfigDict):
  """The CIMT task over in-memory synthetic scans (no TFDS preparation)."""
  from medft.data import synthetic
  from medft.tasks.cimt import CimtTask
  return CimtTask({'train': synthetic.cimt_examples(6, seed=config.seed)}, config.task,
                  config.seed)


def setup(config: ml_collections.ConfigDict):
  """(pmapped train step, replicated state, task, rng) as `trainer.train` builds them."""
  task = _task(config)
  model, units = trainer.build_model(config)
  meta = store.default_meta(config.arch, (config.input_size, config.input_size))
  params = trainer.init_variables(model, config.seed,
                                  (config.input_size, config.input_size))['params']
  params = jax.tree.map(np.asarray, params)
  parallel.check_batch(config.train.batch)
  tx = tuning.make_optimizer(params, units, config.depth, config.optim,
                             max(1, task.epoch_examples // config.train.batch))
  state = trainer.TrainState.create(params, tx)
  p_train_step, _ = trainer.make_steps(model, tx, meta)
  return p_train_step, parallel.replicate(state), task, jax.random.key(config.seed)


def host_batches(task, config: ml_collections.ConfigDict, start: int, steps: int):
  """Batches `start..steps-1` from grain worker threads, as the trainer's input pipeline."""
  return loop.input_pipeline(task, start, steps, config.train.batch, config.train.workers,
                             config.train.prefetch)


def train_loop(p_train_step, pstate, batches, rng, log_every: int,
               sync_sleep_s: float | None = None):
  """The loop of `trainer.train` (`loop.run_steps`): metrics fetched every `log_every` steps,
  no per-step host sync unless `sync_sleep_s` is given."""
  step = 0
  for tick in loop.run_steps(p_train_step, pstate, batches, rng,
                             fetch=lambda s: bool(log_every) and s % log_every == 0):
    pstate, step = tick.state, tick.step
    if sync_sleep_s is not None:  # negative control: a host round trip after every step
      jax.device_get(tick.metrics['loss'])
      time.sleep(sync_sleep_s)
  jax.block_until_ready(pstate)
  return pstate, step


# ---- trace parsing -----------------------------------------------------------------------

def trace_file(logdir: str | Path) -> Path:
  """The newest Chrome-trace JSON that `jax.profiler.trace` wrote under `logdir`."""
  found = sorted(Path(logdir).glob('plugins/profile/*/perfetto_trace.json.gz'))
  found = found or sorted(Path(logdir).glob('plugins/profile/*/*.trace.json.gz'))
  if not found:
    raise MissingInputError(f'no trace JSON under {logdir}/plugins/profile/*/.')
  return found[-1]


def module_name(lowered) -> str:
  """The HLO module name of a lowered function (`jit__fun` for a pmapped one in JAX 0.10)."""
  return re.search(r'module @([\w.$-]+)', lowered.as_text()).group(1)


def load_events(path: str | Path) -> list[dict]:
  with gzip.open(path, 'rt') as f:
    return json.load(f)['traceEvents']


def step_intervals(events: list[dict], module: str) -> list[tuple[float, float]]:
  """(start, end) in microseconds of every execution of the HLO module `module`.

  An execution is a `run_id`: its thunks name the module; the runtime's own events of that
  run (e.g. `ThunkExecutor::Execute (wait for completion)`) widen the span to the
  execution's start and completion.
  """
  spans: dict[str, list[float]] = {}
  ours = set()
  for e in events:
    args = e.get('args') or {}
    if e.get('ph') != 'X' or 'run_id' not in args:
      continue
    key = args['run_id']
    if args.get('hlo_module') == module:
      ours.add(key)
    start, end = float(e['ts']), float(e['ts']) + float(e.get('dur', 0.0))
    span = spans.setdefault(key, [start, end])
    span[0], span[1] = min(span[0], start), max(span[1], end)
  return sorted((a, b) for key, (a, b) in spans.items() if key in ours)


DISPATCH_EVENT = 'CommonPjRtLoadedExecutable::ExecuteHelperOnSingleDevice'


def dispatch_ends(events: list[dict], steps: int) -> list[float] | None:
  """When the host's call that enqueued each step returned (us), or None if not matched.

  The runtime's dispatch events carry no run_id; they are matched to the steps by order
  (one per device per step), which holds when only the train step runs in the window.
  """
  ends = sorted(float(e['ts']) + float(e.get('dur', 0.0)) for e in events
                if e.get('ph') == 'X' and e.get('name') == DISPATCH_EVENT)
  if not steps or not ends or len(ends) % steps:
    return None
  per_step = len(ends) // steps
  return ends[per_step - 1::per_step]


def summarize(intervals: Sequence[tuple[float, float]],
              dispatched: Sequence[float] | None = None) -> dict[str, Any]:
  """Steps found, median step and gap (ms), busy fraction of the window.

  `dispatched_ahead` (with `dispatched`): the share of steps whose dispatch had returned
  before the previous step ended -- a gap after such a step is not the host's doing.
  """
  if not intervals:
    return {'steps_found': 0}
  durations = [b - a for a, b in intervals]
  gaps = [max(0.0, nxt[0] - cur[1]) for cur, nxt in zip(intervals, intervals[1:])]
  window = intervals[-1][1] - intervals[0][0]
  out = {'steps_found': len(intervals),
         'median_step_ms': statistics.median(durations) / 1e3,
         'median_gap_ms': statistics.median(gaps) / 1e3 if gaps else 0.0,
         'max_gap_ms': max(gaps) / 1e3 if gaps else 0.0,
         'busy_fraction': sum(durations) / window if window > 0 else 1.0,
         'dispatched_ahead': None}
  if dispatched is not None and len(dispatched) == len(intervals) > 1:
    out['dispatched_ahead'] = statistics.mean(
        float(d < prev[1]) for d, prev in zip(dispatched[1:], intervals))
  out['steps_ms'] = [round(d / 1e3, 3) for d in durations]
  out['gaps_ms'] = [round(g / 1e3, 3) for g in gaps]
  return out


def back_to_back(summary: dict[str, Any], max_gap_fraction: float = 0.5) -> bool:
  """Every step was found and the median gap is below `max_gap_fraction` of the median step."""
  return (summary.get('steps_found', 0) == summary.get('steps_run', summary.get('steps_found'))
          and summary['median_gap_ms'] < max_gap_fraction * summary['median_step_ms'])


# ---- the check ---------------------------------------------------------------------------

def measure(config: ml_collections.ConfigDict, steps: int = 20, logdir: str | Path = '',
            sync_sleep_s: float | None = None, warmup: int = 2,
            python_tracer: bool = False) -> dict[str, Any]:
  """Traces `steps` train steps of `config` after `warmup` steps; returns `summarize`'s dict.

  The Python tracer (every Python call as an event) is off by default: it costs host time
  that would otherwise go to dispatch, and the steps are found from XLA's own events.
  """
  logdir = Path(logdir or tempfile.mkdtemp(prefix='medft-step-trace-'))
  p_train_step, pstate, task, rng = setup(config)
  pstate, _ = train_loop(p_train_step, pstate, host_batches(task, config, 0, warmup), rng, 0)
  sample = parallel.to_devices(parallel.shard(task.train_batch(0, config.train.batch)))
  module = module_name(p_train_step.lower(pstate, sample, rng))
  batches = host_batches(task, config, warmup, warmup + steps)
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = int(python_tracer)
  with jax.profiler.trace(str(logdir), create_perfetto_trace=True, profiler_options=options):
    _, ran = train_loop(p_train_step, pstate, batches, rng, config.train.log_every,
                        sync_sleep_s)
  path = trace_file(logdir)
  events = load_events(path)
  intervals = step_intervals(events, module)
  out = summarize(intervals, dispatch_ends(events, len(intervals)))
  out.update(steps_run=ran, module=module, trace=str(path),
             sync_sleep_ms=None if sync_sleep_s is None else 1e3 * sync_sleep_s,
             arch=config.arch, depth=config.depth, batch=config.train.batch,
             input_size=config.input_size, width=config.model.width, dtype=config.dtype,
             log_every=config.train.log_every, backend=jax.default_backend())
  return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  from medft.configs import cimt, common
  p = argparse.ArgumentParser(prog='python -m medft.bench.step_trace',
                              description=__doc__.split('\n')[0])
  p.add_argument('--config', default='demo,depth=scratch', help='argument of configs/cimt.py')
  p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                 help='config override, e.g. --set=model.width=0.25 (repeatable)')
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--logdir', default='', help='trace folder (default: a new temporary one)')
  p.add_argument('--sync-sleep-ms', type=float, default=None,
                 help='negative control: fetch the loss and sleep this long after every step')
  p.add_argument('--python-tracer', action='store_true', help='also trace Python calls')
  args = p.parse_args(argv)
  config = cimt.get_config(args.config)
  for item in args.set:
    field, _, value = item.partition('=')
    common.set_field(config, field, value)
  out = measure(config, args.steps, args.logdir,
                None if args.sync_sleep_ms is None else args.sync_sleep_ms / 1e3,
                python_tracer=args.python_tracer)
  out['back_to_back'] = back_to_back(out)
  print(json.dumps({k: v for k, v in out.items() if k not in ('steps_ms', 'gaps_ms')}, indent=1))
  return out


if __name__ == '__main__':
  main(sys.argv[1:])
