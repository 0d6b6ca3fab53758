"""Patch geometry: crops keep the candidate centred, shifts are exact, orientations distinct."""

import numpy as np
import pytest

from medft.tasks import augment


def _dot_image(center, shape=(120, 140), sigma=2.5):
  yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
  dot = 255 * np.exp(-((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / (2 * sigma ** 2))
  return np.stack([dot, 0.5 * dot, np.zeros(shape)], axis=-1).astype(np.uint8)


def _centroid(patch):
  weight = patch[..., 0].astype(np.float64)
  yy, xx = np.indices(weight.shape)
  return np.array([(yy * weight).sum(), (xx * weight).sum()]) / weight.sum()


@pytest.mark.parametrize('size', [33, 32])
def test_candidate_stays_at_patch_centre_for_every_scale_and_orientation(size):
  center, box = (57.3, 71.6), 24.0
  image = _dot_image(center)
  views = augment.box_views((1.0, 1.2, 1.5), 0.1, (0,), 8)
  assert len(views) == 24
  patches = augment.cut_views(image, center, box, views, size)
  for view, patch in zip(views, patches):
    np.testing.assert_allclose(_centroid(patch), [(size - 1) / 2] * 2, atol=0.1,
                               err_msg=str(view))
    # cut_views (one resampling per scale and shift) equals cutting each view on its own.
    np.testing.assert_array_equal(patch, augment.cut_view(image, center, box, view, size))


def test_shift_moves_candidate_by_ten_percent_of_the_box():
  center, box, size = (60.0, 66.5), 30.0, 41
  image = _dot_image(center)
  for view in augment.box_views((1.0, 1.2, 1.5), 0.1, (-1, 0, 1), 1):
    patch = augment.cut_view(image, center, box, view, size)
    # The crop moves by shift * box image pixels = shift * size / scale patch pixels; the
    # candidate moves the other way.
    expected = (size - 1) / 2 - np.asarray(view.shift_yx) * size / view.scale
    np.testing.assert_allclose(_centroid(patch), expected, atol=0.1, err_msg=str(view))
  # A 10% shift of a 30 px box at scale 1 is 3 image px = 4.1 patch px here: not a no-op.
  assert 0.1 * size > 4


def test_orientations_are_distinct_and_shift_direction_turns_with_them():
  patch = np.random.default_rng(0).integers(0, 256, (9, 9, 3)).astype(np.uint8)
  oriented = [augment.orient(patch, k) for k in range(8)]
  assert len({o.tobytes() for o in oriented}) == 8
  np.testing.assert_array_equal(oriented[4], patch[:, ::-1])
  np.testing.assert_array_equal(oriented[1], np.rot90(patch))
  with pytest.raises(ValueError):
    augment.orient(patch, 8)
  # An off-centre candidate keeps its distance to the centre under every orientation.
  center, box, size = (60.0, 60.0), 30.0, 41
  image = _dot_image(center)
  offsets = []
  for k in range(8):
    view = augment.View(1.0, (0.1, 0.0), k)
    offsets.append(_centroid(augment.cut_view(image, center, box, view, size)) - (size - 1) / 2)
  np.testing.assert_allclose(np.linalg.norm(offsets, axis=1), 0.1 * size, atol=0.1)
  assert len({tuple(np.round(o)) for o in offsets}) == 4  # the 4 directions of a 90° turn


def test_views_grid_and_crop_corners():
  views = augment.box_views((1.0, 1.2, 1.5), 0.1, (-1, 0, 1), 8)
  assert len(views) == 3 * 9 * 8 == len(set(views))
  assert {v.shift_yx for v in views} == {(0.1 * a, 0.1 * b) for a in (-1, 0, 1)
                                         for b in (-1, 0, 1)}
  rng = lambda: np.random.default_rng(3)  # noqa: E731
  corners = augment.random_crop_corners(rng(), (50, 40), 16, 500)
  np.testing.assert_array_equal(corners, augment.random_crop_corners(rng(), (50, 40), 16, 500))
  assert corners.min() == 0 and corners[:, 0].max() == 34 and corners[:, 1].max() == 24
  with pytest.raises(ValueError, match='does not fit'):
    augment.random_crop_corners(rng(), (10, 40), 16, 1)
