"""The report's paired tests over units: family-wise error under the null, power for a planted
difference, and pairing at the subject level, simulated through the real report functions.

Each simulated study feeds `medft.report.stats.pairs_table` (what `build_report` runs for one
all-pairs table) with results.json `test` dicts in the application's schema, checked against
its declaration (`medft.apps`), whose schema tests/test_report.py checks against real runs.
"""

import numpy as np
import pytest
import scipy.stats

from medft import apps
from medft.report import stats

STUDIES = 200
ARMS = ('scratch', 'fc8', 'fc6', 'conv1')  # 4 arms: 6 pairs per table


def _cimt_study(rng, shift_um: float = 0.0, subjects: int = 12, images: int = 2) -> dict:
  """Per-image LI errors = subject effect (SD 30 µm) + per-image noise (SD 10 µm); arm `fc8`
  gets `shift_um` added to every image. Same distribution in every arm when shift_um = 0."""
  subject = rng.normal(100.0, 30.0, subjects)
  arms = {}
  for arm in ARMS:
    per_image = []
    for s in range(subjects):
      for i in range(images):
        li = subject[s] + rng.normal(0, 10) + (shift_um if arm == 'fc8' else 0.0)
        ma = subject[s] + rng.normal(0, 10)
        per_image.append({'id': f's{s}_{i}', 'unit': f's{s}', 'li_error_um': li,
                          'ma_error_um': ma, 'cimt_error_um': abs(ma - li)})
    arms[arm] = [(0, {'auc': 0.5, 'per_image': per_image})]
  return arms


def _polyp_study(rng, shift: float = 0.0, videos: int = 16, frames: int = 5,
                 lesions: int = 2, candidates: int = 20) -> dict:
  """Candidates of each video: 2 per lesion, the rest false positives. Score = candidate
  quality (shared by the arms; lesion candidates +1) + the arm's own noise (SD 1); arm `fc8`
  gets `shift` added to its lesion candidates' scores."""
  videos_ = []
  for _ in range(videos):
    ids = np.full(candidates, -1)
    ids[:2 * lesions] = np.repeat(np.arange(lesions), 2)
    videos_.append((ids, rng.normal(0, 1, candidates) + (ids >= 0)))
  arms = {}
  for arm in ARMS:
    per_unit = []
    for v, (ids, quality) in enumerate(videos_):
      scores = quality + rng.normal(0, 1, candidates) + (shift if arm == 'fc8' else 0) * (ids >= 0)
      per_unit.append({'unit': f'v{v}', 'frames': [f'v{v}_{j}' for j in range(frames)],
                       'num_images': frames, 'num_lesions': lesions, 'scores': scores.tolist(),
                       'lesion_ids': ids.tolist()})
    arms[arm] = [(0, {'auc': 0.5, 'fp_rates': [0.5], 'per_unit': per_unit})]
  return arms


def _simulate(app: str, make, size: float, n_boot: int) -> tuple[float, float]:
  """(share of studies with any mark in the table, share where the fc8-scratch pair is
  marked) over STUDIES simulated studies."""
  spec = apps.get(app)
  rng = np.random.default_rng(0)
  any_mark = planted = 0
  for _ in range(STUDIES):
    arms = make(rng, size)
    test = arms['scratch'][0][1]
    assert not apps.missing_keys(spec, test)  # the real schema
    point = spec.points(test)[0]  # LI error; sensitivity at 0.5 FP/frame
    rows = stats.pairs_table(spec, point, arms, n_boot=n_boot, correction='holm')
    assert len(rows) == 6
    any_mark += any(r['mark'] for r in rows)
    planted += bool(next(r for r in rows if (r['a'], r['b']) == ('scratch', 'fc8'))['mark'])
  return any_mark / STUDIES, planted / STUDIES


@pytest.mark.parametrize('app, make, size, n_boot', [
    ('cimt', _cimt_study, 15.0, 0),      # +15 µm on every image of one arm (1.5 noise SDs)
    ('polyp', _polyp_study, 2.5, 0),     # +2.5 on one arm's lesion-candidate scores
])
def test_null_marks_at_most_7_percent_and_a_planted_difference_at_least_80(app, make, size,
                                                                            n_boot):
  null_rate, _ = _simulate(app, make, 0.0, n_boot)
  assert null_rate <= 0.07, f'{app}: a mark in {null_rate:.1%} of null studies'
  _, power = _simulate(app, make, size, n_boot)
  assert power >= 0.80, f'{app}: the planted difference marked in only {power:.1%}'


