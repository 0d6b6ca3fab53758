"""PE task: vessel axis, vessel-aligned cuts, candidates, batches, view averaging, FROC."""

import hashlib
import json

import numpy as np
import pytest

from configs import pe as pe_config
from medft.tasks import get_task, pe

SPACING = np.array([1.5, 0.7, 0.7])


def _line_distance(shape, spacing, point_mm, direction):
  """Distance (mm) of every voxel to a line, and the position along it (mm)."""
  grid = np.indices(shape).astype(np.float64) * np.asarray(spacing)[:, None, None, None]
  rel = grid - np.asarray(point_mm)[:, None, None, None]
  along = np.tensordot(direction, rel, axes=1)
  across = rel - along[None] * np.asarray(direction)[:, None, None, None]
  return np.sqrt((across ** 2).sum(axis=0)), along


def _tube(shape=(30, 50, 50), direction=(0.8, 0.5, -0.33), radius=2.5, clot=None):
  """HU volume of a straight contrast-filled tube in lung; optional clot: (length, radius)."""
  direction = np.asarray(direction, np.float64) / np.linalg.norm(direction)
  centre_mm = (np.asarray(shape) - 1) / 2 * SPACING
  dist, along = _line_distance(shape, SPACING, centre_mm, direction)
  inside = np.clip(radius + 0.5 - dist, 0, 1)  # a one-millimetre partial-volume edge
  volume = -850 + 1150 * inside
  if clot is not None:
    length, clot_radius = clot
    in_clot = np.clip(clot_radius + 0.5 - dist, 0, 1) * (np.abs(along) < length / 2)
    volume = volume * (1 - in_clot) + 40 * in_clot
  return volume, direction


def _angle_deg(a, b):
  return np.degrees(np.arccos(min(1.0, abs(float(np.dot(a, b))))))


@pytest.mark.parametrize('direction', [(1, 0, 0), (0.8, 0.5, -0.33), (0.1, 1, 0.6)])
def test_vessel_axis_recovers_a_straight_tube(direction):
  volume, truth = _tube(direction=direction, clot=(6.0, 2.0))
  centre = (np.asarray(volume.shape) - 1) / 2
  axis = pe.vessel_axis(volume, SPACING, centre)
  assert _angle_deg(axis, truth) < 3
  assert np.isclose(np.linalg.norm(axis), 1)
  u, v = pe.perpendicular_basis(axis)
  np.testing.assert_allclose([axis @ u, axis @ v, u @ v, u @ u, v @ v], [0, 0, 0, 1, 1],
                             atol=1e-12)


def _centroid(weight):
  yy, xx = np.indices(weight.shape)
  return np.array([(yy * weight).sum(), (xx * weight).sum()]) / weight.sum()


def test_vessel_cut_is_centred_on_the_vessel_for_every_width_and_rotation():
  radius, size = 2.5, 31
  volume, truth = _tube(radius=radius)
  centre = (np.asarray(volume.shape) - 1) / 2
  axis = pe.vessel_axis(volume, SPACING, centre)
  for view in pe.pe_views((10.0, 15.0, 20.0), (0.0,), 6):
    patch = pe.vessel_cut(volume, SPACING, centre, axis, view.width_mm, size, view.shift_mm,
                          view.angle)
    assert patch.shape == (size, size, 3) and patch.dtype == np.uint8
    np.testing.assert_array_equal(patch[..., 1], patch[..., 2])
    cross = patch[..., 0].astype(float) / 255
    np.testing.assert_allclose(_centroid(cross), [(size - 1) / 2] * 2, atol=0.3)
    # The disc has the tube's radius in patch pixels: 100 HU (the window's middle) is where
    # the partial-volume edge of `_tube` holds 950/1150 contrast, radius - 0.33 mm.
    r_px = (radius + 0.5 - 950 / 1150) * size / view.width_mm
    # (Linear interpolation between 1.5 mm slices blurs the edge: 20% tolerance; a cut in
    # voxel instead of mm units would be off by a factor of 2 or more.)
    assert abs((cross > 0.5).sum() - np.pi * r_px ** 2) < 0.2 * np.pi * r_px ** 2
    # Longitudinal cut: a band along the rows, centred across the columns.
    longitudinal = patch[..., 1].astype(float) / 255
    assert np.ptp(longitudinal.mean(axis=1)) < 0.05
    np.testing.assert_allclose(_centroid(longitudinal)[1], (size - 1) / 2, atol=0.3)


