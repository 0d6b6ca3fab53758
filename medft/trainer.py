"""`medft.train(config, workdir)`: one arm of the study, from data to results.json.

Phases: workdir, data, model and weights, optimizer, checkpoints, loop (the pmapped step run
by `medft.loop`, with validation AUC as its early-stopping value), final evaluation.
Importable from any JAX program: no absl flag parsing and no global state.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct

from medft import (
  feature_cache,
  files,
  locks,
  loop,
  models,
  parallel,
  preprocess,
  progress,
  scalars,
  tuning,
)
from medft.errors import (  # NonFiniteError is re-exported as medft.trainer.NonFiniteError
  ConfigError,
  InputFileError,
  NonFiniteError,  # noqa: F401
  NotOursError,
  ResourceError,
)
from medft.models import batchnorm
from medft.tasks.base import Task
from medft.weights import store


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation,
             batch_stats: Any = None) -> 'TrainState':
    """Step 0 with a fresh optimizer state, as host numpy arrays (what orbax checkpoints).
    A network with BatchNorm (`batch_stats` not empty) gets a `BNTrainState`."""
    fields = dict(step=np.asarray(0, np.int32), params=params,
                  opt_state=jax.tree.map(np.asarray, tx.init(params)))
    if batch_stats:
      return BNTrainState(**fields, batch_stats=jax.tree.map(np.asarray, batch_stats))
    return cls(**fields)

  @property
  def weights(self) -> Any:
    """What evaluation, `checkpoints/best` and the feature cache use: the parameters (a
    BatchNorm network's state adds its statistics, `batchnorm.weights_tree`)."""
    return self.params


class BNTrainState(TrainState):
  """The state of a network with BatchNorm: also its running statistics (Flax's
  `batch_stats`). A class of its own, so that the checkpoints of every other network keep
  their layout (step, params, opt_state) and older runs resume."""
  batch_stats: Any = None

  @property
  def weights(self) -> Any:
    return batchnorm.weights_tree(self.params, self.batch_stats)


def _config_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


LOCK_FILE = 'medft.lock'


def workdir_lock(workdir: Path) -> 'locks.Lock | _NoLock':
  """The lock of a run workdir (`workdir/medft.lock`, see medft/locks.py). Held by process 0
  of a multi-process job for the whole job (its other processes write the same folder)."""
  if jax.process_index() != 0:
    return _NoLock()
  return locks.Lock(workdir / LOCK_FILE, f'--workdir={workdir}')


@contextlib.contextmanager
def held_workdir(workdir: Path) -> Iterator['locks.Lock | _NoLock']:
  """The workdir's lock for the body, released after it. Taken at once when a run was here
  before (a second process then stops before reading any data); otherwise the body takes it
  (`lock.acquire()`) once it has created the folder."""
  lock = workdir_lock(workdir)
  if (workdir / LOCK_FILE).is_file():  # a run was here: is it still running?
    lock.acquire()
  try:
    yield lock
  finally:
    lock.release()


class _NoLock:
  """What processes other than 0 hold: nothing."""

  def acquire(self, *args, **kwargs) -> '_NoLock':
    return self

  def release(self) -> None:
    pass

  def refresh(self) -> None:
    pass


def check_workdir_arg(workdir: Any, name: str = 'workdir') -> Path:
  """`workdir` as a Path; an empty one (which would mean the current folder) is refused."""
  if not isinstance(workdir, (str, os.PathLike)):
    raise TypeError(f'{name} must be a folder path (str or os.PathLike), not '
                    f'{type(workdir).__name__}.')
  if not str(os.fspath(workdir)).strip():
    raise ConfigError(f'--{name} is empty; name the folder for this run\'s files, e.g. '
                      f'--{name}=runs/cimt_fc7 (an empty value would write into the current '
                      'folder).')
  return Path(workdir)


def trained_anything(workdir: Path) -> bool:
  """Whether a run in `workdir` got as far as a metrics row, a checkpoint or its results."""
  metrics = workdir / 'metrics.jsonl'
  if (workdir / 'results.json').exists() or (metrics.exists() and metrics.stat().st_size):
    return True
  return any(any((workdir / 'checkpoints' / kind).glob('[0-9]*'))
             for kind in ('latest', 'best'))


def _prepare_workdir(config: ml_collections.ConfigDict, workdir: Path,
                     create: bool = True) -> None:
  """Creates the workdir, or checks that the run already in it used the same config.

  `create=False` only checks (and that the workdir could be made): `train` calls it before
  reading any input, and creates the workdir once every input has been read, so that a bad
  input leaves the workdir as it was. A workdir whose run stopped before its first metrics
  row or checkpoint (a bad value found late) holds nothing of value: a new config replaces
  its config.json. A non-empty folder without medft's marker or a config.json is not ours
  and is refused.
  """
  wanted = _config_dict(config)
  config_file = workdir / 'config.json'
  if config_file.exists():
    try:
      held = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
      raise InputFileError(f'{config_file} is not valid JSON; it was not written by medft. Use '
                           'an empty --workdir.') from None
    if not isinstance(held, dict) or 'train' not in held:
      raise InputFileError(f'{config_file} is not the config of a medft run; it was not '
                           'written by medft. Use an empty --workdir.')
    if held != wanted and _resumes_as_before(config, held):
      held = wanted = _config_dict(config)  # the same run, the old behaviour written out
      if create:
        files.write_json_atomic(config_file, wanted)
    if held != wanted:
      if not trained_anything(workdir) and files.read_marker(workdir) == 'run':
        if create:
          logging.warning('%s held the config of a run that trained nothing (no metrics row '
                          'or checkpoint); replacing it with this config.', config_file)
          files.write_json_atomic(config_file, wanted)
        return
      diff = sorted(k for k in set(_flat(held)) | set(_flat(wanted))
                    if _flat(held).get(k) != _flat(wanted).get(k))
      raise ConfigError(f'--workdir={workdir} holds a run of a different config (differs in: '
                        f'{", ".join(diff[:8])}). Use a new --workdir, or repeat the original '
                        'command to resume that run.')
    if create:
      files.write_marker(workdir, 'run')
    return
  if workdir.is_dir() and files.read_marker(workdir) is None and any(
      p.name not in (LOCK_FILE, files.MARKER) for p in workdir.iterdir()):
    raise NotOursError(f'--workdir={workdir} is a folder of other files (no config.json or '
                       f'{files.MARKER} marker of medft); medft does not write into it. Use a '
                       'new or empty --workdir.')
  if not create:
    folder = next(p for p in (workdir.absolute(), *workdir.absolute().parents) if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
      raise ResourceError(f'--workdir={workdir} cannot be created: {folder} is not a writable '
                          'folder; choose a writable folder.')
    return
  files.make_dirs(workdir, 'the run workdir')
  if jax.process_index() == 0:
    files.write_marker(workdir, 'run')
    files.write_json_atomic(config_file, wanted)


# Fields added to the configs after runs may have started, and the value that does what
# medft did before them: a run whose config.json lacks one resumes with that value.
ADDED_FIELDS = {'task.views_on': 'host', 'model.keep_head': False, 'train.tensorboard': False,
                'data.manifest': '', 'data.split_by': 'subject', 'model.bn_mode': 'train',
                'data.synthetic_classes': 2, 'task.class_balanced': False,
                'optim.layer_decay': 1.0, 'sweep.layer_decay': 0.65, 'sweep.pack_seeds': False,
                'sweep.sources': ''}


def with_added_fields(held: dict) -> dict:
  """A config record (or part of one) written before some `ADDED_FIELDS` existed, with each
  missing field of a block it has set to the value that does what medft did before it."""
  out = {k: dict(v) if isinstance(v, dict) else v for k, v in held.items()}
  for key, before in ADDED_FIELDS.items():
    block, field = key.split('.')
    if isinstance(out.get(block), dict):
      out[block].setdefault(field, before)
  return out


def _resumes_as_before(config: ml_collections.ConfigDict, held: dict) -> bool:
  """Sets in `config` the old behaviour of every `ADDED_FIELDS` entry that the run's
  config.json (`held`) lacks, so an unfinished run of an older medft resumes as it trained;
  True when it changed anything."""
  flat_held, changed = _flat(held), False
  for key, before in ADDED_FIELDS.items():
    block, field = key.split('.')
    if key not in flat_held and field in config.get(block, {}):
      if config[block][field] != before:
        logging.warning('This run was started by a medft without %s; it resumes with %s=%r, '
                        'as it trained.', key, key, before)
        config[block][field] = before
      held = {**held, block: {**held.get(block, {}), field: before}}
      changed = True
  return changed and _config_dict(config) == held


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def total_steps(config: ml_collections.ConfigDict, epoch_examples: int) -> tuple[int, int]:
  """(total steps, steps per epoch): durations given in epochs become steps here only."""
  steps_per_epoch = max(1, epoch_examples // config.train.batch)
  if config.train.epochs > 0:
    return max(1, int(round(config.train.epochs * steps_per_epoch))), steps_per_epoch
  return int(config.train.steps), steps_per_epoch


def build_model(config: ml_collections.ConfigDict):
  """The linen module and its tuning units from the config."""
  kwargs = dict(width=config.model.width, dropout=config.model.dropout,
                dtype=jnp.dtype(config.dtype))
  if config.model.init_scheme:
    kwargs['scheme'] = config.model.init_scheme
  if config.arch.startswith('alexnet'):
    kwargs['group_impl'] = config.model.group_impl
  model, units = models.get_model(config.arch, config.num_classes, **kwargs)
  if batchnorm.has_batchnorm(model):  # which units normalise with batch statistics
    model = model.clone(**batchnorm.bn_settings(
        tuning.trained_units(units, config.depth), config.model.get('bn_mode', 'train'),
        parallel.AXIS))
  return model, units


def init_variables(model, seed: int, input_size: Sequence[int]) -> Any:
  """`model.init(key(seed), zeros of one input image)` compiled as one program: run eagerly it
  dispatches (and in a fresh process compiles) every initialiser and layer on its own, ~2 s
  per run for the tiny test AlexNet with a warm compile cache. Equal to the eager init up to
  float rounding (1 ulp in a few kernels of the networks with BatchNorm or fan-in scaling)."""
  h, w = input_size
  init = jax.jit(model.init, static_argnames='train')
  return init(jax.random.key(seed), jnp.zeros((1, h, w, 3)), train=False)


def initial_params(config: ml_collections.ConfigDict, model, units) -> tuple[Any, store.Meta]:
  """`initial_variables` without the BatchNorm statistics."""
  params, _, meta = initial_variables(config, model, units)
  return params, meta


def initial_variables(config: ml_collections.ConfigDict, model, units
                      ) -> tuple[Any, Any, store.Meta]:
  """Fresh parameters for scratch; pretrained trunk plus a fresh head for fine-tuning arms.
  Returns `(params, batch_stats, meta)`: a network with BatchNorm takes init='s running
  statistics with its trunk (`store.load_batch_stats`; fresh ones for scratch); batch_stats is
  {} for a network without BatchNorm.

  When `init` is given, scratch still takes its input convention (size, mean, std) so that
  every arm of a study sees the same inputs; only the parameters differ. With
  `model.keep_head` the head is loaded too (a fine-tuned model, e.g. an export of a run,
  evaluated with `train.steps=0` or tuned further): its classes must be the task's.
  """
  tuning.trained_units(units, config.depth)  # validates the depth name early
  scratch = config.depth == 'scratch'
  if not scratch and not config.init:
    raise ConfigError(f'depth={config.depth} fine-tunes pretrained weights but init= is empty; '
                      'pass init=<folder from python -m medft.weights.convert>, or use '
                      'depth=scratch.')
  if config.init:
    loaded, meta = store.load_artifact(config.init)
    if meta.arch != config.arch:
      raise ConfigError(f'init={config.init} holds {meta.arch} weights but arch={config.arch}; '
                        f'set arch={meta.arch} or convert weights for {config.arch}.')
  else:
    meta = store.default_meta(config.arch, (config.input_size, config.input_size))
  variables = init_variables(model, config.seed, meta.input_size)
  fresh, fresh_stats = jax.tree.map(np.asarray, batchnorm.split_variables(variables))
  if scratch:
    return fresh, fresh_stats, meta
  stats = fresh_stats
  if fresh_stats:
    stats = store.merge_params(
        store.load_batch_stats(config.init), fresh_stats,
        dont_load=() if config.model.get('keep_head', False) else [units[-1]],
        source=f'BatchNorm statistics in init={config.init}')
  if config.model.get('keep_head', False):
    if meta.num_source_classes != config.num_classes:
      raise ConfigError(f'model.keep_head=True keeps the {meta.num_source_classes}-class head of '
                        f'init={config.init}, but this task has num_classes='
                        f'{config.num_classes}; use weights trained on this task (an export '
                        'of its run), or model.keep_head=False for a new head.')
    return store.merge_params(loaded, fresh, source=f'weights in init={config.init}'), stats, meta
  params = store.merge_params(loaded, fresh, dont_load=[units[-1]],
                              source=f'weights in init={config.init}')
  return tuning.reinit_head(params, fresh, units[-1]), stats, meta


COND_MIN_ARRAYS = 200  # AlexNet ~35 state arrays, ResNet-18 ~165; ResNet-50 ~430, DenseNet ~1,000


def _if_finite(finite: jax.Array, new: Any, old: Any) -> Any:
  """`new` if the step was finite, else `old` (a non-finite step keeps the state as it was).

  On XLA:CPU, for a state of more than `COND_MIN_ARRAYS` arrays, one conditional: a select
  per state array is a kernel compiled on its own there, and DenseNet-121's ~1,000 state
  arrays took its step's compilation from ~50 s to ~230 s (`docs/throughput.md`, section 4).
  Otherwise the selects: they cost little to compile for a small state, and with the
  conditional a tiny network's steps were dispatched ahead less often
  (`test_profile_shows_train_steps_back_to_back` failed 2 of 3 times); on GPU they fuse, and
  an XLA:GPU conditional reads its predicate on the host. Under `pack` (vmap) the
  conditional becomes the selects too.
  """
  if jax.default_backend() == 'cpu' and len(jax.tree.leaves(new)) > COND_MIN_ARRAYS:
    return jax.lax.cond(finite, lambda: new, lambda: old)
  return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


def make_steps(model, tx, meta: store.Meta, start: str | None = None,
               views: tuple | None = None, pack: int = 0):
  """The pmapped train step and prediction function.

  With `start` (a unit), the train step takes `batch['features']`, the frozen trunk's output
  below that unit (`medft.feature_cache`), and runs only the stages from `start` up; the
  prediction function always takes patches (`make_predict` for features). With `views` (a
  `device_views.Source.static`), the train step takes `batch['views']`, patch descriptors,
  and two more replicated arguments, the source's stack and limits, and cuts the patches
  itself. With `pack` = S > 0 the train step trains S seeds of one arm as one program
  (vmapped): state, batch and rng get a leading seed axis (`parallel.replicate_packed`,
  `parallel.shard_packed`, rng S keys), each seed's step exactly its separate step's.
  """
  network_input = _network_input(meta, start)

  def train_step(state: TrainState, batch: dict, rng: jax.Array, *source):
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step),
                             jax.lax.axis_index(parallel.AXIS))
    if views is not None:
      from medft.tasks import device_views
      x = network_input(device_views.patches(views, *source, batch['views']))
    else:
      x = network_input(batch['image'] if start is None else batch['features'])

    bn = isinstance(state, BNTrainState)

    def loss_fn(params):
      if bn:  # frozen units' statistics come back unchanged (inference-mode BatchNorm)
        logits, updated = model.apply(
            {'params': params, 'batch_stats': state.batch_stats}, x, train=True, start=start,
            rngs={'dropout': rng}, mutable=['batch_stats'])
        stats = updated['batch_stats']
      else:
        logits = model.apply({'params': params}, x, train=True, start=start,
                             rngs={'dropout': rng})
        stats = None
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      return loss, (logits, stats)

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads, loss = parallel.mean_over_devices((grads, loss))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    # Checked on the updates, not the raw gradients: frozen units' updates are constant
    # zeros, so XLA can drop their gradient computation altogether.
    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates)]))
    params = optax.apply_updates(state.params, updates)
    # BatchNorm statistics are the same on every device: each was computed from the batch
    # statistics averaged over the devices (`bn_axis_name`).
    candidate = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              **({'batch_stats': stats} if bn else {}))
    new_state = _if_finite(finite, candidate, state.replace(step=state.step + 1))
    accuracy = parallel.mean_over_devices(
        jnp.mean(jnp.argmax(logits, -1) == batch['label']))
    return new_state, {'loss': loss, 'accuracy': accuracy, 'finite': finite}

  extra = 2 if views is not None else 0
  step_fn = train_step
  if pack:
    step_fn = jax.vmap(train_step, in_axes=(0, 0, 0) + (None,) * extra)
  return (parallel.pmap_train_step(step_fn, replicated=extra), make_predict(model, meta))


