"""The JAX cases: the library's real train step, feature-cached step and inference, compiled
ahead of time on benchmark parameters and images.

Each case is a `JaxCase`: a `run()` that feeds one call and blocks on its result, its
compile time, its FLOPs (`flops.lowered_flops`) and its compiled HLO.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medft import models, parallel, trainer, tuning
from medft.bench.core import NUM_CLASSES, Settings, patched
from medft.bench.flops import lowered_flops
from medft.models import batchnorm
from medft.weights import store


def optim_config() -> ml_collections.ConfigDict:
  """The paper's optimizer rules (`medft.configs.common` defaults)."""
  from medft.configs import common
  return common.base_config(common.parse_arg(
      '', arch='', depth='scratch', init='', seed=0, fraction=1.0, batch=0, steps=0,
      epochs=0.0)).optim


@dataclasses.dataclass
class JaxCase:
  run: Callable[[], Any]
  compile_s: float
  flops: tuple[float | None, str]
  hlo: str                       # the compiled (optimised) HLO module
  lowered: Any = None            # jax.stages.Lowered: `.as_text()` is the StableHLO


def build_model(arch: str, s: Settings, **kwargs):
  if s.width != 1.0:
    kwargs['width'] = s.width
  kwargs.setdefault('dtype', jnp.dtype(s.dtype))
  return models.get_model(arch, NUM_CLASSES, **kwargs)


def bench_params(model, s: Settings, seed: int = 0) -> Any:
  """He-normal kernels and zero biases in the model's parameter shapes (numpy).

  `model.init` would run (and compile) a forward pass at full input size, which costs more
  than the benchmark of a small case; speed does not depend on the values, only their scale.
  """
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, s.input_size, s.input_size, 3))))
  rng = np.random.default_rng(seed)

  def init(path, leaf):
    if path[-1].key == 'bias':
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(init, shapes['params'])


def bench_batch_stats(model, s: Settings) -> Any:
  """BatchNorm running statistics (mean 0, variance 1) in the model's shapes; {} without."""
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, s.input_size, s.input_size, 3))))
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: np.full(leaf.shape, 1.0 if path[-1].key == 'var' else 0.0, leaf.dtype),
      shapes.get('batch_stats', {}))


@dataclasses.dataclass
class Arm:
  """What every JAX case starts from: network, input convention, parameters, optimizer."""
  model: Any
  units: tuple[str, ...]
  meta: store.Meta
  params: Any
  tx: Any
  batch_stats: Any = None  # BatchNorm networks' running statistics

  def state(self) -> trainer.TrainState:
    return trainer.TrainState.create(self.params, self.tx, self.batch_stats)

  @property
  def weights(self) -> Any:
    """What prediction and the feature cache take (`batchnorm.weights_tree`)."""
    return batchnorm.weights_tree(self.params, self.batch_stats)


def arm(arch: str, depth: str, s: Settings, **model_kwargs) -> Arm:
  model, units = build_model(arch, s, **model_kwargs)
  stats = None
  if batchnorm.has_batchnorm(model):  # as the trainer builds it (bn_mode train)
    model = model.clone(**batchnorm.bn_settings(tuning.trained_units(units, depth), 'train',
                                                parallel.AXIS))
    stats = bench_batch_stats(model, s)
  params = bench_params(model, s)
  return Arm(model, units, store.default_meta(arch, (s.input_size, s.input_size)), params,
             tuning.make_optimizer(params, units, depth, optim_config(), steps_per_epoch=1000),
             stats)


def _images(s: Settings, batch: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (batch, s.input_size, s.input_size, 3), np.uint8),
          'label': rng.integers(0, NUM_CLASSES, batch).astype(np.int32)}


def _step_case(p_train_step, a: Arm, batch_fn: Callable[[], Any],
               options: dict[str, Any]) -> JaxCase:
  """A pmapped train step compiled ahead of time with `options`; each run feeds `batch_fn()`."""
  holder = {'state': parallel.replicate(a.state())}
  rng = jax.random.key(0)
  t0 = time.perf_counter()
  lowered = p_train_step.lower(holder['state'], batch_fn(), rng)
  compiled = lowered.compile(options)
  compile_s = time.perf_counter() - t0

  def run():
    holder['state'], metrics = compiled(holder['state'], batch_fn(), rng)
    jax.block_until_ready((holder['state'], metrics))
  return JaxCase(run, compile_s, lowered_flops(lowered), compiled.as_text() or '', lowered)


