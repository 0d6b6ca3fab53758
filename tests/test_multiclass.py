"""Frame classification with K > 2 classes: the one-vs-rest metrics against scikit-learn, the
task's K, labels, class-balanced draws and test block, the synthetic twin's classes, and a tiny
real 3-class study (2 arms) whose report shows per-class and macro AUCs and confusion matrices.
Binary frames are covered, unchanged, by tests/test_tasks_frames.py and tests/test_report.py."""

import json

import ml_collections
import numpy as np
import pytest
import sklearn.metrics

import medft
from configs import frames as frames_config
from medft import apps, metrics, validate
from medft.errors import ConfigError, InputFileError
from medft.report import build_report
from medft.tasks import get_task

CROP = 16


def _random(seed: int, n: int = 60, k: int = 4):
  rng = np.random.default_rng(seed)
  labels = np.r_[np.arange(k), rng.integers(k, size=n - k)]  # every class present
  scores = rng.dirichlet(np.ones(k), size=n)
  scores[:10] = np.round(scores[:10], 1)  # ties
  scores /= scores.sum(axis=1, keepdims=True)
  return labels, scores


@pytest.mark.parametrize('seed', range(5))
def test_one_vs_rest_metrics_match_sklearn(seed):
  labels, scores = _random(seed, k=3 + seed % 3)
  k = scores.shape[1]
  assert metrics.macro_roc_auc(labels, scores) == pytest.approx(
      sklearn.metrics.roc_auc_score(labels, scores, multi_class='ovr', average='macro'),
      abs=1e-12)
  np.testing.assert_allclose(metrics.one_vs_rest_aucs(labels, scores), [
      sklearn.metrics.roc_auc_score(labels == c, scores[:, c]) for c in range(k)], atol=1e-12)
  np.testing.assert_allclose(metrics.one_vs_rest_aucs(labels, scores),
                             sklearn.metrics.roc_auc_score(labels, scores, multi_class='ovr',
                                                           average=None), atol=1e-12)
  predicted = np.argmax(scores, axis=1)
  assert metrics.confusion_matrix(labels, predicted, k) == sklearn.metrics.confusion_matrix(
      labels, predicted, labels=range(k)).tolist()
  # Resample weights: the macro AUC of units drawn counts[u] times equals that of the resample.
  units = np.arange(len(labels)) % 7
  lab = [labels[units == u] for u in range(7)]
  sc = [scores[units == u] for u in range(7)]
  counts = np.random.default_rng(seed).integers(1, 3, size=7)
  index = np.repeat(np.arange(7), counts)
  expected = metrics.macro_roc_auc(np.concatenate([lab[i] for i in index]),
                                   np.concatenate([sc[i] for i in index]))
  assert metrics.macro_roc_auc_by_counts(lab, sc, k)(counts) == pytest.approx(expected, abs=1e-12)


def test_one_vs_rest_metrics_refuse_bad_input():
  labels, scores = _random(0, k=3)
  with pytest.raises(ValueError, match='labels must be 0..2'):
    metrics.macro_roc_auc(np.r_[labels[:-1], 3], scores)
  with pytest.raises(ValueError, match='both classes'):  # class 2 absent: undefined, as sklearn
    metrics.macro_roc_auc(labels % 2, scores)
  assert 0 <= metrics.macro_roc_auc_present(labels % 2, scores) <= 1


def _examples(n, seed, k=3):
  """Frames of class c have mean brightness 40 + 80 c (so brightness ranks the classes)."""
  rng = np.random.default_rng(seed)
  return [{'image': np.clip(40 + 80 * (i % k) + rng.normal(0, 8, (32, 32, 3)), 0, 255).astype(
      np.uint8), 'label': i % k, 'id': f'f{i}', 'unit': f'vid{i // 6}'} for i in range(n)]


class _Split(list):
  """A split carrying its dataset's class map, as `medft.data.SplitView.classes` does."""
  classes = None


def _task(k=3, classes=None, train=None, **overrides):
  cfg = frames_config.get_config('synthetic').task
  cfg.update(dict(crop_size=CROP, test_crops=6, val_crops_per_frame=2, fprs=(0.1, 0.2)))
  cfg.update(overrides)
  splits = {'train': train or _examples(12, 0, k), 'validation': _examples(6, 1, k),
            'test': _examples(24, 2, k)}
  if classes is not None:
    splits = {name: _Split(v) for name, v in splits.items()}
    for v in splits.values():
      v.classes = classes
  return get_task('frames', splits, cfg, seed=1)


