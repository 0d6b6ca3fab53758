"""Tests for medft.metrics: ROC against scikit-learn, FROC on hand-worked cases,
CIMT errors in µm, and unit-level statistics."""

import json

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from medft import metrics

# ---------------------------------------------------------------------------
# ROC / AUC
# ---------------------------------------------------------------------------


def _random_roc_cases(num_cases: int = 150):
    rng = np.random.default_rng(1234)
    for case in range(num_cases):
        n = int(rng.integers(2, 60))
        labels = rng.integers(0, 2, n)
        labels[0], labels[1] = 0, 1  # both classes present
        rng.shuffle(labels)
        if case % 3 == 0:
            scores = rng.integers(0, 4, n)  # integer scores, heavy ties
        elif case % 3 == 1:
            scores = np.round(rng.random(n), 1)  # float scores with ties
        else:
            scores = rng.normal(size=n) + labels
        yield labels, scores


@pytest.mark.parametrize("drop_intermediate", [False, True])
def test_roc_curve_matches_sklearn(drop_intermediate):
    for labels, scores in _random_roc_cases():
        fpr, tpr, thr = metrics.roc_curve(labels, scores, drop_intermediate=drop_intermediate)
        ref_fpr, ref_tpr, ref_thr = sklearn.metrics.roc_curve(
            labels, scores, drop_intermediate=drop_intermediate
        )
        np.testing.assert_allclose(fpr, ref_fpr, rtol=0, atol=1e-15)
        np.testing.assert_allclose(tpr, ref_tpr, rtol=0, atol=1e-15)
        np.testing.assert_array_equal(thr, ref_thr)


def test_roc_auc_matches_sklearn_including_ties():
    for labels, scores in _random_roc_cases():
        assert metrics.roc_auc(labels, scores) == pytest.approx(
            sklearn.metrics.roc_auc_score(labels, scores), abs=1e-12
        )
    # All scores tied: every positive/negative pair gets half credit.
    assert metrics.roc_auc([0, 1, 0, 1], [3, 3, 3, 3]) == 0.5
    assert metrics.roc_auc([True, False], [0.2, 0.1]) == 1.0


def test_roc_rejects_single_class_and_bad_labels():
    with pytest.raises(ValueError, match="both classes.*negatives"):
        metrics.roc_auc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="both classes.*positives"):
        metrics.roc_curve([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"0/1.*\[2\]"):
        metrics.roc_auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc([0, 1], [0.1, np.nan])


def test_sensitivity_at_fpr_hand_worked():
    # ROC points: (0,0) -> (0,.5) at 0.9 -> (.5,1) at the tie 0.6 -> (1,1).
    labels, scores = [1, 0, 1, 0], [0.9, 0.6, 0.6, 0.1]
    got = metrics.sensitivity_at_fpr(labels, scores, fprs=(0.0, 0.1, 0.25, 0.5, 1.0))
    # fpr 0 is on the vertical segment: its top, 0.5. Then linear along the tie's diagonal.
    np.testing.assert_allclose(got, [0.5, 0.6, 0.75, 1.0, 1.0], rtol=0, atol=1e-15)
    # (0,0) -> (0,1/3) -> diagonal tie -> (1/3,2/3) -> (2/3,2/3) -> vertical -> (2/3,1) -> (1,1)
    labels, scores = [1, 0, 1, 0, 1, 0], [0.9, 0.6, 0.6, 0.5, 0.4, 0.1]
    got = metrics.sensitivity_at_fpr(labels, scores, fprs=(1 / 6, 0.5, 2 / 3))
    np.testing.assert_allclose(got, [0.5, 2 / 3, 1.0], rtol=0, atol=1e-15)


def test_sensitivity_at_fpr_agrees_with_interpolation_off_vertical_segments():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = rng.normal(size=400) + labels  # continuous: no ties
    fpr, tpr, _ = sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)
    # With distinct scores the curve is a staircase: sensitivity = top of the step.
    for target in (0.10, 0.15, 0.20):
        expected = tpr[fpr <= target].max()
        assert metrics.sensitivity_at_fpr(labels, scores, [target]) == [expected]
    with pytest.raises(ValueError, match="fprs"):
        metrics.sensitivity_at_fpr(labels, scores, [1.5])