def _network_input(meta: store.Meta, start: str | None):
  """uint8 patches -> the network input; trunk features (with `start`) pass as they are."""
  if start is not None:
    return lambda features: features
  return lambda patches: preprocess.prepare(patches, meta, tuple(meta.input_size))


def make_predict(model, meta: store.Meta, start: str | None = None):
  """Pmapped class probabilities of uint8 patches, or with `start` of trunk features (the
  stages from `start` up). One function per (network, input convention, start) in a process
  (`_shared`), so the runs of a sweep reuse its compiled executables."""
  def build():
    network_input = _network_input(meta, start)

    def predict(params, inputs):
      logits = model.apply(batchnorm.as_variables(params), network_input(inputs), train=False,
                           start=start)
      return jax.nn.softmax(logits)
    return parallel.pmap_predict(predict)
  return _shared(('predict', model, meta, start), build)


# Prediction functions by what they compute: a sweep's runs build the same network again and
# again; reusing the pmapped function keeps JAX's in-memory executables (no retrace, lowering
# or persistent-cache load per run). Train steps are not shared: their optimizer differs.
_SHARED: dict = {}


def _shared(key: tuple, build):
  kind, model, meta, *rest = key
  full = (kind, model, json.dumps(meta.to_json(), sort_keys=True), *rest)
  if full not in _SHARED:
    _SHARED[full] = build()
  return _SHARED[full]


