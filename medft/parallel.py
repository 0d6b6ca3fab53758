"""The one module that knows about pmap: sharding batches, replicating state, host transfers.

A host batch of `B` examples becomes `(local_devices, B // local_devices, ...)`. Moving to
`jit` + sharding later touches only this file.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging

from medft.errors import ConfigError

AXIS = 'batch'


def local_devices() -> int:
  return jax.local_device_count()


def check_batch(global_batch: int) -> int:
  """Per-device batch for a global batch, or a clear error when it does not divide."""
  n = jax.device_count()
  if global_batch <= 0 or global_batch % n:
    nearest = max(n, global_batch // n * n)
    raise ConfigError(f'train.batch={global_batch} does not split evenly over {n} devices; '
                      f'use a multiple of {n} (e.g. --config.train.batch={nearest}).')
  return global_batch // n


def shard(tree: Any) -> Any:
  """Host arrays `(B, ...)` -> `(local_devices, B // local_devices, ...)`."""
  n = local_devices()
  return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), tree)


def _sharding() -> jax.sharding.NamedSharding:
  mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def to_devices(tree: Any) -> Any:
  """Arrays with a leading `local_devices` axis, placed one slice per device (pmap layout)."""
  return jax.device_put(tree, _sharding())


def replicate(tree: Any) -> Any:
  n = local_devices()
  return to_devices(jax.tree.map(lambda x: np.broadcast_to(x, (n,) + np.shape(x)), tree))


def replicate_packed(trees: list) -> Any:
  """Several seeds' trees stacked on a leading seed axis, then replicated: (devices, S, ...)."""
  return replicate(jax.tree.map(lambda *xs: np.stack(xs), *trees))


