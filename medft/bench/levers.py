"""The speed levers: variants of the AlexNet train step, each timed against the library's
default in the same process (`python -m medft.bench --levers`).

A lever changes one thing: the grouped-conv form, the LRN gradient or window sum, the
max-pool gradient, the conv layout, XLA:CPU's kernel library, buffer donation or the batch.
`same_program_as_default` in its row says whether XLA compiled it to the default's program.
"""

from __future__ import annotations

import contextlib
import re
import statistics
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from medft import parallel
from medft.bench.cases import jax_train_case
from medft.bench.core import Settings, interleaved, make_row, patched


def _lrn_autodiff(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
  """The LRN as plain jnp (gradient by autodiff): the form before the closed-form VJP."""
  from medft.models import layers
  x32 = x.astype(jnp.float32)
  return layers.lrn_forward(x32, size, alpha, beta, k)[0].astype(x.dtype)


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


def _no_donation(step_fn, replicated: int = 0):
  """`parallel.pmap_train_step` without donating the state's buffers."""
  return jax.pmap(step_fn, axis_name=parallel.AXIS, in_axes=(0, 0, None) + (0,) * replicated)


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
                      {'patch': (layers, 'conv', _conv_nchw)}),
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
      row = make_row(f'lever/{arch}/{name}', arch, depth, info['batch'], t[name],
                     what=info['what'], cpu_seconds=t[name + ':cpu'],
                     compile_s=info['compile_s'],
                     same_program_as_default=info['hlo_fingerprint'] == base_hlo)
      row['vs_default'] = row['img_per_s'] / base
    rows.append(row)
    log(row)
  return rows


def _strip_metadata(hlo: str) -> str:
  return re.sub(r'(, )?metadata=\{[^}]*\}|HloModule \S+', '', hlo)