def make_view_predict(model, meta: store.Meta, params: Any, batch: int):
  """`ViewPredictFn` of replicated `params`: views cut on the devices from a split's stacked
  items and classified in one compiled call (`medft.tasks.device_views`).

  A source's stack is put on the devices once and kept while it is the current source; one
  compiled function per network, source kind and patch size in a process (`_shared`).
  """
  from medft.tasks import device_views
  placed: list = [None, None]  # (source, its replicated stack and limits)

  def build(static):
    def fn(inputs, d):
      p, stack, limits = inputs
      x = preprocess.prepare(device_views.patches(static, stack, limits, d), meta,
                             tuple(meta.input_size))
      return jax.nn.softmax(model.apply(batchnorm.as_variables(p), x, train=False))
    return parallel.pmap_predict(fn)

  def predict_views(source, desc: dict) -> np.ndarray:
    fn = _shared(('views', model, meta, source.static), lambda: build(source.static))
    if placed[0] is not source:
      placed[:] = [source, parallel.replicate((source.stack, source.limits))]
    return parallel.predict_in_batches(fn, (params, *placed[1]), desc, batch)
  return predict_views


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Trains one arm (`config.depth`) and returns the contents of `results.json`.

  Re-running with the same config and workdir resumes from `checkpoints/latest`; a finished
  run returns its existing results without training again. One process per workdir: a second
  one stops at once with `LockedError` naming the first (medft/locks.py).
  """
  from medft import validate  # here, so that `python -m medft.validate` runs it fresh
  validate.check_config(config, 'train')  # every field in range before anything is touched
  workdir = check_workdir_arg(workdir)
  with held_workdir(workdir) as lock:
    return _train(config, workdir, lock)


def read_results(path: Path) -> dict:
  """A finished run's results.json; a damaged one is an InputFileError saying what to do."""
  try:
    results = json.loads(path.read_text())
    if not isinstance(results, dict) or 'val_auc' not in results:
      raise ValueError('not the results of a medft run')
  except (ValueError, UnicodeDecodeError) as e:
    raise InputFileError(
        f'{path} is damaged ({e}); delete it and repeat the command: the run is evaluated again '
        'from its checkpoints (or trained again where they were not kept).') from None
  return results