def _soft(x, k=3):
  """Class probabilities peaking at the class whose brightness the patch has."""
  b = x.astype(np.float64).mean(axis=(1, 2, 3))
  logits = -((b[:, None] - (40 + 80 * np.arange(k))[None]) / 30) ** 2
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  return p / p.sum(axis=1, keepdims=True)


def test_k_from_the_class_map_else_the_distinct_labels():
  assert _task().num_classes == 3 and _task().class_names == ['0', '1', '2']
  mapped = _task(classes={'dark': 0, 'mid': 1, 'bright': 2, 'glare': 3})
  assert mapped.num_classes == 4 and mapped.class_names == ['dark', 'mid', 'bright', 'glare']
  assert _task(k=2).num_classes == 2


def test_labels_out_of_range_name_the_frame():
  bad = _examples(12, 0)
  bad[4]['label'] = 7  # labels {0, 1, 2, 7}: four distinct, so 0..3 allowed
  with pytest.raises(InputFileError, match=r'frame f4 \(train split\): label 7 is not in 0..3'):
    _task(train=bad)
  with pytest.raises(InputFileError, match=r"frame f4 .*label 7 .*class map \{'a': 0, 'b': 1, "
                                           r"'c': 2\} has 3 labels"):
    _task(train=bad, classes={'a': 0, 'b': 1, 'c': 2})
  bad[4]['label'] = -1
  with pytest.raises(InputFileError, match='label -1 is not in 0..3'):
    _task(train=bad)


def test_class_balanced_draws_every_class_equally():
  train = _examples(40, 0, k=3)
  for ex in train[3:]:  # 1 frame of class 0, 1 of class 1, 38 of class 2
    ex['label'] = 2
  drawn = np.concatenate([_task(train=train, class_balanced=True).train_batch(s, 64)['label']
                          for s in range(20)])
  assert np.abs(np.bincount(drawn, minlength=3) / drawn.size - 1 / 3).max() < 0.05
  plain = np.concatenate([_task(train=train).train_batch(s, 64)['label'] for s in range(20)])
  assert np.bincount(plain, minlength=3)[2] / plain.size > 0.85
  # The default draws frames exactly as before the option (same rng calls).
  task = _task(train=train)
  rng = np.random.default_rng([task.seed, 1, 5])
  picks = rng.integers(len(train), size=16)
  np.testing.assert_array_equal(task.train_batch(5, 16)['label'],
                                [train[i]['label'] for i in picks])
  pooled = _task(train=train, class_balanced=True, fixed_pool=True, crops_per_frame=5)
  assert len(set(pooled._pool[0][:200].tolist())) > 2
  assert np.abs(np.bincount([train[i]['label'] for i in pooled._pool[0]], minlength=3)
                / pooled._pool[0].size - 1 / 3).max() < 0.1


