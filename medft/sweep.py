"""The study: every arm x fraction x seed (`sweep`), or the depth picked on validation (`auto`).

Sweep folder (DESIGN.md, "Files other code and people rely on"):
  DIR/<arm>/<fraction>/<seed>/   one run workdir each (`medft.train`), e.g. DIR/fc7/0.5/0/
  DIR/<source>/<arm>/<fraction>/<seed>/   with `sweep.sources` (several pretrained sources,
                                 `medft.sources`): each fine-tuning arm once per source;
                                 scratch arms stay DIR/<arm>/..., once
  DIR/sweep.json                 the planned runs, so a report can name the missing ones
  DIR/source_model/              the pretrained source model when the config trains one
  DIR/auto.json                  the automatic depth choice (`auto_tune`)
  DIR/report.md, report.json, report.csv, plots/   (`medft.report.build_report`)

Training sizes: `sweep.fractions` (of `data.fraction_unit`) plus `sweep.train_units`, unit
counts that run as the fraction k / (training units), e.g. the single-patient CIMT arm; every
one is checked on the data before the first run (or the source model) starts, and a fraction
that keeps no training unit is refused by name (`checked_fractions`).

A finished run (its results.json exists) is never trained again, so a killed sweep resumes by
repeating the command; a run that was interrupted resumes from its own latest checkpoint.
`config.sweep.shard='i/n'` gives this process run k of the plan when k % n == i, so runs can be
spread over processes or hosts sharing the folder; the report is rebuilt from whatever is
finished each time a shard ends.

`config.sweep.pack_seeds=True` trains the seeds of one arm and fraction that have no folder
yet as one vmapped program (`medft.packed`); each still writes its own run folder, so resume,
the report and `auto` see separate runs. Seeds with a folder (an interrupted packed sweep)
resume or are skipped one by one, as above.

Automatic depth (`auto_tune`): fc8 first, then one unit deeper at a time; stop when the
validation AUC of a depth does not beat the best shallower depth by more than
`config.auto.tolerance` (`config.auto.patience` times in a row); the choice is the best depth
seen. Every visited depth restarts from the pretrained weights, with the full training budget.
Why restart, rather than continue from the shallower depth's weights:
  * each visited depth is then exactly the sweep's arm of that name (same folder, reused both
    ways), so auto and the full sweep are directly comparable;
  * depth is not confounded with training length: a continued run would train deeper layers
    after the head had already converged, and its gain could be just the extra steps;
  * a bad shallow run cannot contaminate the deeper ones.
The cost is the shallow depths' steps being repeated; auto.json and the report state it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import ml_collections
from absl import logging

from medft import files, locks, packed, sources, trainer, tuning
from medft.errors import ConfigError, NonFiniteError, NotOursError
from medft.models import ARCHS

# Config blocks that describe the study, not a run: stripped from each run's config so that
# changing the plan (more arms, another shard) never invalidates finished runs.
STUDY_FIELDS = ('sweep', 'auto', 'pretrain', 'report')
SOURCE_MODEL_DIR = 'source_model'


@dataclasses.dataclass(frozen=True)
class Run:
  arm: str
  fraction: float
  seed: int
  source: str = ''  # a `sweep.sources` name (fine-tuning arms of a several-source sweep)

  @property
  def name(self) -> str:
    """The run's arm as the report names it: `<source>:<arm>`, or the arm alone."""
    return sources.qualified(self.source, self.arm)

  def path(self, sweep_dir: str | Path) -> Path:
    return run_dir(sweep_dir, self.arm, self.fraction, self.seed, self.source)


def run_dir(sweep_dir: str | Path, arm: str, fraction: float, seed: int,
            source: str = '') -> Path:
  """DIR/<arm>/<fraction>/<seed> with the fraction written as a float (`1.0`, `0.25`);
  DIR/<source>/<arm>/<fraction>/<seed> for a run of one of `sweep.sources`."""
  base = Path(sweep_dir) / source if source else Path(sweep_dir)
  return base / arm / str(float(fraction)) / str(int(seed))


# ---- settings ---------------------------------------------------------------------------


