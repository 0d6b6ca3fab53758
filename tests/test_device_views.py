"""Views cut on the device give the host path's patches (to float tolerance) and its metrics."""

import numpy as np
import pytest

from configs import pe as pe_config
from configs import polyp as polyp_config
from medft.data import synthetic
from medft.tasks import device_views, get_task


def _polyp_task(views_on='device', **overrides):
  """Polyp frames of three sizes (stack padding, per-frame limits), real dog+grid candidates,
  all 8 orientations, 3 scales and shifts; boxes reach past the frame edges."""
  rng = np.random.default_rng(0)
  def examples(n, k0):
    out = []
    for i in range(n):
      h, w = [(72, 96), (96, 80), (64, 64)][i % 3]
      image, mask = synthetic.polyp_example(rng, h, w, 1)
      out.append({'image': image, 'mask': mask, 'boxes': np.zeros((0, 4), np.float32),
                  'id': f'f{k0 + i}', 'unit': f'seq{(k0 + i) // 2}'})
    return out
  cfg = polyp_config.get_config('synthetic').task
  cfg.update(dict(patch_size=24, orientations=8, shift_steps=(-1, 0, 1), val_max_patches=60,
                  train_on_boxes=True, views_on=views_on))
  cfg.update(overrides)
  splits = {'train': examples(6, 0), 'validation': examples(3, 10), 'test': examples(6, 20)}
  return get_task('polyp', splits, cfg, seed=1)


def _pe_task(views_on='device'):
  rng = np.random.default_rng(3)
  def examples(n, k0):
    out = []
    for i in range(n):
      volume, labels = synthetic.pe_example(rng, (40, 72, 72))
      out.append({'volume': volume, 'labels': labels, 'id': f'v{k0 + i}', 'unit': f'p{k0 + i}',
                  'spacing': np.array([2.0, 0.7, 0.8], np.float32)})  # anisotropic
    return out
  cfg = pe_config.get_config('synthetic').task
  cfg.update(dict(patch_size=16, widths_mm=(10.0, 15.0), rotations=3, val_max_patches=40,
                  views_on=views_on))
  splits = {'train': examples(2, 0), 'validation': examples(1, 10), 'test': examples(2, 20)}
  return get_task('pe', splits, cfg, seed=2)


@pytest.fixture(scope='module')
def polyp_task():
  return _polyp_task()


@pytest.fixture(scope='module')
def pe_task():
  return _pe_task()


def _host_and_device(task, split):
  items = task.items[split]
  pool = task.pool(split)
  host = []
  for k, item in enumerate(items):
    for i in range(len(item.lesions)):
      host.append(task.candidate_patches(item, i))
  host = np.concatenate(host)
  device = device_views.cut(task.view_source(items),
                            task.all_view_descriptors(items, pool[:-1]), chunk=1024)
  return host, device


def _assert_close_levels(host, device):
  """At most one uint8 level apart, and that only where float32 and float64 round a value
  near a half level differently: a sample half-way between two pixels lands on x.5 exactly
  in float64 and a hair off it in float32 (0.1-0.3% of the values here)."""
  assert host.shape == device.shape and device.dtype == np.uint8
  diff = np.abs(host.astype(int) - device.astype(int))
  assert diff.max() <= 1, diff.max()
  assert (diff > 0).mean() < 1e-2, (diff > 0).mean()


def test_polyp_device_views_equal_host_views(polyp_task):
  host, device = _host_and_device(polyp_task, 'test')
  assert len(host) == polyp_task.eval_size('test') > 1000
  _assert_close_levels(host, device)
  # Candidates near the border exist, so the clamped (nearest-edge) reads are exercised.
  frames = polyp_task.items['test']
  near = [np.any((f.centres - 0.75 * f.sides[:, None] < 0) |
                 (f.centres + 0.75 * f.sides[:, None] > np.array(f.image.shape[:2]) - 1))
          for f in frames]
  assert any(near)


def test_pe_device_views_equal_host_views(pe_task):
  host, device = _host_and_device(pe_task, 'test')
  assert len(host) == pe_task.eval_size('test') > 100
  _assert_close_levels(host, device)


def test_validation_patches_on_device_equal_host_ones(polyp_task, pe_task):
  for task, make in ((polyp_task, _polyp_task), (pe_task, _pe_task)):
    device, labels, units = task.eval_patches('validation')
    host, host_labels, host_units = make('host').eval_patches('validation')
    np.testing.assert_array_equal(labels, host_labels)
    np.testing.assert_array_equal(units, host_units)
    _assert_close_levels(host, device)