def test_three_class_test_block():
  task = _task(classes={'dark': 0, 'mid': 1, 'bright': 2})
  result = task.evaluate(_soft, 'test', n_boot=50)
  json.dumps(result)
  labels = np.concatenate([u['labels'] for u in result['per_unit']])
  scores = np.concatenate([u['scores'] for u in result['per_unit']])
  assert scores.shape == (24, 3) and result['classes'] == ['dark', 'mid', 'bright']
  # A frame's score vector is the mean softmax over its crops.
  f = task.frames['test'][5]
  crops = f.crops(task.test_corners('test', 5, 6), CROP)
  np.testing.assert_allclose(scores[5], _soft(crops).mean(axis=0), rtol=1e-12)
  assert result['auc'] == pytest.approx(sklearn.metrics.roc_auc_score(
      labels, scores, multi_class='ovr'), abs=1e-12)
  assert result['auc_ci95']['low'] <= result['auc'] <= result['auc_ci95']['high']
  for k, name in enumerate(result['classes']):
    assert result['class_auc'][name]['value'] == pytest.approx(
        sklearn.metrics.roc_auc_score(labels == k, scores[:, k]), abs=1e-12)
    assert set(result['class_sensitivity_at_fpr'][name]) == {'0.1', '0.2'}
  assert result['confusion_matrix'] == sklearn.metrics.confusion_matrix(
      labels, scores.argmax(axis=1)).tolist()
  assert result['num_frames_per_class'] == [8, 8, 8] and result['num_classes'] == 3
  # Report points read from it: the task's own numbers.
  points = {p.key: p for p in apps.get('frames').points(result)}
  records = result['per_unit']
  assert points['auc'].pooled(records) == result['auc']
  assert points['auc_class1'].pooled(records) == result['class_auc']['mid']['value']
  assert points['sensitivity_at_fpr_0.2_class2'].pooled(records) == (
      result['class_sensitivity_at_fpr']['bright']['0.2']['value'])
  # Per-unit values: per class the mean placement (these average to the class AUC over the
  # class's frames); the macro one is the mean over the classes a video has.
  per_class = np.vstack([points[f'auc_class{k}'].per_unit(records) for k in range(3)])
  np.testing.assert_allclose(points['auc'].per_unit(records), np.nanmean(per_class, axis=0))
  counts = [int((np.ravel(u['labels']) == 0).sum()) for u in records]
  assert np.average(per_class[0], weights=counts) == pytest.approx(
      result['class_auc']['dark']['value'])
  # The plot's per-class panels are the one-vs-rest ROCs (scikit-learn's), none for K = 2.
  grid = np.linspace(0, 0.5, 11)
  panels = apps.get('frames').panels(result)
  assert [t for t, _ in panels] == ['dark vs rest', 'mid vs rest', 'bright vs rest']
  fpr, tpr, _ = sklearn.metrics.roc_curve(labels == 1, scores[:, 1])
  np.testing.assert_allclose(panels[1][1](records, grid), np.interp(grid, fpr, tpr))
  assert apps.get('frames').panels({'num_classes': 2}) == []
  by_counts = points['auc'].by_counts(records)(np.ones(len(records)))
  assert by_counts == pytest.approx(result['auc'], abs=1e-12)
  # Validation AUC: the macro one over the patches.
  probs, patch_labels = _soft(task.eval_patches('validation')[0]), task.eval_patches(
      'validation')[1]
  assert task.patch_auc(probs, patch_labels) == pytest.approx(
      sklearn.metrics.roc_auc_score(patch_labels, probs, multi_class='ovr'), abs=1e-12)


def test_config_classes_argument_and_checks():
  c = frames_config.get_config('synthetic,classes=3')
  assert (c.num_classes, c.data.synthetic_classes, c.data.classes) == (3, 3, None)
  validate.check_config(c)
  c.num_classes = 2
  with pytest.raises(ConfigError, match=r'num_classes=2 but the data will have 3 classes'):
    validate.check_config(c)
  d = frames_config.get_config('synthetic').to_dict()
  d['task']['class_balanced'] = 'yes'
  with pytest.raises(ConfigError, match='task.class_balanced'):
    validate.check_config(ml_collections.ConfigDict(d))
  c = frames_config.get_config('synthetic')
  c.data.synthetic_classes = 1
  with pytest.raises(ConfigError, match='data.synthetic_classes=1'):
    validate.check_config(c)


def test_synthetic_twin_classes(data_dir):
  from medft import data
  ds = data.load({'name': 'synthetic_frames', 'data_dir': str(data_dir), 'synthetic_classes': 3,
                  'test_share': 0.5})
  assert ds.splits['test'].classes == {'informative': 1, 'non_informative': 0, 'tinted_2': 2}
  assert ds.info['synthetic']['raw_dir'].endswith('frames_folder-n40-seed0-k3/raw')
  test = ds.splits['test']
  labels = np.asarray([test[i]['label'] for i in range(len(test))])
  assert set(labels) == {0, 1, 2}
  # The tinted class is visibly other: its mean hue is green, the others' red.
  rgb = {k: np.mean([test[i]['image'].reshape(-1, 3).mean(0) for i in np.flatnonzero(labels == k)],
                    axis=0) for k in range(3)}
  assert rgb[2][1] > rgb[2][0] and all(rgb[k][0] > rgb[k][1] for k in (0, 1))
  # The task reads K and the names from the prepared data's class map.
  task = get_task('frames', ds.splits, frames_config.get_config('synthetic,classes=3').task, 0)
  assert task.num_classes == 3
  assert task.class_names == ['non_informative', 'informative', 'tinted_2']


def test_frames_folder_class_map_needs_labels_without_gaps():
  from medft.data.frames_folder import FramesFolderConfig
  assert FramesFolderConfig(classes={'a': 0, 'b': 1, 'c': 2, 'd': 2}).classes['d'] == 2
  with pytest.raises(ConfigError, match=r'labels must be 0..K-1 with each used \(got \[0, 2\]\)'):
    FramesFolderConfig(classes={'a': 0, 'c': 2})


