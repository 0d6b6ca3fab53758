"""Test-time views predicted per frame (the old path) vs across frames in `task.eval_chunk`
calls (the new `CandidateTask.candidate_scores`), side by side on real Kvasir-SEG frames.

  python docs/eval_chunking_kvasir.py [FRAMES] [REPEATS]    # default 60 frames, 2 repeats

Uses the study config (configs/studies/kvasir_squeezenet.py: SqueezeNet v1.1 at 131x131,
ImageNet trunk from ../shared, 2 views per candidate) and its prepared data. Prints one JSON
line: patches/s of each path (interleaved repeats, best of each), their ratio, and the largest
difference between the two paths' scores.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.studies import kvasir_squeezenet  # noqa: E402
from medft import data, parallel, tasks, trainer  # noqa: E402
from medft.weights import convert  # noqa: E402

SHARED = ROOT.parent / 'shared'


def main(n_frames: int = 60, repeats: int = 2) -> None:
  tmp = Path(tempfile.mkdtemp(prefix='eval-chunking-'))
  init = convert.convert(SHARED / 'weights' / 'squeezenet_v1.1_imagenet_notop.h5', 'keras',
                         'squeezenet1_1', tmp / 'w',
                         input_size=(kvasir_squeezenet.INPUT_SIDE,) * 2)
  c = kvasir_squeezenet.get_config(f'init={init},depth=fire9')
  ds = data.load(c.data)
  test = [ds.splits['test'][i] for i in range(n_frames)]
  task = tasks.get_task(ds.app, {'train': ds.splits['train'], 'test': test}, c.task, c.seed)
  model, units = trainer.build_model(c)
  params, meta = trainer.initial_params(c, model, units)
  p_predict = trainer.make_predict(model, meta)
  rparams = parallel.replicate(params)
  batch = 4 * c.train.batch

  def predict(patches):
    return parallel.predict_in_batches(p_predict, rparams, patches, batch)

  frames = task.items['test']
  n_patches = sum(len(f.lesions) for f in frames) * len(task.views)
  predict(np.zeros((batch, c.task.patch_size, c.task.patch_size, 3), np.uint8))  # compile
  times = {'per_frame': [], 'across_frames': []}
  for _ in range(repeats):
    start = time.perf_counter()
    per_frame = [task.candidate_scores([f], predict)[0] for f in frames]
    times['per_frame'].append(time.perf_counter() - start)
    start = time.perf_counter()
    across = task.candidate_scores(frames, predict)
    times['across_frames'].append(time.perf_counter() - start)
  rate = {k: n_patches / min(v) for k, v in times.items()}
  print(json.dumps({
      'frames': len(frames), 'patches': n_patches, 'views': len(task.views), 'batch': batch,
      'patches_per_s': {k: round(v, 1) for k, v in rate.items()},
      'ratio': round(rate['across_frames'] / rate['per_frame'], 2),
      'max_abs_score_difference': float(max(np.abs(a - b).max() for a, b in
                                            zip(per_frame, across) if len(a)))}))


if __name__ == '__main__':
  main(*map(int, sys.argv[1:]))