def _train(config: ml_collections.ConfigDict, workdir: Path, lock) -> dict:
  run = prepare(config, workdir, lock)
  if isinstance(run, dict):
    return run
  return train_prepared(run)


@dataclasses.dataclass
class Prepared:
  """One run set up to train (`prepare`): what its loop and final evaluation need. `_train`
  runs it on its own (`train_prepared`); `medft.packed` steps several seeds' runs of one arm
  as one program and finishes each (`finish`)."""
  config: ml_collections.ConfigDict
  workdir: Path
  ds: Any
  task: Task
  model: Any
  meta: store.Meta
  tx: optax.GradientTransformation
  state: TrainState  # at the resumed step (host)
  loop: loop.Loop
  batch: int
  steps: int
  steps_per_epoch: int
  cache: feature_cache.FeatureCache | None
  cache_start: str | None
  train_source: Any  # device_views.Source when the train step cuts its views, else None
  p_predict: Any
  evaluate_val: Any  # replicated params -> {'val_auc': ...}
  phase: 'Phases'
  wall_start: float
  compile_counter: collections.Counter
  val_patches_s: float = 0.0
  packed_seeds: list[int] | None = None  # the seeds trained with it (timing.json)

  def batches(self) -> Iterator[dict]:
    """This host's batches from the resumed step on (trunk features with the cache)."""
    out = loop.input_pipeline(self.task, self.loop.step, self.steps, self.batch,
                              self.config.train.workers, self.config.train.prefetch)
    if self.cache is not None:
      cache = self.cache
      out = ({'features': cache.features(b['image']), 'label': b['label']} for b in out)
    return out


