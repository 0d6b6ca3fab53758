"""Packed seeds (`sweep.pack_seeds`): the seeds of one arm and fraction trained as one program.

The train step is vmapped over the seeds (`trainer.make_steps(pack=S)`): the state, batch
and dropout key of each seed sit on a leading seed axis, so one compiled call trains all of
them, which fills an accelerator that a batch-32 AlexNet step leaves mostly idle. Each seed
is still its own run in every other way:

  setup       `trainer.prepare` per seed: its own folder, config.json, lock, task (its batch
              order), initial parameters and validation patches, exactly as a separate run.
  batches     each seed's own input pipeline, stacked (`parallel.shard_packed`); the rng is
              each seed's own run key, so its step equals its separate step (to float
              tolerance: a vmapped convolution may sum in another order).
  bookkeeping each seed's own `loop.Loop` (`Loop.after_step` on its slice of the packed
              state): metrics rows, validation, best and latest checkpoints, early stopping.
  finishing   `trainer.finish` as soon as a seed stops: results.json, timing.json (which adds
              `packed_seeds`; its compile and loop seconds are the shared program's).

A seed that stops early is finished at once; the packed program keeps stepping it (its
slice is then ignored), as masking it would cost the same compiled step. A seed whose loss or
update is not finite fails with the `NonFiniteError` its separate run raises (the sweep
writes its failed.json); the others go on. SIGTERM saves every running seed's latest
checkpoint, then raises `Preempted`; the repeated command finds the seeds' folders and
resumes each as a separate run (`medft.sweep`). Runs of the group that cannot share one
program (a feature-cache arm, a resumed seed, differing views) train one after another.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from medft import loop, parallel, trainer, tuning
from medft.errors import NonFiniteError

Outcome = dict | NonFiniteError  # a seed's results, or why it failed


def fallback_reason(config: ml_collections.ConfigDict) -> str:
  """Why the seeds of this run config cannot train as one program ('' when they can)."""
  if config.train.get('feature_cache', '') and not tuning.is_scratch(config.depth):
    units = trainer.build_model(config)[1]
    if config.depth != units[0]:
      return ('train.feature_cache is on (the cached step trains from trunk features, one '
              'cache per run)')
  return ''


def train_seeds(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str | Path],
                on_outcome: Callable[[int, Outcome], None] = lambda i, outcome: None
                ) -> list[Outcome]:
  """Trains runs that differ only in `seed` as one packed program; per run its results, or
  the NonFiniteError it failed with, each also passed to `on_outcome(index, outcome)` as soon
  as it is known (before a later `Preempted`, so a failure is recorded). A finished run
  returns its results; runs that cannot be packed (resumed, or not alike) train separately,
  one after another."""
  from medft import validate  # here, so that `python -m medft.validate` runs it fresh
  for c in configs:
    validate.check_config(c, 'train')
  workdirs = [trainer.check_workdir_arg(w) for w in workdirs]
  with contextlib.ExitStack() as held:
    runs: list[trainer.Prepared | dict] = []
    for c, w in zip(configs, workdirs):
      lock = held.enter_context(trainer.held_workdir(w))
      runs.append(trainer.prepare(c, w, lock))
    outcomes: list[Outcome | None] = [None] * len(runs)

    def done(i: int, outcome: Outcome) -> None:
      outcomes[i] = outcome
      on_outcome(i, outcome)
    for i, r in enumerate(runs):
      if isinstance(r, dict):
        done(i, r)
    pack = [i for i, r in enumerate(runs) if isinstance(r, trainer.Prepared)]
    first = runs[pack[0]] if pack else None
    alone = [i for i in pack if _unlike(runs[i], first)]
    pack = [i for i in pack if i not in alone]
    if len(pack) < 2:
      alone, pack = sorted(alone + pack), []
    for i in alone:
      logging.info('%s trains on its own (%s).', workdirs[i], _unlike(runs[i], first)
                   or 'the only seed of its group to train')
      done(i, _separately(runs[i]))
    if pack:
      _train_packed([runs[i] for i in pack], lambda k, outcome: done(pack[k], outcome))
    return outcomes


def _separately(run: trainer.Prepared) -> Outcome:
  try:
    return trainer.train_prepared(run)
  except NonFiniteError as e:
    return e


def _unlike(run: trainer.Prepared, first: trainer.Prepared) -> str:
  """Why `run` cannot share `first`'s packed program ('' when it can)."""
  if run.loop.step != 0:
    return f'it resumes at step {run.loop.step}'
  if run.steps == 0:
    return 'it only evaluates (no training steps)'
  if run.cache is not None:
    return 'it trains from cached trunk features'
  mine, theirs = run.config.to_dict(), first.config.to_dict()
  mine.pop('seed'), theirs.pop('seed')
  if mine != theirs or (run.steps, run.batch) != (first.steps, first.batch):
    return 'its config differs from the first seed\'s in more than the seed'
  a, b = run.train_source, first.train_source
  if (a is None) != (b is None) or (a is not None and (
      a.static != b.static or not np.array_equal(a.stack, b.stack)
      or not np.array_equal(a.limits, b.limits))):
    return 'its training views differ from the first seed\'s'
  return ''


