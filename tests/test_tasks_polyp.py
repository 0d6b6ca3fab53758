"""Polyp task: candidates, labels, balanced deterministic batches, view averaging, FROC."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from configs import polyp as polyp_config
from medft.errors import ConfigError
from medft.tasks import augment, get_task, polyp

KVASIR = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data' / 'kvasir-seg-256'


def _frame(rng, polyps, shape=(72, 96)):
  """Textured pink background with red discs (the polyps) and their mask."""
  h, w = shape
  image = np.empty((h, w, 3))
  image[...] = [150, 110, 100]
  image += rng.normal(0, 6, (h, w, 3))
  mask = np.zeros(shape, np.uint8)
  yy, xx = np.mgrid[0:h, 0:w]
  for cy, cx, r in polyps:
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    image[disc] = [230, 70, 60]
    mask[disc] = 1
  return np.clip(image, 0, 255).astype(np.uint8), mask


@polyp.register_generator('test_red_discs')
def _red_discs(image, cfg):
  """A perfect generator on `_frame` images plus fixed corner negatives."""
  from scipy import ndimage
  red = (image[..., 0] > 200) & (image[..., 1] < 100)
  comps, n = ndimage.label(red)
  centres = np.asarray(ndimage.center_of_mass(red, comps, range(1, n + 1))).reshape(-1, 2)
  negatives = np.array([[10.0, 10.0], [10.0, 80.0], [60.0, 12.0], [62.0, 84.0], [36.0, 8.0]])
  centres = np.concatenate([centres, negatives])
  return centres, np.full(len(centres), 16.0)


def _examples(n=8, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    polyps = [(rng.uniform(25, 45), rng.uniform(30, 66), rng.uniform(6, 9))]
    if i % 3 == 2:
      polyps = []  # a frame without polyp
    image, mask = _frame(rng, polyps)
    out.append({'image': image, 'mask': mask, 'boxes': np.zeros((0, 4), np.float32),
                'id': f'f{i}', 'unit': f'seq{i // 2}'})
  return out


def _config(**overrides):
  cfg = polyp_config.get_config('synthetic').task
  cfg.update(dict(patch_size=16, generator='test_red_discs', orientations=2,
                  shift_steps=(0, 1), val_max_patches=50))
  cfg.update(overrides)
  return cfg


def _task(**overrides):
  splits = {'train': _examples(8, 0), 'validation': _examples(4, 1), 'test': _examples(8, 2)}
  return get_task('polyp', splits, _config(**overrides), seed=5)


def test_label_candidates_by_mask_component():
  mask = np.zeros((20, 30), np.uint8)
  mask[2:6, 3:8] = 1       # component 1 (raster order)
  mask[10:15, 20:28] = 1   # component 2
  centres = np.array([[4.0, 5.0], [12.2, 24.7], [8.0, 8.0], [5.4, 7.4], [5.6, 7.4], [0.0, 0.0]])
  lesions, n = polyp.label_candidates(mask, centres)
  assert n == 2
  # The pixel under the centre decides: (5.4, 7.4) -> (5, 7) is inside, (5.6, 7.4) -> (6, 7) not.
  np.testing.assert_array_equal(lesions, [1, 2, -1, 1, -1, -1])


def test_dog_generator_finds_a_red_blob_with_a_matching_box():
  rng = np.random.default_rng(1)
  image, mask = _frame(rng, [(40, 60, 12)], shape=(120, 160))
  centres, sides = polyp.dog_candidates(image, _config(generator='dog'))
  assert len(centres) <= _config().max_candidates
  lesions, _ = polyp.label_candidates(mask, centres)
  best = np.argmin(np.linalg.norm(centres - [40, 60], axis=1))
  assert np.linalg.norm(centres[best] - [40, 60]) < 3 and lesions[best] == 1
  assert 12 <= sides[best] <= 48  # about the disc's diameter (24 px)


def test_unknown_generator_is_named():
  with pytest.raises(ValueError, match='generator'):
    _task(generator='nope')
  with pytest.raises(ConfigError, match=r"task.generator='dog\+nope'.*'nope'.*dog\+grid"):
    _task(generator='dog+nope')


def _flat_dark_polyp(rng):
  """A 256 px frame: a large flat polyp a little darker than the wall, 20 highlights elsewhere."""
  h = w = 256
  yy, xx = np.mgrid[0:h, 0:w]
  image = np.empty((h, w, 3))
  image[...] = [170, 100, 90]
  mask = ((yy - 150) ** 2 + (xx - 110) ** 2 <= 60 ** 2).astype(np.uint8)
  image[mask > 0] = [150, 90, 82]
  for _ in range(20):
    while True:
      sy, sx = rng.uniform(8, h - 8, 2)
      if (sy - 150) ** 2 + (sx - 110) ** 2 > 75 ** 2:
        break
    image += 255 * np.exp(-((yy - sy) ** 2 + (xx - sx) ** 2) / (2 * 2.0 ** 2))[..., None]
  image += rng.normal(0, 2, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8), mask


def test_dog_plus_grid_covers_a_large_flat_polyp_that_dog_misses():
  image, mask = _flat_dark_polyp(np.random.default_rng(0))
  default = polyp_config.get_config().task
  assert default.generator == 'dog+grid'
  hits = {}
  for spec in ('dog', 'dog+grid'):
    frame = polyp.Frame.from_example({'image': image, 'mask': mask}, _config(generator=spec))
    hits[spec] = set(frame.lesions[frame.lesions >= 0].tolist())
    assert frame.num_lesions == 1 and len(frame.sides) <= 50
  # Every blob maximum lies on a highlight or outside the polyp; a grid centre lies inside it.
  assert hits == {'dog': set(), 'dog+grid': {1}}


@polyp.register_generator('test_fixed_a')
def _fixed_a(image, cfg):
  return np.array([[20.0, 20.0], [5.0, 5.0]]), np.array([10.0, 10.0])


@polyp.register_generator('test_fixed_b')
def _fixed_b(image, cfg):
  return np.array([[22.0, 20.0], [20.0, 27.0], [40.0, 40.0], [2.0, 60.0]]), np.full(4, 20.0)


def test_union_keeps_the_first_generator_and_drops_near_duplicates_and_dark_centres():
  image = np.full((64, 64, 3), 120, np.uint8)
  image[:10, :10] = 0      # a black corner: (5, 5) is dark, its 5x5 mean 0
  image[:3, 55:] = 0       # (2, 60): 3 of its 5 window rows black -> mean 0.19 > 0.1, kept
  cfg = _config(generator='test_fixed_a+test_fixed_b', dedup_frac=0.25, min_brightness=0.1)
  centres, sides = polyp.generate(image, cfg)
  # b's (22, 20) is 2 px from a's (20, 20) (< 0.25 x 20 = 5): dropped; (20, 27) is 7 px: kept.
  np.testing.assert_array_equal(centres, [[20, 20], [20, 27], [40, 40], [2, 60]])
  np.testing.assert_array_equal(sides, [10, 20, 20, 20])
  centres, _ = polyp.generate(image, _config(generator='test_fixed_a+test_fixed_b',
                                             dedup_frac=0.0, min_brightness=0.0))
  assert len(centres) == 6  # both filters off: the plain concatenation


def test_train_batch_is_deterministic_balanced_and_host_slices_partition_it():
  task = _task()
  a, b = task.train_batch(7, 16), task.train_batch(7, 16)
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])
  assert a['image'].shape == (16, 16, 16, 3) and a['image'].dtype == np.uint8
  assert a['label'].dtype == np.int32 and a['label'].sum() == 8
  assert not np.array_equal(task.train_batch(8, 16)['image'], a['image'])
  halves = [task.train_batch(7, 16, slice(0, 8)), task.train_batch(7, 16, slice(8, 16))]
  for key in ('image', 'label'):
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), a[key])
  assert task.epoch_examples == 2 * int(task.train_pool[3].sum()) * len(task.views)


def test_train_patches_are_views_of_the_sampled_class():
  task = _task()
  batch = task.train_batch(3, 32)
  # Red discs: positives' patches are centred on red, negatives on background.
  c = task.cfg.patch_size // 2
  centre_red = batch['image'][:, c - 1:c + 1, c - 1:c + 1, 0].mean(axis=(1, 2))
  assert (centre_red[batch['label'] == 1] > 200).all()
  assert (centre_red[batch['label'] == 0] < 200).all()


def test_eval_patches_fixed_and_unit_indexed():
  task = _task()
  patches, labels, units = task.eval_patches('validation')
  again = task.eval_patches('validation')
  assert patches is again[0]
  assert patches.shape[1:] == (16, 16, 3) and set(labels) == {0, 1}
  assert len(units) == len(labels) and units.max() == 1  # 4 frames in 2 sequences


def _hash(patch):
  return hashlib.sha1(np.ascontiguousarray(patch).tobytes()).hexdigest()


def _oracle(task, split):
  """A predictor that knows each test view's label (perfect by construction)."""
  truth = {}
  for f in task.frames[split]:
    for i in range(len(f.sides)):
      for p in task.candidate_patches(f, i):
        truth[_hash(p)] = float(f.lesions[i] >= 0)
  return lambda x: np.array([[1 - truth[_hash(p)], truth[_hash(p)]] for p in x])