def test_identical_predictions_give_no_mark():
  spec = apps.get('cimt')
  arms = _cimt_study(np.random.default_rng(1))
  same = {arm: arms['scratch'] for arm in ARMS}
  for point in spec.points(same['scratch'][0][1])[:3]:
    rows = stats.pairs_table(spec, point, same, n_boot=20)
    assert all(r['p_raw'] == 1 and r['difference'] == 0 and not r['mark'] for r in rows)


def test_cimt_rank_test_pairs_subjects_not_images():
  """All images of a subject share one shift: the test ranks one value per subject."""
  spec = apps.get('cimt')
  rng = np.random.default_rng(3)
  subjects, images = 7, 4
  base = _cimt_study(rng, subjects=subjects, images=images)['scratch']
  shift = dict(zip((f's{s}' for s in range(subjects)), rng.normal(8, 6, subjects)))
  shifted = [(0, {'auc': 0.5, 'per_image': [
      {**i, 'li_error_um': i['li_error_um'] + shift[i['unit']]}
      for i in base[0][1]['per_image']]})]
  point = spec.points(base[0][1])[0]
  (row,) = stats.pairs_table(spec, point, {'scratch': base, 'fc8': shifted}, n_boot=50)
  assert row['n'] == row['n_units'] == subjects  # not subjects x images = 28
  per_subject = [np.mean([i['li_error_um'] for i in t[0][1]['per_image'] if i['unit'] == u])
                 for t in (base, shifted) for u in sorted(shift)]
  expected = scipy.stats.wilcoxon(per_subject[:subjects], per_subject[subjects:])
  assert row['p_raw'] == pytest.approx(expected.pvalue)
  assert row['statistic'] == pytest.approx(expected.statistic)
  assert row['p_raw'] >= 2 / 2 ** subjects  # the exact test's floor for 7 units
  by_image = scipy.stats.wilcoxon([i['li_error_um'] for i in base[0][1]['per_image']],
                                  [i['li_error_um'] for i in shifted[0][1]['per_image']])
  assert by_image.pvalue < row['p_raw'] / 10  # what pseudo-replication would have claimed
  assert row['difference'] == pytest.approx(-np.mean(list(shift.values())))


def test_shared_replicates_give_the_intervals_and_pairs_of_separate_bootstraps():
  """The report computes each arm's bootstrap replicates once (all points of a resample in
  turn, the FROC of a resample shared by its FP rates) and reuses them in its interval and in
  every pair: the numbers must be those of a separate bootstrap per interval and per pair."""
  from medft import metrics
  spec = apps.get('polyp')
  rng = np.random.default_rng(5)
  one, two = _polyp_study(rng, 1.0), _polyp_study(rng, 1.0)
  arms = {a: [(0, one[a][0][1]), (1, two[a][0][1])] for a in ARMS}  # two seeds per arm
  test = arms['scratch'][0][1]
  test['fp_rates'] = [0.5, 1.0, 2.0]
  for a in ARMS:
    for _, t in arms[a]:
      t['fp_rates'] = test['fp_rates']
  points = spec.points(test)
  replicates = stats.Replicates(40, points)
  for p in [p for p in points if p.compared]:
    rows = stats.pairs_table(spec, p, arms, n_boot=40, replicates=replicates)
    for r in rows:
      _, ua = stats.seed_units(spec, arms[r['a']])
      _, ub = stats.seed_units(spec, arms[r['b']])
      alone = metrics.paired_bootstrap(lambda us: stats.value(p, us), ua, ub, n_boot=40)
      assert (r['low'], r['high'], r['p_bootstrap']) == (alone['low'], alone['high'],
                                                           alone['p_value']), (p.key, r)
    _, units = stats.seed_units(spec, arms['fc8'])
    shared = stats.interval(p, units, 40, replicates=replicates.get(
        ('fc8', frozenset({0, 1}), tuple(stats.seed_units(spec, arms['fc8'])[0])), p, units))
    assert shared == stats.interval(p, units, 40)
  # The FP-rate points differ (a stale FROC would make them equal).
  _, units = stats.seed_units(spec, arms['fc8'])
  sens = [stats.value(p, units) for p in points[:3]]
  assert sens[0] < sens[2]