def shard_packed(batches: list) -> Any:
  """Several seeds' host batches (B, ...) each -> (local_devices, S, B // local_devices, ...)."""
  n = local_devices()

  def one(*xs):
    x = np.stack(xs)  # (S, B, ...)
    x = x.reshape((x.shape[0], n, x.shape[1] // n) + x.shape[2:])
    return np.swapaxes(x, 0, 1)
  return jax.tree.map(one, *batches)


def unreplicate(tree: Any) -> Any:
  """First replica as host numpy arrays (what checkpoints and results store)."""
  return jax.device_get(jax.tree.map(lambda x: x[0], tree))


def prefetch_to_device(batches: Iterator[Any], size: int = 2,
                       place: Callable[[Any], Any] = shard) -> Iterator[Any]:
  """Shards host batches (`place`: `shard`, or `shard_packed` for lists of packed seeds'
  batches) and copies them to the devices `size` steps ahead of use."""
  queue = collections.deque()

  def put(batch):
    queue.append(to_devices(place(batch)))

  for batch in itertools.islice(batches, size):
    put(batch)
  while queue:
    yield queue.popleft()
    for batch in itertools.islice(batches, 1):
      put(batch)


def mean_over_devices(tree: Any) -> Any:
  """`pmean` over the device axis, inside a pmapped function; the identity on one device.

  XLA:CPU executes a one-device all-reduce as a copy of every leaf (24 ms of a 575 ms
  torchvision AlexNet step on 2 cores for the gradients), so it is not emitted there.
  """
  if jax.lax.axis_size(AXIS) == 1:
    return tree
  return jax.lax.pmean(tree, AXIS)


def compiler_options() -> dict[str, Any]:
  """XLA options the train and predict steps are compiled with (see `_WithOptions`).

  On CPU: YNNPACK for matmuls only, so convolutions run on Eigen. jaxlib 0.10's YNNPACK
  convolutions are 2-3x slower for AlexNet's 11x11 stride-4 conv1 and most 3x3 weight
  gradients (AlexNet scratch step 1.07x, frozen arms more: `python -m medft.bench
  --levers`). Nothing elsewhere.
  """
  if jax.default_backend() != 'cpu':
    return {}
  return {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


class _WithOptions:
  """A pmapped function compiled ahead of time with `compiler_options()`.

  One executable per argument signature, as pmap itself caches. Falls back to the plain
  pmapped function with several processes, when there are no options, or when this jaxlib
  rejects an option (logged once).
  """

  def __init__(self, pmapped: Callable):
    self._pmapped = pmapped
    self._executables: dict = {}
    self.lower = pmapped.lower

  def __call__(self, *args):
    options = compiler_options()
    if not options or jax.process_count() > 1:
      return self._pmapped(*args)
    leaves, tree = jax.tree.flatten(args)
    key = (tree, tuple(jax.typeof(x) for x in leaves))
    executable = self._executables.get(key)
    if executable is None:
      try:
        executable = self._pmapped.lower(*args).compile(options)
      except jax.errors.JaxRuntimeError as e:  # an option unknown to this jaxlib
        logging.warning('Compiling without XLA options %s: %s', options, e)
        executable = self._pmapped
      self._executables[key] = executable
    return executable(*args)


def pmap_train_step(step_fn: Callable, replicated: int = 0) -> Callable:
  """`step_fn(state, batch, rng, *r)` run on every local device; state buffers donated.
  `replicated` trailing arguments `r` are replicated arrays (`replicate`), e.g. the stacked
  training frames a step cuts its patches from."""
  return _WithOptions(jax.pmap(step_fn, axis_name=AXIS, in_axes=(0, 0, None) + (0,) * replicated,
                               donate_argnums=(0,)))


def pmap_predict(predict_fn: Callable) -> Callable:
  """`predict_fn(params, x)` run on every local device (params replicated, x sharded)."""
  return _WithOptions(jax.pmap(predict_fn, axis_name=AXIS))


def _rows(tree: Any) -> int:
  return len(jax.tree.leaves(tree)[0])


def _take(tree: Any, start: int, stop: int) -> Any:
  return jax.tree.map(lambda x: x[start:stop], tree)


def pad_rows(tree: Any, rows: int) -> Any:
  """Every leaf padded to `rows` rows by repeating its last row (equal shapes per call)."""
  def pad(x):
    if len(x) >= rows:
      return x
    filler = x[-1:] if len(x) else np.zeros((1,) + x.shape[1:], x.dtype)
    return np.concatenate([x, np.repeat(filler, rows - len(x), axis=0)])
  return jax.tree.map(pad, tree)


def predict_in_batches(predict_fn: Callable, params: Any, inputs: Any,
                       batch: int) -> np.ndarray:
  """Runs a pmapped `predict_fn(params, x)` over `inputs`; every process gets all outputs.

  `inputs` is an array, or a tree of arrays with equal rows (e.g. patch descriptors). With
  several processes each predicts its own contiguous shard and the shards are gathered.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    n_proc, me = jax.process_count(), jax.process_index()
    total = _rows(inputs)
    per = -(-total // n_proc)
    mine = pad_rows(_take(inputs, me * per, (me + 1) * per), per)  # rows dropped below
    local = predict_local(predict_fn, params, mine, batch)
    gathered = np.asarray(multihost_utils.process_allgather(local, tiled=True))
    return gathered[:total]
  return predict_local(predict_fn, params, inputs, batch)


def predict_local(predict_fn: Callable, params: Any, inputs: Any, batch: int) -> np.ndarray:
  """`predict_fn(params, x)` over `inputs` on this host's devices, in calls of `batch` rows
  (rounded to the device count; the last call padded, so every call has one shape)."""
  n_dev = local_devices()
  batch = max(n_dev, batch // n_dev * n_dev)
  outs = []
  for start in range(0, _rows(inputs), batch):
    chunk = _take(inputs, start, start + batch)
    rows = _rows(chunk)
    out = predict_fn(params, shard(pad_rows(chunk, batch)))
    out = np.asarray(jax.device_get(out)).reshape((-1,) + out.shape[2:])
    outs.append(out[:rows])
  return np.concatenate(outs) if outs else np.zeros((0,))


def sync_hosts(name: str) -> None:
  """Barrier across processes (no-op on one host)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def initialize_distributed() -> None:
  """Joins a multi-process run when one is configured; a no-op on a single host.

  Cloud TPU pods are detected by JAX itself (`jax.distributed.initialize()` with no
  arguments). Elsewhere set JAX_COORDINATOR_ADDRESS (host:port of process 0),
  JAX_NUM_PROCESSES and JAX_PROCESS_ID in every process' environment. On CPU the
  cross-process collectives go through gloo.
  """
  import os
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    # Only the CPU client reads this; it must be set before the backend starts.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
        num_processes=int(os.environ['JAX_NUM_PROCESSES']),
        process_id=int(os.environ['JAX_PROCESS_ID']))
  elif ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''):
    jax.distributed.initialize()
