"""Test-time views at the network's speed? (`python -m medft.bench --parts=views`)

A polyp task on synthetic colonoscopy frames (the real `PolypTask`: dog+grid candidates, the
paper's 216 views per candidate, 64-pixel patches) scores its test candidates three ways,
interleaved call by call:
  views/host     `candidate_scores` with the views cut on the host (scipy) and classified
  views/device   the same with the views cut on the device (`task.views_on='device'`,
                 `trainer.make_view_predict`)
  views/forward  the network alone on the same number of patches, already cut and in host
                 memory (`parallel.predict_in_batches`, what `predict` costs at best)
  views/cut_host, views/cut_device
                 cutting alone, on the host (scipy) and on the device (`device_views.cut`,
                 patches back in host memory): the host row is the ceiling the host path puts
                 on evaluation however fast the network (an accelerator's forward rate)
Each row's `vs_forward` is its patches/s over the forward row's: 1.0 means evaluation runs
at the network's speed. `max_score_diff` is the largest difference between the two paths'
candidate scores.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from medft import parallel, trainer
from medft.bench.cases import arm
from medft.bench.core import Settings, interleaved, make_row
from medft.tasks import device_views


def polyp_task(frames: int, side: int, seed: int = 0):
  """A `PolypTask` with the default polyp config on `frames` synthetic `side`-pixel frames."""
  from medft.configs import polyp as polyp_config
  from medft.data import synthetic
  from medft.tasks import get_task
  rng = np.random.default_rng(seed)

  def examples(n, tag):
    out = []
    for i in range(n):
      image, mask = synthetic.polyp_example(rng, side, side, 1 + i % 2)
      out.append({'image': image, 'mask': mask, 'boxes': np.zeros((0, 4), np.float32),
                  'id': f'{tag}{i}', 'unit': f'{tag}{i}'})
    return out
  cfg = polyp_config.get_config('synthetic').task
  splits = {'train': examples(2, 'a'), 'test': examples(frames, 't')}
  return get_task('polyp', splits, cfg, seed)


def bench_views(s: Settings, log: Callable[[dict], None], arch: str = 'squeezenet1_1',
                frames: int = 0, side: int = 256) -> list[dict]:
  frames = frames or 1
  task = polyp_task(frames, side)
  items = task.items['test']
  if s.batch < 16:  # --quick: a few candidates only
    for item in items:
      keep = slice(0, 2)
      item.centres, item.sides, item.lesions = (item.centres[keep], item.sides[keep],
                                                item.lesions[keep])
  a = arm(arch, 'scratch', s)
  params = parallel.replicate(a.weights)
  batch = 4 * s.batch  # as the trainer evaluates
  p_predict = trainer.make_predict(a.model, a.meta)

  def predict(patches):
    return parallel.predict_in_batches(p_predict, params, patches, batch)
  predict_views = trainer.make_view_predict(a.model, a.meta, params, batch)
  n = task.eval_size('test')
  rows_pool = task.pool('test')
  cut = np.concatenate([task.candidate_patches(f, i) for f in items
                        for i in range(len(f.lesions))])
  source = task.view_source(items)
  desc = task.all_view_descriptors(items, rows_pool[:-1])
  out = {}
  fns = {
      'host': lambda: out.__setitem__('host', task.candidate_scores(items, predict)),
      'device': lambda: out.__setitem__('device', task.candidate_scores(
          items, predict, predict_views)),
      'forward': lambda: predict(cut),
      'cut_host': lambda: [task.candidate_patches(f, i) for f in items
                           for i in range(len(f.lesions))],
      'cut_device': lambda: device_views.cut(source, desc),
  }
  times = interleaved(fns, max(1, s.reps // 2), s.warmup)
  diff = float(np.abs(np.concatenate(out['host']) - np.concatenate(out['device'])).max())
  forward = n / np.median(times['forward'])
  rows = []
  for name in fns:
    row = make_row(f'views/{name}/{arch}', arch, None, batch, times[name], items=n,
                   cpu_seconds=times[name + ':cpu'], patches=n, views=len(task.views),
                   candidates=int(len(rows_pool[0])), frames=len(items),
                   patch_size=int(task.cfg.patch_size), input_size=s.input_size,
                   max_score_diff=diff)
    row['vs_forward'] = row['img_per_s'] / forward
    log(row)
    rows.append(row)
  rows += bench_train_views(task, a, arch, s, log)
  return rows


def bench_train_views(task, a, arch: str, s: Settings, log: Callable[[dict], None]
                      ) -> list[dict]:
  """The train step fed host-cut patches (prefetched uint8) against the same step cutting
  its patches from descriptors (`task.views_on='device'`), interleaved: what cutting in the
  step costs where the device is the host's own cores. `vs_host` = host step / device step."""
  from medft import tuning
  from medft.bench.cases import optim_config
  tx = tuning.make_optimizer(a.params, a.units, 'scratch', optim_config(), 1000)
  host_step, _ = trainer.make_steps(a.model, tx, a.meta)
  source = task.train_views_on_device()
  device_step, _ = trainer.make_steps(a.model, tx, a.meta, views=source.static)
  placed = parallel.replicate((source.stack, source.limits))
  descs = task.train_batch(0, s.batch)
  host_batch = parallel.to_devices(parallel.shard(
      {'image': device_views.cut(source, descs['views']), 'label': descs['label']}))
  device_batch = parallel.to_devices(parallel.shard(descs))
  rng = jax.random.key(0)
  states = {'host': parallel.replicate(trainer.TrainState.create(a.params, tx)),
            'device': parallel.replicate(trainer.TrainState.create(a.params, tx))}

  def host():
    states['host'], m = host_step(states['host'], host_batch, rng)
    jax.block_until_ready(m)

  def device():
    states['device'], m = device_step(states['device'], device_batch, rng, *placed)
    jax.block_until_ready(m)
  t = interleaved({'host': host, 'device': device}, s.reps, s.warmup)
  rows = []
  for name in ('host', 'device'):
    row = make_row(f'views/train_step_{name}/{arch}', arch, 'scratch', s.batch, t[name],
                   cpu_seconds=t[name + ':cpu'], patch_size=int(task.cfg.patch_size),
                   input_size=s.input_size)
    row['vs_host'] = np.median(t['host']) / np.median(t[name])
    log(row)
    rows.append(row)
  return rows