def test_perfect_predictor_gives_sensitivity_one_and_auc_one():
  task = _task()
  result = task.evaluate(_oracle(task, 'test'), 'test', n_boot=50)
  assert result['auc'] == 1.0
  for rate in ('0.01', '0.001'):
    assert result['sensitivity_at_fp_per_frame'][rate]['value'] == 1.0
  assert result['num_lesions'] == result['lesions_hit'] == 6  # frames 0,1,3,4,6,7 of 8
  assert result['num_frames'] == 8 and result['num_units'] == 4
  assert result['froc']['sensitivity'][0] == 1.0  # at 0 FP/frame already
  assert result['fp_rates'] == [0.01, 0.001]  # what the report scores arms at
  import json
  json.dumps(result)


def test_random_predictor_gives_chance_numbers_with_ordered_cis():
  task = _task()
  rng = np.random.default_rng(0)
  result = task.evaluate(lambda x: (lambda p: np.stack([1 - p, p], 1))(rng.random(len(x))),
                         'test', n_boot=100)
  assert 0.1 < result['auc'] < 0.9
  ci = result['auc_ci95']
  assert ci['low'] <= ci['value'] <= ci['high']
  sens = result['sensitivity_at_fp_per_frame']['0.01']
  assert 0.0 <= sens['low'] <= sens['value'] <= sens['high'] <= 1.0
  assert result['sensitivity_at_fp_per_frame']['0.001']['value'] < 1.0


