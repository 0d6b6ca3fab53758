"""Frames task: random crops, deterministic batches, crop averaging, ROC evaluation."""

import json

import numpy as np
import pytest

from configs import frames as frames_config
from medft.tasks import get_task

CROP = 16


def _examples(n, seed):
  """Informative frames (label 1) are textured and bright, the others dark and flat."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    label = i % 2
    h, w = 40 + 4 * (i % 3), 48
    base = 160 if label else 60
    image = base + rng.normal(0, 30 if label else 3, (h, w, 3))
    out.append({'image': np.clip(image, 0, 255).astype(np.uint8), 'label': label,
                'id': f'f{i}', 'unit': f'vid{i // 4}'})
  return out


def _task(**overrides):
  cfg = frames_config.get_config('synthetic').task
  cfg.update(dict(crop_size=CROP, test_crops=12, val_crops_per_frame=3))
  cfg.update(overrides)
  splits = {'train': _examples(8, 0), 'validation': _examples(4, 1), 'test': _examples(16, 2)}
  return get_task('frames', splits, cfg, seed=2)


def _is_crop_of(patch, image):
  windows = np.lib.stride_tricks.sliding_window_view(image, patch.shape)
  return bool((windows == patch).all(axis=(-3, -2, -1)).any())


def test_train_batch_is_deterministic_and_host_slices_partition_it():
  task = _task()
  a, b = task.train_batch(11, 10), task.train_batch(11, 10)
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])
  assert a['image'].shape == (10, CROP, CROP, 3) and a['image'].dtype == np.uint8
  assert a['label'].dtype == np.int32
  assert not np.array_equal(task.train_batch(12, 10)['image'], a['image'])
  parts = [task.train_batch(11, 10, slice(0, 3)), task.train_batch(11, 10, slice(3, 10))]
  for key in ('image', 'label'):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), a[key])
  # Every patch is a crop of a training frame of its label.
  frames = task.frames['train']
  for patch, label in zip(a['image'], a['label']):
    assert any(_is_crop_of(patch, f.image) for f in frames if f.label == label)
  assert task.epoch_examples == 8 * 200


def test_crops_cover_the_frame():
  task = _task()
  corners = np.concatenate([task.test_corners('test', 0, 200), task.test_corners('test', 0, 200)])
  h, w = task.frames['test'][0].image.shape[:2]
  assert corners[:, 0].max() == h - CROP and corners[:, 1].max() == w - CROP
  assert corners.min() == 0
  np.testing.assert_array_equal(task.test_corners('test', 3, 5), task.test_corners('test', 3, 5))


def test_eval_patches_fixed_with_unit_index():
  task = _task()
  patches, labels, units = task.eval_patches('validation')
  assert patches.shape == (12, CROP, CROP, 3) and labels.tolist() == [0] * 3 + [1] * 3 + [0] * 3 + \
      [1] * 3
  assert units.tolist() == [0] * 12 and task.eval_patches('validation')[0] is patches


def _brightness(x):
  p = x.astype(np.float64).mean(axis=(1, 2, 3)) / 255
  return np.stack([1 - p, p], axis=1)


def test_perfect_and_random_predictors():
  task = _task()
  result = task.evaluate(_brightness, 'test', n_boot=100)
  assert result['auc'] == 1.0
  for rate in ('0.1', '0.15', '0.2'):
    assert result['sensitivity_at_fpr'][rate]['value'] == 1.0
  assert result['num_frames'] == 16 and result['num_units'] == 4
  json.dumps(result)
  rng = np.random.default_rng(0)
  noise = task.evaluate(lambda x: (lambda p: np.stack([1 - p, p], 1))(rng.random(len(x))),
                        'test', n_boot=100)
  assert 0.15 < noise['auc'] < 0.85
  ci = noise['auc_ci95']
  assert ci['low'] <= ci['value'] <= ci['high'] and ci['high'] - ci['low'] > 0.05


def test_frame_score_is_the_mean_over_its_crops():
  task = _task()
  result = task.evaluate(_brightness, 'test', n_boot=10)
  expected = []
  for k, f in enumerate(task.frames['test']):
    crops = [f.image[y:y + CROP, x:x + CROP] for y, x in task.test_corners('test', k, 12)]
    expected.append(np.mean([_brightness(c[None])[0, 1] for c in crops]))
  got = np.concatenate([u['scores'] for u in result['per_unit']])
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_bad_frames_are_reported():
  with pytest.raises(ValueError, match='crop_size'):
    _task(crop_size=41)
  bad = _examples(2, 0)
  bad[0]['label'] = 3
  cfg = frames_config.get_config('synthetic').task
  cfg.crop_size = CROP
  with pytest.raises(ValueError, match='not 0 or 1'):
    get_task('frames', {'train': bad}, cfg, seed=0)


def test_fixed_pool_trains_on_one_set_of_crops_and_stays_deterministic():
  task = _task(crops_per_frame=2, fixed_pool=True)  # 8 frames x 2 = 16 crops in the pool
  seen = {b.tobytes() for s in range(40) for b in task.train_batch(s, 8)['image']}
  assert len(seen) <= task.epoch_examples == 16
  again = _task(crops_per_frame=2, fixed_pool=True).train_batch(3, 8)
  np.testing.assert_array_equal(again['image'], task.train_batch(3, 8)['image'])
  fresh = _task(crops_per_frame=2)
  assert len({b.tobytes() for s in range(40) for b in fresh.train_batch(s, 8)['image']}) > 16


def test_eval_size_is_what_the_test_evaluation_predicts():
  task = _task()
  seen = []
  task.evaluate(lambda p: seen.append(len(p)) or _brightness(p), 'test', n_boot=5)
  assert task.eval_size('test') == sum(seen) > 0