def study_setting(config: ml_collections.ConfigDict, block: str, key: str) -> Any:
  """`config.<block>.<key>`, or its default when an app config has no such block/field."""
  defaults = {
      ('sweep', 'arms'): '', ('sweep', 'fractions'): '', ('sweep', 'seeds'): '',
      ('sweep', 'shard'): '', ('sweep', 'report'): True, ('sweep', 'keep_checkpoints'): 'all',
      ('sweep', 'train_units'): '', ('sweep', 'scratch_lr_mult'): 1.0,
      ('sweep', 'pack_seeds'): False, ('sweep', 'sources'): '', ('sweep', 'layer_decay'): 0.65,
      # Multiplicity correction of the report's all-pairs tables: 'holm' or 'bh'.
      ('report', 'correction'): 'holm',
      ('auto', 'tolerance'): 0.002, ('auto', 'patience'): 1,
  }
  node = config.get(block)
  value = node.get(key) if node is not None else None
  if key in ('fractions', 'seeds') and not value:  # one fraction / seed: the config's own
    return str(config.data.fraction) if key == 'fractions' else str(config.seed)
  return defaults[(block, key)] if value is None else value


# ---- plan --------------------------------------------------------------------------------


def list_items(value: Any) -> list[str]:
  """'a,b' or 'a+b' (the form config arguments allow, e.g. `arms=scratch+fc8`) or a sequence."""
  if isinstance(value, str):
    return [v.strip() for v in value.replace('+', ',').split(',') if v.strip()]
  return [str(v) for v in (value or ())]


def units_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The architecture's tuning units (an unknown arch is a ConfigError naming the known)."""
  return ARCHS[config.arch][1]


