"""Tests for ``oodscope.metrics``: exact agreement with scikit-learn and brute-force references."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from oodscope.metrics import (
    aupr_in,
    aupr_out,
    auroc,
    bench_metrics,
    detect_acc,
    fpr_at_tpr,
    threshold_at_tpr,
    tnr_at_tpr,
)
from oodscope.metrics import roc_curve as exact_roc_curve

TOL = 1e-9
XX_VALUES = (95, 90, 99, 50, 100)
POSITIVES = ("ood", "id")


# ---------------------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------------------


def _stack(s_in, s_out):
    s_in = np.asarray(s_in, dtype=np.float64)
    s_out = np.asarray(s_out, dtype=np.float64)
    scores = np.concatenate((s_in, s_out))
    y_ood = np.concatenate((np.zeros(s_in.size, dtype=int), np.ones(s_out.size, dtype=int)))
    return scores, y_ood


def ref_auroc(s_in, s_out):
    scores, y_ood = _stack(s_in, s_out)
    return roc_auc_score(y_ood, scores)


def ref_fpr(s_in, s_out, tpr, positive):
    scores, y_ood = _stack(s_in, s_out)
    if positive == "ood":
        fpr, tpr_curve, _ = roc_curve(y_ood, scores, drop_intermediate=False)
    else:
        fpr, tpr_curve, _ = roc_curve(1 - y_ood, -scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr_curve, tpr, side="left")])


def ref_aupr_out(s_in, s_out):
    scores, y_ood = _stack(s_in, s_out)
    return average_precision_score(y_ood, scores)


def ref_aupr_in(s_in, s_out):
    scores, y_ood = _stack(s_in, s_out)
    return average_precision_score(1 - y_ood, -scores)


def ref_detect_acc(s_in, s_out):
    scores, y_ood = _stack(s_in, s_out)
    fpr, tpr_curve, _ = roc_curve(y_ood, scores, drop_intermediate=False)
    return float(np.max(0.5 * (tpr_curve + 1.0 - fpr)))


def brute_auroc(s_in, s_out):
    s_in = np.asarray(s_in, dtype=np.float64)[None, :]
    s_out = np.asarray(s_out, dtype=np.float64)[:, None]
    return float(np.mean((s_out > s_in) + 0.5 * (s_out == s_in)))


def brute_fpr(s_in, s_out, tpr, positive):
    """Direct threshold scan following the documented definitions."""
    s_in = np.asarray(s_in, dtype=np.float64)
    s_out = np.asarray(s_out, dtype=np.float64)
    values = np.unique(np.concatenate((s_in, s_out)))
    if positive == "ood":
        for t in values[::-1]:  # highest threshold first
            if np.count_nonzero(s_out >= t) / s_out.size >= tpr:
                return np.count_nonzero(s_in >= t) / s_in.size
    else:
        for t in values:  # lowest threshold first
            if np.count_nonzero(s_in <= t) / s_in.size >= tpr:
                return np.count_nonzero(s_out <= t) / s_out.size
    raise AssertionError("unreachable")


def brute_detect_acc(s_in, s_out):
    s_in = np.asarray(s_in, dtype=np.float64)
    s_out = np.asarray(s_out, dtype=np.float64)
    thresholds = np.append(np.unique(np.concatenate((s_in, s_out))), np.inf)
    return max(0.5 * (np.mean(s_out >= t) + np.mean(s_in < t)) for t in thresholds)


# ---------------------------------------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------------------------------------


def _datasets():
    rng = np.random.default_rng(12345)
    return {
        "normal": (rng.normal(size=300), rng.normal(loc=1.0, size=200)),
        "normal_unbalanced": (rng.normal(size=37), rng.normal(loc=0.5, size=1013)),
        "int_ties_012": (rng.integers(0, 3, size=250).astype(float), rng.integers(0, 3, size=170) + 0.0),
        "int_ties_shifted": (rng.integers(0, 5, size=400) * 1.0, rng.integers(2, 7, size=400) * 1.0),
        "all_equal": (np.full(20, 0.7), np.full(13, 0.7)),
        "one_vs_one": (np.array([0.3]), np.array([0.8])),
        "one_vs_one_tied": (np.array([1.0]), np.array([1.0])),
        "one_vs_one_reversed": (np.array([2.0]), np.array([-2.0])),
        "separated": (np.arange(10.0), np.arange(10.0) + 100),
        "reversed": (np.arange(10.0) + 100, np.arange(10.0)),
        "float32_rounded": (
            rng.normal(size=500).astype(np.float32).round(1).astype(np.float64),
            rng.normal(loc=0.3, size=500).astype(np.float32).round(1).astype(np.float64),
        ),
        "signed_zero": (np.array([-0.0, 0.0, 1.0]), np.array([0.0, -0.0, 2.0])),
    }


DATASETS = _datasets()
DATASET_IDS = sorted(DATASETS)


@pytest.fixture(params=DATASET_IDS)
def data(request):
    return DATASETS[request.param]


# ---------------------------------------------------------------------------------------------------------
# Agreement with scikit-learn on fixed data sets
# ---------------------------------------------------------------------------------------------------------


def test_auroc_matches_sklearn(data):
    s_in, s_out = data
    expected = ref_auroc(s_in, s_out)
    assert auroc(s_in, s_out) == pytest.approx(expected, abs=TOL)
    assert bench_metrics((s_in, s_out), metrics=("auroc",))["auroc"] == pytest.approx(expected, abs=TOL)
    if s_in.size * s_out.size <= 500_000:
        assert auroc(s_in, s_out) == pytest.approx(brute_auroc(s_in, s_out), abs=TOL)


@pytest.mark.parametrize("positive", POSITIVES)
@pytest.mark.parametrize("xx", XX_VALUES)
def test_fpr_matches_sklearn_bit_for_bit(data, xx, positive):
    s_in, s_out = data
    tpr = xx / 100
    expected = ref_fpr(s_in, s_out, tpr, positive)
    assert fpr_at_tpr(s_in, s_out, tpr=tpr, positive=positive) == expected
    assert (
        bench_metrics((s_in, s_out), metrics=(f"fpr{xx}tpr",), positive=positive)[f"fpr{xx}tpr"] == expected
    )
    assert (
        bench_metrics((s_in, s_out), metrics=(f"fpr{xx}tpr_{positive}",))[f"fpr{xx}tpr_{positive}"]
        == expected
    )
    assert expected == pytest.approx(brute_fpr(s_in, s_out, tpr, positive), abs=TOL)


@pytest.mark.parametrize("positive", POSITIVES)
@pytest.mark.parametrize("xx", XX_VALUES)
def test_tnr_is_one_minus_fpr(data, xx, positive):
    s_in, s_out = data
    tpr = xx / 100
    fpr = fpr_at_tpr(s_in, s_out, tpr=tpr, positive=positive)
    assert tnr_at_tpr(s_in, s_out, tpr=tpr, positive=positive) == pytest.approx(1.0 - fpr, abs=1e-15)
    result = bench_metrics((s_in, s_out), metrics=(f"tnr{xx}tpr", f"tnr{xx}tpr_id"), positive=positive)
    assert result[f"tnr{xx}tpr"] == pytest.approx(1.0 - fpr, abs=1e-15)
    assert result[f"tnr{xx}tpr_id"] == pytest.approx(1.0 - ref_fpr(s_in, s_out, tpr, "id"), abs=1e-15)


def test_aupr_matches_sklearn(data):
    s_in, s_out = data
    assert aupr_out(s_in, s_out) == pytest.approx(ref_aupr_out(s_in, s_out), abs=TOL)
    assert aupr_in(s_in, s_out) == pytest.approx(ref_aupr_in(s_in, s_out), abs=TOL)
    result = bench_metrics((s_in, s_out), metrics=("aupr_in", "aupr_out"))
    assert result["aupr_out"] == pytest.approx(ref_aupr_out(s_in, s_out), abs=TOL)
    assert result["aupr_in"] == pytest.approx(ref_aupr_in(s_in, s_out), abs=TOL)


def test_detect_acc_matches_references(data):
    s_in, s_out = data
    value = detect_acc(s_in, s_out)
    assert value == pytest.approx(ref_detect_acc(s_in, s_out), abs=TOL)
    assert value == pytest.approx(brute_detect_acc(s_in, s_out), abs=TOL)
    assert 0.5 <= value <= 1.0


def test_bench_metrics_equals_individual_functions(data):
    s_in, s_out = data
    names = ("fpr95tpr", "auroc", "aupr_in", "aupr_out", "detect_acc", "tnr90tpr", "fpr99.5tpr_id")
    result = bench_metrics((s_in, s_out), metrics=names)
    assert list(result) == list(names)
    assert result["auroc"] == auroc(s_in, s_out)
    assert result["aupr_in"] == aupr_in(s_in, s_out)
    assert result["aupr_out"] == aupr_out(s_in, s_out)
    assert result["detect_acc"] == detect_acc(s_in, s_out)
    assert result["fpr95tpr"] == fpr_at_tpr(s_in, s_out)
    assert result["tnr90tpr"] == tnr_at_tpr(s_in, s_out, tpr=0.9)
    assert result["fpr99.5tpr_id"] == fpr_at_tpr(s_in, s_out, tpr=0.995, positive="id")


@pytest.mark.parametrize("positive", POSITIVES)
def test_roc_curve_matches_sklearn_point_for_point(data, positive):
    s_in, s_out = data
    fpr, tpr, thresholds = exact_roc_curve(s_in, s_out, positive=positive)
    scores, y_ood = _stack(s_in, s_out)
    if positive == "ood":
        ref_fpr_curve, ref_tpr_curve, ref_thresholds = roc_curve(y_ood, scores, drop_intermediate=False)
        assert thresholds[0] == np.inf
    else:
        ref_fpr_curve, ref_tpr_curve, ref_thresholds = roc_curve(1 - y_ood, -scores, drop_intermediate=False)
        ref_thresholds = -ref_thresholds
        assert thresholds[0] == -np.inf
    assert fpr.dtype == tpr.dtype == thresholds.dtype == np.float64
    np.testing.assert_array_equal(fpr, ref_fpr_curve)
    np.testing.assert_array_equal(tpr, ref_tpr_curve)
    np.testing.assert_array_equal(thresholds[1:], ref_thresholds[1:])
    # the metrics are read off this very curve
    first = int(np.searchsorted(tpr, 0.95, side="left"))
    assert fpr[first] == fpr_at_tpr(s_in, s_out, 0.95, positive=positive)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(auroc(s_in, s_out), abs=TOL)


@pytest.mark.parametrize("positive", POSITIVES)
def test_roc_curve_drop_intermediate_matches_sklearn_default(data, positive):
    s_in, s_out = data
    fpr, tpr, thresholds = exact_roc_curve(s_in, s_out, positive=positive, drop_intermediate=True)
    scores, y_ood = _stack(s_in, s_out)
    if positive == "ood":
        ref = roc_curve(y_ood, scores)
    else:
        ref = roc_curve(1 - y_ood, -scores)
        ref = (ref[0], ref[1], -ref[2])
    np.testing.assert_array_equal(fpr, ref[0])
    np.testing.assert_array_equal(tpr, ref[1])
    np.testing.assert_array_equal(thresholds[1:], ref[2][1:])


def test_roc_curve_by_hand():
    # ID 0, 1, 1 and OOD 1, 3: the tie at 1 moves both rates at once
    fpr, tpr, thresholds = exact_roc_curve([0.0, 1.0, 1.0], [1.0, 3.0])
    assert thresholds.tolist() == [np.inf, 3.0, 1.0, 0.0]
    assert (fpr * 3).tolist() == [0.0, 0.0, 2.0, 3.0]
    assert (tpr * 2).tolist() == [0.0, 1.0, 2.0, 2.0]
    fpr, tpr, thresholds = exact_roc_curve([0.0, 1.0, 1.0], [1.0, 3.0], positive="id")
    assert thresholds.tolist() == [-np.inf, 0.0, 1.0, 3.0]
    assert (tpr * 3).tolist() == [0.0, 1.0, 3.0, 3.0]
    assert (fpr * 2).tolist() == [0.0, 0.0, 1.0, 2.0]
    # a straight run: 0..3 then 10..13 gives a vertical run of OOD points, then a horizontal one of ID
    fpr, tpr, thresholds = exact_roc_curve([0.0, 1.0, 2.0, 3.0], [10.0, 11.0, 12.0, 13.0])
    assert thresholds.size == 9
    fpr, tpr, thresholds = exact_roc_curve(
        [0.0, 1.0, 2.0, 3.0], [10.0, 11.0, 12.0, 13.0], drop_intermediate=True
    )
    assert thresholds.tolist() == [np.inf, 13.0, 10.0, 0.0]
    assert fpr.tolist() == [0.0, 0.0, 0.0, 1.0] and tpr.tolist() == [0.0, 0.25, 1.0, 1.0]
    with pytest.raises(ValueError, match="positive must be 'ood'"):
        exact_roc_curve([0.0], [1.0], positive="OOD")
    with pytest.raises(ValueError, match="0 OOD scores"):
        exact_roc_curve([0.0], [])


@pytest.mark.parametrize(
    ("scores", "tpr", "expected"),
    [
        # sorted 1..10: keeping 70% keeps 7 samples, 71% keeps 8
        ([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], 0.7, 7.0),
        ([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], 0.71, 8.0),
        ([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], 0.95, 10.0),
        ([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], 1.0, 10.0),
        ([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], 0.1, 1.0),
        ([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], 1e-9, 1.0),
        # 25 scores 0..24: 0.28 * 25 is 7.000000000000001, and 7 / 25 >= 0.28, so 7 kept: score 6
        (list(range(25)), 0.28, 6.0),
        # 20 scores: 0.95 * 20 = 19 kept, the 19th smallest
        ([x / 4 for x in range(20)], 0.95, 4.5),
        # ties: 2 of 4 are enough, the threshold 1.0 keeps 3
        ([2.0, 1.0, 1.0, 0.0], 0.5, 1.0),
        ([-0.5], 0.3, -0.5),
    ],
)
def test_threshold_at_tpr_by_hand(scores, tpr, expected):
    threshold = threshold_at_tpr(scores, tpr)
    assert type(threshold) is float and threshold == expected
    assert threshold_at_tpr(np.asarray(scores, dtype=np.float32), tpr) == expected


def test_threshold_at_tpr_errors():
    with pytest.raises(ValueError, match=r"tpr must be in \(0, 1\]; got 95.*use 0.95 for 95%"):
        threshold_at_tpr([0.0, 1.0], 95)
    for tpr in (0, -0.5, 1.01, float("nan")):
        with pytest.raises(ValueError, match=r"tpr must be in \(0, 1\]"):
            threshold_at_tpr([0.0, 1.0], tpr)
    with pytest.raises(TypeError, match="tpr must be a real number"):
        threshold_at_tpr([0.0, 1.0], "0.95")
    with pytest.raises(ValueError, match="id_scores must hold at least one ID score"):
        threshold_at_tpr([], 0.95)
    with pytest.raises(ValueError, match=r"id_scores contains 2 non-finite value\(s\) \(1 NaN, 1 inf\)"):
        threshold_at_tpr([0.0, np.nan, np.inf], 0.5)
    with pytest.raises(ValueError, match="id_scores must be a 1-D array"):
        threshold_at_tpr([[0.0, 1.0]], 0.5)
    with pytest.raises(TypeError, match="id_scores has dtype <U1"):
        threshold_at_tpr(["a"], 0.5)


# ---------------------------------------------------------------------------------------------------------
# Property tests against scikit-learn
# ---------------------------------------------------------------------------------------------------------

_elements = st.one_of(
    st.integers(-3, 3).map(float),  # many ties
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64),
)
_scores = arrays(np.float64, st.integers(1, 40), elements=_elements)
_tprs = st.one_of(st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]), st.floats(1e-6, 1.0))


@settings(max_examples=200, deadline=None)
@given(_scores, _scores)
def test_property_auroc_aupr_detect_acc(s_in, s_out):
    result = bench_metrics((s_in, s_out), metrics=("auroc", "aupr_in", "aupr_out", "detect_acc"))
    assert result["auroc"] == pytest.approx(ref_auroc(s_in, s_out), abs=TOL)
    assert result["auroc"] == pytest.approx(brute_auroc(s_in, s_out), abs=TOL)
    assert result["aupr_in"] == pytest.approx(ref_aupr_in(s_in, s_out), abs=TOL)
    assert result["aupr_out"] == pytest.approx(ref_aupr_out(s_in, s_out), abs=TOL)
    assert result["detect_acc"] == pytest.approx(ref_detect_acc(s_in, s_out), abs=TOL)
    assert result["detect_acc"] == pytest.approx(brute_detect_acc(s_in, s_out), abs=TOL)


@settings(max_examples=200, deadline=None)
@given(_scores, _scores, _tprs, st.sampled_from(POSITIVES))
def test_property_fpr_at_tpr(s_in, s_out, tpr, positive):
    expected = ref_fpr(s_in, s_out, tpr, positive)
    assert fpr_at_tpr(s_in, s_out, tpr=tpr, positive=positive) == expected
    assert tnr_at_tpr(s_in, s_out, tpr=tpr, positive=positive) == pytest.approx(1.0 - expected, abs=1e-15)
    assert expected == pytest.approx(brute_fpr(s_in, s_out, tpr, positive), abs=TOL)


@settings(max_examples=200, deadline=None)
@given(_scores, _scores, _tprs)
def test_property_threshold_at_tpr(s_in, s_out, tpr):
    threshold = threshold_at_tpr(s_in, tpr)
    kept = np.count_nonzero(s_in <= threshold)
    assert threshold in s_in and kept / s_in.size >= tpr
    # no lower score keeps enough
    assert np.count_nonzero(s_in < threshold) / s_in.size < tpr
    # the ID-positive FPR is the share of OOD scores the threshold accepts as ID
    assert np.count_nonzero(s_out <= threshold) / s_out.size == ref_fpr(s_in, s_out, tpr, "id")


@settings(max_examples=100, deadline=None)
@given(_scores, _scores, st.randoms(use_true_random=False))
def test_property_labels_form_equals_tuple_form(s_in, s_out, rnd):
    scores, y_ood = _stack(s_in, s_out)
    perm = np.array(rnd.sample(range(scores.size), scores.size))
    names = ("auroc", "fpr95tpr", "fpr90tpr_id", "aupr_in", "aupr_out", "detect_acc")
    from_tuple = bench_metrics((s_in, s_out), metrics=names)
    from_labels = bench_metrics(scores[perm], y_ood[perm], metrics=names)
    assert from_labels == from_tuple


@settings(max_examples=100, deadline=None)
@given(_scores, _scores)
def test_property_swapping_classes(s_in, s_out):
    # Swapping ID and OOD and negating the scores exchanges the two FPR conventions and AUPR-In/Out.
    names = ("auroc", "fpr95tpr_ood", "fpr95tpr_id", "aupr_in", "aupr_out", "detect_acc")
    a = bench_metrics((s_in, s_out), metrics=names)
    b = bench_metrics((-s_out, -s_in), metrics=names)
    assert b["auroc"] == pytest.approx(a["auroc"], abs=TOL)
    assert b["fpr95tpr_ood"] == a["fpr95tpr_id"]
    assert b["fpr95tpr_id"] == a["fpr95tpr_ood"]
    assert b["aupr_in"] == pytest.approx(a["aupr_out"], abs=TOL)
    assert b["detect_acc"] == a["detect_acc"]


# ---------------------------------------------------------------------------------------------------------
# Special cases and exactness
# ---------------------------------------------------------------------------------------------------------


def test_all_equal_scores():
    s_in, s_out = np.full(7, 3.0), np.full(11, 3.0)
    for positive in POSITIVES:
        result = bench_metrics(
            (s_in, s_out), metrics=("auroc", "fpr95tpr", "tnr95tpr", "detect_acc"), positive=positive
        )
        assert result == {"auroc": 0.5, "fpr95tpr": 1.0, "tnr95tpr": 0.0, "detect_acc": 0.5}
    assert aupr_out(s_in, s_out) == pytest.approx(11 / 18, abs=1e-15)
    assert aupr_in(s_in, s_out) == pytest.approx(7 / 18, abs=1e-15)


def test_perfect_separation():
    s_in, s_out = np.linspace(0, 1, 50), np.linspace(2, 3, 30)
    names = ("auroc", "fpr95tpr", "fpr95tpr_id", "fpr100tpr", "detect_acc", "aupr_in", "aupr_out")
    result = bench_metrics((s_in, s_out), metrics=names)
    assert result == {
        "auroc": 1.0,
        "fpr95tpr": 0.0,
        "fpr95tpr_id": 0.0,
        "fpr100tpr": 0.0,
        "detect_acc": 1.0,
        "aupr_in": 1.0,
        "aupr_out": 1.0,
    }


def test_reversed_separation():
    s_in, s_out = np.linspace(2, 3, 30), np.linspace(0, 1, 50)
    result = bench_metrics((s_in, s_out), metrics=("auroc", "fpr95tpr", "fpr95tpr_id", "detect_acc"))
    assert result == {"auroc": 0.0, "fpr95tpr": 1.0, "fpr95tpr_id": 1.0, "detect_acc": 0.5}


def test_conventions_differ_with_known_values():
    s_in = np.arange(10.0)  # 0..9
    s_out = np.array([5.0, 10, 11, 12, 13, 14, 15, 16, 17, 18])
    # OOD positive: all 10 OOD scores >= 5 needed -> ID scores 5..9 flagged -> 0.5.
    assert fpr_at_tpr(s_in, s_out) == 0.5
    # ID positive: 95% of ID kept needs all ID <= 9 -> OOD score 5 accepted -> 0.1.
    assert fpr_at_tpr(s_in, s_out, positive="id") == 0.1
    assert bench_metrics((s_in, s_out), metrics=("fpr95tpr", "fpr95tpr_id", "fpr95tpr_ood")) == {
        "fpr95tpr": 0.5,
        "fpr95tpr_id": 0.1,
        "fpr95tpr_ood": 0.5,
    }
    # The suffix overrides `positive`.
    result = bench_metrics((s_in, s_out), metrics=("fpr95tpr", "fpr95tpr_ood", "tnr95tpr"), positive="id")
    assert result == {"fpr95tpr": 0.1, "fpr95tpr_ood": 0.5, "tnr95tpr": 0.9}


def test_ties_at_threshold_are_not_split():
    # 3 of 4 OOD at score 1 are tied with both ID scores: any TPR above 25% forces all tied ID in.
    s_in, s_out = np.array([1.0, 1.0]), np.array([1.0, 1.0, 1.0, 2.0])
    assert fpr_at_tpr(s_in, s_out, tpr=0.25) == 0.0
    assert fpr_at_tpr(s_in, s_out, tpr=0.26) == 1.0
    assert fpr_at_tpr(s_in, s_out, tpr=0.5) == 1.0
    assert fpr_at_tpr(s_in, s_out, tpr=0.5, positive="id") == 0.75
    assert auroc(s_in, s_out) == pytest.approx((2 * 1 + 6 * 0.5) / 8, abs=1e-15)


def test_auroc_is_exact_fraction():
    rng = np.random.default_rng(7)
    s_in = rng.integers(0, 50, size=1500)
    s_out = rng.integers(10, 60, size=1700)
    counts_in = np.bincount(s_in, minlength=60)
    counts_out = np.bincount(s_out, minlength=60)
    below_in = np.concatenate(([0], np.cumsum(counts_in)[:-1]))
    u2 = int(np.sum(counts_out * (2 * below_in + counts_in)))  # 2 * Mann-Whitney U
    expected = Fraction(u2, 2 * s_in.size * s_out.size)
    assert auroc(s_in, s_out) == float(expected)


@pytest.mark.parametrize(
    ("name", "tpr"),
    [
        ("fpr99.5tpr", 0.995),
        ("fpr99.9tpr", 0.999),
        ("fpr93.3tpr", 0.933),
        ("fpr100tpr", 1.0),
        ("fpr1tpr", 0.01),
    ],
)
def test_decimal_percent_names_parse_like_literals(name, tpr):
    rng = np.random.default_rng(3)
    s_in, s_out = rng.integers(0, 40, size=500) * 1.0, rng.integers(5, 45, size=1000) * 1.0
    for positive in POSITIVES:
        expected = ref_fpr(s_in, s_out, tpr, positive)
        assert bench_metrics((s_in, s_out), metrics=(name,), positive=positive)[name] == expected


def test_fpr999_threshold_is_exactly_point_999():
    # 999 of 1000 OOD scores are high; 999 / 1000 >= 0.999 must hold (it would not for 99.9 / 100).
    s_in = np.full(10, 5.0)
    s_out = np.concatenate(([0.0], np.arange(999.0) + 10))
    assert 99.9 / 100 != 0.999
    assert ref_fpr(s_in, s_out, 0.999, "ood") == 0.0
    assert bench_metrics((s_in, s_out), metrics=("fpr99.9tpr",))["fpr99.9tpr"] == 0.0
    assert fpr_at_tpr(s_in, s_out, tpr=0.999) == 0.0
    assert fpr_at_tpr(s_in, s_out, tpr=1.0) == 1.0


def test_detect_acc_known_value():
    # Best split between 0.3 and 0.35 or between 0.4 and 0.5: 0.5 * (1 + 0.75).
    assert detect_acc([0.1, 0.2, 0.3, 0.4], [0.35, 0.5, 0.6, 0.7]) == 0.875


# ---------------------------------------------------------------------------------------------------------
# Input forms and types
# ---------------------------------------------------------------------------------------------------------

_NAMES_ALL = ("auroc", "fpr95tpr", "fpr95tpr_id", "tnr90tpr", "aupr_in", "aupr_out", "detect_acc")


@pytest.mark.parametrize(
    ("in_value", "out_value"),
    [(0, 1), ("in", "out"), (-1, 1), (1, 0), (False, True), (2.5, 7)],
)
def test_labels_form_equals_tuple_form(in_value, out_value):
    rng = np.random.default_rng(0)
    s_in, s_out = rng.integers(0, 4, size=60) * 1.0, rng.normal(loc=2.0, size=45)
    scores = np.concatenate((s_in, s_out))
    labels = np.array([in_value] * s_in.size + [out_value] * s_out.size, dtype=object)
    if isinstance(in_value, str):
        labels = labels.astype(str)
    perm = rng.permutation(scores.size)
    expected = bench_metrics((s_in, s_out), metrics=_NAMES_ALL)
    result = bench_metrics(
        scores[perm], labels[perm], metrics=_NAMES_ALL, in_value=in_value, out_value=out_value
    )
    assert result == expected
    as_lists = bench_metrics(
        list(scores[perm]), list(labels[perm]), metrics=_NAMES_ALL, in_value=in_value, out_value=out_value
    )
    assert as_lists == expected


def test_tuple_and_list_pairs_are_equivalent():
    s_in, s_out = [0.1, 0.5, 0.2], [0.4, 0.9]
    assert bench_metrics((s_in, s_out)) == bench_metrics([s_in, s_out]) == {"auroc": 5 / 6, "fpr95tpr": 1 / 3}
    assert bench_metrics((np.array(s_in), np.array(s_out))) == {"auroc": 5 / 6, "fpr95tpr": 1 / 3}


def test_metrics_as_single_string_and_default_order():
    s_in, s_out = [0.1, 0.5, 0.2], [0.4, 0.9]
    assert bench_metrics((s_in, s_out), metrics="auroc") == {"auroc": 5 / 6}
    result = bench_metrics((s_in, s_out), metrics=("detect_acc", "auroc", "aupr_out"))
    assert list(result) == ["detect_acc", "auroc", "aupr_out"]


def test_returns_python_floats():
    result = bench_metrics((np.float32([0.1, 0.5]), np.int64([1, 0])), metrics=_NAMES_ALL)
    assert all(type(v) is float for v in result.values())
    s_in, s_out = np.arange(5), np.arange(5) + 2
    for func in (auroc, aupr_in, aupr_out, detect_acc, fpr_at_tpr, tnr_at_tpr):
        assert type(func(s_in, s_out)) is float


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, np.int8, np.int32, np.int64, np.uint16, np.float16]
)
def test_dtypes_give_same_result(dtype):
    rng = np.random.default_rng(1)
    s_in = rng.integers(0, 20, size=80)
    s_out = rng.integers(5, 25, size=70)
    expected = bench_metrics((s_in.astype(np.float64), s_out.astype(np.float64)), metrics=_NAMES_ALL)
    assert expected["auroc"] == pytest.approx(ref_auroc(s_in, s_out), abs=TOL)
    result = bench_metrics((s_in.astype(dtype), s_out.astype(dtype)), metrics=_NAMES_ALL)
    assert result == expected


def test_float32_scores_match_sklearn_on_float32_data():
    rng = np.random.default_rng(2)
    s_in = rng.normal(size=300).astype(np.float32)
    s_out = rng.normal(loc=0.7, size=300).astype(np.float32)
    assert auroc(s_in, s_out) == pytest.approx(ref_auroc(s_in, s_out), abs=TOL)
    assert fpr_at_tpr(s_in, s_out) == ref_fpr(s_in, s_out, 0.95, "ood")
    assert fpr_at_tpr(s_in, s_out, positive="id") == ref_fpr(s_in, s_out, 0.95, "id")


def test_bool_scores():
    s_in = np.array([False, False, True, False])
    s_out = np.array([True, True, False])
    assert auroc(s_in, s_out) == pytest.approx(ref_auroc(s_in, s_out), abs=TOL)
    assert detect_acc(s_in, s_out) == pytest.approx(0.5 * (2 / 3 + 3 / 4), abs=1e-15)


def test_array_protocol_objects():
    class Wrapped:
        def __init__(self, values):
            self._values = np.asarray(values)

        def __array__(self, dtype=None, copy=None):
            return self._values if dtype is None else self._values.astype(dtype)

    s_in, s_out = [0.1, 0.5, 0.2], [0.4, 0.9]
    assert auroc(Wrapped(s_in), Wrapped(s_out)) == 5 / 6
    scores = Wrapped(s_in + s_out)
    labels = Wrapped([0, 0, 0, 1, 1])
    assert bench_metrics(scores, labels) == {"auroc": 5 / 6, "fpr95tpr": 1 / 3}


def test_caller_arrays_are_not_modified():
    rng = np.random.default_rng(5)
    s_in = rng.normal(size=100)
    s_out = rng.normal(size=80)
    s_in32 = s_in.astype(np.float32)
    scores = np.concatenate((s_in, s_out))
    labels = np.repeat([0, 1], [100, 80])
    copies = [a.copy() for a in (s_in, s_out, s_in32, scores, labels)]
    bench_metrics((s_in, s_out), metrics=_NAMES_ALL)
    bench_metrics((s_in32, s_out), metrics=_NAMES_ALL)
    bench_metrics(scores, labels, metrics=_NAMES_ALL)
    for func in (auroc, aupr_in, aupr_out, detect_acc, fpr_at_tpr, tnr_at_tpr):
        func(s_in, s_out)
    for original, copy in zip((s_in, s_out, s_in32, scores, labels), copies, strict=True):
        np.testing.assert_array_equal(original, copy)
        assert original.dtype == copy.dtype

    readonly = s_in.copy()
    readonly.flags.writeable = False
    assert auroc(readonly, s_out) == auroc(s_in, s_out)


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "AUROC",
        "fpr95",
        "fpr95tpr_foo",
        "fpr0tpr",
        "fpr101tpr",
        "fpr100.5tpr",
        "fprtpr",
        "aupr",
        "fpr-5tpr",
        "",
    ],
)
def test_unknown_metric_name_lists_valid_names(name):
    with pytest.raises(ValueError, match="auroc") as excinfo:
        bench_metrics(([0.0, 1.0], [2.0]), metrics=("auroc", name))
    message = str(excinfo.value)
    for expected in ("aupr_in", "aupr_out", "detect_acc", "fpr<XX>tpr", "tnr<XX>tpr", "_id"):
        assert expected in message


def test_unknown_metric_checked_before_inputs():
    # Name errors are reported even if the scores are also bad.
    with pytest.raises(ValueError, match="Unknown metric 'roc'"):
        bench_metrics(([], []), metrics=("roc",))


def test_metric_name_not_a_string():
    with pytest.raises(TypeError, match="Metric names must be strings"):
        bench_metrics(([0.0], [1.0]), metrics=("auroc", 95))


def test_empty_metrics():
    with pytest.raises(ValueError, match="at least one metric"):
        bench_metrics(([0.0], [1.0]), metrics=())


@pytest.mark.parametrize("positive", ["OOD", "in", "out", None, 1])
def test_invalid_positive(positive):
    with pytest.raises(ValueError, match="positive must be 'ood'.*or 'id'"):
        bench_metrics(([0.0], [1.0]), positive=positive)
    with pytest.raises(ValueError, match="positive must be 'ood'"):
        fpr_at_tpr([0.0], [1.0], positive=positive)
    with pytest.raises(ValueError, match="positive must be 'ood'"):
        tnr_at_tpr([0.0], [1.0], positive=positive)


@pytest.mark.parametrize("func", [auroc, aupr_in, aupr_out, detect_acc, fpr_at_tpr, tnr_at_tpr])
def test_two_dimensional_scores(func):
    with pytest.raises(
        ValueError, match=r"scores_in must be a 1-D array of per-sample scores.*shape \(3, 2\)"
    ):
        func(np.zeros((3, 2)), [1.0])
    with pytest.raises(ValueError, match=r"scores_out must be a 1-D array.*shape \(\)"):
        func([0.0], 1.0)


def test_two_dimensional_scores_with_labels():
    with pytest.raises(ValueError, match=r"scores must be a 1-D array of per-sample scores.*shape \(4, 1\)"):
        bench_metrics(np.zeros((4, 1)), [0, 0, 1, 1])


def test_empty_classes():
    with pytest.raises(ValueError, match="needs at least one ID and one OOD score; got 0 OOD scores"):
        auroc([0.1, 0.2], [])
    with pytest.raises(ValueError, match="needs at least one ID and one OOD score; got 0 ID scores"):
        bench_metrics(([], [0.5]))
    with pytest.raises(ValueError, match="got 0 ID scores and 0 OOD scores"):
        fpr_at_tpr([], [])
    with pytest.raises(ValueError, match="got 0 OOD scores"):
        bench_metrics([0.1, 0.2, 0.3], [0, 0, 0])


def test_non_finite_scores():
    with pytest.raises(ValueError, match=r"scores_out contains 3 non-finite value\(s\) \(2 NaN, 1 inf\)"):
        auroc([0.0, 1.0], [np.nan, 2.0, np.inf, np.nan])
    with pytest.raises(ValueError, match=r"scores_in contains 1 non-finite value\(s\) \(0 NaN, 1 inf\)"):
        bench_metrics(([0.0, -np.inf], [1.0]))
    with pytest.raises(
        ValueError, match=r"scores\[labels == in_value\] contains 1 non-finite value\(s\) \(1 NaN"
    ):
        bench_metrics([np.nan, 0.5, 1.0], [0, 0, 1])
    with pytest.raises(ValueError, match=r"scores\[labels == out_value\] contains 2 non-finite"):
        bench_metrics([0.0, np.nan, np.nan], [0, 1, 1])


def test_labels_length_mismatch():
    with pytest.raises(ValueError, match="labels has 2 entries but scores has 3"):
        bench_metrics([0.1, 0.2, 0.3], [0, 1])


def test_labels_with_unexpected_values():
    with pytest.raises(ValueError, match=r"found unexpected value\(s\) \[2, 3\]"):
        bench_metrics([0.1, 0.2, 0.3, 0.4, 0.5], [0, 1, 2, 3, 2])
    with pytest.raises(ValueError, match=r"in_value='in'.*out_value='out'.*unexpected value\(s\) \['OOD'\]"):
        bench_metrics([0.1, 0.2, 0.3], ["in", "out", "OOD"], in_value="in", out_value="out")
    with pytest.raises(ValueError, match=r"unexpected value\(s\) \['in', 'out'\].*in_value=.*out_value="):
        bench_metrics([0.1, 0.2], ["in", "out"])  # default 0/1 do not match strings


def test_labels_not_one_dimensional():
    with pytest.raises(ValueError, match=r"labels must be a 1-D array.*shape \(2, 1\)"):
        bench_metrics([0.1, 0.2], [[0], [1]])


def test_in_value_equals_out_value():
    with pytest.raises(ValueError, match="in_value and out_value must differ"):
        bench_metrics([0.1, 0.2], [1, 1], in_value=1, out_value=1)


def test_labels_with_pair():
    with pytest.raises(
        ValueError, match=r"labels must be None when scores is a \(scores_in, scores_out\) pair"
    ):
        bench_metrics(([0.1], [0.2]), labels=[0, 1])


def test_pair_of_wrong_length():
    with pytest.raises(ValueError, match=r"must be a pair \(scores_in, scores_out\); got 3 arrays"):
        bench_metrics(([0.1], [0.2], [0.3]))
    with pytest.raises(ValueError, match="got 1 arrays"):
        bench_metrics([np.array([0.1, 0.2])])


def test_single_array_without_labels():
    with pytest.raises(ValueError, match="labels is required when scores is a single array"):
        bench_metrics(np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="labels is required"):
        bench_metrics([0.1, 0.2])  # a list of numbers is one array, not a pair


@pytest.mark.parametrize("tpr", [0.0, -0.1, 1.0000001, 1.5, 95, float("nan"), float("inf")])
def test_tpr_out_of_range(tpr):
    with pytest.raises(ValueError, match=r"tpr must be in \(0, 1\]"):
        fpr_at_tpr([0.0], [1.0], tpr=tpr)
    with pytest.raises(ValueError, match=r"tpr must be in \(0, 1\]"):
        tnr_at_tpr([0.0], [1.0], tpr=tpr)


def test_tpr_percent_hint_and_type():
    with pytest.raises(ValueError, match="use 0.95 for 95%"):
        fpr_at_tpr([0.0], [1.0], tpr=95)
    with pytest.raises(TypeError, match="tpr must be a real number"):
        fpr_at_tpr([0.0], [1.0], tpr="0.95")
    with pytest.raises(TypeError, match="tpr must be a real number"):
        fpr_at_tpr([0.0], [1.0], tpr=True)


def test_non_numeric_scores():
    with pytest.raises(TypeError, match="scores_in has dtype <U1"):
        auroc(["a", "b"], [1.0])
    with pytest.raises(TypeError, match="scores_out is complex"):
        auroc([0.0], np.array([1 + 1j]))
    with pytest.raises(
        TypeError, match="scores_in must be a 1-D array of numeric per-sample scores; got a str"
    ):
        auroc("0.1", [1.0])
    with pytest.raises(TypeError, match="scores_in holds non-numeric objects"):
        auroc(np.array([0.1, "x"], dtype=object), [1.0])
    with pytest.raises(ValueError, match=r"scores_in contains 1 non-finite value\(s\) \(1 NaN"):
        auroc([0.1, None], [1.0])  # None converts to NaN
