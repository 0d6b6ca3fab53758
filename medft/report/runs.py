"""Which runs a sweep folder holds: finished, unfinished, failed or planned but missing.

A folder is reported only if medft wrote it: it holds DIR/sweep.json (the plan) or run
folders DIR/<arm>/<fraction>/<seed>/ with medft's config.json/results.json. A sweep of several
sources (`sweep.sources`, `medft.sources`) also has DIR/<source>/<arm>/<fraction>/<seed>/
(a top folder holding arm folders rather than fraction folders): its runs are named
`<source>:<arm>`. A sweep.json or
results.json of the wrong shape is an InputFileError naming the file, and a results.json
must hold the keys of its application's schema (`medft.apps`), so the report never guesses.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from medft import apps, sources
from medft.errors import InputFileError

PLOTS = 'plots'
SKIPPED = (PLOTS, 'source_model')
RUN_FILES = ('config.json', 'results.json', 'failed.json')


@dataclasses.dataclass
class RunRecord:
  arm: str
  fraction: float
  seed: int
  dir: Path
  status: str                       # finished | unfinished | failed | missing
  results: dict | None = None
  timing: dict | None = None
  note: str = ''
  source: str = ''                  # the `sweep.sources` name ('' = the sweep's one source)

  @property
  def depth_arm(self) -> str:
    """The arm without its source (`fc7` of `imagenet:fc7`)."""
    return sources.split(self.arm)[1]


def read_json(path: Path) -> Any:
  """The parsed file, or None when it is absent; a file that is not JSON is an InputFileError."""
  try:
    text = path.read_text()
  except FileNotFoundError:
    return None
  except OSError as e:
    raise InputFileError(f'{path}: cannot be read ({e}).') from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise InputFileError(f'{path}: not valid JSON ({e}); medft writes it atomically, so it '
                         'was changed or written by something else. Delete the file or the '
                         'run folder to have the run redone.') from None


def _number(name: str, kind: type) -> Any:
  try:
    return kind(name)
  except ValueError:
    return None


def read_plan(sweep_dir: Path) -> dict | None:
  """DIR/sweep.json checked for the shape medft.sweep writes (None when there is none)."""
  path = sweep_dir / 'sweep.json'
  plan = read_json(path)
  if plan is None:
    return None
  runs = plan.get('runs') if isinstance(plan, dict) else None
  ok = isinstance(runs, list) and all(
      isinstance(r, dict) and isinstance(r.get('arm'), str) and isinstance(r.get('dir'), str)
      and isinstance(r.get('source', ''), str)
      and _number(str(r.get('fraction')), float) is not None
      and _number(str(r.get('seed')), int) is not None for r in runs)
  if not ok:
    raise InputFileError(f'{path}: not a medft sweep plan (expected {{"runs": [{{"arm", '
                         '"fraction", "seed", "dir"}, ...]}}); it was not written by medft.'
                         'sweep. Move it away or use another --workdir.')
  return plan


def check_results(path: Path, results: Any) -> dict:
  """A results.json checked against RESULTS_KEYS and its application's schema."""
  if not isinstance(results, dict):
    raise InputFileError(f'{path}: expected a JSON object as medft.train writes, got '
                         f'{type(results).__name__}.')
  missing = [k for k in apps.RESULTS_KEYS if k not in results]
  if missing:
    hint = (' It predates results.json recording `app`: delete it to have the run redone.'
            if missing == ['app'] else '')
    raise InputFileError(f'{path}: missing key(s) {", ".join(missing)}.{hint}')
  try:
    spec = apps.get(results['app'])
  except ValueError as e:
    raise InputFileError(f'{path}: key app: {e}') from None
  if results['test'] is not None:
    missing = apps.missing_keys(spec, results['test'])
    if missing:
      raise InputFileError(f'{path}: the {spec.name} results schema (medft/apps/{spec.name}.py) '
                           f'needs {", ".join(missing[:6])}; this file lacks them.')
  return results


def _subdirs(folder: Path) -> list[Path]:
  return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))


def _arm_runs(arm_dir: Path, source: str, found: dict) -> None:
  """The run folders DIR/[<source>/]<arm>/<fraction>/<seed>/ of one arm folder."""
  for fraction_dir in _subdirs(arm_dir):
    fraction = _number(fraction_dir.name, float)
    if fraction is None:
      continue
    for seed_dir in _subdirs(fraction_dir):
      seed = _number(seed_dir.name, int)
      if seed is None or not any((seed_dir / f).exists() for f in RUN_FILES):
        continue
      arm = sources.qualified(source, arm_dir.name)
      found[(arm, fraction, seed)] = _record(arm, fraction, seed, seed_dir, source)


def discover(sweep_dir: Path, plan: dict | None) -> list[RunRecord]:
  """Every run folder found under DIR plus every planned run of DIR/sweep.json."""
  found: dict[tuple, RunRecord] = {}
  for top in _subdirs(sweep_dir):
    if top.name in SKIPPED:
      continue
    children = _subdirs(top)
    if any(_number(p.name, float) is not None for p in children):
      _arm_runs(top, '', found)  # DIR/<arm>/<fraction>/<seed>
    else:  # DIR/<source>/<arm>/<fraction>/<seed> (several sources), or nothing of ours
      for arm_dir in children:
        _arm_runs(arm_dir, top.name, found)
  for run in (plan or {}).get('runs', []):
    source = run.get('source') or ''
    key = (sources.qualified(source, run['arm']), float(run['fraction']), int(run['seed']))
    if key not in found:
      found[key] = RunRecord(*key, dir=sweep_dir / run['dir'], status='missing',
                             note='never started', source=source)
  return list(found.values())


def _record(arm: str, fraction: float, seed: int, path: Path, source: str = '') -> RunRecord:
  results = read_json(path / 'results.json')
  if results is not None:
    timing = read_json(path / 'timing.json')
    return RunRecord(arm, fraction, seed, path, 'finished',
                     check_results(path / 'results.json', results),
                     timing if isinstance(timing, dict) else {}, source=source)
  failed = read_json(path / 'failed.json')
  if isinstance(failed, dict):
    return RunRecord(arm, fraction, seed, path, 'failed', note=str(failed.get('error', ''))[:200],
                     source=source)
  rows = metrics_rows(path)
  step = rows[-1].get('step', 0) if rows else 0
  return RunRecord(arm, fraction, seed, path, 'unfinished',
                   note=f'started, no results.json (last logged step {step})', source=source)


def metrics_rows(path: Path) -> list[dict]:
  """The rows of a run's metrics.jsonl (a torn last line, from a killed run, is skipped)."""
  try:
    lines = (path / 'metrics.jsonl').read_text().splitlines()
  except OSError:
    return []
  rows = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict):
      rows.append(row)
  return rows
