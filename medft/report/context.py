"""What surrounds the tables: the source weights, the run settings, cost and the auto section."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from medft import tuning
from medft.report.runs import RunRecord, read_json

PRETEXT_FORMAT = 'medft-pretext'  # medft.pretrain.SOURCE_FORMAT (not imported: it needs JAX)



def weights_statement(inits: Sequence[str],
                      names: Mapping[str, str] | None = None) -> tuple[list[dict], list[str]]:
  """What each `init` folder holds, and plain sentences saying it. `names`: init -> source
  name in a sweep of several sources (`sweep.sources`)."""
  described, lines = [], []
  for init in inits:
    d: dict[str, Any] = {'init': init}
    name = (names or {}).get(init)
    who = f'Source `{name}`: its fine-tuning arms `{name}:*`' if name else 'Fine-tuning arms'
    if name:
      d['source'] = name
    meta = read_json(Path(init) / 'meta.json') or {}
    d.update({k: meta.get(k) for k in ('arch', 'source_format', 'source_file',
                                       'num_source_classes', 'input_size')})
    record = read_json(Path(init).parent / 'pretrain.json')
    if record:
      d['pretrain'] = {k: record.get(k) for k in ('held_out_accuracy', 'chance_accuracy',
                                                   'steps', 'wall_s', 'num_classes')}
    described.append(d)
    if not meta:
      lines.append(f'{who} start from `{init}`, whose meta.json could not be read.')
    elif meta.get('source_format') == PRETEXT_FORMAT:
      pre = d.get('pretrain') or {}
      acc = (f' (held-out pretext accuracy {pre["held_out_accuracy"]:.3f}, chance '
             f'{pre["chance_accuracy"]:.3f}, {pre["steps"]} steps)'
             if pre.get('held_out_accuracy') is not None else '')
      lines.append(
          f'**Source weights are NOT ImageNet.** {who} start from `{init}`: the '
          f'offline stand-in (source_format `{PRETEXT_FORMAT}`), the same architecture '
          f'({meta.get("arch")}) pre-trained here on crops of natural photographs shipped with '
          f'scikit-image ({meta.get("source_file")}), classifying which photo and rotation a '
          f'crop came from{acc}. Its features are far weaker than ImageNet features, so the '
          'fine-tuning arms here understate what the paper\'s ImageNet AlexNet gives.')
    else:
      classes = meta.get('num_source_classes')
      lines.append(f'{who} start from `{init}`: source_format '
                   f'`{meta.get("source_format")}`, source file `{meta.get("source_file")}`, '
                   f'{meta.get("arch")} ' + (f'with {classes} source classes.' if classes else
                                             'without its source classifier (a new head is '
                                             'trained in every arm).'))
  if not inits:
    lines.append('No finished run used pretrained weights (init is empty).')
  stand_in = not inits or any(d.get('source_format') in (None, PRETEXT_FORMAT)
                              for d in described)
  lines.append((
      'To use real ImageNet weights instead: convert them once, e.g. `python -m '
      'medft.weights.convert --src=bvlc_alexnet.caffemodel --format=caffe --arch=alexnet '
      '--out=weights/alexnet_bvlc` (also `--format=torch|safetensors|keras`), or train them '
      'with `configs/imagenet_pretrain.py`, then pass `init=weights/alexnet_bvlc` to the '
      'config (e.g. `--config=configs/cimt.py:init=weights/alexnet_bvlc`). Input size, channel '
      'order and normalisation are read from the weights\' meta.json (227x227 BGR for BVLC '
      'AlexNet), for every arm including scratch.') if stand_in else (
      'Input size, channel order and normalisation are read from the weights\' meta.json, for '
      'every arm including scratch.'))
  return described, lines


def settings(finished: Sequence[RunRecord]) -> dict:
  """The run settings a reader needs to judge the numbers (from a finished run's config: a
  fine-tuning run's where there is one; `scratch_base_lr` from a scratch run's, which a sweep
  may raise with sweep.scratch_lr_mult)."""
  def config(r: RunRecord) -> dict | None:
    c = read_json(r.dir / 'config.json')
    return c if isinstance(c, dict) and 'optim' in c else None

  configs = [(r, c) for r in finished if (c := config(r)) is not None]
  if not configs:
    return {}
  _, c = next(((r, c) for r, c in configs if not tuning.is_scratch(r.arm)), configs[0])
  get = lambda *keys: dig(c, keys)  # noqa: E731
  scratch = next((c for r, c in configs if tuning.is_scratch(r.arm)), None)
  return {'arch': get('arch'), 'input_size': get('input_size'), 'width': get('model', 'width'),
          'init_scheme': get('model', 'init_scheme'), 'base_lr': get('optim', 'base_lr'),
          'head_lr_mult': get('optim', 'head_lr_mult'), 'batch': get('train', 'batch'),
          'scratch_base_lr': dig(scratch, ('optim', 'base_lr')) if scratch else None,
          'patch_size': get('task', 'patch_size'),
          'eval_col_stride': get('task', 'eval_col_stride'),
          'views': _box_views(get('task', 'scales'), get('task', 'shift_steps'),
                              get('task', 'orientations')),
          'test_share': get('data', 'test_share'), 'split_by': get('data', 'split_by')}


def _box_views(scales: Any, shift_steps: Any, orientations: Any) -> dict | None:
  """The test-time views per candidate of a box-view task (polyp: `augment.box_views`), or
  None for tasks without them."""
  if not (isinstance(scales, list) and isinstance(shift_steps, list)
          and isinstance(orientations, int)):
    return None
  return {'n': len(scales) * len(shift_steps) ** 2 * orientations, 'scales': scales,
          'shifts': len(shift_steps) ** 2, 'orientations': orientations}


def dig(d: Any, keys: Sequence[str]) -> Any:
  for k in keys:
    d = d.get(k) if isinstance(d, dict) else None
  return d


def init_scheme(run: RunRecord) -> str:
  """The init scheme a run's config names ('' = the architecture's default)."""
  return dig(read_json(run.dir / 'config.json'), ('model', 'init_scheme')) or ''


def cost(finished: Sequence[RunRecord], sweep_dir: Path) -> dict:
  pre = read_json(sweep_dir / 'source_model' / 'pretrain.json') or {}
  return {'runs': len(finished),
          'steps': int(sum(r.results.get('steps') or 0 for r in finished)),
          'wall_s': float(sum((r.timing or {}).get('wall_s') or 0.0 for r in finished)),
          'pretrain_wall_s': pre.get('wall_s'), 'pretrain_steps': pre.get('steps')}


def auto_section(sweep_dir: Path, finished: Sequence[RunRecord], plan: dict | None,
                 primary: Callable[[RunRecord], float | None], primary_sign: int,
                 order: Callable[[Sequence[str]], list[str]]) -> dict | None:
  """auto.json, plus its cost and result against the planned sweep at its fraction and seed.

  `primary(run)` is a run's primary test metric (None when undefined); `primary_sign` +1
  when higher is better."""
  auto = read_json(sweep_dir / 'auto.json')
  if not isinstance(auto, dict) or 'curve' not in auto:
    return None
  f, seed = float(auto['fraction']), int(auto['seed'])
  planned = {r['arm'] for r in (plan or {}).get('runs', [])
             if float(r['fraction']) == f and int(r['seed']) == seed}
  at = {r.arm: r for r in finished if r.fraction == f and r.seed == seed}
  tuned = [at[a] for a in planned if a in at and not tuning.is_scratch(a)]
  out = dict(auto)
  if not tuned:
    return out
  value = lambda a: primary(at[a]) if a in at else None  # noqa: E731
  scored = [r for r in tuned if value(r.arm) is not None]
  best_test = max(scored, key=lambda r: primary_sign * value(r.arm)).arm if scored else None
  scratch = next((a for a in at if tuning.is_scratch(a)), None)
  out['versus_sweep'] = {
      'sweep_arms': order([r.arm for r in tuned]),
      'sweep_complete': len(tuned) == len({a for a in planned if not tuning.is_scratch(a)}),
      'sweep_steps': int(sum(r.results['steps'] for r in tuned)),
      'sweep_wall_s': float(sum((r.timing or {}).get('wall_s') or 0 for r in tuned)),
      'best_by_validation': max(tuned, key=lambda r: r.results['val_auc']).arm,
      'best_by_test': best_test, 'chosen_test': value(auto['chosen']),
      'best_test': value(best_test) if best_test else None,
      'scratch_test': value(scratch) if scratch else None,
  }
  return out
