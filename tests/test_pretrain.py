"""Source models: pretext crops are labelled consistently; a folder-trained model is a valid
converted-weights artifact that fine-tuning can load, and is reused rather than retrained."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny
from flax import traverse_util
from PIL import Image

from configs import imagenet_pretrain
from medft import pretrain
from medft.weights import store


def test_pretext_batches_are_deterministic_and_labelled():
  source = pretrain.PretextSource(size=32, seed=3, names=('astronaut', 'camera', 'coffee',
                                                          'rocket'))
  a, b = source.train_batch(5, 8), source.train_batch(5, 8)
  assert a['image'].shape == (8, 32, 32, 3) and a['image'].dtype == np.uint8
  np.testing.assert_array_equal(a['image'], b['image'])
  assert source.num_classes == 16 and set(a['label']) <= set(range(16))
  assert not np.array_equal(a['image'], source.train_batch(6, 8)['image'])


def test_folder_source_pretrains_a_loadable_artifact(tmp_path):
  rng = np.random.default_rng(0)
  for k, name in enumerate(('n01', 'n02')):
    (tmp_path / 'in' / 'train' / name).mkdir(parents=True)
    for i in range(3):
      pixels = rng.integers(0, 80, (50, 60, 3)) + 120 * k
      Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / 'in' / 'train' / name / f'{i}.png')
  c = imagenet_pretrain.get_config('source=folder,steps=2,batch=4,input_size=67')
  c.model.width, c.model.init_scheme = 0.125, 'he'
  c.pretrain.manual_dir = str(tmp_path / 'in')
  c.pretrain.update(eval_examples=8, log_every=1, eval_every=2, workers=1)
  out = pretrain.pretrain(c, tmp_path / 'w')
  params, meta = store.load_artifact(out)
  assert (meta.source_format, meta.num_source_classes, tuple(meta.input_size)) == (
      'medft-folder', 2, (67, 67))
  assert params['fc8']['kernel'].shape[-1] == 2
  record = json.loads((tmp_path / 'w' / 'pretrain.json').read_text())
  assert record['steps'] == 2 and 0 <= record['held_out_accuracy'] <= 1
  mtime = (out / 'meta.json').stat().st_mtime_ns
  assert pretrain.pretrain(c, tmp_path / 'w') == out  # cached, not retrained
  assert (out / 'meta.json').stat().st_mtime_ns == mtime
  # A source model of an older medft (its record lacks fields added since) is reused too.
  del record['settings']['model']['bn_mode'], record['settings']['model']['keep_head']
  (tmp_path / 'w' / 'pretrain.json').write_text(json.dumps(record))
  assert pretrain.pretrain(c, tmp_path / 'w') == out
  assert (out / 'meta.json').stat().st_mtime_ns == mtime
  c.model.bn_mode = 'frozen'  # but not when a field added since is set otherwise
  with pytest.raises(ValueError, match='other settings'):
    pretrain.pretrain(c, tmp_path / 'w')
  c.model.bn_mode = 'train'
  c.pretrain.base_lr = 0.5
  with pytest.raises(ValueError, match='other settings'):
    pretrain.pretrain(c, tmp_path / 'w')


def test_missing_sources_say_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match='train/<wnid>'):
    pretrain.FolderSource(tmp_path, 32, 0)
  c = imagenet_pretrain.get_config('source=nope')
  with pytest.raises(ValueError, match='pretext, folder or imagenet2012'):
    pretrain.make_source(c)


def test_two_processes_pretrain_like_one_and_only_process_0_writes(tmp_path):
  """Each process feeds its half of the global batch; SIGTERM to one process stops both at
  the same step and the resumed run ends where one process's uninterrupted run does (float
  tolerance); metrics.jsonl, pretrain.json and the artifact are written by process 0 only."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['JAX_PLATFORMS'] = 'cpu'
  driver = Path(__file__).with_name('run_pretrain.py')
  procs = [subprocess.Popen([sys.executable, str(driver), str(tmp_path / 'two'), str(port),
                             str(i)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    one = pretrain.pretrain(tiny.pretext_config(), tmp_path / 'one')  # meanwhile, in-process
    outs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
  single, _ = store.load_artifact(one)
  double, _ = store.load_artifact(tmp_path / 'two' / 'weights')
  single, double = (traverse_util.flatten_dict(t, sep='/') for t in (single, double))
  assert single.keys() == double.keys()
  for k in single:
    np.testing.assert_allclose(double[k], single[k], rtol=2e-4, atol=2e-5, err_msg=k)
  writes = [json.loads((tmp_path / f'writes_{i}.json').read_text()) for i in range(2)]
  # Both stopped at the first log step after the signal (step 2), and resumed from there.
  for w in writes:
    assert len(w['preempted']) == 1 and 'checkpoint saved at step 2 ' in w['preempted'][0]
  # Each process cut its own half of every global batch of 8 (steps 0..3).
  for i, w in enumerate(writes):
    assert sorted(set(map(tuple, w['fed']))) == [(s, 4 * i, 4 * i + 4) for s in range(4)]
  rows = [json.loads(line) for line in (tmp_path / 'two' / 'metrics.jsonl').open()]
  assert [r['step'] for r in rows] == [2, 4]  # one row per log step, not one per process
  assert json.loads((tmp_path / 'two' / 'pretrain.json').read_text())['curve'] == rows
  assert writes[1]['written'] == [], writes[1]
  assert {Path(p).name for _, p in writes[0]['written']} >= {'metrics.jsonl', 'pretrain.json',
                                                            'weights'}