def prepare(config: ml_collections.ConfigDict, workdir: Path, lock) -> Prepared | dict:
  """Everything of a run before its loop: data, task, model, weights, optimizer, workdir,
  resumed checkpoint, validation patches. A finished run's results (dict) instead."""
  _prepare_workdir(config, workdir, create=False)
  results_file = workdir / 'results.json'
  if results_file.exists():
    logging.info('%s is finished; returning its results.', workdir)
    return read_results(results_file)
  loop.read_metrics(workdir / loop.METRICS_FILE)  # a damaged row is named before any work
  if config.train.get('tensorboard', False):
    scalars.require()  # a missing package is named before the data or workdir is written
  is_main = jax.process_index() == 0
  wall_start = time.time()

  # ---- data ----------------------------------------------------------------------------
  from medft import data, tasks  # TFDS is imported only by runs that read data
  phase = Phases()
  ds = data.load(config.data)
  # After the data: input that cannot be read leaves no compile-cache folder behind.
  compile_counter = enable_compile_cache(config.compile_cache)
  task: Task = tasks.get_task(ds.app, ds.splits, config.task, config.seed)
  phase.done('data_s')
  if task.num_classes != config.num_classes:
    raise ConfigError(f'num_classes={config.num_classes} but the {ds.app} task has '
                      f'{task.num_classes} classes.')
  batch = config.train.batch
  if config.train.batch_per_device > 0:
    batch = config.train.batch_per_device * jax.device_count()
  parallel.check_batch(batch)
  steps, steps_per_epoch = total_steps(config, task.epoch_examples)

  # ---- model and weights ---------------------------------------------------------------
  model, units = build_model(config)
  params, batch_stats, meta = initial_variables(config, model, units)
  tuning.log_labels(params, units, config.depth, config.optim)

  # ---- optimizer -----------------------------------------------------------------------
  tx = tuning.make_optimizer(params, units, config.depth, config.optim, steps_per_epoch)
  state = TrainState.create(params, tx, batch_stats)
  # Frozen units never change, so the initial parameters define the cache (before the
  # workdir is written: a bad cache folder leaves it untouched).
  cache, cache_start = _feature_cache(config, model, units, meta, state.weights)

  # ---- checkpoints (resume) ------------------------------------------------------------
  # Every process checked the folder above; process 0 alone creates it and writes its marker
  # and config (another process looking at it then could see it half-written), the others
  # wait for it.
  if is_main:
    _prepare_workdir(config, workdir)
  parallel.sync_hosts('medft: run workdir prepared')
  if not is_main:  # a host without the shared folder gets its own (its lock lives there)
    files.make_dirs(workdir, 'the run workdir')
  lock.acquire()
  steps_loop = loop.Loop(
      workdir, name=f'arm {config.depth}', steps=steps, batch=batch,
      log_every=config.train.log_every, eval_every=config.train.eval_every,
      checkpoint_every=config.train.checkpoint_every,
      lr=tuning.lr_schedule(config.optim.base_lr, config.optim.lr_decay_per_epoch,
                            steps_per_epoch),
      watch='val_auc', patience=config.train.patience, lock=lock,
      skip_nonfinite=config.train.skip_nonfinite,
      nonfinite_fix='Lower optim.base_lr, check the inputs, or set train.skip_nonfinite=True '
                    'to skip such steps.')
  state = steps_loop.resume(state)
  if config.train.get('tensorboard', False) and is_main:  # from the resumed step on
    steps_loop.scalars = scalars.Writer(workdir, steps_loop.step)

  phase.done('setup_s')

  # ---- validation ----------------------------------------------------------------------
  # Training views cut in the step (not with the feature cache: it hashes host patches).
  train_source = None
  if cache is None and hasattr(task, 'train_views_on_device'):
    train_source = task.train_views_on_device()
  p_predict = make_predict(model, meta)
  val_patches, val_labels, _ = task.eval_patches('validation')
  val_inputs, p_val_predict = val_patches, p_predict
  if cache is not None:  # validation patches are fixed: their trunk features are too
    val_features = _cached_features(cache, val_patches, 4 * batch)
    if val_features is not None:
      val_inputs, p_val_predict = val_features, make_predict(model, meta, cache_start)

  def evaluate_val(p) -> dict[str, float]:
    probs = predict_with_progress(p_val_predict, p, val_inputs, 4 * batch,
                                  'validation evaluation')
    if not np.all(np.isfinite(probs)):
      logging.warning('Validation predictions are not finite; counted as no improvement.')
      return {'val_auc': float('nan')}
    return {'val_auc': task.patch_auc(probs, val_labels)}

  return Prepared(
      config=config, workdir=workdir, ds=ds, task=task, model=model, meta=meta, tx=tx,
      state=state, loop=steps_loop, batch=batch, steps=steps, steps_per_epoch=steps_per_epoch,
      cache=cache, cache_start=cache_start, train_source=train_source, p_predict=p_predict,
      evaluate_val=evaluate_val, phase=phase, wall_start=wall_start,
      compile_counter=compile_counter,
      val_patches_s=phase.done('validation_patches_s'))


