"""Test views cut on the host (scipy) vs on the device, on real Kvasir-SEG frames: the same
scores and metrics? and their rates, side by side (interleaved repeats, best of each).

  python docs/views_kvasir.py [FRAMES] [REPEATS] [VIEWS]   # default 299 frames, 1, study

The study config (configs/studies/kvasir_squeezenet.py: real ImageNet SqueezeNet v1.1 from
../shared at 131x131, fire9 arm, untrained head) on the first FRAMES of its test split, with
the study's 2 views per candidate (VIEWS=study) or the paper's 216 (VIEWS=paper: 3 scales x 9
shifts x 8 orientations). Prints one JSON line: patches, both rates, their ratio, the largest
score difference, both candidate AUCs and FROC sensitivities.
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


def main(n_frames: int = 299, repeats: int = 1, views: str = 'study') -> None:
  tmp = Path(tempfile.mkdtemp(prefix='views-kvasir-'))
  init = convert.convert(SHARED / 'weights' / 'squeezenet_v1.1_imagenet_notop.h5', 'keras',
                         'squeezenet1_1', tmp / 'w',
                         input_size=(kvasir_squeezenet.INPUT_SIDE,) * 2)
  c = kvasir_squeezenet.get_config(f'init={init},depth=fire9')
  if views == 'paper':
    c.task.update(dict(scales=(1.0, 1.2, 1.5), shift_steps=(-1, 0, 1), orientations=8))
  ds = data.load(c.data)
  test = [ds.splits['test'][i] for i in range(min(n_frames, len(ds.splits['test'])))]
  task = tasks.get_task(ds.app, {'train': ds.splits['train'], 'test': test}, c.task, c.seed)
  model, units = trainer.build_model(c)
  params, meta = trainer.initial_params(c, model, units)
  rparams = parallel.replicate(params)
  batch = 4 * c.train.batch
  p_predict = trainer.make_predict(model, meta)

  def predict(patches):
    return parallel.predict_in_batches(p_predict, rparams, patches, batch)
  predict_views = trainer.make_view_predict(model, meta, rparams, batch)
  n = task.eval_size('test')
  out, times = {}, {'host': [], 'device': []}
  for _ in range(repeats + 1):  # the first round compiles
    for name in times:
      start = time.perf_counter()
      out[name] = task.evaluate(predict, 'test', n_boot=200,
                                predict_views=predict_views if name == 'device' else None)
      times[name].append(time.perf_counter() - start)
  rate = {k: n / min(v[1:]) for k, v in times.items()}
  diff = max(np.abs(np.asarray(a['scores']) - np.asarray(b['scores'])).max()
             for a, b in zip(out['host']['per_unit'], out['device']['per_unit']) if a['scores'])
  print(json.dumps({
      'frames': len(test), 'views_setting': views, 'patches': n, 'views': len(task.views), 'batch': batch,
      'patches_per_s': {k: round(v, 1) for k, v in rate.items()},
      'device_vs_host': round(rate['device'] / rate['host'], 3),
      'max_abs_score_difference': float(diff),
      'auc': {k: v['auc'] for k, v in out.items()},
      'sensitivity_at_fp_per_frame': {k: {r: s['value'] for r, s in
                                          v['sensitivity_at_fp_per_frame'].items()}
                                      for k, v in out.items()}}))


if __name__ == '__main__':
  main(*[int(a) if a.isdigit() else a for a in sys.argv[1:]])