def test_device_scores_equal_host_scores_and_metrics(polyp_task):
  """A deterministic stand-in network (a fixed function of the patch) scores both paths."""
  def predict(patches):
    x = np.asarray(patches, np.float64)
    red = x[..., 0].mean(axis=(1, 2)) - x[..., 1:].mean(axis=(1, 2, 3))
    p = 1 / (1 + np.exp(-red / 20))
    return np.stack([1 - p, p], axis=1)

  def predict_views(source, desc):
    return predict(device_views.cut(source, desc))

  host = polyp_task.evaluate(predict, 'test', n_boot=20)
  device = polyp_task.evaluate(predict, 'test', n_boot=20, predict_views=predict_views)
  assert abs(host['auc'] - device['auc']) < 1e-3
  for a, b in zip(host['per_unit'], device['per_unit']):
    np.testing.assert_allclose(a['scores'], b['scores'], atol=1e-3)
    assert a['lesion_ids'] == b['lesion_ids']


def test_sample_linear_is_scipy_map_coordinates_nearest():
  from scipy import ndimage
  rng = np.random.default_rng(4)
  image = rng.integers(0, 256, (7, 5)).astype(np.float32)
  coords = rng.uniform(-3, 9, (2, 50)).astype(np.float32)
  want = ndimage.map_coordinates(image, coords.astype(np.float64), order=1, mode='nearest')
  stack = np.zeros((2, 9, 9), np.float32)
  stack[1, :7, :5] = image
  got = device_views.sample_linear(stack, np.array([[9, 9], [7, 5]], np.int32),
                                   np.array([1]), (coords[0][None], coords[1][None]))
  np.testing.assert_allclose(np.asarray(got)[0], want, atol=1e-4)


def _tiny_polyp_config(tmp_path, views_on):
  c = polyp_config.get_config('synthetic,depth=scratch,steps=20,batch=8')
  c.model.width, c.input_size, c.model.init_scheme = 0.125, 67, 'he'
  c.task.update(dict(patch_size=24, scales=(1.0, 1.5), shift_steps=(0,), orientations=2,
                     views_on=views_on))
  c.train.update(dict(eval_every=20, checkpoint_every=1000, workers=1))
  c.data.data_dir = str(tmp_path / 'data')
  return c


def test_a_run_on_device_views_scores_as_the_host_path_would(tmp_path):
  """A run with views cut on the device (training, validation and test: the trainer's
  `make_view_predict` path); its best checkpoint then scored with host-cut views."""
  import medft
  from medft import data, loop, parallel, trainer
  c = _tiny_polyp_config(tmp_path, 'device')
  result = medft.train(c, tmp_path / 'run')
  model, units = trainer.build_model(c)
  like, meta = trainer.initial_params(c, model, units)
  best = loop.Checkpoints(tmp_path / 'run').restore_best(like)
  ds = data.load(c.data)
  c.task.views_on = 'host'
  task = get_task(ds.app, ds.splits, c.task, c.seed)
  p_predict, params = trainer.make_predict(model, meta), parallel.replicate(best)
  host = task.evaluate(lambda x: parallel.predict_in_batches(p_predict, params, x, 32), 'test',
                       n_boot=20)
  device = result['test']
  assert device['num_candidates'] == host['num_candidates'] > 100
  assert abs(device['auc'] - host['auc']) < 2e-3
  for a, b in zip(device['per_unit'], host['per_unit']):
    np.testing.assert_allclose(a['scores'], b['scores'], atol=2e-3)
  assert result['test_auc'] > 0.6  # it learned: training cut its patches on the device too


MULTI_DEVICE = r'''
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
import jax
import test_device_views as t
assert jax.device_count() == int(sys.argv[3])
np.save(sys.argv[2] + f'/views{sys.argv[3]}.npy', t._view_probs(sys.argv[2])[0])
'''