def train_prepared(run: Prepared) -> dict:
  """Trains a prepared run on its own (its pmapped step) and finishes it."""
  p_train_step, _ = make_steps(run.model, run.tx, run.meta, start=run.cache_start,
                               views=run.train_source.static if run.train_source else None)
  if run.train_source is not None:
    p_views_step, placed = p_train_step, parallel.replicate((run.train_source.stack,
                                                              run.train_source.limits))
    p_train_step = lambda state, b, rng: p_views_step(state, b, rng, *placed)  # noqa: E731
  try:
    pstate = run.loop.run(p_train_step, run.state, run.batches(),
                          jax.random.key(run.config.seed), run.evaluate_val)
  finally:
    if run.cache is not None:
      _close_cache(run.cache, run.batch)
  run.phase.done('loop_s')
  return finish(run, pstate.weights)


def finish(run: Prepared, params: Any) -> dict:
  """The final evaluation of a trained run (its best parameters, else `params`, replicated
  as the loop left them): results.json and timing.json; returns the results."""
  config, workdir, task, ds, phase = run.config, run.workdir, run.task, run.ds, run.phase
  model, meta, batch, p_predict = run.model, run.meta, run.batch, run.p_predict
  steps_loop = run.loop
  is_main = jax.process_index() == 0
  step, early, ckpt = steps_loop.step, steps_loop.early, steps_loop.ckpt
  if run.steps == 0:  # evaluation only (model.keep_head): the loaded model's validation AUC
    early = loop.early_state(run.evaluate_val(params)['val_auc'], 0, 0)

  # ---- final evaluation ----------------------------------------------------------------
  best_params = steps_loop.best_params
  if best_params is None:
    best_params = parallel.unreplicate(params)
  eval_params = parallel.replicate(best_params)

  def predict_numpy(patches):
    return parallel.predict_in_batches(p_predict, eval_params, patches, 4 * batch)

  test = None
  if len(ds.splits.get('test', ())):
    counter = progress.Progress('test evaluation', 'patches', total=task.eval_size('test'))
    extra = {}
    if getattr(task, 'views_on_device', lambda: False)():
      extra['predict_views'] = progress.wrap_predict(
          make_view_predict(model, meta, eval_params, 4 * batch), counter)
    test = task.evaluate(progress.wrap_predict(predict_numpy, counter), 'test', **extra)
    counter.done()
  phase.done('test_s')
  results = {
      'app': ds.app, 'arm': config.depth, 'depth': config.depth, 'arch': config.arch,
      'fraction': config.data.fraction, 'seed': config.seed, 'dataset': config.data.name,
      'init': config.init or None, 'init_source': meta.source_format if config.init else None,
      'steps': int(step), 'total_steps': run.steps, 'steps_per_epoch': run.steps_per_epoch,
      'best_step': int(early['best_step']), 'val_auc': float(early['best_val']),
      'test_auc': test['auc'] if test else None, 'test': test,
      # Training units kept, counted in the unit a fraction counts (data.fraction_unit).
      'fraction_unit': ds.info['fraction_unit'], 'train_units': ds.info['fraction_units_kept'],
      'checkpoints': {'best': str(ckpt.best_dir), 'latest': str(ckpt.latest_dir)},
  }
  steps_loop.close()
  phase.done('checkpoint_close_s')
  if is_main:
    cache, compile_counter = run.cache, run.compile_counter
    timing = {
        'compile_s': steps_loop.timer.compile_s, 'wall_s': time.time() - run.wall_start,
        'phases': phase.split(steps_loop.seconds, steps_loop.timer.compile_s,
                              run.val_patches_s),
        'devices': jax.device_count(), 'backend': jax.default_backend(),
        'compile_cache': {k: _CACHE_EVENTS[k] - compile_counter[k]
                          for k in ('cache_hits', 'cache_misses')},
        'feature_cache': cache.stats() if cache is not None else None}
    if run.packed_seeds:
      timing['packed_seeds'] = run.packed_seeds
    files.write_json_atomic(workdir / 'timing.json', timing)
    files.write_json_atomic(workdir / 'results.json', results)
  logging.info('Done: val_auc %.4f (step %d), test_auc %s -> %s', results['val_auc'],
               results['best_step'], results['test_auc'], workdir / 'results.json')
  return results