def jax_train_case(arch: str, depth: str, s: Settings, batch: int | None = None,
                   compiler_options: dict | None = None, model_kwargs: dict | None = None,
                   pmap_fn: Callable | None = None) -> JaxCase:
  """The real pmapped train step (`trainer.make_steps`) of one arm, compiled ahead of time."""
  a = arm(arch, depth, s, **(model_kwargs or {}))
  with (patched(parallel, 'pmap_train_step', pmap_fn) if pmap_fn
        else contextlib.nullcontext()):
    p_train_step, _ = trainer.make_steps(a.model, a.tx, a.meta)
  images = parallel.to_devices(parallel.shard(_images(s, batch or s.batch)))
  options = parallel.compiler_options() if compiler_options is None else compiler_options
  return _step_case(p_train_step, a, lambda: images, options)


def jax_cached_case(arch: str, depth: str, s: Settings, batch: int | None = None) -> JaxCase:
  """Arm `depth` with a warm frozen-trunk feature cache (`train.feature_cache`): per step,
  hashing the batch's patches, looking up their features, copying them to the devices and
  the train step of the trained stages only. What every epoch after the first costs when the
  training set is finite (`task.fixed_pool`, the polyp and PE views)."""
  from medft import feature_cache
  a = arm(arch, depth, s)
  stop, frozen = feature_cache.frozen_trunk(a.units, depth, a.weights)
  cache = feature_cache.FeatureCache(feature_cache.make_trunk(a.model, a.meta, stop, frozen),
                                     'bench', 'memory', max_bytes=2**34)
  host = _images(s, batch or s.batch)
  cache.features(host['image'])  # the first epoch: every patch computed once
  p_train_step, _ = trainer.make_steps(a.model, a.tx, a.meta, start=depth)

  def device_batch():
    return parallel.to_devices(parallel.shard(
        {'features': cache.features(host['image']), 'label': host['label']}))
  return _step_case(p_train_step, a, device_batch, parallel.compiler_options())


def jax_predict_case(arch: str, s: Settings, batch: int | None = None) -> JaxCase:
  """Forward-only inference (`predict` of `trainer.make_steps`), compiled ahead of time."""
  batch = batch or s.batch
  a = arm(arch, 'scratch', s)
  _, p_predict = trainer.make_steps(a.model, a.tx, a.meta)
  pparams = parallel.replicate(a.weights)
  images = parallel.to_devices(parallel.shard(_images(s, batch)['image']))
  t0 = time.perf_counter()
  lowered = p_predict.lower(pparams, images)
  compiled = lowered.compile(parallel.compiler_options())
  compile_s = time.perf_counter() - t0
  run = lambda: jax.block_until_ready(compiled(pparams, images))  # noqa: E731
  return JaxCase(run, compile_s, lowered_flops(lowered), compiled.as_text() or '', lowered)


def jax_packed_case(arch: str, depth: str, s: Settings, seeds: int) -> JaxCase:
  """`seeds` seeds of one arm as one vmapped train step (`make_steps(pack=seeds)`), each seed
  with its own batch of `s.batch` images."""
  a = arm(arch, depth, s)
  p_train_step, _ = trainer.make_steps(a.model, a.tx, a.meta, pack=seeds)
  state = parallel.replicate_packed([a.state()] * seeds)
  images = parallel.to_devices(parallel.shard_packed(
      [_images(s, s.batch, seed=k) for k in range(seeds)]))
  keys = jnp.stack([jax.random.key(k) for k in range(seeds)])
  holder = {'state': state}
  t0 = time.perf_counter()
  lowered = p_train_step.lower(holder['state'], images, keys)
  compiled = lowered.compile(parallel.compiler_options())
  compile_s = time.perf_counter() - t0

  def run():
    holder['state'], metrics = compiled(holder['state'], images, keys)
    jax.block_until_ready((holder['state'], metrics))
  return JaxCase(run, compile_s, lowered_flops(lowered), compiled.as_text() or '', lowered)