# ---------------------------------------------------------------------------
# FROC
# ---------------------------------------------------------------------------

# Three images: image 0 holds lesions 0 and 1, image 1 holds lesion 2, image 2 has none.
#   score  lesion  note
#   0.9    0       detects lesion 0
#   0.8    -1      FP in image 2, tied with ...
#   0.8    2       ... the detection of lesion 2: one operating point for both
#   0.7    0       second hit on lesion 0: neither detection nor FP
#   0.6    -1      FP in image 0
#   0.5    1       detects lesion 1, and a tied duplicate hit on it
#   0.5    1
#   0.3    -1      FP in image 1
FROC_SCORES = [0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.5, 0.3]
FROC_LESIONS = [0, -1, 2, 0, -1, 1, 1, -1]
FROC_EXPECTED = {
    "thresholds": [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3],
    "fp_per_image": [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1],
    "sensitivity": [0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1, 1],
}


def _assert_curve(curve, expected):
    for key, values in expected.items():
        np.testing.assert_allclose(curve[key], values, rtol=0, atol=1e-15, err_msg=key)


def test_froc_curve_hand_worked():
    curve = metrics.froc_curve(FROC_SCORES, FROC_LESIONS, num_lesions=3, num_images=3)
    _assert_curve(curve, FROC_EXPECTED)
    assert (curve["num_lesions"], curve["num_images"]) == (3, 3)
    json.dumps(curve)  # plain python types only


def test_froc_curve_independent_of_candidate_order():
    order = np.random.default_rng(7).permutation(len(FROC_SCORES))
    curve = metrics.froc_curve(
        np.asarray(FROC_SCORES)[order], np.asarray(FROC_LESIONS)[order], 3, 3
    )
    _assert_curve(curve, FROC_EXPECTED)


def test_froc_curve_counts_missed_lesions_and_lesion_free_images():
    # A fourth lesion nobody hits and two extra empty images: sensitivity * 3/4,
    # FP/image * 3/5, same thresholds.
    curve = metrics.froc_curve(FROC_SCORES, FROC_LESIONS, num_lesions=4, num_images=5)
    np.testing.assert_allclose(
        curve["sensitivity"], np.asarray(FROC_EXPECTED["sensitivity"]) * 3 / 4, atol=1e-15
    )
    np.testing.assert_allclose(
        curve["fp_per_image"], np.asarray(FROC_EXPECTED["fp_per_image"]) * 3 / 5, atol=1e-15
    )


def test_froc_curve_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="num_lesions=2"):
        metrics.froc_curve(FROC_SCORES, FROC_LESIONS, num_lesions=2, num_images=3)
    with pytest.raises(ValueError, match="-2"):
        metrics.froc_curve([0.5], [-2], num_lesions=1, num_images=1)
    with pytest.raises(ValueError, match="num_images"):
        metrics.froc_curve([0.5], [0], num_lesions=1, num_images=0)
    empty = metrics.froc_curve([], [], num_lesions=1, num_images=1)
    assert empty["sensitivity"] == [0.0] and empty["fp_per_image"] == [0.0]


def test_froc_sensitivity_at_step_rule():
    curve = metrics.froc_curve(FROC_SCORES, FROC_LESIONS, num_lesions=3, num_images=3)
    # 0 FP: only threshold 0.9 -> 1/3. 0.5 FP: points up to 1/3 FP -> 2/3 (no interpolation
    # toward the 2/3-FP point). Exactly 2/3 FP: that point counts -> 1. Past the end: 1.
    got = metrics.froc_sensitivity_at(curve, [0.0, 0.1, 0.5, 2 / 3, 5.0])
    np.testing.assert_allclose(got, [1 / 3, 1 / 3, 2 / 3, 1.0, 1.0], rtol=0, atol=1e-15)
    assert metrics.froc_partial_area(curve, [0.0, 0.5, 1.0]) == pytest.approx(2 / 3)


