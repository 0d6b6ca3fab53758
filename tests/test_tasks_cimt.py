"""The CIMT task: the test ROI box, its edge share, the merged patch AUC, a ROI file."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from configs import cimt as cimt_config
from medft import errors
from medft.tasks import cimt

HEIGHT, WIDTH, CF = 200, 64, 0.06  # rows, columns, mm per pixel
LI_ROW, MA_ROW = 90, 104


def _example(image_id='img0', li=None, ma=None):
  """A flat wall whose pixel value is the row index: a 1x1 patch tells its row."""
  image = np.repeat(np.arange(HEIGHT, dtype=np.uint8)[:, None], WIDTH, axis=1)
  x = np.arange(4, WIDTH - 4, dtype=np.float64)
  li = np.full(x.size, LI_ROW, np.float64) if li is None else li
  ma = np.full(x.size, MA_ROW, np.float64) if ma is None else ma
  return {'id': image_id, 'unit': image_id.split('_')[0], 'image': image, 'cf': CF,
          'li': np.stack([x, li], 1), 'ma': np.stack([x, ma], 1)}


def _task(examples, **task):
  cfg = cimt_config.get_config('synthetic').task
  cfg.patch_size = 1
  cfg.eval_col_stride = 1
  cfg.eval_patches_per_class = 4
  for key, value in task.items():
    cfg[key] = value
  return cimt.CimtTask({'test': examples}, cfg, seed=0)


def _peaks_at(li_row, ma_row):
  """A predictor that finds LI at `li_row` and MA at `ma_row` in every column."""
  def predict(patches):
    rows = patches.reshape(len(patches), -1)[:, 0].astype(int)
    probs = np.full((len(rows), 3), [0.8, 0.1, 0.1])
    probs[rows == li_row] = [0.1, 0.8, 0.1]
    probs[rows == ma_row] = [0.1, 0.1, 0.8]
    return probs
  return predict


def test_box_is_centred_on_the_wall_with_its_height_in_mm():
  scan = cimt.Scan.from_example(_example(), patch_size=1)
  rows = scan.roi_rows(6.0)
  half = 6.0 / CF / 2  # 50 rows each side of the midpoint 97
  assert rows[0] == np.floor(97 - half) and rows[-1] == np.ceil(97 + half)
  assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
  with pytest.raises(errors.ConfigError, match='roi_height_mm=0'):
    _task([_example()], roi_height_mm=0.0)  # refused before any patch is cut


def test_box_never_follows_the_test_boundaries_column_by_column():
  rng = np.random.default_rng(0)
  n = WIDTH - 8
  wavy_li = LI_ROW + 6 * np.sin(np.arange(n) / 5)
  wavy_ma = wavy_li + 14 + 3 * np.cos(np.arange(n) / 3)
  base = cimt.Scan.from_example(_example(li=wavy_li, ma=wavy_ma), 1).roi_rows(6.0)
  # Column-wise perturbations that keep the wall's overall position (the median midpoint):
  # columns shuffled, and opposite per-column jitter on LI and MA.
  order = rng.permutation(n)
  jitter = rng.uniform(-5, 5, n)
  for li, ma in ((wavy_li[order], wavy_ma[order]), (wavy_li + jitter, wavy_ma - jitter)):
    assert np.array_equal(cimt.Scan.from_example(_example(li=li, ma=ma), 1).roi_rows(6.0), base)
  # ... while the wall's overall position does move the box.
  moved = cimt.Scan.from_example(_example(li=wavy_li + 10, ma=wavy_ma + 10), 1).roi_rows(6.0)
  assert np.array_equal(moved, base + 10)


def test_a_uniformly_wrong_predictor_is_not_capped_and_is_flagged_at_the_edge():
  task = _task([_example()])
  old_cap_um = 12 * CF * 1000  # the former ROI: reference LI/MA extremes +- 12 rows
  exact = task.evaluate(_peaks_at(LI_ROW, MA_ROW), n_boot=10)
  assert exact['li_error_um']['mean'] == pytest.approx(0, abs=1e-9)
  assert exact['roi_edge_share'] == 0.0 and exact['per_image'][0]['roi_edge_share'] == 0.0
  # 40 rows above LI and 40 below MA in every column: inside the 6 mm box, not on its edge.
  off = task.evaluate(_peaks_at(LI_ROW - 40, MA_ROW + 40), n_boot=10)
  for key in ('li_error_um', 'ma_error_um'):
    assert off[key]['mean'] == pytest.approx(40 * CF * 1000) and off[key]['mean'] > old_cap_um
  assert off['cimt_error_um']['mean'] == pytest.approx(80 * CF * 1000)
  assert off['roi_edge_share'] == 0.0
  # A constant predictor: every argmax lands on the box's top row, and the share says so.
  rows = task.roi_rows(task.scans['test'][0])
  flat = task.evaluate(lambda p: np.full((len(p), 3), 1 / 3), n_boot=10)
  assert flat['roi_edge_share'] == 1.0
  assert flat['li_error_um']['mean'] == pytest.approx((LI_ROW - rows[0]) * CF * 1000)
  assert (flat['roi_source'], flat['roi_height_mm']) == ('box', 6.0)


def test_edge_share_counts_columns_on_either_edge_before_smoothing():
  task = _task([_example()])
  rows = task.roi_rows(task.scans['test'][0])

  def predict(patches):  # LI on the top row in the first 14 of 56 columns, else right
    out = _peaks_at(LI_ROW, MA_ROW)(patches)
    if len(patches) != len(rows) * (WIDTH - 8):  # the AUC patches, not the dense ROI
      return out
    column = np.tile(np.arange(WIDTH - 8), len(rows))
    top = (patches.reshape(len(patches), -1)[:, 0] == rows[0]) & (column < 14)
    out[top] = [0.0, 1.0, 0.0]
    return out

  assert task.evaluate(predict, n_boot=10)['roi_edge_share'] == pytest.approx(14 / 56)


def test_patch_auc_merges_both_interfaces_against_background():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 0])
  probs = np.array([[.7, .2, .1], [.5, .1, .4], [.2, .5, .3], [.3, .6, .1],
                    [.6, .3, .1], [.1, .1, .8], [.4, .1, .5], [.9, .05, .05]])
  task = _task([_example()])
  want = roc_auc_score(labels != 0, probs[:, 1] + probs[:, 2])
  assert task.patch_auc(probs, labels) == pytest.approx(want)
  # Hand count: interface scores .7 .4 .9 .6 against background .3 .5 .8 .1 win 3 + 2 + 4 + 3
  # of the 16 pairs.
  assert want == pytest.approx(12 / 16)
  # Not the mean of one-vs-rest AUCs the task used before.
  assert want != pytest.approx(np.mean([roc_auc_score(labels == k, probs[:, k])
                                        for k in range(3)]))


def test_roi_file_gives_the_rows_and_names_what_is_missing(tmp_path):
  path = tmp_path / 'roi.csv'
  path.write_text('id,top,bottom\nimg0,60,130\n')
  task = _task([_example()], roi_file=str(path))
  assert np.array_equal(task.roi_rows(task.scans['test'][0]), np.arange(60, 131))
  with pytest.raises(errors.InputFileError, match="no line for image 'img1'"):
    _task([_example(), _example('img1')], roi_file=str(path))
  path.write_text(f'id,top,bottom\nimg0,60,{HEIGHT}\n')
  with pytest.raises(errors.InputFileError, match=f'has {HEIGHT} rows'):
    _task([_example()], roi_file=str(path))
  path.write_text('id,top\nimg0,60\n')
  with pytest.raises(errors.InputFileError, match='id,top,bottom'):
    _task([_example()], roi_file=str(path))
  with pytest.raises(errors.MissingInputError, match='roi_file'):
    _task([_example()], roi_file=str(tmp_path / 'none.csv'))
  path.write_text('id,top,bottom\nimg0,60,130\n')
  result = _task([_example()], roi_file=str(path)).evaluate(_peaks_at(LI_ROW, MA_ROW), n_boot=10)
  assert (result['roi_source'], result['roi_height_mm']) == ('file', None)
  assert result['li_error_um']['mean'] == pytest.approx(0, abs=1e-9)


def test_eval_size_is_what_the_test_evaluation_predicts():
  task = _task([_example(), _example('s2_b')])
  seen = []
  task.evaluate(lambda p: seen.append(len(p)) or np.full((len(p), 3), 1 / 3), n_boot=5)
  assert task.eval_size('test') == sum(seen) > 0