def test_test_score_is_the_mean_over_all_views():
  task = _task()
  weights = np.random.default_rng(1).random((16, 16, 3))

  def predict(x):
    p = (x.astype(np.float64) * weights).sum(axis=(1, 2, 3)) / (255.0 * weights.sum())
    return np.stack([1 - p, p], axis=1)

  result = task.evaluate(predict, 'test', n_boot=10)
  views = augment.box_views(task.cfg.scales, task.cfg.shift_frac, task.cfg.shift_steps,
                            task.cfg.orientations)
  assert len(views) == 3 * 4 * 2
  expected, per_view = [], []
  for f in task.frames['test']:
    for i in range(len(f.sides)):
      probs = [predict(augment.cut_view(f.image, f.centres[i], f.sides[i], v, 16)[None])[0, 1]
               for v in views]
      expected.append(np.mean(probs))
      per_view.append(probs)
  got = np.concatenate([u['scores'] for u in result['per_unit']])
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  assert np.ptp(per_view, axis=1).max() > 1e-3  # the views differ, so averaging matters


def test_test_views_are_predicted_across_frames_in_chunks_of_eval_chunk():
  calls = []

  def predict(x):
    calls.append(len(x))
    p = x.astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
    return np.stack([1 - p, p], axis=1)

  one = _task(eval_chunk=24)  # 24 views: one candidate per call
  per_candidate = one.evaluate(predict, 'test', n_boot=10)
  n_candidates = sum(len(f.sides) for f in one.frames['test'])
  assert calls == [24] * n_candidates
  calls.clear()
  chunked = _task(eval_chunk=24 * 20).evaluate(predict, 'test', n_boot=10)
  full, rest = divmod(n_candidates, 20)
  assert calls == [480] * full + [24 * rest] * (rest > 0)
  assert len(calls) < len(one.frames['test'])  # fewer calls than frames: chunks span frames
  assert chunked['per_unit'] == per_candidate['per_unit']


