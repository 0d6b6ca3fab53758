"""The converted-weights artifact and merging loaded weights into a model's parameters.

Artifact layout (written atomically: a temporary sibling folder renamed into place):
  DIR/params/     orbax pytree in the Flax layout, top-level keys = tuning units
  DIR/batch_stats/  (networks with BatchNorm only) orbax pytree of the running statistics
                  (`mean`, `var` of each BatchNorm layer, Flax's `batch_stats` collection),
                  same top-level keys; an artifact without it loads with {} (`load_batch_stats`)
  DIR/meta.json   {arch, source_format, source_file, source_sha256, num_source_classes,
                   channel_order: "RGB"|"BGR", scale: 1|255, mean: [c0, c1, c2],
                   std: [c0, c1, c2], input_size: [h, w], source_dtype, written_by: "medft",
                   provenance: {...}}
`mean` and `std` are per channel, in `channel_order`, on the `scale` the network expects.
`provenance` (exports of a run, `medft.weights.export`; {} otherwise) names the run folder,
arm, dataset, step, which checkpoint, the run's init= and the medft version; meta.json files
written before it load with {}.
`source_dtype` names the dtypes of the source file's tensors (e.g. "bfloat16"); params are
always float32. `written_by` is medft's marker: `save_artifact(..., overwrite=True)` replaces
only a folder whose meta.json carries it, never a folder medft did not write.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from flax import traverse_util

from medft.errors import InputFileError, MissingInputError, NotOursError

Params = dict[str, Any]
MARKER = 'medft'


@dataclasses.dataclass
class Meta:
  """How images must be prepared for a set of weights."""
  arch: str
  channel_order: str = 'RGB'
  scale: float = 1.0          # pixel values span 0..scale before mean/std
  mean: tuple[float, ...] = (0.0, 0.0, 0.0)
  std: tuple[float, ...] = (1.0, 1.0, 1.0)
  input_size: tuple[int, int] = (227, 227)
  source_format: str = 'medft'
  source_file: str = ''
  source_sha256: str = ''
  num_source_classes: int = 0
  source_dtype: str = ''      # dtypes of the source tensors, e.g. 'bfloat16' (params: float32)
  written_by: str = MARKER    # medft's marker (what lets --overwrite replace the folder)
  provenance: dict = dataclasses.field(default_factory=dict)  # where an export came from

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d['mean'], d['std'], d['input_size'] = list(self.mean), list(self.std), list(self.input_size)
    return d

  @classmethod
  def from_json(cls, d: dict, source: str = 'meta.json') -> 'Meta':
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown or 'arch' not in d:
      raise InputFileError(f'{source}: not a medft weights description (unknown keys '
                           f'{sorted(unknown)}, arch present: {"arch" in d}). Re-create it with '
                           f'`python -m medft.weights.convert`.')
    if d.get('channel_order', 'RGB') not in ('RGB', 'BGR'):
      raise InputFileError(f'{source}: channel_order={d["channel_order"]!r}, expected RGB or BGR.')
    if not isinstance(d.get('provenance', {}), dict):
      raise InputFileError(f'{source}: provenance={d["provenance"]!r}, expected an object.')
    d = dict(d)
    for key in ('mean', 'std', 'input_size'):
      if key in d:
        d[key] = tuple(d[key])
    return cls(**d)


# Input convention of a network trained by medft itself (scratch or the demo's source model).
def default_meta(arch: str, input_size: tuple[int, int] = (227, 227)) -> Meta:
  return Meta(arch=arch, channel_order='RGB', scale=1.0, mean=(0.5, 0.5, 0.5),
              std=(0.25, 0.25, 0.25), input_size=tuple(input_size))


def _checkpointer(this_process_only: bool = False):
  """Orbax's checkpointer: collective over every process (restores), or with
  `this_process_only` run by the calling process alone (an artifact is written by one)."""
  import orbax.checkpoint as ocp  # imported lazily: orbax start-up is slow.
  if not this_process_only:
    return ocp.StandardCheckpointer()
  import jax
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))


def save_artifact(out_dir: str | os.PathLike, params: Params, meta: Meta,
                  overwrite: bool = False, batch_stats: Params | None = None) -> Path:
  """Writes `params` (and `batch_stats`, when not empty) and `meta` to `out_dir`; never
  leaves a half-written folder. In a multi-process job one process calls it (its orbax
  checkpointer waits for no other)."""
  out = Path(out_dir).absolute()
  if out.exists() and not overwrite:
    raise NotOursError(f'{out} already exists; choose another --out or remove it first.')
  if out.exists():
    refuse_unless_artifact(out)
  meta = dataclasses.replace(meta, written_by=MARKER)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.parent))
  try:
    ckpt = _checkpointer(this_process_only=True)
    for folder, tree in (('params', params), ('batch_stats', batch_stats)):
      if folder == 'params' or tree:
        numpy_tree = {k: np.asarray(v) for k, v in
                      traverse_util.flatten_dict(tree, sep='/').items()}
        ckpt.save(tmp / folder, traverse_util.unflatten_dict(numpy_tree, sep='/'))
        ckpt.wait_until_finished()
    (tmp / 'meta.json').write_text(json.dumps(meta.to_json(), indent=2) + '\n')
    if out.exists():
      shutil.rmtree(out)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def is_artifact(path: str | os.PathLike) -> bool:
  """Whether `path` is a weights folder medft wrote: params/ and a meta.json with its marker."""
  path = Path(path)
  try:
    meta = json.loads((path / 'meta.json').read_text())
  except (OSError, ValueError):
    return False
  return (path.is_dir() and isinstance(meta, dict) and meta.get('written_by') == MARKER
          and (path / 'params').is_dir())


def refuse_unless_artifact(path: str | os.PathLike) -> None:
  """NotOursError unless `path` holds a weights artifact medft wrote (so it may replace it)."""
  if not is_artifact(path):
    raise NotOursError(
        f'--out={path} exists and is not a medft weights folder (no params/ and meta.json '
        f'with written_by={MARKER!r}), so --overwrite does not replace it; choose another '
        '--out, or move that folder away yourself.')


def load_artifact(path: str | os.PathLike) -> tuple[Params, Meta]:
  """Reads an artifact written by `save_artifact` (or `python -m medft.weights.convert`)."""
  path = Path(path)
  meta_file, params_dir = path / 'meta.json', path / 'params'
  if not path.exists():
    raise MissingInputError(f'init={path}: no such folder. Pass the --out folder of '
                            f'`python -m medft.weights.convert`.')
  if not meta_file.is_file() or not params_dir.is_dir():
    raise InputFileError(f'init={path}: not a converted-weights folder (expected meta.json and '
                         f'params/ inside). Convert the original file with '
                         f'`python -m medft.weights.convert --src=FILE --format=... --out={path}`.')
  meta = read_meta(path)
  try:
    restored = _checkpointer().restore(params_dir.absolute())
  except Exception as e:  # orbax raises many types for a damaged folder.
    raise InputFileError(f'{params_dir}: cannot read the parameters ({type(e).__name__}: {e}); '
                         f're-run the converter.') from None
  params = jax_free_tree(restored)
  return params, meta


def load_batch_stats(path: str | os.PathLike) -> Params:
  """The BatchNorm running statistics of an artifact (`DIR/batch_stats/`); {} when it has
  none (a network without BatchNorm, or an artifact written before they were stored)."""
  stats_dir = Path(path) / 'batch_stats'
  if not stats_dir.is_dir():
    return {}
  try:
    restored = _checkpointer().restore(stats_dir.absolute())
  except Exception as e:  # orbax raises many types for a damaged folder.
    raise InputFileError(f'{stats_dir}: cannot read the BatchNorm statistics '
                         f'({type(e).__name__}: {e}); re-run the converter.') from None
  return jax_free_tree(restored)


def read_meta(path: str | os.PathLike) -> Meta:
  """The meta.json of an artifact (its input convention), without reading the parameters."""
  meta_file = Path(path) / 'meta.json'
  if not meta_file.is_file():
    raise MissingInputError(f'init={path}: no meta.json there. Pass the --out folder of '
                            '`python -m medft.weights.convert`.')
  try:
    return Meta.from_json(json.loads(meta_file.read_text()), str(meta_file))
  except json.JSONDecodeError as e:
    raise InputFileError(f'{meta_file}: not valid JSON ({e}); re-run the converter.') from None


def jax_free_tree(tree: Any) -> Params:
  """Nested dicts of numpy arrays (orbax may hand back jax arrays or other mappings)."""
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    return {str(k): jax_free_tree(v) for k, v in tree.items()}
  return np.asarray(tree)


def describe_misfit(headline: str, missing: list[str], unexpected: list[str],
                    misshaped: list[str], advice: str, limit: int = 12, sep: str = ', ') -> str:
  """One readable message listing missing, unexpected and mis-shaped parameter keys."""
  lines = [headline]
  for title, items in (('missing', missing), ('unexpected', unexpected),
                       ('mis-shaped', misshaped)):
    if items:
      lines.append(f'  {title} ({len(items)}): ' + sep.join(items[:limit])
                   + (' ...' if len(items) > limit else ''))
  lines.append(advice)
  return '\n'.join(lines)


def merge_params(loaded: Params, init: Params, dont_load: Iterable[str] = (),
                 source: str = 'weights') -> Params:
  """Returns `init` with every leaf replaced by the loaded one, checking the fit.

  `dont_load` lists top-level units (e.g. the new head `fc8`) kept from `init`. Missing,
  unexpected and mis-shaped keys are all reported in one readable error.
  """
  skip = set(dont_load)
  flat_loaded = traverse_util.flatten_dict(loaded, sep='/')
  flat_init = traverse_util.flatten_dict(init, sep='/')
  keep = lambda k: k.split('/')[0] not in skip  # noqa: E731
  missing = sorted(k for k in flat_init if keep(k) and k not in flat_loaded)
  unexpected = sorted(k for k in flat_loaded if keep(k) and k not in flat_init)
  misshaped = sorted(
      f'{k}: file {tuple(np.shape(flat_loaded[k]))} vs model {tuple(np.shape(flat_init[k]))}'
      for k in flat_init if keep(k) and k in flat_loaded
      and np.shape(flat_loaded[k]) != np.shape(flat_init[k]))
  if missing or unexpected or misshaped:
    raise InputFileError(describe_misfit(
        f'{source} do not fit the model:', missing, unexpected, misshaped,
        'Check that arch= matches the weights (and width/num_classes), or list the units to '
        'skip in dont_load.'))
  merged = {k: (np.asarray(flat_loaded[k], dtype=np.asarray(v).dtype) if keep(k) else v)
            for k, v in flat_init.items()}
  return traverse_util.unflatten_dict(merged, sep='/')