def test_shift_moves_a_clot_along_the_vessel():
  size, width = 31, 15.0
  volume, truth = _tube(radius=3.0, clot=(3.0, 1.5))
  centre = (np.asarray(volume.shape) - 1) / 2
  for shift in (-2.0, 2.0):
    patch = pe.vessel_cut(volume, SPACING, centre, truth, width, size, shift_mm=shift)
    dark = (patch[..., 1] < 128) & (np.abs(np.arange(size) - 15) < 3)[None, :]
    row = _centroid(dark.astype(float))[0]
    # The clot sits at the cut's centre minus the shift, along the rows.
    assert abs(row - ((size - 1) / 2 - shift * size / width)) < 0.6
  unshifted = pe.vessel_cut(volume, SPACING, centre, truth, width, size)
  # The cross-section shows the clot (40 HU -> 105) at its centre, contrast (300 HU -> 200)
  # around it.
  assert unshifted[15, 15, 0] < 128 and unshifted[..., 0].max() > 180


def test_label_candidates_by_point_then_majority():
  labels = np.zeros((4, 6, 6), np.int32)
  labels[1:3, 1:3, 1:3] = 7
  labels[0, 4:6, 4:6] = 9
  comps = np.zeros_like(labels)
  comps[1:3, 1:3, 1:4] = 1          # mostly clot 7, point inside it
  comps[0:2, 4:6, 3:6] = 2          # 4 of 12 voxels in clot 9, point outside: a miss
  comps[3, 0:6, 0] = 3              # no clot
  comps[2, 1:3, 3:5] = 4            # half in clot 7? no: 0 of 4 -> miss
  comps[1:3, 1:3, 0] = 5            # point outside (col 0), but see below
  comps[1:3, 1:3, 1] = 5            # 4 of 8 voxels in clot 7 -> clot 7 by majority
  points = np.array([[1, 1, 1], [1, 5, 3], [3, 2, 0], [2, 1, 4], [1, 1, 0]])
  np.testing.assert_array_equal(pe.label_candidates(labels, comps, points), [7, -1, -1, -1, 7])


def _phantom(rng, shape=(24, 56, 56), clots=2):
  """Body, two lungs, one tube per lung (roughly along z) and clot segments with ids 3, 4;
  returns (volume, labels, {clot id: tube direction})."""
  zz, yy, xx = np.indices(shape).astype(float)
  d, h, w = shape
  body = ((yy - h / 2) / (0.46 * h)) ** 2 + ((xx - w / 2) / (0.48 * w)) ** 2 < 1
  volume = np.where(body, 40.0, -1000.0)
  labels = np.zeros(shape, np.int32)
  directions = {}
  for k, side in enumerate((-1, 1)):
    cx = w / 2 + side * 0.22 * w
    lung = ((yy - h / 2) / (0.33 * h)) ** 2 + ((xx - cx) / (0.17 * w)) ** 2 < 1
    volume[lung] = -850
    direction = np.array([1.0, rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)])
    direction /= np.linalg.norm(direction)
    point = np.array([(d - 1) / 2, h / 2 + rng.uniform(-3, 3), cx]) * SPACING
    dist, along = _line_distance(shape, SPACING, point, direction)
    radius = rng.uniform(2.2, 2.8)
    tube = np.clip(radius + 0.5 - dist, 0, 1)
    volume = volume * (1 - tube) + 300 * tube
    if k < clots:
      start = rng.uniform(-8, 0)
      in_clot = (dist < 0.8 * radius) & (along > start) & (along < start + 7)
      volume[in_clot] = 40
      labels[in_clot] = 3 + k
      directions[3 + k] = direction
  volume += rng.normal(0, 15, shape)
  return np.rint(volume).astype(np.int16), labels, directions


def test_candidates_of_a_phantom_hit_its_clots_and_follow_their_vessel():
  volume, labels, directions = _phantom(np.random.default_rng(0))
  cfg = _config()
  found = pe.find_candidates(volume, SPACING, cfg)
  points = found.points - [b.start for b in found.box]
  lesions = pe.label_candidates(labels[found.box], found.components, points)
  assert set(lesions[lesions >= 0]) == {3, 4}
  assert found.components.max() == len(points) <= cfg.max_candidates
  assert all(found.components[tuple(p)] == k + 1 for k, p in enumerate(points))  # in their blob
  assert found.filled[labels[found.box] > 0].mean() > 0.9  # the filled vessel covers the clots
  example = {'volume': volume, 'labels': labels, 'spacing': SPACING, 'id': 'a', 'unit': 'a'}
  vol = pe.Volume.from_example(example, cfg)
  assert vol.num_lesions == 2
  for c in vol.candidates:
    if c.lesion >= 0:
      assert _angle_deg(c.axis, directions[c.lesion]) < 10


