"""Exports a run's fine-tuned parameters, so that a model trained by medft leaves it.

    python -m medft.weights.export --workdir=runs/cimt_fc7 --out=weights/cimt_fc7
    python -m medft.weights.export --workdir=runs/cimt_fc7 --format=safetensors \
        --out=weights/cimt_fc7.safetensors

`--format=medft` (the default) writes a weights artifact (`medft.weights.store`: `DIR/params/`
+ `DIR/meta.json`) that `init=` takes, so the fine-tuned model can be the next study's source,
or be evaluated as it is with its head (`model.keep_head=True`, `train.steps=0`). meta.json
keeps the input convention the run trained with (its init= weights', else medft's own at the
run's `input_size`), `num_source_classes` = the run's classes, and `provenance`: the run
folder, arm, dataset, step, which checkpoint, the run's init= and the medft version.
`--format=safetensors` writes one `.safetensors` file in torchvision's names and layout (the
converter's torch table inverted, `convert.to_source`), for the networks that have one
(`alexnet_torchvision`, `squeezenet1_1`); meta.json's content rides in the file's metadata
under `medft_meta`.

`--which=best` (the default) exports `checkpoints/best`, the parameters the run's test results
come from, and needs a finished run (its results.json); `--which=latest` exports
`checkpoints/latest`, also of a run that is still going or was stopped. Nothing is written
until every input has been read; the output appears whole (a temporary sibling renamed into
place) and replaces only what medft exported or converted (`--overwrite`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from medft.errors import (
  ConfigError,
  InputFileError,
  MissingInputError,
  MissingPackageError,
  NotOursError,
  UserError,
)
from medft.models import batchnorm
from medft.weights import convert, store

log = logging.getLogger(__name__)

FORMATS = ('medft', 'safetensors')
WHICH = ('best', 'latest')
# The safetensors file uses the torch importer's names (torchvision's).
NAMING = 'torch'
META_KEY = 'medft_meta'  # safetensors metadata key holding meta.json's content


def export(workdir: str | os.PathLike, out: str | os.PathLike, which: str = 'best',
           format: str = 'medft', overwrite: bool = False) -> Path:
  """Writes the `which` checkpoint of the run in `workdir` to `out`; returns its path."""
  if which not in WHICH:
    raise ConfigError(f'--which={which!r}: choose best (the finished run\'s selected '
                      'parameters) or latest (its last checkpoint).')
  if format not in FORMATS:
    raise ConfigError(f'--format={format!r}: choose one of {", ".join(FORMATS)}.')
  run, out = Path(workdir), Path(out)
  config = read_run_config(run)
  finished = (run / 'results.json').is_file()
  if not finished and which == 'best':
    raise MissingInputError(
        f'--workdir={run} is not finished (no results.json), so its best parameters are not '
        'final. Repeat the run\'s command to finish it, or export its last checkpoint with '
        '--which=latest.')
  if format == 'safetensors':
    _check_safetensors_target(config['arch'], out)
  _check_out(out, format, overwrite)

  # Every input is read before anything is written.
  from medft.trainer import read_results  # noqa: PLC0415  (the trainer imports JAX and more)
  results = read_results(run / 'results.json') if finished else {}
  meta = run_meta(config, run)
  params, step = read_checkpoint(run, which)
  batch_stats = {}
  if batchnorm.is_variables(params):  # a BatchNorm network: its statistics ride along
    params, batch_stats = params['params'], params['batch_stats']
  meta.num_source_classes = int(config['num_classes'])
  meta.source_format, meta.source_file, meta.source_sha256 = 'medft_run', str(run.absolute()), ''
  meta.source_dtype = 'float32'
  meta.provenance = _provenance(config, results, run, which, step, finished)
  if format == 'medft':
    path = store.save_artifact(out, params, meta, overwrite=overwrite, batch_stats=batch_stats)
  else:
    path = _save_safetensors(out, params, meta)
  log.info('Exported %s checkpoint (step %d) of %s to %s.', which, step, run, path)
  return path


def read_run_config(run: Path) -> dict:
  """The config.json of a medft run folder; a folder that is not one is refused by name."""
  if not run.is_dir():
    raise MissingInputError(f'--workdir={run}: no such folder. Pass the --workdir of a medft '
                            'run (a folder holding its config.json and checkpoints/).')
  config_file = run / 'config.json'
  try:
    config = json.loads(config_file.read_text())
  except (OSError, ValueError):
    config = None
  if not isinstance(config, dict) or not {'arch', 'num_classes', 'train'} <= set(config):
    raise InputFileError(
        f'--workdir={run} is not a medft run folder (no readable config.json of a run); pass '
        'the --workdir of one arm (for a sweep: DIR/<arm>/<fraction>/<seed>).')
  return config


def run_meta(config: dict, run: Path) -> store.Meta:
  """The input convention the run trained with: its init= weights' (what the trainer read),
  else medft's own at the run's `input_size` (`store.default_meta`, as the trainer)."""
  init = config.get('init') or ''
  if not init:
    return store.default_meta(config['arch'], (config['input_size'],) * 2)
  try:
    meta = store.read_meta(init)
  except MissingInputError:
    raise MissingInputError(
        f'--workdir={run} was initialised from init={init}, whose meta.json (the input '
        'convention the run trained with) is not there (a relative path is read from the '
        'current folder). Run the export from the folder the run was started in, or put that '
        'weights folder back.') from None
  return store.Meta(arch=config['arch'], channel_order=meta.channel_order, scale=meta.scale,
                    mean=meta.mean, std=meta.std, input_size=meta.input_size)


def read_checkpoint(run: Path, which: str) -> tuple[store.Params, int]:
  """(parameters as numpy arrays, step) of `checkpoints/<which>` of a run."""
  import orbax.checkpoint as ocp  # noqa: PLC0415  (slow to import)
  folder = run / 'checkpoints' / which
  steps = [int(p.name) for p in folder.glob('[0-9]*') if p.name.isdigit()] if folder.is_dir() \
      else []
  if not steps:
    other = 'latest' if which == 'best' else 'best'
    raise MissingInputError(
        f'{folder}: no checkpoint (a sweep with sweep.keep_checkpoints=best|none removes '
        f'them; a run that never evaluated has no best). Try --which={other}, or train the '
        'run again with its checkpoints kept.')
  step = max(steps)
  manager = ocp.CheckpointManager(folder.absolute())
  try:
    tree = manager.restore(step, args=ocp.args.StandardRestore())  # as saved: numpy
  except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise InputFileError(f'checkpoint {folder / str(step)} cannot be read ({reason}); it is '
                         'damaged or from another medft version.') from None
  finally:
    manager.close()
  if which == 'latest':  # best holds the trainer's weights (`TrainState.weights`) already
    tree = batchnorm.weights_tree(tree['state']['params'], tree['state'].get('batch_stats'))
  params = tree
  return store.jax_free_tree(params), step


def _provenance(config: dict, results: dict, run: Path, which: str, step: int,
                finished: bool) -> dict[str, Any]:
  from medft import __version__  # noqa: PLC0415  (medft/__init__ imports the trainer)
  model, data = config.get('model', {}), config.get('data', {})
  init = config.get('init') or None
  out = {'run': str(run.absolute()), 'arm': results.get('arm', config.get('depth')),
         'depth': config.get('depth'), 'init_scheme': model.get('init_scheme', ''),
         'app': results.get('app'), 'dataset': data.get('name'),
         'fraction': data.get('fraction'), 'seed': config.get('seed'), 'step': int(step),
         'which': which, 'finished': finished, 'init': init, 'init_source': None,
         'model': model, 'dtype': config.get('dtype'), 'medft': __version__,
         'exported': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
  if init:
    out['init_source'] = store.read_meta(init).source_format
  if finished and which == 'best':
    out['val_auc'] = results.get('val_auc')
  return out


# ---- the output ----------------------------------------------------------------------------


def _check_safetensors_target(arch: str, out: Path) -> None:
  try:
    convert.to_source({}, NAMING, arch)  # only checks that the arch has a naming
  except ConfigError as e:
    raise ConfigError(f'--format=safetensors writes torchvision\'s names: {e} Export this run '
                      'with --format=medft.') from None
  if out.suffix != '.safetensors':
    raise ConfigError(f'--out={out}: with --format=safetensors --out names the file, ending in '
                      '.safetensors (e.g. --out=weights/cimt_fc7.safetensors).')
  try:
    import safetensors.numpy  # noqa: F401, PLC0415
  except ImportError:
    raise MissingPackageError('--format=safetensors needs the safetensors package: pip install '
                              '"medft[weights]" (or pip install safetensors).') from None
  if arch == 'squeezenet1_1':
    log.warning('torchvision\'s SqueezeNet pools in ceil mode, medft\'s in floor mode: the '
                'same weights give other activations where a pooled map has an odd size.')


def _check_out(out: Path, format: str, overwrite: bool) -> None:
  """Refuses an existing `out` unless `overwrite` and medft wrote it."""
  if not out.exists():
    return
  if not overwrite:
    raise NotOursError(f'--out={out} already exists; choose another --out, or pass --overwrite '
                       'to replace an export of medft.')
  if format == 'medft':
    store.refuse_unless_artifact(out)
  elif not _is_our_safetensors(out):
    raise NotOursError(f'--out={out} exists and is not a .safetensors file medft exported (no '
                       f'{META_KEY} in its metadata), so --overwrite does not replace it; choose '
                       'another --out, or move that file away yourself.')


def _is_our_safetensors(path: Path) -> bool:
  from safetensors import safe_open  # noqa: PLC0415
  if not path.is_file():
    return False
  try:
    with safe_open(str(path), 'np') as f:
      meta = json.loads((f.metadata() or {}).get(META_KEY, '{}'))
  except Exception:  # noqa: BLE001  (any unreadable file is simply not ours)
    return False
  return isinstance(meta, dict) and meta.get('written_by') == store.MARKER


def _save_safetensors(out: Path, params: store.Params, meta: store.Meta) -> Path:
  from safetensors.numpy import save_file  # noqa: PLC0415
  tensors = convert.to_source(params, NAMING, meta.arch)
  out = out.absolute()
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = dataclasses.replace(meta, written_by=store.MARKER)
  fd, tmp = tempfile.mkstemp(prefix=f'.{out.name}.tmp-', dir=out.parent)
  os.close(fd)
  try:
    save_file(tensors, tmp, metadata={'format': 'pt', META_KEY: json.dumps(meta.to_json())})
    os.replace(tmp, out)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m medft.weights.export',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='the run folder to export')
  parser.add_argument('--out', required=True,
                      help='folder to create (medft), or the .safetensors file')
  parser.add_argument('--which', default='best', choices=WHICH,
                      help='best (default; a finished run) or latest checkpoint')
  parser.add_argument('--format', default='medft', choices=FORMATS)
  parser.add_argument('--overwrite', action='store_true',
                      help='replace an existing --out that medft wrote')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
  try:
    out = export(args.workdir, args.out, which=args.which, format=args.format,
                 overwrite=args.overwrite)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