@pytest.mark.skipif(not KVASIR.is_dir(), reason=f'real Kvasir-SEG copy not found at {KVASIR}')
def test_dog_generator_finds_most_real_kvasir_polyps():
  from PIL import Image
  cfg = polyp_config.get_config().task
  cfg.generator = 'dog'  # the blob detector alone (the default adds a grid: test_candidates_real)
  hit = total = 0
  for path in sorted((KVASIR / 'images').glob('*.jpg'))[:60]:
    image = np.asarray(Image.open(path).convert('RGB'))
    mask = np.asarray(Image.open(KVASIR / 'masks' / path.name).convert('L')) > 127
    frame = polyp.Frame.from_example({'image': image, 'mask': mask.astype(np.uint8)}, cfg)
    assert len(frame.sides) <= cfg.max_candidates
    hit += len(set(frame.lesions[frame.lesions >= 0].tolist()))
    total += frame.num_lesions
  # About 85% on these frames with its 15 maxima (a blob detector, no training).
  assert hit / total > 0.75


def test_frames_are_memoised_per_example_and_task_config(monkeypatch):
  from medft.tasks import example_cache
  monkeypatch.setattr(example_cache, 'MAX_BYTES', 1 << 40)
  ex, cfg = _examples(1, 7)[0], _config()
  first = polyp.Frame.from_example(ex, cfg)
  assert polyp.Frame.from_example(dict(ex), cfg) is first  # same arrays, same settings
  other = polyp.Frame.from_example(ex, _config(min_box=9.0))
  assert other is not first
  monkeypatch.setattr(example_cache, 'MAX_BYTES', 0)  # nothing fits: computed, not held
  assert polyp.Frame.from_example(ex, _config(min_box=10.0)) is not polyp.Frame.from_example(
      ex, _config(min_box=10.0))


def test_run_intervals_by_counts_equal_resampling_the_unit_lists():
  """`detection.report` evaluates its bootstrap as draws per unit; its intervals are those of
  rebuilding and re-pooling every resample (`metrics.bootstrap_ci`), on a real evaluation
  (tied scores: a coarse predictor), with `froc_mean` and PE's per-volume rates too."""
  from medft import metrics
  from medft.tasks import detection
  task = _task()
  rng = np.random.default_rng(3)
  result = task.evaluate(lambda x: (lambda p: np.stack([1 - p, p], 1))(
      np.round(rng.random(len(x)), 1)), 'test', n_boot=200)
  units = result['per_unit']
  fast = detection.report(units, (0.5, 1.0), 2.0, 200, 5, per='frame', summary_rates=(0.5, 1))

  def froc(us):
    return metrics.froc_curve(**metrics.pool_detection_units(us))

  def slow(fn):
    return metrics.bootstrap_ci(fn, units, n_boot=200, seed=5)

  def auc(us):
    return metrics.roc_auc(np.concatenate([np.asarray(u['lesion_ids']) >= 0 for u in us]),
                           np.concatenate([u['scores'] for u in us]))
  for key in ('value', 'low', 'high', 'n_boot'):
    assert fast['auc_ci95'][key] == pytest.approx(slow(auc)[key], abs=1e-12)
    for r in (0.5, 1.0):
      want = slow(lambda us, r=r: metrics.froc_sensitivity_at(froc(us), [r])[0])
      assert fast['sensitivity_at_fp_per_frame'][str(r)][key] == want[key]
    want = slow(lambda us: metrics.froc_partial_area(froc(us), (0.5, 1)))
    assert fast['froc_mean'][key] == pytest.approx(want[key], abs=1e-12)
  assert fast['sensitivity_at_fp_per_frame']['1.0']['high'] > \
      fast['sensitivity_at_fp_per_frame']['1.0']['low']