def _config(**overrides):
  cfg = pe_config.get_config('synthetic').task
  cfg.update(dict(patch_size=16, widths_mm=(10.0, 15.0), rotations=3, val_max_patches=50))
  cfg.update(overrides)
  return cfg


def _examples(n, seed):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    volume, labels, _ = _phantom(rng, clots=1 + i % 2)
    out.append({'volume': volume, 'labels': labels, 'spacing': SPACING.astype(np.float32),
                'id': f'v{i}', 'unit': f'p{i}'})
  return out


@pytest.fixture(scope='module')
def task():
  splits = {'train': _examples(3, 0), 'validation': _examples(2, 1), 'test': _examples(4, 2)}
  return get_task('pe', splits, _config(), seed=3)


def test_train_batch_is_deterministic_balanced_and_host_slices_partition_it(task):
  a, b = task.train_batch(4, 12), task.train_batch(4, 12)
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])
  assert a['image'].shape == (12, 16, 16, 3) and a['image'].dtype == np.uint8
  assert a['label'].sum() == 6
  assert not np.array_equal(task.train_batch(5, 12)['image'], a['image'])
  parts = [task.train_batch(4, 12, slice(k, k + 4)) for k in (0, 4, 8)]
  for key in ('image', 'label'):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), a[key])
  assert len(task.views) == 2 * 3 * 3
  patches, labels, units = task.eval_patches('validation')
  assert set(labels) == {0, 1} and len(patches) == len(labels) == len(units)


def _hash(patch):
  return hashlib.sha1(np.ascontiguousarray(patch).tobytes()).hexdigest()


def test_perfect_and_random_predictors(task):
  truth = {}
  for v in task.volumes['test']:
    for i, c in enumerate(v.candidates):
      for p in task.candidate_patches(v, i):
        truth[_hash(p)] = float(c.lesion >= 0)
  perfect = task.evaluate(lambda x: np.array([[1 - truth[_hash(p)], truth[_hash(p)]]
                                              for p in x]), 'test', n_boot=50)
  assert perfect['auc'] == 1.0 and perfect['num_lesions'] == 6 == perfect['lesions_hit']
  for rate in ('1.0', '2.0', '3.0', '4.0', '5.0'):
    assert perfect['sensitivity_at_fp_per_volume'][rate]['value'] == 1.0
  assert perfect['froc_mean']['value'] == 1.0
  assert len(perfect['froc']['fp_per_volume']) == 101 and perfect['froc']['fp_per_volume'][-1] == 10
  json.dumps(perfect)

  rng = np.random.default_rng(0)
  noise = task.evaluate(lambda x: (lambda p: np.stack([1 - p, p], 1))(rng.random(len(x))),
                        'test', n_boot=50)
  assert 0.1 < noise['auc'] < 0.9
  assert noise['auc_ci95']['low'] <= noise['auc'] <= noise['auc_ci95']['high']


def test_test_score_is_the_mean_over_all_views(task):
  weights = np.random.default_rng(1).random((16, 16, 3))

  def predict(x):
    p = (x.astype(np.float64) * weights).sum(axis=(1, 2, 3)) / (255.0 * weights.sum())
    return np.stack([1 - p, p], axis=1)

  result = task.evaluate(predict, 'test', n_boot=10)
  expected = []
  for v in task.volumes['test']:
    for c in v.candidates:
      expected.append(np.mean([predict(pe.vessel_cut(
          c.cube, v.spacing, c.centre, c.axis, view.width_mm, 16, view.shift_mm, view.angle,
          task.cfg.hu_window)[None])[0, 1] for view in task.views]))
  got = np.concatenate([u['scores'] for u in result['per_unit']])
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_dilate_approximates_a_ball_in_millimetres():
  seed = np.zeros((9, 21, 21), bool)
  seed[4, 10, 10] = True
  # 0.8 mm: the 4 in-plane neighbours (0.7 mm) but not the diagonals (0.99 mm) or slices (1.5).
  small = pe.dilate(seed, 0.8, SPACING)
  assert small.sum() == 5 and small[4, 9, 10] and not small[4, 9, 9] and not small[3, 10, 10]
  big = pe.dilate(seed, 3.0, SPACING)
  offsets = (np.indices(seed.shape) - np.array([4, 10, 10])[:, None, None, None])
  dist = np.sqrt(((offsets * SPACING[:, None, None, None]) ** 2).sum(axis=0))
  assert big[dist <= 2.1].all() and not big[dist > 3.0 * 1.45].any()
  np.testing.assert_array_equal(pe.dilate(big, 3.0, SPACING, erode=True) & seed, seed)