@pytest.mark.slow
def test_three_class_study_reports_per_class_and_macro_auc(tmp_path, data_dir):
  """Two real arms on the 3-class twin (4 steps each: the numbers are not the point), read
  back by the report from their run folders (about 25 s on an idle 2-core machine)."""
  c = frames_config.get_config('synthetic,classes=3,arms=scratch+scratch_xavier,fractions=1.0,'
                               'seeds=0,steps=4,batch=8')
  c.data.data_dir = str(data_dir)
  c.data.test_share = 0.5
  c.model.update(width=0.125, init_scheme='he')
  c.input_size = 67
  c.optim.base_lr = 0.003
  c.task.update(crop_size=64, test_crops=2, val_crops_per_frame=2, class_balanced=True)
  c.train.update(eval_every=4, log_every=2, checkpoint_every=1000, workers=1)
  c.sweep.report = False
  folder = tmp_path / 'study'
  medft.sweep(c, folder)
  report = build_report(folder, n_boot=30)
  runs = {a: json.loads((folder / a / '1.0' / '0' / 'results.json').read_text())
          for a in ('scratch', 'scratch_xavier')}
  test = runs['scratch']['test']
  assert test['num_classes'] == 3 and test['classes'] == ['non_informative', 'informative',
                                                          'tinted_2']
  assert report['primary_metric'] == 'auc'
  keys = [p['key'] for p in report['points']]
  assert keys[:4] == ['auc', 'auc_class0', 'auc_class1', 'auc_class2']
  assert len(keys) == 4 + 3 * 3  # + sensitivity per class at each of the 3 FPRs
  labels = {p['key']: p['label'] for p in report['points']}
  assert labels['auc'] == 'macro AUC (one-vs-rest)' and labels['auc_class2'] == (
      'AUC tinted_2 vs rest')
  rows = {r['arm']: r for r in report['rows']}
  for arm, results in runs.items():
    m = rows[arm]['metrics']
    assert m['auc']['value'] == pytest.approx(results['test']['auc'], abs=1e-12)
    for k, name in enumerate(results['test']['classes']):
      assert m[f'auc_class{k}']['value'] == pytest.approx(
          results['test']['class_auc'][name]['value'], abs=1e-12)
    assert rows[arm]['counts']['counts'] == results['test']['confusion_matrix']
    assert sum(map(sum, rows[arm]['counts']['counts'])) == results['test']['num_frames']
  pairs = {t['point']: t for t in report['pairs']}
  assert set(pairs) == set(keys)
  assert pairs['auc']['rows'][0]['p_adjusted'] is not None
  md = (folder / 'report.md').read_text()
  assert '| arm | seeds | macro AUC (one-vs-rest) | AUC non_informative vs rest |' in md
  assert '### Fraction 1: macro AUC (one-vs-rest)' in md
  assert '### Fraction 1: tinted_2: sensitivity at 20% FPR' in md
  assert '## Confusion matrices' in md
  assert '| true \\ predicted | non_informative | informative | tinted_2 |' in md
  assert 'for the macro AUC, the mean of the video\'s per-class AUC values' in md
  assert {'plots/roc_f1.png', 'plots/roc_panels_f1.png'} <= {p['file'] for p in report['plots']}


def test_a_three_class_manifest_gives_the_task_its_classes(tmp_path):
  """The CSV manifest builder's class map (sorted label names) is where the task takes K."""
  import csv

  from PIL import Image

  from medft import data
  from medft.data import synthetic
  root = tmp_path / 'mine'
  (root / 'frames').mkdir(parents=True)
  rows = []
  for i in range(12):
    label = i % 3
    rng = np.random.default_rng([4, i])
    image = (synthetic.tinted_frame(rng, 2, size=48) if label == 2
             else synthetic.frame_example(rng, label == 1, size=48))
    Image.fromarray(image).save(root / f'frames/f{i:02d}.png')
    rows.append([f'frames/f{i:02d}.png', ['blurry', 'sharp', 'stained'][label], f'p{i // 3}'])
  with (root / 'manifest.csv').open('w', newline='') as f:
    csv.writer(f).writerows([['image', 'label', 'subject'], *rows])
  ds = data.load({'name': 'manifest_classification', 'manifest': str(root / 'manifest.csv'),
                  'data_dir': str(tmp_path / 'data'), 'val_share': 0.25, 'test_share': 0.25})
  cfg = frames_config.get_config('classes=3').task
  cfg.crop_size = 32
  task = get_task('frames', ds.splits, cfg, 0)
  assert task.num_classes == 3 and task.class_names == ['blurry', 'sharp', 'stained']