def all_arms(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Every valid arm name: scratch, scratch_<init scheme> (e.g. scratch_xavier, scratch_he),
  then the head only, deepening to every unit (the paper's order)."""
  return tuning.arms(units_of(config), scratch_schemes=True)


def default_arms(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The arms of a sweep that names none: scratch and every fine-tuning depth."""
  return tuning.arms(units_of(config))


def plan(config: ml_collections.ConfigDict, fractions: Sequence[float] = ()) -> list[Run]:
  """Every requested run, in a fixed order (fraction, then arm, then seed); with
  `sweep.sources`, per fraction the scratch arms once, then per source its fine-tuning arms.

  `fractions`, when given, replaces `sweep.fractions` (the checked list `checked_fractions`
  returns).
  """
  known = all_arms(config)
  arms = list_items(study_setting(config, 'sweep', 'arms')) or list(default_arms(config))
  unknown = [a for a in arms if a not in known]
  if unknown:
    raise ConfigError(f'sweep.arms: {", ".join(unknown)} not arms of {config.arch}; choose from '
                      f'{", ".join(known)}.')
  arms = [a for a in known if a in arms]  # paper order, no duplicates
  raw_fractions = study_setting(config, 'sweep', 'fractions')
  raw_seeds = study_setting(config, 'sweep', 'seeds')
  try:
    fractions = sorted({float(f) for f in (fractions or list_items(raw_fractions))})
    seeds = sorted({int(s) for s in list_items(raw_seeds)})
  except ValueError:
    raise ConfigError(f'sweep.fractions={raw_fractions!r} / sweep.seeds='
                      f'{raw_seeds!r}: expected comma-separated numbers such as '
                      '0.25,0.5,1.0 and 0,1,2.') from None
  if not fractions or not seeds or not all(0 < f <= 1 for f in fractions):
    raise ConfigError(f'sweep.fractions={raw_fractions!r} must list numbers in (0, 1] '
                      f'and sweep.seeds={raw_seeds!r} at least one seed.')
  named = sources.names(study_setting(config, 'sweep', 'sources'))
  if not named:
    return [Run(a, f, s) for f in fractions for a in arms for s in seeds]
  scratch = [a for a in arms if tuning.is_scratch(a)]
  tuned = [a for a in arms if not tuning.is_scratch(a)]
  return [run for f in fractions for run in
          [Run(a, f, s) for a in scratch for s in seeds]
          + [Run(a, f, s, n) for n in named for a in tuned for s in seeds]]


def checked_fractions(config: ml_collections.ConfigDict) -> list[float]:
  """`sweep.fractions` plus the `sweep.train_units` counts as fractions, each checked on the
  data (enough training units) before any run starts (`medft.data.study_fractions`)."""
  from medft import data  # TFDS only when a study reads data
  fractions = [r.fraction for r in plan(config)]
  return data.study_fractions(config.data, fractions,
                              list_items(study_setting(config, 'sweep', 'train_units')))


def shard_of(runs: Sequence[Run], shard: str) -> list[Run]:
  """This process' runs for `shard='i/n'` (round-robin over the plan); all when empty."""
  if not shard:
    return list(runs)
  try:
    i, n = (int(x) for x in shard.split('/'))
  except ValueError:
    raise ConfigError(f'sweep.shard={shard!r}: expected i/n such as 0/4.') from None
  if not 0 <= i < n:
    raise ConfigError(f'sweep.shard={shard!r}: need 0 <= i < n.')
  return [r for k, r in enumerate(runs) if k % n == i]


def run_config(config: ml_collections.ConfigDict, run: Run,
               init: str) -> ml_collections.ConfigDict:
  """The config of one run: the study blocks removed, arm/fraction/seed/init set (a
  `scratch_<scheme>` arm is depth scratch with model.init_scheme=<scheme>; a scratch arm's
  optim.base_lr is times sweep.scratch_lr_mult; the `layerwise` arm trains every unit, depth
  the lowest, with optim.layer_decay=sweep.layer_decay)."""
  d = config.to_dict()
  for key in STUDY_FIELDS:
    d.pop(key, None)
  c = ml_collections.ConfigDict(d)
  depth, scheme = tuning.arm_settings(run.arm)
  c.depth, c.seed, c.init = depth, int(run.seed), init
  if scheme is not None:
    c.model.init_scheme = scheme
  if run.arm == tuning.LAYERWISE:
    c.depth = units_of(config)[0]
    c.optim.layer_decay = float(study_setting(config, 'sweep', 'layer_decay'))
  if depth == tuning.SCRATCH:
    c.optim.base_lr = float(config.optim.base_lr) * float(study_setting(config, 'sweep',
                                                                        'scratch_lr_mult'))
  c.data.fraction = float(run.fraction)
  return c


# ---- source model ------------------------------------------------------------------------


def source_init(config: ml_collections.ConfigDict, sweep_dir: Path,
                needs_init: bool) -> str:
  """`config.init`, or the source model pretrained (once, cached) into DIR/source_model."""
  if config.init:
    return str(config.init)
  p = config.get('pretrain')
  if p is not None and p.source and not needs_init:
    logging.info('Every arm trains from scratch: no source model is pretrained '
                 '(pretrain.source=%s is not used).', p.source)
    return ''
  if p is not None and p.source:
    from medft import pretrain  # trains only when asked: keep the import out of plain sweeps
    workdir = sweep_dir.absolute() / SOURCE_MODEL_DIR
    # Shards sharing the folder wait while one of them pretrains (the lock is the OS's: a
    # holder that dies releases it, and the waiter takes over); an unsharded sweep stops.
    shard = study_setting(config, 'sweep', 'shard')
    lock = locks.Lock(workdir.parent / f'.{SOURCE_MODEL_DIR}.lock',
                      f'the source model {workdir}')
    with lock.acquire(wait=bool(shard)):
      return str(pretrain.pretrain(config, workdir))
  if needs_init:
    raise ConfigError('fine-tuning arms need pretrained weights: pass init=<folder from python '
                      '-m medft.weights.convert>, or set --config.pretrain.source=pretext to '
                      'train the offline stand-in, or limit sweep.arms to scratch.')
  return ''


def source_paths(config: ml_collections.ConfigDict) -> dict[str, str]:
  """{name: absolute path} of `sweep.sources`, each checked (`medft.sources.check`); {} when
  the field is empty (then `source_init` gives the one source)."""
  return sources.check(study_setting(config, 'sweep', 'sources'), config.arch,
                       all_arms(config), str(config.get('init') or ''))


def sweep_lock(config: ml_collections.ConfigDict, sweep_dir: Path) -> locks.Lock:
  """One process per sweep folder and shard (`DIR/.sweep.lock`, `DIR/.sweep.<i>of<n>.lock`)."""
  shard = study_setting(config, 'sweep', 'shard')
  name = f'.sweep.{shard.replace("/", "of")}.lock' if shard else '.sweep.lock'
  what = f'the sweep {sweep_dir}' + (f' (shard {shard})' if shard else '')
  return locks.Lock(sweep_dir / name, what)


def _prepare_sweep_dir(sweep_dir: Path) -> None:
  """Creates the sweep folder with medft's marker; a folder of other files is refused."""
  if sweep_dir.is_dir() and files.read_marker(sweep_dir) is None:
    legacy = (sweep_dir / 'sweep.json').exists() or (sweep_dir / SOURCE_MODEL_DIR).exists()
    if not legacy and any(not p.name.startswith('.sweep') for p in sweep_dir.iterdir()):
      raise NotOursError(f'--workdir={sweep_dir} is a folder of other files (no sweep.json or '
                         f'{files.MARKER} marker of medft); medft does not write into it. Use a '
                         'new or empty --workdir for the sweep.')
  files.make_dirs(sweep_dir, 'the sweep folder')
  files.write_marker(sweep_dir, 'sweep')


# ---- running -----------------------------------------------------------------------------


def _failure(workdir: Path) -> str:
  """The error recorded in a run's failed.json (or what is wrong with that file)."""
  try:
    record = json.loads((workdir / 'failed.json').read_text())
    return str(record['error']) if isinstance(record, dict) else str(record)
  except (OSError, ValueError, KeyError) as e:
    return f'failed.json unreadable ({e})'


def _run_one(config, run: Run, sweep_dir: Path, init: str) -> dict | None:
  """Trains one run unless it is finished; None when it failed (recorded in failed.json)."""
  workdir = run.path(sweep_dir)
  if (workdir / 'results.json').exists():
    logging.info('%s is finished; skipped.', workdir)
    # Through train() all the same: it checks the folder holds this config's run (a changed
    # config must not silently reuse old results) and returns them without training.
    return trainer.train(run_config(config, run, init), workdir)
  if (workdir / 'failed.json').exists():
    logging.warning('%s failed before (see its failed.json); skipped. Delete failed.json to '
                    'retry.', workdir)
    return None
  logging.info('Run %s at fraction %s, seed %d -> %s', run.name, run.fraction, run.seed, workdir)
  try:
    results = trainer.train(run_config(config, run, init), workdir)
  except trainer.NonFiniteError as e:
    return _record(config, workdir, e)
  return _record(config, workdir, results)


def _record(config, workdir: Path, outcome: dict | NonFiniteError) -> dict | None:
  """A trained run's results, its checkpoints dropped as `sweep.keep_checkpoints` says; or
  its failure written to failed.json (None)."""
  if isinstance(outcome, NonFiniteError):
    logging.error('%s', outcome)
    files.write_json_atomic(workdir / 'failed.json', {'error': str(outcome),
                                                      'time': time.time()})
    return None
  for name in dropped_checkpoints(config):  # frees the disk a finished run no longer needs
    shutil.rmtree(workdir / 'checkpoints' / name, ignore_errors=True)
  return outcome


def _run_group(config, group: Sequence[Run], sweep_dir: Path, init: str) -> list[Run]:
  """The seeds of one arm and fraction; the failed ones. With `sweep.pack_seeds`, the seeds
  without a folder yet train as one packed program (`medft.packed`); the others (resumed,
  finished, failed) and every group that cannot be packed run one after another."""
  fresh = [r for r in group if not r.path(sweep_dir).exists()]
  if not study_setting(config, 'sweep', 'pack_seeds') or len(fresh) < 2:
    fresh = []
  else:
    reason = packed.fallback_reason(run_config(config, fresh[0], init))
    if reason:
      logging.info('sweep.pack_seeds: %s at fraction %s trains its seeds one after another: '
                   '%s.', fresh[0].name, fresh[0].fraction, reason)
      fresh = []
  later = [r for r in group if r not in fresh]
  if fresh and later:
    logging.info('sweep.pack_seeds: seeds %s of %s at fraction %s have folders already; they '
                 'resume (or are skipped) as separate runs.', ', '.join(str(r.seed) for r in later),
                 group[0].name, group[0].fraction)
  failed = [r for r in later if _run_one(config, r, sweep_dir, init) is None]
  if fresh:
    logging.info('Runs %s at fraction %s, seeds %s (packed) -> %s', fresh[0].name,
                 fresh[0].fraction, ', '.join(str(r.seed) for r in fresh),
                 fresh[0].path(sweep_dir).parent)

    def record(k: int, outcome: dict | NonFiniteError) -> None:  # as each seed ends
      if _record(config, fresh[k].path(sweep_dir), outcome) is None:
        failed.append(fresh[k])
    packed.train_seeds([run_config(config, r, init) for r in fresh],
                       [r.path(sweep_dir) for r in fresh], record)
  return failed


def groups_of(runs: Sequence[Run]) -> list[list[Run]]:
  """The runs in plan order, the neighbouring seeds of one arm (of one source) and fraction
  together."""
  out: list[list[Run]] = []
  for r in runs:
    if out and (out[-1][0].name, out[-1][0].fraction) == (r.name, r.fraction):
      out[-1].append(r)
    else:
      out.append([r])
  return out


def dropped_checkpoints(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The checkpoint folders a finished run drops under `sweep.keep_checkpoints` (checked
  before a study starts, so a bad value deletes nothing)."""
  keep = study_setting(config, 'sweep', 'keep_checkpoints')
  dropped = {'all': (), 'best': ('latest',), 'none': ('latest', 'best')}
  if keep not in dropped:
    raise ConfigError(f'sweep.keep_checkpoints={keep!r}: expected all, best or none.')
  return dropped[keep]


def _write_plan(config, sweep_dir: Path, runs: Sequence[Run], init: str,
                named: dict[str, str]) -> None:
  plan_file = sweep_dir / 'sweep.json'
  if plan_file.exists():  # a resumed sweep: its plan is medft's own and rewritten below
    try:
      held = json.loads(plan_file.read_text())
      if not isinstance(held, dict) or not isinstance(held.get('runs'), list):
        raise ValueError('not the plan of a medft sweep')
    except (ValueError, UnicodeDecodeError) as e:
      logging.warning('%s was damaged (%s); writing the plan again.', plan_file, e)
  record = {
      'arch': config.arch, 'dataset': config.data.name, 'init': init or None,
      'arms': sorted({r.arm for r in runs}, key=all_arms(config).index),
      'fractions': sorted({r.fraction for r in runs}),
      'seeds': sorted({r.seed for r in runs}),
      'runs': [{'arm': r.arm, 'fraction': r.fraction, 'seed': r.seed,
                **({'source': r.source} if r.source else {}),
                'dir': str(r.path('.'))} for r in runs],
  }
  if named:  # several sources (`medft.sources`): their names in order and their folders
    record['sources'] = [{'name': n, 'init': p} for n, p in named.items()]
  files.write_json_atomic(plan_file, record)


def sweep(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Runs this shard's part of the study into `workdir` and returns the report (a dict)."""
  from medft import validate  # here, so that `python -m medft.validate` runs it fresh
  validate.check_config(config, 'sweep')  # every field in range before anything is touched
  sweep_dir = trainer.check_workdir_arg(workdir)
  dropped = dropped_checkpoints(config)
  runs = plan(config, checked_fractions(config))
  named = source_paths(config)
  shard = study_setting(config, 'sweep', 'shard')
  mine = shard_of(runs, shard)
  t0 = time.time()
  _prepare_sweep_dir(sweep_dir)
  with sweep_lock(config, sweep_dir):
    if named:  # scratch takes the first source's input convention (`medft.sources`)
      init = next(iter(named.values()))
      p = config.get('pretrain')
      if p is not None and p.source:
        logging.info('sweep.sources names the source weights: no source model is pretrained '
                     '(pretrain.source=%s is not used).', p.source)
    else:
      init = source_init(config, sweep_dir, needs_init=any(not tuning.is_scratch(r.arm)
                                                                for r in runs))
    if init and dropped and not named:
      shutil.rmtree(sweep_dir / SOURCE_MODEL_DIR / 'checkpoints', ignore_errors=True)
    _write_plan(config, sweep_dir, runs, init, named)
    logging.info('Sweep: %d runs planned, %d in this shard (%s).', len(runs), len(mine),
                 shard or 'all')
    failed, done = [], 0
    for group in groups_of(mine):
      logging.info('---- sweep run%s %s/%d ----', 's' if len(group) > 1 else '',
                   f'{done + 1}-{done + len(group)}' if len(group) > 1 else done + 1, len(mine))
      failed += _run_group(config, group, sweep_dir, named.get(group[0].source, init))
      done += len(group)
    logging.info('Sweep shard done in %.0f s.', time.time() - t0)
    if mine and len(failed) == len(mine):
      raise NonFiniteError(
          f'every run of the sweep {sweep_dir}{" (shard " + shard + ")" if shard else ""} '
          f'failed ({len(failed)}): ' + '; '.join(
              f'{r.path(".")}: {_failure(r.path(sweep_dir))[:160]}'
              for r in failed[:4]) + ('; ...' if len(failed) > 4 else '') +
          '. Fix the cause (e.g. lower optim.base_lr), delete the failed.json files in those '
          'run folders and repeat the command.')
    if failed:
      logging.warning('%d of %d runs failed: %s (see their failed.json).', len(failed),
                      len(mine), ', '.join(str(r.path('.')) for r in failed))
    return _finish(config, sweep_dir)


def _finish(config, sweep_dir: Path) -> dict:
  if not study_setting(config, 'sweep', 'report'):
    return {'sweep_dir': str(sweep_dir)}
  from medft import report  # matplotlib only when a report is wanted
  return report.build_report(sweep_dir,
                             correction=study_setting(config, 'report', 'correction'))


# ---- automatic depth ---------------------------------------------------------------------


def _timing(workdir: Path) -> dict:
  f = workdir / 'timing.json'
  return json.loads(f.read_text()) if f.exists() else {}


def _summary(test: dict | None) -> dict:
  """A run's test metrics without its per-image/per-unit lists (small enough for auto.json)."""
  if not test:
    return {}
  return {k: v for k, v in test.items() if not isinstance(v, list)}


def auto_tune(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Deepens fine-tuning from fc8 while validation AUC improves; writes and returns auto.json.

  Runs at `config.data.fraction` and `config.seed` into the sweep layout of `workdir`, so runs
  a sweep already finished are reused (and the other way round).
  """
  from medft import validate  # here, so that `python -m medft.validate` runs it fresh
  validate.check_config(config, 'auto')  # every field in range before anything is touched
  sweep_dir = trainer.check_workdir_arg(workdir)
  dropped_checkpoints(config)
  units = units_of(config)
  tolerance = float(study_setting(config, 'auto', 'tolerance'))
  patience = max(1, int(study_setting(config, 'auto', 'patience')))
  _prepare_sweep_dir(sweep_dir)
  with sweep_lock(config, sweep_dir):
    return _auto_tune(config, sweep_dir, units, tolerance, patience)


def _auto_tune(config, sweep_dir: Path, units, tolerance: float, patience: int) -> dict:
  init = source_init(config, sweep_dir, needs_init=True)
  fraction, seed = float(config.data.fraction), int(config.seed)
  curve, best, best_results, bad, stopped = [], None, None, 0, ''
  for arm in reversed(units):
    run = Run(arm, fraction, seed)
    reused = (run.path(sweep_dir) / 'results.json').exists()
    results = _run_one(config, run, sweep_dir, init)
    if results is None:
      stopped = f'{arm} failed (non-finite loss); stopped there'
      break
    point = {'arm': arm, 'val_auc': results['val_auc'], 'test_auc': results['test_auc'],
             'steps': results['steps'], 'best_step': results['best_step'],
             'wall_s': _timing(run.path(sweep_dir)).get('wall_s'), 'reused': reused,
             'dir': str(run.path('.'))}
    curve.append(point)
    logging.info('auto: %s val_auc %.4f', arm, point['val_auc'])
    if best is None or point['val_auc'] > best['val_auc'] + tolerance:
      best, best_results, bad = point, results, 0
    else:
      bad += 1
      if bad >= patience:
        stopped = (f'{arm}: validation AUC {point["val_auc"]:.4f} is not above the best '
                   f'({best["arm"]}, {best["val_auc"]:.4f}) by more than {tolerance:g}'
                   + (f' for {patience} depths in a row' if patience > 1 else ''))
        break
  else:
    stopped = 'reached the deepest unit (every layer trained)'
  if best is None:
    raise NonFiniteError(f'auto: no depth finished (see the failed.json files under '
                         f'{sweep_dir}); fix the cause (e.g. lower optim.base_lr), delete them '
                         'and repeat the command.')
  results = best_results
  out = {
      'fraction': fraction, 'seed': seed, 'tolerance': tolerance, 'patience': patience,
      'restart_from_pretrained': True,
      'policy': 'each depth restarts from the pretrained weights with the full step budget; '
                'see medft/sweep.py for why',
      'init': init, 'curve': curve, 'chosen': best['arm'], 'chosen_val_auc': best['val_auc'],
      'chosen_dir': best['dir'], 'stopped': stopped,
      'test_auc': results['test_auc'], 'test': _summary(results.get('test')),
      'total_steps': int(sum(p['steps'] for p in curve)),
      'total_wall_s': float(sum(p['wall_s'] or 0.0 for p in curve)),
      'depths_visited': len(curve), 'depths_available': len(units),
  }
  files.write_json_atomic(sweep_dir / 'auto.json', out)
  logging.info('auto: chose %s (val_auc %.4f); %s', out['chosen'], out['chosen_val_auc'],
               stopped)
  if study_setting(config, 'sweep', 'report'):
    from medft import report
    report.build_report(sweep_dir, correction=study_setting(config, 'report', 'correction'))
  return out
