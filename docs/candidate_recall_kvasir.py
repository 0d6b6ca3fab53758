"""Candidate recall vs candidates per frame of the polyp generators on the real Kvasir-SEG copy.

Reads the 998-frame Kvasir-SEG copy in ../shared (the repository's sibling folder
`shared/data/kvasir-seg-256`, or --kvasir PATH); without it, it says so and exits with status 2
(nothing is measured). The frames are prepared through medft's own Kvasir-SEG builder into a
temporary folder and split as a study splits them (`medft/configs/polyp.py`: `data.split_seed`,
`data.val_share`, `data.test_share`; a Kvasir frame is its own unit). Every setting below is
measured on the held-out test frames with `medft.tasks.polyp.candidate_recall`, the task's own
candidate and hit path (a candidate hits the mask component under its centre); the recall's 95%
interval is a percentile bootstrap over frames. `--split tuning` measures on the train and
validation frames instead (where the default was chosen).

  python docs/candidate_recall_kvasir.py                  # markdown table on stdout
  python docs/candidate_recall_kvasir.py --split tuning   # the same on train + validation

Its output, and what it means, is in docs/candidate_recall_kvasir.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medft import data, metrics  # noqa: E402
from medft.configs import polyp as polyp_config  # noqa: E402
from medft.tasks import polyp  # noqa: E402

KVASIR = ROOT.parent / 'shared' / 'data' / 'kvasir-seg-256'
OLD_DEFAULT = {'generator': 'dog', 'max_candidates': 30, 'min_brightness': 0.0}


def _union(dog: int, fracs: tuple[float, ...], **kw) -> dict:
  return {'generator': 'dog+grid', 'max_candidates': dog, 'grid_box_fracs': fracs,
          'min_brightness': 0.1, 'dedup_frac': 0.25, **kw}


# (label, task overrides of medft/configs/polyp.py). The first is the default before issue 13; the
# row equal to medft/configs/polyp.py's task config is marked [default].
SETTINGS = [
    ('before: dog, 30 maxima', OLD_DEFAULT),
    ('dog, 50 maxima, min_distance 0.02', {**OLD_DEFAULT, 'max_candidates': 50,
                                           'min_distance': 0.02}),
    ('dog, 50 maxima, 2 more scales (0.14, 0.2)',
     {**OLD_DEFAULT, 'max_candidates': 50,
      'blob_sigmas': (0.02, 0.035, 0.05, 0.07, 0.1, 0.14, 0.2)}),
    ('grid 0.3125 alone', {'generator': 'grid', 'grid_box_fracs': (0.3125,)}),
    ('grid 0.25 alone', {'generator': 'grid', 'grid_box_fracs': (0.25,)}),
    ('dog 10 + grid 0.3125', _union(10, (0.3125,))),
    ('dog 15 + grid 0.3125', _union(15, (0.3125,))),
    ('dog 20 + grid 0.3125', _union(20, (0.3125,))),
    ('dog 15 + grid 0.35', _union(15, (0.35,))),
    ('dog 15 + grid 0.3125, no de-duplication', _union(15, (0.3125,), dedup_frac=0.0)),
    ('dog 15 + grid 0.3125, dark centres kept', _union(15, (0.3125,), min_brightness=0.0)),
    ('dog 15 + grid (0.3125, 0.5)', _union(15, (0.3125, 0.5))),
    ('dog 30 + grid 0.25', _union(30, (0.25,))),
]


def _recall(frames) -> float:
  lesions = sum(u['lesions'] for u in frames)
  if not lesions:
    raise ValueError('no lesion in this resample')
  return sum(u['lesions_hit'] for u in frames) / lesions


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--kvasir', type=Path, default=KVASIR, help='Kvasir-SEG folder')
  parser.add_argument('--split', choices=('test', 'tuning'), default='test')
  parser.add_argument('--test-share', type=float, default=None,
                      help="override medft/configs/polyp.py's data.test_share")
  parser.add_argument('--n-boot', type=int, default=1000)
  args = parser.parse_args(argv)
  if not (args.kvasir / 'images').is_dir() or not (args.kvasir / 'masks').is_dir():
    print(f'candidate_recall_kvasir: the real Kvasir-SEG copy is not at {args.kvasir} (../shared '
          'is absent or incomplete: it needs images/ and masks/); nothing measured.',
          file=sys.stderr)
    return 2
  c = polyp_config.get_config()
  c.data.manual_dir = str(args.kvasir)
  if args.test_share is not None:
    c.data.test_share = args.test_share
  with tempfile.TemporaryDirectory(prefix='candidate-recall-') as tmp:
    c.data.data_dir = tmp
    with contextlib.redirect_stdout(sys.stderr):  # TFDS's preparation messages
      ds = data.load(c.data)
    names = ('test',) if args.split == 'test' else ('train', 'validation')
    examples = [ex for name in names for ex in ds.splits[name]]
  d = c.data
  lines = [
      f'Kvasir-SEG ({args.kvasir.name}), {args.split} frames: {len(examples)} of '
      f'{sum(len(s) for s in ds.splits.values())} (split_seed={d.split_seed}, '
      f'test_share={d.test_share}, val_share={d.val_share}; a frame is its own unit).',
      '',
      '| setting | recall | 95% CI (frames) | hit / lesions | candidates/frame | max/frame '
      '| ms/frame |',
      '|---|---|---|---|---|---|---|',
  ]
  default = polyp_config.get_config().task
  for label, overrides in SETTINGS:
    cfg = polyp_config.get_config().task
    cfg.update(overrides)
    if cfg.to_dict() == default.to_dict():
      label += ' [default]'
    r = polyp.candidate_recall(examples, cfg)
    ci = metrics.bootstrap_ci(_recall, r['per_unit'], n_boot=args.n_boot, seed=0)
    lines.append(f'| {label} | {r["recall"]:.3f} | {ci["low"]:.3f}-{ci["high"]:.3f} | '
                 f'{r["lesions_hit"]} / {r["lesions"]} | {r["candidates_per_frame"]:.1f} | '
                 f'{r["max_candidates_per_frame"]} | {r["ms_per_frame"]:.0f} |')
    print(lines[-1], file=sys.stderr, flush=True)
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  sys.exit(main())
