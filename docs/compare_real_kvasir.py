"""Scratch vs fine-tuned ImageNet SqueezeNet v1.1 on the real Kvasir-SEG copy in ../shared.

Uses the config of tests/test_real_data.py; only depth, seed and steps change.

  python docs/compare_real_kvasir.py DEPTH SEED STEPS     # e.g. fire9 0 300; prints one JSON line
"""

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / 'tests')]

import test_real_data as t  # noqa: E402

import medft  # noqa: E402
from medft.weights import convert  # noqa: E402


def main(depth: str, seed: str, steps: str) -> None:
  tmp = Path(tempfile.mkdtemp(prefix='kvasir-compare-'))
  init = convert.convert(t.SQUEEZENET, 'keras', 'squeezenet1_1', tmp / 'w',
                         input_size=(t.INPUT_SIDE, t.INPUT_SIDE))
  c = t._config(init, tmp / 'data', int(seed))
  c.depth, c.train.steps = depth, int(steps)
  c.train.eval_every = max(150, int(steps) // 2)
  c.task.fp_rates = (0.001, 0.01, 0.1, 0.5, 1.0)  # reporting only; the paper's are the first two
  test = medft.train(c, tmp / 'run')['test']
  print(json.dumps({
      'depth': depth, 'seed': int(seed), 'steps': int(steps), 'test_auc': round(test['auc'], 3),
      'ci95': [round(test['auc_ci95'][k], 3) for k in ('low', 'high')],
      'sens_at_fp_per_frame': {k: round(v['value'], 3)
                               for k, v in test['sensitivity_at_fp_per_frame'].items()}}))


if __name__ == '__main__':
  main(*sys.argv[1:])
