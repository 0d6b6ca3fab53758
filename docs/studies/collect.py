"""Copies a finished study's report into docs/studies/<name>/ for committing.

  python docs/studies/collect.py SWEEP_DIR docs/studies/NAME

Writes report.md/json/csv, the plots, and runs.tar.xz: sweep.json and, per run folder, the
files the report is built from (results.json or failed.json, config.json, timing.json,
metrics.jsonl) — no checkpoints and no weights. tests/test_study_kvasir.py rebuilds the
report's tables from runs.tar.xz.
"""

import shutil
import sys
import tarfile
from pathlib import Path

RUN_FILES = ('results.json', 'failed.json', 'config.json', 'timing.json', 'metrics.jsonl')
REPORT_FILES = ('report.md', 'report.json', 'report.csv')


def collect(sweep: Path, out: Path) -> None:
  out.mkdir(parents=True, exist_ok=True)
  for name in REPORT_FILES:
    shutil.copy2(sweep / name, out / name)
  if (sweep / 'plots').is_dir():
    shutil.copytree(sweep / 'plots', out / 'plots', dirs_exist_ok=True)
  with tarfile.open(out / 'runs.tar.xz', 'w:xz') as tar:
    tar.add(sweep / 'sweep.json', arcname='sweep.json')
    for run in sorted(p.parent for p in sweep.glob('*/*/*/config.json')):
      for name in RUN_FILES:  # unfinished and failed runs too: the report lists them
        path = run / name
        if path.is_file():
          tar.add(path, arcname=str(path.relative_to(sweep)))


if __name__ == '__main__':
  collect(Path(sys.argv[1]), Path(sys.argv[2]))
