"""Running train steps: the one loop of an arm's training, source-model pretraining and the trace.

What every kind of training does the same way lives here, so that the copies cannot drift:

  feeding      `input_pipeline`: this host's slice of each global batch, cut by grain worker
               threads ahead of use. `run_steps` runs the pmapped step over the batches and
               fetches metrics only at the steps asked for (no per-step host sync).
  log rows     loss, accuracy, learning rate (tuning's schedule), images/s and ETA every
               `log_every` steps; appended to `metrics.jsonl` by process 0 only, and cut back
               to the resumed step on resume.
  evaluation   every `eval_every` steps and at the end. With `watch`, the best value keeps its
               parameters in `checkpoints/best`, and `patience` evaluations without gain stop
               the run (early stopping).
  checkpoints  `checkpoints/latest` every `checkpoint_every` steps, at the end, and at every
               evaluation that tracks a best value; `Loop.resume` restores it.
  preemption   SIGTERM: the step ends, the state is checkpointed, then `Preempted` (run.py
               exits 143 and the same command resumes). With several processes, a SIGTERM
               to any of them stops all at the next log step.

Callers keep what differs: `medft.trainer` (validation AUC, the feature cache, results.json),
`medft.pretrain` (held-out accuracy, the artifact), `medft.step_trace` (the bare `run_steps`),
`medft.packed` (one `Loop` per seed of a packed program, each fed its slice by `after_step`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import jax
import numpy as np
from absl import logging

from medft import files, parallel, progress
from medft.errors import InputFileError, NonFiniteError

METRICS_FILE = 'metrics.jsonl'


class Preempted(RuntimeError):
  """SIGTERM arrived; the latest state was checkpointed and the run can be resumed."""


# ---- feeding -----------------------------------------------------------------------------


def host_slice(global_batch: int) -> slice:
  """This process' rows of a global batch: a contiguous share, all of it on one host."""
  per_host = global_batch // jax.process_count()
  first = jax.process_index() * per_host
  return slice(first, first + per_host)


def input_pipeline(source: Any, start: int, steps: int, global_batch: int, workers: int,
                   prefetch: int) -> Iterator[dict]:
  """This host's part of batches `start..steps-1`, cut by grain worker threads ahead of the
  step that uses them (`source.train_batch(step, global_batch, host_slice)`).

  Batch `s` is a pure function of (seed, s), so the iterator position is the step number and
  a resumed run sees exactly the batches an uninterrupted one would.
  """
  import grain
  rows = host_slice(global_batch)
  ds = grain.MapDataset.range(start, steps).map(
      lambda s: source.train_batch(int(s), global_batch, rows))
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=workers,
                                                   prefetch_buffer_size=prefetch)))


class Tick(NamedTuple):
  """One step done by `run_steps`."""
  step: int  # steps done so far
  state: Any  # the replicated train state after it
  metrics: dict  # its metrics, still on the devices
  fetched: list[dict] | None  # host metrics of the steps since the last fetch (fetch steps only)


def run_steps(train_step: Callable, pstate: Any, batches: Iterator[Any], rng: jax.Array,
              start: int = 0, fetch: Callable[[int], bool] = lambda step: False,
              packed: bool = False) -> Iterator[Tick]:
  """Runs `train_step(pstate, batch, rng)` over `batches` (copied to the devices two steps
  ahead); the metrics are fetched to the host only at steps where `fetch(step)` holds.
  `packed`: each item of `batches` is a list of packed seeds' batches (`medft.packed`)."""
  pending, step = [], start
  place = parallel.shard_packed if packed else parallel.shard
  for batch in parallel.prefetch_to_device(batches, size=2, place=place):
    pstate, metrics = train_step(pstate, batch, rng)
    step += 1
    pending.append(metrics)
    fetched = None
    if fetch(step):
      fetched = jax.device_get([{k: v[0] for k, v in m.items()} for m in pending])
      pending = []
    yield Tick(step, pstate, metrics, fetched)


class Timer:
  """Images/s between log rows; the first step (compilation) is timed on its own."""

  def __init__(self, batch: int):
    self.batch, self.compile_s, self.images = batch, None, 0
    self.t0 = time.time()

  def after_step(self, metrics: dict) -> None:
    if self.compile_s is None:
      jax.block_until_ready(metrics['loss'])
      self.compile_s = time.time() - self.t0
      logging.info('First step (compilation included) took %.1f s.', self.compile_s)
      self.t0 = time.time()
    else:
      self.images += self.batch

  def rate(self) -> float:
    return self.images / max(time.time() - self.t0, 1e-9)

  def reset(self) -> None:
    self.t0, self.images = time.time(), 0