def _view_probs(tmp):
  """Test-view probabilities of an untrained tiny network through `make_view_predict`."""
  from pathlib import Path

  from medft import parallel, trainer
  task = _polyp_task(orientations=2, shift_steps=(0,))  # 6 views: a network pass is costly
  c = _tiny_polyp_config(Path(tmp), 'device')
  c.model.dropout = 0.0  # dropout masks are drawn per device: not comparable across counts
  model, units = trainer.build_model(c)
  params, meta = trainer.initial_params(c, model, units)
  items, pool = task.items['test'], task.pool('test')
  desc = task.all_view_descriptors(items, pool[:-1])
  predict_views = trainer.make_view_predict(model, meta, parallel.replicate(params), 64)
  probs = predict_views(task.view_source(items), desc)
  # Three train steps with the patches cut in the step (the trainer's wiring, by hand).
  from medft import tuning
  tx = tuning.make_optimizer(params, units, 'scratch', c.optim, 100)
  source = task.train_views_on_device()
  step, _ = trainer.make_steps(model, tx, meta, views=source.static)
  state = parallel.replicate(trainer.TrainState.create(params, tx))
  placed = parallel.replicate((source.stack, source.limits))
  for k in range(3):
    batch = parallel.to_devices(parallel.shard(task.train_batch(k, 8)))
    state, _ = step(state, batch, __import__('jax').random.key(0), *placed)
  trained = np.concatenate([np.ravel(x) for x in
                            __import__('jax').tree.leaves(parallel.unreplicate(state.params))])
  return np.concatenate([probs.ravel(), trained]), (model, meta, params, task, desc, len(probs))


def test_view_predict_and_train_step_on_two_devices_equal_one_device(tmp_path):
  import os
  import subprocess
  import sys
  from pathlib import Path

  from medft import parallel, trainer
  tests = Path(__file__).resolve().parent
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             PYTHONPATH=f'{tests.parent}{os.pathsep}{tests}')
  out = subprocess.run([sys.executable, '-c', MULTI_DEVICE, str(tests.parent), str(tmp_path), '2'],
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  two = np.load(tmp_path / 'views2.npy')
  one, (model, meta, params, task, desc, n) = _view_probs(tmp_path)
  # Test probabilities, then the parameters after three steps that cut their own patches.
  np.testing.assert_allclose(two, one, atol=1e-5)  # per-device batch 32 vs 64
  one = one[:2 * n].reshape(n, 2)
  # Against the network on the same patches cut by `device_views.cut` (a separate compiled
  # cut: XLA may round a sample at a half level the other way, so to patch tolerance).
  patches = device_views.cut(task.view_source(task.items['test']), desc)
  plain = parallel.predict_in_batches(trainer.make_predict(model, meta),
                                      parallel.replicate(params), patches, 64)
  assert np.abs(one - plain).max() < 5e-3 and np.abs(one - plain).mean() < 1e-4


def test_training_batches_as_descriptors_cut_to_the_host_batches():
  for make in (_polyp_task, _pe_task):
    task, host = make(), make('host')
    assert host.train_views_on_device() is None
    source = task.train_views_on_device()
    for step in (0, 7):
      a, b = task.train_batch(step, 16), host.train_batch(step, 16)
      assert set(a) == {'views', 'label'} and set(b) == {'image', 'label'}
      np.testing.assert_array_equal(a['label'], b['label'])
      _assert_close_levels(b['image'], device_views.cut(source, a['views']))
      part = task.train_batch(step, 16, slice(4, 8))  # a host's slice of the same batch
      np.testing.assert_array_equal(part['views']['item'], a['views']['item'][4:8])


def test_an_unfinished_run_of_an_older_medft_resumes_with_host_views(tmp_path):
  """config.json without task.views_on (a run started before it existed) is the same run:
  it resumes with views cut on the host, as it trained, instead of being refused."""
  import json

  import medft
  c = _tiny_polyp_config(tmp_path, 'host')
  c.train.steps = 4
  medft.train(c, tmp_path / 'run')
  config_file = tmp_path / 'run' / 'config.json'
  held = json.loads(config_file.read_text())
  del held['task']['views_on']
  config_file.write_text(json.dumps(held))
  (tmp_path / 'run' / 'results.json').unlink()  # unfinished: its last checkpoint remains
  resumed = _tiny_polyp_config(tmp_path, 'device')
  resumed.train.steps = 4
  result = medft.train(resumed, tmp_path / 'run')
  assert result['steps'] == 4
  assert json.loads(config_file.read_text())['task']['views_on'] == 'host'
  resumed.train.steps = 5  # another config is still refused
  with pytest.raises(ValueError, match=r'differs in: train.steps\)'):
    medft.train(resumed, tmp_path / 'run')