def test_froc_sensitivity_at_exact_low_fp_rates():
    # 0.01 FP/frame with 300 frames is 3 FPs: the point with 3 FPs must count.
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    lesions = [-1, -1, -1, 0, -1]
    curve = metrics.froc_curve(scores, lesions, num_lesions=1, num_images=300)
    assert metrics.froc_sensitivity_at(curve, [0.01, 0.001]) == [1.0, 0.0]


def test_froc_on_grid():
    curve = metrics.froc_curve(FROC_SCORES, FROC_LESIONS, num_lesions=3, num_images=3)
    grid = metrics.froc_on_grid(curve, max_fp=1.0, num_points=5)
    np.testing.assert_allclose(grid["fp_per_image"], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(grid["sensitivity"], [1 / 3, 1 / 3, 2 / 3, 1, 1])


def test_pool_detection_units_keeps_resampled_units_apart():
    unit = {"scores": [0.9, 0.4], "lesion_ids": [5, -1], "num_lesions": 2, "num_images": 4}
    other = {"scores": [0.7], "lesion_ids": [5], "num_lesions": 1, "num_images": 1}
    pooled = metrics.pool_detection_units([unit, unit, other])
    assert pooled["num_lesions"] == 5 and pooled["num_images"] == 9
    np.testing.assert_array_equal(pooled["lesion_ids"], [0, -1, 2, -1, 4])
    curve = metrics.froc_curve(**pooled)
    # Both copies of lesion 5 and the other unit's lesion count: 3 of 5 detected.
    assert curve["sensitivity"][-1] == pytest.approx(3 / 5)
    assert curve["fp_per_image"][-1] == pytest.approx(2 / 9)


def test_pool_detection_units_in_range_ids_equal_renumbered_ones():
    """Ids already in 0..num_lesions-1 are kept (fast path); any others are renumbered in
    sorted order: both give the FROC of the same units numbered by hand."""
    rng = np.random.default_rng(0)
    units, by_hand = [], []
    for k in range(6):
        ids = rng.choice([-1, -1, 0, 2], size=7) if k % 2 else rng.choice([-1, 10, 30], size=7)
        scores = rng.normal(size=7)
        units.append({"scores": scores, "lesion_ids": ids, "num_lesions": 3, "num_images": 2})
        compact = {v: i for i, v in enumerate(sorted(set(ids[ids >= 0])))}
        by_hand.append({"scores": scores.tolist(), "lesion_ids": [compact.get(v, -1) for v in ids],
                        "num_lesions": 3, "num_images": 2})
    fast = metrics.froc_curve(**metrics.pool_detection_units(units))
    assert fast == metrics.froc_curve(**metrics.pool_detection_units(by_hand))
    with pytest.raises(ValueError, match="distinct lesions"):
        metrics.pool_detection_units([{"scores": [1, 2], "lesion_ids": [4, 9], "num_lesions": 1,
                                       "num_images": 1}])


def test_precomputed_replicates_equal_the_bootstrap_they_replace():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=20), rng.normal(0.5, 1, size=20)
    reps = [metrics.bootstrap_replicates(_mean, u, 200, seed=1) for u in (a, b)]
    assert metrics.bootstrap_ci(_mean, a, 200, seed=1, replicates=reps[0]) == metrics.bootstrap_ci(
        _mean, a, 200, seed=1)
    assert metrics.paired_bootstrap(_mean, a, b, 200, seed=1, replicates=tuple(reps)) == (
        metrics.paired_bootstrap(_mean, a, b, 200, seed=1))
    both = metrics.bootstrap_replicates([_mean, np.max], a, 200, seed=1)
    np.testing.assert_array_equal(both[:, 0], reps[0])


# ---------------------------------------------------------------------------
# CIMT
# ---------------------------------------------------------------------------

CF = 0.0645  # mm per pixel


def test_boundary_error_zero_and_shift():
    rng = np.random.default_rng(3)
    ref = 100 + rng.normal(size=50).cumsum()
    assert metrics.boundary_error_um(ref, ref, CF) == 0.0
    for k in (1, 3, -2):
        assert metrics.boundary_error_um(ref + k, ref, CF) == pytest.approx(
            abs(k) * CF * 1000, rel=1e-12
        )


