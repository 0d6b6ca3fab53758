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
import contextlib
import dataclasses
import math
import os
import re
import statistics
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medft import files, models, parallel, trainer, tuning
from medft.weights import store

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


def _flops(lowered) -> tuple[float | None, str]:
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


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
  """Temporarily replaces `obj.name` (used to trace variants of a layer)."""
  saved = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, saved)


# ---- JAX cases ---------------------------------------------------------------------------

def optim_config() -> ml_collections.ConfigDict:
  """The paper's optimizer rules (configs/common.py defaults)."""
  from configs import common
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


@dataclasses.dataclass
class Arm:
  """What every JAX case starts from: network, input convention, parameters, optimizer."""
  model: Any
  units: tuple[str, ...]
  meta: store.Meta
  params: Any
  tx: Any

  def state(self) -> trainer.TrainState:
    return trainer.TrainState.create(self.params, self.tx)


def arm(arch: str, depth: str, s: Settings, **model_kwargs) -> Arm:
  model, units = build_model(arch, s, **model_kwargs)
  params = bench_params(model, s)
  return Arm(model, units, store.default_meta(arch, (s.input_size, s.input_size)), params,
             tuning.make_optimizer(params, units, depth, optim_config(), steps_per_epoch=1000))


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
  return JaxCase(run, compile_s, _flops(lowered), compiled.as_text() or '', lowered)


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
  stop, frozen = feature_cache.frozen_trunk(a.units, depth, a.params)
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
  pparams = parallel.replicate(a.params)
  images = parallel.to_devices(parallel.shard(_images(s, batch)['image']))
  t0 = time.perf_counter()
  lowered = p_predict.lower(pparams, images)
  compiled = lowered.compile(parallel.compiler_options())
  compile_s = time.perf_counter() - t0
  run = lambda: jax.block_until_ready(compiled(pparams, images))  # noqa: E731
  return JaxCase(run, compile_s, _flops(lowered), compiled.as_text() or '', lowered)


def count_ops(hlo: str) -> int:
  """Convolutions and matmuls in an optimised HLO module (fused ones and cuDNN calls too)."""
  return (hlo.count(' convolution(') + hlo.count(' dot(')
          + hlo.count('custom_call_target="__cudnn$conv'))


# ---- PyTorch reference -------------------------------------------------------------------

def torch_available() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def torch_device() -> str:
  """The torch twin runs where JAX runs: on the GPU when JAX uses one, else on the CPU."""
  import torch
  if jax.default_backend() == 'gpu' and torch.cuda.is_available():
    torch.backends.cudnn.benchmark = True  # autotuned kernels, as XLA autotunes its own
    torch.set_float32_matmul_precision('high')  # TF32, like XLA's default f32 precision
    return 'cuda'
  torch.set_num_threads(torch_threads())
  return 'cpu'


def torch_dtype(s: Settings) -> str:
  """The torch twin's compute dtype: bf16 autocast on CUDA when JAX runs bf16, else float32.

  On the CPU the twin stays float32 (PyTorch's CPU bf16 kernels are a different comparison).
  """
  if s.dtype == 'bfloat16' and jax.default_backend() == 'gpu' and torch_device() == 'cuda':
    return 'bfloat16'
  return 'float32'


def _autocast(device: str, dtype: str):
  import torch
  if dtype == 'bfloat16':
    return torch.autocast(device, dtype=torch.bfloat16)
  return contextlib.nullcontext()


def _torch_sync(device: str) -> None:
  if device == 'cuda':
    import torch
    torch.cuda.synchronize()