class Phases:
  """Wall seconds of a run's phases, in order (timing.json `phases`, DESIGN.md)."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self._last = time.time()

  def done(self, name: str) -> float:
    now = time.time()
    self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
    self._last = now
    return self.seconds[name]

  def split(self, loop: dict[str, float], compile_s: float | None, val_patches_s: float
            ) -> dict[str, float]:
    """The phases with the training loop split into compilation (its first step), train
    steps, validation (with cutting the fixed validation patches) and checkpoints."""
    out = {k: v for k, v in self.seconds.items() if k not in ('loop_s', 'validation_patches_s')}
    compile_s = compile_s or 0.0
    out['compile_s'] = compile_s
    out['validation_s'] = loop['validation_s'] + val_patches_s
    out['checkpoint_s'] = loop['checkpoint_s'] + out.pop('checkpoint_close_s', 0.0)
    # Steps: the loop less the above (what remains is steps and the input pipeline's waits).
    out['train_steps_s'] = max(0.0, self.seconds.get('loop_s', 0.0) - compile_s
                               - loop['validation_s'] - loop['checkpoint_s'])
    return out


def _feature_cache(config, model, units, meta: store.Meta, params
                   ) -> tuple[feature_cache.FeatureCache | None, str | None]:
  """The frozen-trunk feature cache of this arm and the unit the train step starts at.

  (None, None) when `train.feature_cache` is off or the arm trains every unit.
  """
  mode = config.train.get('feature_cache', '')
  if not mode:
    return None, None
  # A blank mode and feature_cache_mb <= 0 were refused by medft.validate before the workdir.
  if config.depth == 'scratch' or config.depth == units[0]:
    logging.info('train.feature_cache: arm %s trains every unit; nothing to cache.',
                 config.depth)
    return None, None
  if mode != 'memory':
    folder = Path(mode)
    try:
      folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise ConfigError(f'train.feature_cache={mode} cannot be created ({e.strerror}); give a '
                        'writable folder, "memory", or "" to turn the cache off.') from None
    if not os.access(folder, os.W_OK | os.X_OK):
      raise ConfigError(f'train.feature_cache={mode} is not writable; give a writable folder, '
                        '"memory", or "" to turn the cache off.')
  stop, frozen = feature_cache.frozen_trunk(units, config.depth, params)
  key = feature_cache.fingerprint(frozen, {
      'arch': config.arch, 'model': config.model.to_dict(), 'dtype': config.dtype,
      'stop': stop, 'input': {k: v for k, v in meta.to_json().items()
                              if k in ('channel_order', 'scale', 'mean', 'std', 'input_size')}})
  run = feature_cache.make_trunk(model, meta, stop, frozen)
  cache = feature_cache.FeatureCache(run, key, mode, config.train.feature_cache_mb * 2**20)
  logging.info('Feature cache (%s, key %s): %s features held, frozen trunk up to %s.',
               'in memory' if mode == 'memory' else mode, key, len(cache), stop)
  return cache, config.depth


def _cached_features(cache: feature_cache.FeatureCache, patches: np.ndarray,
                     chunk: int) -> np.ndarray | None:
  """Trunk features of a fixed set of patches (through the cache), or None when they would
  take more than half the cache's size bound (evaluation then runs the whole network)."""
  if not len(patches):
    return None
  first = cache.features(patches[:chunk], count=False)
  if first[0].nbytes * len(patches) > cache.max_bytes // 2:
    logging.info('Validation features would exceed half of train.feature_cache_mb; '
                 'validation runs the whole network.')
    return None
  rest = [cache.features(patches[i:i + chunk], count=False)
          for i in range(chunk, len(patches), chunk)]
  return np.concatenate([first, *rest])