@contextlib.contextmanager
def sigterm_flag() -> Iterator[list]:
  """A list that becomes non-empty when SIGTERM arrives (main thread only), so that a loop
  can checkpoint and raise `Preempted` at the end of its step; the old handler is restored."""
  flag: list = []
  previous = None
  if threading.current_thread() is threading.main_thread():
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.append(True))
  try:
    yield flag
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)


def stop_for_sigterm(sigterm: list, fetch_step: bool) -> bool:
  """Whether SIGTERM stops the run after this step: at once on one process. With several, at
  the next fetch step once any of them got it, so that all of them take part in the same
  (collective) checkpoint and stop together."""
  if jax.process_count() == 1:
    return bool(sigterm)
  if not fetch_step:
    return False
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(sigterm)))))


# ---- metrics rows ------------------------------------------------------------------------


def read_metrics(path: Path) -> list[tuple[str, dict]]:
  """The rows of a metrics.jsonl as (line, row). A torn last line (a crash in the middle of
  its write) is dropped with a warning; a damaged line before it is an InputFileError."""
  if not path.exists():
    return []
  lines = path.read_bytes().decode('utf-8', 'replace').splitlines()
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      int(row['step'])
    except (ValueError, KeyError, TypeError) as e:
      if number == len(lines):
        logging.warning('%s: its last line is torn (%r...); dropped it (a crash while it was '
                        'written).', path, line[:40])
        break
      raise InputFileError(
          f'{path}, line {number}, is damaged ({type(e).__name__}: {e}); only a torn last line '
          'is dropped on resume. Delete that line (or the file: the run then keeps its '
          'checkpoint but loses its curve) and repeat the command.') from None
    rows.append((line, row))
  return rows


def truncate_metrics(path: Path, step: int) -> None:
  """On resume, drops rows logged after the checkpoint we resume from (and a torn line)."""
  if not path.exists():
    return
  kept = ''.join(line + '\n' for line, row in read_metrics(path) if int(row['step']) <= step)
  if kept.encode() != path.read_bytes():
    files.write_text_atomic(path, kept)


# ---- checkpoints -------------------------------------------------------------------------


class Checkpoints:
  """Orbax managers for `checkpoints/latest` (full state) and `checkpoints/best` (params).

  Orbax writes each checkpoint to a temporary folder and renames it when complete, so a kill
  during a save leaves the previous checkpoint usable. State is saved unreplicated (host
  numpy), which orbax can write from any process layout.
  """

  def __init__(self, workdir: Path):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    self.latest_dir = workdir / 'checkpoints' / 'latest'
    self.best_dir = workdir / 'checkpoints' / 'best'
    self.latest = ocp.CheckpointManager(self.latest_dir.absolute(), options=opts)
    self.best = ocp.CheckpointManager(self.best_dir.absolute(), options=opts)

  def save_latest(self, step: int, tree: Any) -> None:
    self._save(self.latest, self.latest_dir, step, tree)

  def save_best(self, step: int, params: Any) -> None:
    self._save(self.best, self.best_dir, step, params)

  def _save(self, manager, folder: Path, step: int, tree: Any) -> None:
    """One save; a full disk or read-only folder is refused before orbax starts writing, or
    its half-written temporary folder removed, and reported as a ResourceError."""
    needs = sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))
    # Orbax keeps the previous checkpoint until the new one is complete: room for one more.
    files.check_space(folder, int(needs * 1.05) + 2**20, f'checkpoint {step} into {folder}')
    try:
      manager.save(step, args=self._ocp.args.StandardSave(tree), force=True)
      manager.wait_until_finished()
    except Exception as e:
      if not files.is_resource_fault(e):
        raise
      for partial in folder.glob('*orbax-checkpoint-tmp*'):
        shutil.rmtree(partial, ignore_errors=True)
      raise files.resource_error(e, folder, f'checkpoint {step}', needs) from None

  def restore_latest(self, like: Any) -> Any | None:
    return self._restore(self.latest, self.latest_dir, like)

  def restore_best(self, like: Any) -> Any | None:
    return self._restore(self.best, self.best_dir, like)

  def _restore(self, manager, folder: Path, like: Any) -> Any | None:
    step = manager.latest_step()
    if step is None:
      return None
    try:
      return manager.restore(step, args=self._ocp.args.StandardRestore(like))
    except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint
      if files.is_resource_fault(e):
        raise files.resource_error(e, folder, f'checkpoint {step}') from e
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise InputFileError(
          f'checkpoint {folder / str(step)} cannot be read ({type(e).__name__}: {reason}). It '
          f'is damaged, or was written by another medft version; delete {folder / str(step)} '
          'and repeat the command to train this run again from the start.') from e

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def early_state(best_val: float, best_step: int, bad_evals: int) -> dict:
  """Early-stopping state as 0-d arrays (what orbax checkpoints)."""
  return {'best_val': np.asarray(best_val, np.float64),
          'best_step': np.asarray(best_step, np.int32),
          'bad_evals': np.asarray(bad_evals, np.int32)}