def torch_threads() -> int:
  """JAX's CPU client uses every core this process may run on; torch gets the same."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def torch_net(arch: str, s: Settings):
  """(module, {unit: submodule}) of the PyTorch twin of a medft architecture (NCHW)."""
  import torch
  from torch import nn

  def conv(i, o, k, stride=1, pad=0, groups=1):
    return nn.Conv2d(i, o, k, stride, pad, groups=groups)

  units: dict[str, nn.Module] = {}
  if arch in ('alexnet', 'alexnet_torchvision'):
    caffe = arch == 'alexnet'
    if caffe:
      w = lambda n: max(4, int(n * s.width)) // 2 * 2  # noqa: E731
      lrn = lambda: nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)  # noqa: E731
      pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
      units['conv1'] = conv(3, w(96), 11, 4)
      units['conv2'] = conv(w(96), w(256), 5, 1, 2, groups=2)
      units['conv3'] = conv(w(256), w(384), 3, 1, 1)
      units['conv4'] = conv(w(384), w(384), 3, 1, 1, groups=2)
      units['conv5'] = conv(w(384), w(256), 3, 1, 1, groups=2)
      trunk = nn.Sequential(units['conv1'], nn.ReLU(), lrn(), pool(), units['conv2'], nn.ReLU(),
                            lrn(), pool(), units['conv3'], nn.ReLU(), units['conv4'], nn.ReLU(),
                            units['conv5'], nn.ReLU(), pool())
    else:
      w = lambda n: max(4, int(n * s.width))  # noqa: E731
      pool = lambda: nn.MaxPool2d(3, 2)  # noqa: E731
      units['conv1'] = conv(3, w(64), 11, 4, 2)
      units['conv2'] = conv(w(64), w(192), 5, 1, 2)
      units['conv3'] = conv(w(192), w(384), 3, 1, 1)
      units['conv4'] = conv(w(384), w(256), 3, 1, 1)
      units['conv5'] = conv(w(256), w(256), 3, 1, 1)
      trunk = nn.Sequential(units['conv1'], nn.ReLU(), pool(), units['conv2'], nn.ReLU(), pool(),
                            units['conv3'], nn.ReLU(), units['conv4'], nn.ReLU(), units['conv5'],
                            nn.ReLU(), pool(), nn.AdaptiveAvgPool2d((6, 6)))
    with torch.no_grad():
      flat = trunk(torch.zeros(1, 3, s.input_size, s.input_size)).numel()
    hidden = max(8, int(4096 * s.width))
    units['fc6'], units['fc7'] = nn.Linear(flat, hidden), nn.Linear(hidden, hidden)
    units['fc8'] = nn.Linear(hidden, NUM_CLASSES)
    if caffe:  # dropout after each ReLU
      head = [units['fc6'], nn.ReLU(), nn.Dropout(), units['fc7'], nn.ReLU(), nn.Dropout()]
    else:      # torchvision: dropout before fc6 and fc7
      head = [nn.Dropout(), units['fc6'], nn.ReLU(), nn.Dropout(), units['fc7'], nn.ReLU()]
    net = nn.Sequential(trunk, nn.Flatten(), *head, units['fc8'])
  elif arch == 'squeezenet1_1':
    from medft.models.squeezenet import FIRES
    w = lambda n: max(2, int(n * s.width))  # noqa: E731

    class Fire(nn.Module):
      def __init__(self, i, sq, ex):
        super().__init__()
        self.squeeze, self.e1, self.e3 = conv(i, sq, 1), conv(sq, ex, 1), conv(sq, ex, 3, 1, 1)

      def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.e1(x)), torch.relu(self.e3(x))], 1)

    units['conv1'] = conv(3, w(64), 3, 2)
    layers, channels = [units['conv1'], nn.ReLU(), nn.MaxPool2d(3, 2)], w(64)
    for i, (sq, ex) in enumerate(FIRES, start=2):
      units[f'fire{i}'] = Fire(channels, w(sq), w(ex))
      layers.append(units[f'fire{i}'])
      channels = 2 * w(ex)
      if i in (3, 5):
        layers.append(nn.MaxPool2d(3, 2))
    units['conv10'] = conv(channels, NUM_CLASSES, 1)
    net = nn.Sequential(*layers, nn.Dropout(), units['conv10'], nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
  else:
    raise ValueError(f'no PyTorch reference for arch={arch!r}.')
  return net, units


def torch_train_step(arch: str, depth: str, s: Settings, batch: int) -> Callable[[], None]:
  """One SGD step of the torch twin; frozen units have requires_grad=False."""
  import torch
  device = torch_device()
  torch.manual_seed(0)
  net, units = torch_net(arch, s)
  trained = tuning.trained_units(tuple(units), depth)
  for name, unit in units.items():
    unit.requires_grad_(name in trained)
  net.to(device).train()
  opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3,
                        momentum=0.9, weight_decay=5e-4)
  x = torch.randn(batch, 3, s.input_size, s.input_size, device=device)
  y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
  dtype = torch_dtype(s)

  def step():
    opt.zero_grad(set_to_none=True)
    with _autocast(device, dtype):
      loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    _torch_sync(device)
  return step


def torch_predict(arch: str, s: Settings, batch: int) -> Callable[[], None]:
  import torch
  device = torch_device()
  net, _ = torch_net(arch, s)
  net.to(device).eval()
  x = torch.randn(batch, 3, s.input_size, s.input_size, device=device)
  dtype = torch_dtype(s)

  def run():
    with torch.no_grad(), _autocast(device, dtype):
      torch.softmax(net(x), -1)
    _torch_sync(device)
  return run


# ---- rows --------------------------------------------------------------------------------

def _device_info() -> dict:
  dev = jax.devices()[0]
  info = {'backend': jax.default_backend(), 'device': dev.device_kind,
          'devices': jax.device_count(), 'cpu_threads': torch_threads(),
          'jax': jax.__version__}
  if torch_available():
    import torch
    info['torch'] = torch.__version__
  return info


def _row(name: str, arch: str | None, depth: str | None, batch: int, seconds: list[float],
         items: int | None = None, cpu_seconds: list[float] | None = None, **extra) -> dict:
  step = statistics.median(seconds)
  row = {'name': name, 'arch': arch, 'depth': depth, 'batch': batch, 'step_ms': 1e3 * step,
         'img_per_s': (items or batch) / step, 'min_ms': 1e3 * min(seconds), 'reps': len(seconds)}
  if cpu_seconds:
    row['cpu_ms'] = 1e3 * statistics.median(cpu_seconds)
  row.update(extra)
  return row


def _compare(row: dict, torch_seconds: list[float] | None, batch: int, s: Settings) -> dict:
  if torch_seconds:
    row['torch_img_per_s'] = batch / statistics.median(torch_seconds)
    row['vs_torch'] = row['img_per_s'] / row['torch_img_per_s']
    row['torch_dtype'] = torch_dtype(s)
  return row


def _flop_fields(case: JaxCase, step_s: float, dtype: str = 'float32') -> dict:
  info = _device_info()
  flops, source = case.flops
  if not flops:
    return {'gflop_per_s': None, 'peak_fraction': None}
  achieved = flops / step_s  # the program of one device; every device runs it
  peak = peak_flops(info['device'], dtype)
  return {'gflop_per_s': achieved * 1e-9 * info['devices'], 'flops_source': source,
          'peak_fraction': achieved / peak if peak else None}


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
  row = _row(f'train/{arch}/{depth}/cached', arch, depth, s.batch, t['jax'],
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
      fns['torch'] = torch_train_step(arch, depth, s, s.batch)
    if depth == units[-1] and scratch is not None:
      fns.update(scratch=scratch.run, forward=predict.run)
    t = interleaved(fns, s.reps, s.warmup)
    row = _row(f'train/{arch}/{depth}', arch, depth, s.batch, t['jax'], cpu_seconds=t['jax:cpu'],
               compile_s=case.compile_s, hlo_conv_dot=count_ops(case.hlo),
               fwd_conv_dot=fwd_ops,
               **_flop_fields(case, statistics.median(t['jax']), s.dtype))
    if 'scratch' in t:
      scratch_s = statistics.median(t['scratch'])
      row['vs_scratch'] = statistics.median(t['jax']) / scratch_s
      row['forward_vs_scratch'] = statistics.median(t['forward']) / scratch_s
    rows.append(_compare(row, t.get('torch'), s.batch, s))
    log(rows[-1])
    if depth in cached_arms(units, s) and scratch is not None:
      rows.append(bench_cached(arch, depth, s, case, scratch))
      log(rows[-1])
  fns = {'jax': predict.run}
  if use_torch:
    fns['torch'] = torch_predict(arch, s, s.batch)
  t = interleaved(fns, s.reps, s.warmup)
  row = _row(f'infer/{arch}', arch, 'forward', s.batch, t['jax'], cpu_seconds=t['jax:cpu'],
             compile_s=predict.compile_s,
             **_flop_fields(predict, statistics.median(t['jax']), s.dtype))
  rows.append(_compare(row, t.get('torch'), s.batch, s))
  log(rows[-1])
  return rows


# ---- CIMT: input pipeline and dense inference --------------------------------------------

def synthetic_cimt_examples(n: int, seed: int = 0, height: int = 160, width: int = 192
                            ) -> list[dict]:
  """Carotid-like images with smooth LI/MA boundaries (enough to exercise the CIMT task)."""
  rng = np.random.default_rng(seed)
  cols = np.arange(width, dtype=np.float64)
  out = []
  for i in range(n):
    li = height * 0.45 + 4 * np.sin(cols / rng.uniform(30, 60) + rng.uniform(0, 6))
    ma = li + rng.uniform(10, 15)
    rows = np.arange(height)[:, None]
    image = 20 + 60 * (rows > li) + 80 * (rows > ma) + rng.normal(0, 8, (height, width))
    out.append({'id': f'synthetic{i}', 'unit': f'subject{i}', 'cf': 0.06,
                'image': np.clip(image, 0, 255).astype(np.uint8),
                'li': np.stack([cols, li], 1), 'ma': np.stack([cols, ma], 1)})
  return out


def cimt_task():
  from configs import cimt as cimt_config
  from medft.tasks.cimt import CimtTask
  examples = synthetic_cimt_examples(6)
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
  row = _row('pipeline/cimt/train_batch', None, None, s.batch, seconds, threads=1)
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
  pparams = parallel.replicate(a.params)
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
    row = _row(f'dense/cimt/{name}', arch, 'forward', b, t[f'batch{b}'], items=len(timed),
               cpu_seconds=t[f'batch{b}:cpu'], pixels=len(timed), roi_pixels=len(patches),
               compile_s=compile_s[b], max_abs_diff_vs_one=float(np.max(np.abs(got - want))))
    row['scan_s'] = len(patches) / row['img_per_s']
    rows.append(row)
  for row in rows:
    row['vs_one_patch_per_call'] = row['img_per_s'] / rows[0]['img_per_s']
    log(row)
  return rows


# ---- levers ------------------------------------------------------------------------------

def _lrn_autodiff(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
  """The LRN as plain jnp (gradient by autodiff): the form before the closed-form VJP."""
  from medft.models import layers
  x32 = x.astype(jnp.float32)
  return layers._lrn_forward(x32, size, alpha, beta, k)[0].astype(x.dtype)


def _lrn_reduce_window(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
  x32 = x.astype(jnp.float32)
  half = size // 2
  window = jax.lax.reduce_window(jnp.square(x32), 0.0, jax.lax.add, (1, 1, 1, size),
                                 (1, 1, 1, 1), ((0, 0), (0, 0), (0, 0), (half, half)))
  return (x32 / (k + (alpha / size) * window) ** beta).astype(x.dtype)


def _conv_nchw(x, kernel, stride, padding, groups):
  """Convolution in NCHW/OIHW dimension numbers, transposed back to the model's NHWC."""
  y = jax.lax.conv_general_dilated(
      jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(kernel, (3, 2, 0, 1)),
      window_strides=(stride, stride), padding=((padding, padding), (padding, padding)),
      dimension_numbers=('NCHW', 'OIHW', 'NCHW'), feature_group_count=groups)
  return jnp.transpose(y, (0, 2, 3, 1))