def test_boundary_error_ignores_unannotated_columns():
    ref = np.array([10.0, np.nan, 12.0, np.nan])
    pred = np.array([11.0, 500.0, 13.0, np.nan])
    assert metrics.boundary_error_um(pred, ref, CF) == pytest.approx(CF * 1000)
    with pytest.raises(ValueError, match="1 columns"):
        metrics.boundary_error_um([np.nan, 1.0], [1.0, 1.0], CF)
    with pytest.raises(ValueError, match="no finite"):
        metrics.boundary_error_um([1.0], [np.nan], CF)


def test_cimt_error():
    li = np.array([50.0, 51.0, 52.0, np.nan])
    ma = np.array([60.0, 60.0, 61.0, 61.0])  # column 3 lacks LI: excluded from both means
    assert metrics.cimt_error_um(li, ma, li, ma, CF) == 0.0
    # Shifting both boundaries keeps the thickness: no CIMT error, but boundary error.
    assert metrics.cimt_error_um(li + 4, ma + 4, li, ma, CF) == 0.0
    pred_ma = ma + 2
    pred_ma[3] = 1000.0  # ignored column
    assert metrics.cimt_error_um(li, pred_ma, li, ma, CF) == pytest.approx(2 * CF * 1000)
    assert metrics.cimt_error_um(li + 3, ma, li, ma, CF) == pytest.approx(3 * CF * 1000)


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def _mean(units):
    return float(np.mean(units))


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_units():
    rng = np.random.default_rng(11)
    few = metrics.bootstrap_ci(_mean, rng.normal(size=15), n_boot=500)
    many = metrics.bootstrap_ci(_mean, rng.normal(size=500), n_boot=500)
    for ci in (few, many):
        assert ci["low"] < ci["value"] < ci["high"]
        assert ci["n_boot"] == 500
    assert many["high"] - many["low"] < 0.5 * (few["high"] - few["low"])
    json.dumps(few)


def test_bootstrap_ci_resamples_whole_units_and_is_deterministic():
    units = [[1.0, 1.0, 1.0], [5.0], [2.0, 2.0]]  # units of unequal size
    seen = []

    def pooled_mean(resampled):
        seen.append(resampled)
        return float(np.mean(np.concatenate(resampled)))

    first = metrics.bootstrap_ci(pooled_mean, units, n_boot=50, seed=3)
    assert all(len(r) == len(units) and all(any(u is v for v in units) for u in r) for r in seen)
    assert metrics.bootstrap_ci(pooled_mean, units, n_boot=50, seed=3) == first
    assert metrics.bootstrap_ci(pooled_mean, units, n_boot=50, seed=4) != first


def test_bootstrap_ci_skips_undefined_resamples():
    # Two subjects, one without positives: resamples of only that subject have no AUC.
    units = [([0, 1, 1], [0.1, 0.8, 0.9]), ([0, 0], [0.2, 0.3])]

    def auc(resampled):
        labels = np.concatenate([u[0] for u in resampled])
        return metrics.roc_auc(labels, np.concatenate([u[1] for u in resampled]))

    ci = metrics.bootstrap_ci(auc, units, n_boot=200)
    assert ci["n_skipped"] > 0 and ci["n_boot"] + ci["n_skipped"] == 200


def test_paired_bootstrap_against_itself():
    units = np.random.default_rng(5).normal(size=30)
    result = metrics.paired_bootstrap(_mean, units, units, n_boot=300)
    assert result["difference"] == 0.0
    assert result["low"] == result["high"] == 0.0
    assert result["p_value"] == 1.0