def _close_cache(cache: feature_cache.FeatureCache, batch: int) -> None:
  """Saves the feature cache and logs its use; warns when it served almost nothing."""
  cache.save()
  stats = cache.stats()
  logging.info('Feature cache: %s', stats)
  if stats['hits'] + stats['misses'] > 4 * batch and stats['hit_rate'] < 0.1:
    logging.warning('The feature cache served %.0f%% of the patches: this task draws fresh '
                    'patches every step. Set task.fixed_pool=True (CIMT, frames) to train '
                    'on a fixed set, or turn train.feature_cache off.', 100 * stats['hit_rate'])


_CACHE_EVENTS: collections.Counter = collections.Counter()


def _count_cache_event(event: str, **kwargs) -> None:
  if event.startswith('/jax/compilation_cache/cache_'):
    _CACHE_EVENTS[event.rsplit('/', 1)[-1]] += 1


def enable_compile_cache(setting: str) -> collections.Counter:
  """Turns on JAX's persistent compilation cache; returns the hit/miss counts so far.

  `setting` is a folder, '' for the default user cache folder, or 'off'. The cache is a
  process-wide JAX setting; a folder the caller configured already is left alone.
  """
  if not _CACHE_EVENTS:
    _CACHE_EVENTS['listening'] = 1
    jax.monitoring.register_event_listener(_count_cache_event)
  if setting != 'off':
    if not jax.config.jax_compilation_cache_dir:
      folder = Path(setting or os.environ.get('MEDFT_CACHE_DIR', '') or
                    Path.home() / '.cache' / 'medft') / ('jax' if not setting else '')
      try:
        files.make_dirs(folder, 'the JAX compilation cache')
        if not os.access(folder, os.W_OK | os.X_OK):
          raise ResourceError(f'{folder} is read-only, so the JAX compilation cache cannot be '
                              'written there.')
      except ResourceError as e:
        raise ResourceError(f'compile_cache: {e} Set --config.compile_cache=<a writable '
                            'folder>, or --config.compile_cache=off.') from None
      jax.config.update('jax_compilation_cache_dir', str(folder))
      jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
      jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
      logging.info('JAX compilation cache: %s', folder)
  return collections.Counter(_CACHE_EVENTS)


def predict_with_progress(predict_fn, params, inputs: np.ndarray, batch: int, what: str,
                          chunks_of: int = 8) -> np.ndarray:
  """`parallel.predict_in_batches` over `inputs`, in chunks of `chunks_of` batches so that a
  long evaluation logs its progress (medft/progress.py)."""
  step = batch * chunks_of
  if len(inputs) <= step:
    return parallel.predict_in_batches(predict_fn, params, inputs, batch)
  counter = progress.Progress(what, 'patches', total=len(inputs))
  outs = []
  for i in range(0, len(inputs), step):
    outs.append(parallel.predict_in_batches(predict_fn, params, inputs[i:i + step], batch))
    counter.update(len(outs[-1]))
  counter.done()
  return np.concatenate(outs)