# ---- the loop ----------------------------------------------------------------------------


class Loop:
  """The steps of one workdir: log rows, evaluation, early stopping, checkpoints, SIGTERM.

  `name` starts its log lines and messages ('arm fc7', 'pretraining'); `batch` is the global
  batch; `lr(step)` is the base learning rate the optimizer applies at a step
  (`tuning.lr_schedule`). `watch` names the evaluation value whose best is kept in
  `checkpoints/best`; `patience` evaluations without gain then stop the run (None: evaluate
  and log only). `nonfinite_fix` ends the NonFiniteError of a non-finite step, unless
  `skip_nonfinite` (such steps are not applied either way). `lock` (the workdir's) is
  refreshed after each checkpoint. Use: `state = loop.resume(state)`, then
  `loop.run(train_step, state, batches, rng, evaluate)`, then `loop.close()`.
  """

  def __init__(self, workdir: Path, *, name: str, steps: int, batch: int, log_every: int,
               eval_every: int, checkpoint_every: int, lr: Callable[[int], Any],
               watch: str | None = None, patience: int = 0, lock: Any = None,
               skip_nonfinite: bool = False, nonfinite_fix: str = ''):
    self.name, self.steps, self.batch = name, int(steps), int(batch)
    self.log_every, self.eval_every = int(log_every), int(eval_every)
    # Compiled once: a log row costs one small call, not a dispatch per operation.
    self.checkpoint_every, self.lr = int(checkpoint_every), jax.jit(lr)
    self.watch, self.patience, self.lock = watch, int(patience), lock
    self.skip_nonfinite, self.nonfinite_fix = bool(skip_nonfinite), nonfinite_fix
    self.ckpt = Checkpoints(workdir)
    self.metrics_file = workdir / METRICS_FILE
    self.early = early_state(-1.0, -1, 0) if watch else None
    self.best_params = None  # host params of the best evaluation (with `watch`)
    self.scalars = None  # medft.scalars.Writer: the rows as TensorBoard scalars (set after resume)
    self.step = 0
    self.timer: Timer | None = None  # set by `run` (compile_s: its first step)
    # Wall seconds of `run`, and the parts of it spent evaluating and checkpointing.
    self.seconds = {'loop_s': 0.0, 'validation_s': 0.0, 'checkpoint_s': 0.0}

  # -- resume --

  def resume(self, state: Any) -> Any:
    """`state` (at step 0), or the latest checkpoint's, with the early-stopping state and the
    best parameters; metrics rows logged after it are dropped (process 0)."""
    like = {'state': state} if self.watch is None else {'state': state, 'early': self.early}
    restored = self.ckpt.restore_latest(like)
    if restored is not None:
      params_like = state.weights  # with BatchNorm: params and statistics
      state = restored['state']
      if self.watch is not None:
        self.early = restored['early']
        self.best_params = self.ckpt.restore_best(params_like)
      logging.info('%s resumes at step %d from %s.', self.name[:1].upper() + self.name[1:],
                   int(state.step), self.ckpt.latest_dir)
    self.step = int(state.step)
    if jax.process_index() == 0:
      truncate_metrics(self.metrics_file, self.step)
    return state

  # -- run --

  def run(self, train_step: Callable, state: Any, batches: Iterator[dict], rng: jax.Array,
          evaluate: Callable[[Any], dict[str, float]] | None = None) -> Any:
    """Steps from the resumed `state` to `steps` (or an early stop); the replicated state.

    `evaluate(replicated params)` returns named values for the row (every process calls it).
    """
    pstate = parallel.replicate(state)
    self.timer = Timer(self.batch)  # from here: the first step's time is its compilation
    start = time.time()
    try:
      return self._run(train_step, pstate, batches, rng, evaluate)
    finally:
      self.seconds['loop_s'] += time.time() - start

  def _run(self, train_step, pstate, batches, rng, evaluate) -> Any:
    with sigterm_flag() as sigterm:
      for tick in run_steps(train_step, pstate, batches, rng, self.step, self.row_step):
        pstate = tick.state
        preempted = stop_for_sigterm(sigterm, tick.fetched is not None)
        stop = self.after_step(tick.step, lambda: pstate, tick.metrics, tick.fetched,
                               evaluate, preempted)
        if preempted:
          raise Preempted(f'SIGTERM received: {self.name} checkpoint saved at step {tick.step} '
                          f'in {self.ckpt.latest_dir}; repeat the same command to resume.')
        if stop:
          break
    return pstate

  def after_step(self, step: int, state: Callable[[], Any], metrics: dict,
                 fetched: list[dict] | None, evaluate: Callable | None,
                 preempted: bool) -> bool:
    """The bookkeeping of step `step` done: its row (with `fetched`, the host metrics since
    the last row), evaluation, early stopping and checkpoints of the replicated train state
    `state()` (called only when needed). True when early stopping ends the run here; the
    caller raises `Preempted` when `preempted` (the latest checkpoint is saved by then).
    Also what `medft.packed` calls for each seed of a packed program."""
    self.step = step
    self.timer.after_step(metrics)
    eval_now = step % self.eval_every == 0 or step == self.steps
    if fetched is not None:
      row = self._row(fetched, step)
      if eval_now and evaluate is not None:
        row.update(self._evaluate(evaluate, state().weights, step))
      if jax.process_index() == 0:
        files.append_line(self.metrics_file, json.dumps(row))
        if self.scalars is not None:
          self.scalars.write(row)
      self.timer.reset()
    stop = self.watch is not None and int(self.early['bad_evals']) >= self.patience
    if (step % self.checkpoint_every == 0 or step == self.steps or stop or preempted
        or (eval_now and self.watch is not None)):
      self._save_latest(step, state())
    if stop and not preempted:
      logging.info('%s: early stop at step %d: no validation gain in %d evaluations.',
                   self.name, step, self.patience)
    return stop

  def row_step(self, step: int) -> bool:
    """Whether `step` logs a row: every `log_every` and `eval_every` steps, and the last."""
    return step % self.log_every == 0 or step % self.eval_every == 0 or step == self.steps

  def _row(self, fetched: list[dict], step: int) -> dict:
    """The metrics row of the steps since the last one; stops on a non-finite step."""
    bad = [step - len(fetched) + i + 1 for i, m in enumerate(fetched) if not m['finite']]
    if bad and not self.skip_nonfinite:
      raise NonFiniteError(
          f'{self.name}: non-finite loss or update at step {bad[0]} (the step was not '
          f'applied). Last good checkpoint: {self.ckpt.latest_dir} (step '
          f'{self.ckpt.latest.latest_step()}). {self.nonfinite_fix}'.rstrip())
    if bad:
      logging.warning('Skipped %d non-finite steps (first: %d).', len(bad), bad[0])
    rate = self.timer.rate()
    # The float32 the optimizer applies, written as its shortest decimal (0.00095, not
    # 0.0009500000160187483).
    lr = float(str(np.float32(self.lr(step))))
    row = {'step': step, 'loss': float(fetched[-1]['loss']),
           'accuracy': float(fetched[-1]['accuracy']), 'skipped_nonfinite': len(bad),
           'lr': lr, 'img_per_s': rate}
    logging.info('%s step %d/%d  loss %.4f  acc %.3f  %.1f img/s  ETA %s', self.name, step,
                 self.steps, row['loss'], row['accuracy'], row['img_per_s'],
                 progress.hms((self.steps - step) * self.batch / max(row['img_per_s'], 1e-9)))
    return row

  def _evaluate(self, evaluate: Callable, params: Any, step: int) -> dict[str, float]:
    start = time.time()
    try:
      return self._evaluate_timed(evaluate, params, step)
    finally:
      self.seconds['validation_s'] += time.time() - start

  def _evaluate_timed(self, evaluate: Callable, params: Any, step: int) -> dict[str, float]:
    values = evaluate(params)
    if self.watch is None:
      logging.info('%s step %d  %s', self.name, step,
                   '  '.join(f'{k} {v:.4f}' for k, v in values.items()))
      return values
    value, early = values[self.watch], self.early
    if value > float(early['best_val']):
      self.early = early_state(value, step, 0)
      self.best_params = parallel.unreplicate(params)
      saving = time.time()
      self.ckpt.save_best(step, self.best_params)
      saving = time.time() - saving  # a checkpoint, not validation
      self.seconds['checkpoint_s'] += saving
      self.seconds['validation_s'] -= saving
    else:
      self.early = early_state(early['best_val'], early['best_step'],
                               int(early['bad_evals']) + 1)
    logging.info('%s step %d  %s %.4f  (best %.4f at step %d)', self.name, step, self.watch,
                 value, float(self.early['best_val']), int(self.early['best_step']))
    return values

  def _save_latest(self, step: int, pstate: Any) -> None:
    start = time.time()
    tree = {'state': parallel.unreplicate(pstate)}
    if self.watch is not None:
      tree['early'] = self.early
    self.ckpt.save_latest(step, tree)
    if self.lock is not None:
      self.lock.refresh()
    self.seconds['checkpoint_s'] += time.time() - start

  def close(self) -> None:
    self.ckpt.close()
    if self.scalars is not None:
      self.scalars.close()