def test_paired_bootstrap_uses_pairing():
    # Units differ a lot from each other; B is consistently 0.1 below A. Only a paired
    # resampling (same indices in both arms) sees this small difference.
    rng = np.random.default_rng(6)
    a = rng.normal(scale=5.0, size=40)
    b = a - 0.1 + rng.normal(scale=0.01, size=40)
    result = metrics.paired_bootstrap(_mean, a, b, n_boot=500)
    assert result["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert 0 < result["low"] < result["difference"] < result["high"] < 0.2
    assert result["p_value"] < 0.05
    # No real difference: large p-value.
    c = a + rng.normal(scale=0.01, size=40)
    assert metrics.paired_bootstrap(_mean, a, c, n_boot=500)["p_value"] > 0.05


def test_paired_permutation_test():
    rng = np.random.default_rng(8)
    a = rng.normal(size=25)
    assert metrics.paired_permutation_test(_mean, a, a, n_permutations=200)["p_value"] == 1.0
    shifted = metrics.paired_permutation_test(_mean, a, a + 1.0, n_permutations=200)
    assert shifted["difference"] == pytest.approx(-1.0)
    assert shifted["p_value"] == pytest.approx(1 / 201)


def test_paired_wilcoxon_matches_scipy():
    rng = np.random.default_rng(9)
    a = rng.gamma(2.0, 10.0, size=30)
    b = a + rng.normal(loc=3.0, scale=5.0, size=30)
    expected = scipy.stats.wilcoxon(a, b)
    got = metrics.paired_wilcoxon(a, b)
    assert got["statistic"] == expected.statistic
    assert got["p_value"] == expected.pvalue
    assert got["n"] == 30 and got["n_nonzero"] == 30
    json.dumps(got)


def test_paired_wilcoxon_all_zero_differences_and_bad_input():
    a = [1.0, 2.0, 3.0]
    assert metrics.paired_wilcoxon(a, a) == {
        "statistic": 0.0, "p_value": 1.0, "n": 3, "n_nonzero": 0
    }
    with pytest.raises(ValueError, match="3 and 2"):
        metrics.paired_wilcoxon(a, a[:2])


def test_mean_sd():
    assert metrics.mean_sd([1.0, 2.0, 3.0, 4.0]) == {
        "mean": 2.5, "sd": pytest.approx(np.std([1, 2, 3, 4], ddof=1)), "n": 4
    }
    assert np.isnan(metrics.mean_sd([7.0])["sd"])
    with pytest.raises(ValueError):
        metrics.mean_sd([])


# ---------------------------------------------------------------------------
# Multiplicity, operating-point thresholds, per-unit values
# ---------------------------------------------------------------------------


def test_holm_hand_worked():
    # Sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> max(0.06, 0.04).
    assert metrics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert metrics.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert metrics.holm([]) == []
    assert metrics.adjust_p([0.01, 0.04, 0.03, 0.005], "holm") == metrics.holm(
        [0.01, 0.04, 0.03, 0.005]
    )
    with pytest.raises(ValueError, match="lie in"):
        metrics.holm([0.2, 1.5])


def test_bh_is_scipy_and_unknown_corrections_are_refused():
    p = [0.01, 0.04, 0.03, 0.005]
    # Hand-worked BH: sorted p x m / rank = 0.02, 0.02, 0.04, 0.04 (monotone from the top).
    assert metrics.adjust_p(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    with pytest.raises(ValueError, match="'bonferroni'.*holm, bh"):
        metrics.adjust_p(p, "bonferroni")


def test_auc_placements_average_to_the_auc():
    for labels, scores in _random_roc_cases(50):
        placements = metrics.auc_placements(labels, scores)
        assert placements.size == int(np.sum(labels))
        assert placements.mean() == pytest.approx(sklearn.metrics.roc_auc_score(labels, scores))


def test_threshold_at_fpr_is_the_operating_point():
    for labels, scores in _random_roc_cases(50):
        labels, scores = np.asarray(labels), np.asarray(scores, float)
        for target in (0.1, 0.2, 0.5):
            t = metrics.threshold_at_fpr(labels, scores, target)
            fpr = np.mean(scores[labels == 0] >= t)
            assert fpr <= target + 1e-12
            # The next lower distinct score would exceed the target FPR.
            lower = scores[scores < t]
            if lower.size:
                assert np.mean(scores[labels == 0] >= lower.max()) > target


def test_froc_threshold_and_unit_sensitivities_give_the_pooled_sensitivity():
    rng = np.random.default_rng(11)
    for _ in range(20):
        units = []
        for _ in range(int(rng.integers(2, 8))):
            n, lesions = int(rng.integers(1, 15)), int(rng.integers(0, 4))
            ids = np.where(rng.random(n) < 0.3, rng.integers(0, max(lesions, 1), n), -1)
            ids = ids if lesions else np.full(n, -1)
            units.append({"scores": np.round(rng.random(n), 1).tolist(),
                          "lesion_ids": ids.tolist(), "num_lesions": lesions, "num_images": 3})
        if not sum(u["num_lesions"] for u in units):
            continue
        curve = metrics.froc_curve(**metrics.pool_detection_units(units))
        lesions = np.asarray([u["num_lesions"] for u in units], float)
        for rate in (0.0, 0.5, 1.0, 4.0):
            per_unit = metrics.unit_lesion_sensitivity(
                units, metrics.froc_threshold_at(curve, rate)
            )
            assert np.isnan(per_unit[lesions == 0]).all()
            pooled = np.nansum(per_unit * lesions) / lesions.sum()
            assert pooled == pytest.approx(metrics.froc_sensitivity_at(curve, [rate])[0])
        assert metrics.candidate_recall(units) == pytest.approx(curve["sensitivity"][-1])


def test_candidate_recall_hand_worked():
    units = [{"lesion_ids": [0, 0, -1], "num_lesions": 2}, {"lesion_ids": [-1], "num_lesions": 1}]
    assert metrics.candidate_recall(units) == pytest.approx(1 / 3)  # one of three lesions hit
    with pytest.raises(ValueError, match="no lesion"):
        metrics.candidate_recall([{"lesion_ids": [-1], "num_lesions": 0}])


def test_bootstrap_ci_or_error_records_why_a_metric_is_undefined():
  def auc(units):  # every label positive: the ROC is undefined on any resample
    return metrics.roc_auc(np.ones(len(units), bool), np.asarray(units, float))

  undefined = metrics.bootstrap_ci_or_error(auc, [1, 2, 3], n_boot=5)
  assert undefined == {'value': None,
                       'error': 'metric_fn raised ValueError on all 5 bootstrap resamples.'}
  assert metrics.bootstrap_ci_or_error(np.mean, [1, 2, 3], n_boot=20, seed=4) == \
      metrics.bootstrap_ci(np.mean, [1, 2, 3], n_boot=20, seed=4)


def test_by_counts_metrics_equal_those_of_the_resampled_lists():
    """The report's bootstrap draws units as counts: FROC sensitivity and candidate recall
    must equal those of the resampled list exactly, AUC to rounding (tied scores included)."""
    rng = np.random.default_rng(4)
    units = []
    for k in range(9):
        n, lesions = int(rng.integers(1, 12)), int(rng.integers(0, 3))
        ids = rng.integers(-1, max(lesions, 1), n) if lesions else np.full(n, -1)
        units.append({"scores": np.round(rng.normal(size=n), 1), "lesion_ids": ids,
                      "num_lesions": lesions, "num_images": int(rng.integers(1, 4))})
    froc = metrics.froc_by_counts(units)
    recall = metrics.candidate_recall_by_counts(units)
    auc = metrics.roc_auc_by_counts([u["lesion_ids"] >= 0 for u in units],
                                    [u["scores"] for u in units])
    grid = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 10.0]
    checked = 0
    for _ in range(40):
        index = rng.integers(0, len(units), len(units))
        counts, resample = np.bincount(index, minlength=len(units)), [units[i] for i in index]
        try:
            ref = metrics.froc_curve(**metrics.pool_detection_units(resample))
        except ValueError:  # no lesion drawn: both ways refuse
            with pytest.raises(ValueError):
                froc(counts)
            continue
        assert metrics.froc_sensitivity_at(froc(counts), grid) == metrics.froc_sensitivity_at(
            ref, grid)
        assert recall(counts) == metrics.candidate_recall(resample)
        labels = np.concatenate([u["lesion_ids"] >= 0 for u in resample])
        assert auc(counts) == pytest.approx(
            metrics.roc_auc(labels, np.concatenate([u["scores"] for u in resample])), abs=1e-12)
        checked += 1
    assert checked >= 20