def _train_packed(runs: list[trainer.Prepared], done: Callable[[int, Outcome], None]) -> None:
  """The packed loop: one program, each seed's `Loop.after_step` on its slice; `done(k,
  outcome)` as each seed finishes or fails."""
  first, seeds = runs[0], [int(r.config.seed) for r in runs]
  logging.info('Seeds %s of arm %s at fraction %s train as one packed program.',
               ', '.join(map(str, seeds)), first.config.depth, first.config.data.fraction)
  source = first.train_source
  step_fn, _ = trainer.make_steps(first.model, first.tx, first.meta, pack=len(runs),
                                  views=source.static if source is not None else None)
  if source is not None:  # one stack on the devices for every seed (checked equal)
    placed = parallel.replicate((source.stack, source.limits))
    views_step = step_fn
    step_fn = lambda state, b, rng: views_step(state, b, rng, *placed)  # noqa: E731
  pstate = parallel.replicate_packed([r.state for r in runs])
  keys = jnp.stack([jax.random.key(s) for s in seeds])  # each seed's own run key
  batches = (list(b) for b in zip(*(r.batches() for r in runs)))
  for r in runs:
    r.phase.done('packed_setup_s')  # waiting for the other seeds' setup
    r.packed_seeds = seeds
    r.loop.name = f'{r.loop.name} seed {r.config.seed}'
    r.loop.timer = loop.Timer(r.batch)
  active = list(range(len(runs)))
  start = time.time()
  with loop.sigterm_flag() as sigterm:
    for tick in loop.run_steps(step_fn, pstate, batches, keys, 0, first.loop.row_step,
                               packed=True):
      preempted = loop.stop_for_sigterm(sigterm, tick.fetched is not None)
      for i in list(active):
        run = runs[i]

        def state(tick=tick, i=i):  # seed i's replicated state, sliced when needed
          return jax.tree.map(lambda x: x[:, i], tick.state)
        fetched = None if tick.fetched is None else [
            {k: v[i] for k, v in m.items()} for m in tick.fetched]
        try:
          stop = run.loop.after_step(tick.step, state, tick.metrics, fetched,
                                     run.evaluate_val, preempted)
        except NonFiniteError as e:
          active.remove(i)
          run.loop.close()
          done(i, e)
          continue
        if not preempted and (stop or tick.step >= run.steps):
          run.loop.seconds['loop_s'] += time.time() - start
          run.phase.done('loop_s')
          active.remove(i)
          done(i, trainer.finish(run, state().weights))
      if preempted:
        raise loop.Preempted(
            f'SIGTERM received: the packed seeds {", ".join(str(seeds[i]) for i in active)} '
            f'saved their checkpoints at step {tick.step}; repeat the same command to resume '
            '(each then resumes as a separate run).')
      if not active:
        break
  if active:  # the batches ended early: not expected (the pipeline yields every step)
    raise RuntimeError(f'packed seeds {seeds}: the input ended before step {first.steps}.')