def _no_donation(step_fn):
  return jax.pmap(step_fn, axis_name=parallel.AXIS, in_axes=(0, 0, None))


def lever_variants() -> dict[str, tuple[str, dict]]:
  """name -> (what it changes, keyword arguments of `jax_train_case` / patches)."""
  from medft.models import alexnet, layers
  cpu = jax.default_backend() == 'cpu'
  v = {
      'default': ('the library as shipped', {}),
      'group=xla': ('grouped conv as one feature_group_count conv',
                    {'model_kwargs': {'group_impl': 'xla'}}),
      'group=split': ('grouped conv as one conv per group',
                      {'model_kwargs': {'group_impl': 'split'}}),
      'lrn=autodiff': ('LRN gradient by autodiff of pad+5 slices',
                       {'patch': (alexnet, 'caffe_lrn', _lrn_autodiff)}),
      'lrn=reduce_window': ('LRN window sum as reduce_window (autodiff)',
                            {'patch': (alexnet, 'caffe_lrn', _lrn_reduce_window)}),
      'pool=select_and_scatter': ('every max-pool gradient by XLA select-and-scatter',
                                  {'patch': (layers, 'SLICES_VJP_MAX_CHANNELS', 0)}),
      'pool=slices': ('every max-pool gradient as strided slices and pads',
                      {'patch': (layers, 'SLICES_VJP_MAX_CHANNELS', 1 << 30)}),
      'layout=NCHW': ('convs in NCHW dimension numbers (transposes around each)',
                      {'patch': (layers, '_conv', _conv_nchw)}),
      'donate=off': ('no buffer donation of the train state', {'pmap_fn': _no_donation}),
      'batch/2': ('half the batch (per-image throughput compared)', {'batch_scale': 0.5}),
      'batch*2': ('twice the batch (per-image throughput compared)', {'batch_scale': 2.0}),
  }
  if cpu:
    v.update({
        'xla:ynn=all': ('XLA:CPU YNNPACK for convs and dots',
                        {'compiler_options': {'xla_cpu_experimental_ynn_fusion_type':
                                              'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,'
                                              'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}}),
        'xla:ynn=dot': ('XLA:CPU YNNPACK for dots only, Eigen convs',
                        {'compiler_options': {'xla_cpu_experimental_ynn_fusion_type':
                                              'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}}),
        'xla:ynn=off': ('XLA:CPU without YNNPACK (Eigen convs and dots)',
                        {'compiler_options': {'xla_cpu_experimental_ynn_fusion_type': ''}}),
        'xla:onednn': ('--xla_cpu_use_onednn=true',
                       {'compiler_options': {'xla_cpu_use_onednn': True}}),
        'xla:xnn=conv': ('XNNPACK conv fusion (YNNPACK off)',
                         {'compiler_options': {
                             'xla_cpu_experimental_ynn_fusion_type': '',
                             'xla_cpu_experimental_xnn_fusion_type':
                             'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'}}),
    })
  return v


def bench_levers(s: Settings, log: Callable, arch: str = 'alexnet', depth: str = 'scratch',
                 only: Sequence[str] | None = None) -> list[dict]:
  """Each lever as images/s relative to `default`, all measured interleaved in one process.

  Grouped-conv levers apply to the AlexNets, LRN levers to the Caffe AlexNet only.
  """
  variants = lever_variants()
  applies = lambda n: ((arch.startswith('alexnet') or not n.startswith('group='))  # noqa: E731
                       and (arch == 'alexnet' or not n.startswith('lrn=')))
  names = ['default'] + [n for n in variants
                         if n != 'default' and (not only or n in only) and applies(n)]
  runs, infos = {}, {}
  for name in names:
    what, kw = variants[name]
    kw = dict(kw)
    patch = kw.pop('patch', None)
    batch = max(parallel.local_devices(), int(s.batch * kw.pop('batch_scale', 1.0)))
    if 'compiler_options' in kw:  # on top of the library's own, so only the lever changes
      kw['compiler_options'] = {**parallel.compiler_options(), **kw['compiler_options']}
    try:
      with (patched(*patch) if patch else contextlib.nullcontext()):
        case = jax_train_case(arch, depth, s, batch=batch, **kw)
    except Exception as e:  # noqa: BLE001 -- an option this jaxlib rejects is a result too
      infos[name] = {'what': what, 'error': f'{type(e).__name__}: {str(e)[:160]}'}
      continue
    runs[name] = case.run
    infos[name] = {'what': what, 'batch': batch, 'compile_s': case.compile_s,
                   'hlo_fingerprint': hash(_strip_metadata(case.hlo))}
  t = interleaved(runs, s.reps, s.warmup)
  base = infos['default']['batch'] / statistics.median(t['default'])
  base_hlo = infos['default']['hlo_fingerprint']
  rows = []
  for name in names:
    info = infos[name]
    if 'error' in info:
      row = {'name': f'lever/{arch}/{name}', 'arch': arch, 'depth': depth, 'batch': None,
             'step_ms': None, 'img_per_s': None, 'what': info['what'], 'error': info['error']}
    else:
      row = _row(f'lever/{arch}/{name}', arch, depth, info['batch'], t[name], what=info['what'],
                 cpu_seconds=t[name + ':cpu'],
                 compile_s=info['compile_s'],
                 same_program_as_default=info['hlo_fingerprint'] == base_hlo)
      row['vs_default'] = row['img_per_s'] / base
    rows.append(row)
    log(row)
  return rows


def _strip_metadata(hlo: str) -> str:
  return re.sub(r'(, )?metadata=\{[^}]*\}|HloModule \S+', '', hlo)


# ---- main --------------------------------------------------------------------------------

def _fmt(v, spec: str) -> str:
  return format(v, spec) if isinstance(v, (int, float)) and v is not None else '-'


def format_row(r: dict) -> str:
  extra = ''
  for key, label in (('vs_torch', 'vs torch'), ('vs_scratch', 'time vs scratch'),
                     ('forward_vs_scratch', 'forward vs scratch'),
                     ('vs_uncached', 'time vs uncached'),
                     ('vs_train_step', 'vs train step'),
                     ('vs_one_patch_per_call', 'vs 1 patch/call'), ('vs_default', 'vs default')):
    if r.get(key) is not None:
      extra += f'  {label} {r[key]:.2f}x'
  if r.get('error'):
    extra += f'  ERROR {r["error"]}'
  return (f'{r["name"]:38s} b={_fmt(r.get("batch"), "<4d")} {_fmt(r.get("step_ms"), "9.1f")} ms '
          f'{_fmt(r.get("img_per_s"), "9.1f")} img/s  compile {_fmt(r.get("compile_s"), ".1f")} s'
          f'{extra}')


def run(s: Settings, use_torch: bool | None = None, levers: bool = False, parts=None,
        log: Callable[[dict], None] | None = None, only_levers: Sequence[str] = (),
        lever_archs: Sequence[str] = ('alexnet',)) -> list[dict]:
  """All benchmark rows (see the module docstring)."""
  use_torch = torch_available() if use_torch is None else use_torch
  printed = log or (lambda r: print(format_row(r), flush=True))
  info = _device_info()

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
  if levers or 'levers' in parts:
    for arch in lever_archs:
      rows += bench_levers(s, log, arch=arch, only=only_levers)
  return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
  p = argparse.ArgumentParser(prog='python -m medft.bench', description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='tiny shapes: checks that it runs')
  p.add_argument('--out', default='', help='write the rows as JSON to this file')
  p.add_argument('--levers', action='store_true', help='also measure the CPU speed levers')
  p.add_argument('--parts', default='train,pipeline,dense',
                 help='comma list of train, pipeline, dense, levers')
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
  print(f'medft.bench: dtype={s.dtype} (params float32), {_device_info()}, torch reference '
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


if __name__ == '__main__':
  main(sys.argv[1:])
