"""The shared statistics of the covariance-based detectors: class statistics and whitening against direct
references, and ``sharing`` computing each of them once per input, only inside the context."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy.linalg import pinvh
from sklearn.covariance import EmpiricalCovariance

from oodscope import Features
from oodscope._sharing import sharing
from oodscope.detectors import _statistics
from oodscope.detectors._statistics import (
    class_statistics,
    in_range,
    whitener_form,
    whitening,
    whitening_update,
)
from oodscope.detectors.mahalanobis import Mahalanobis
from oodscope.detectors.rmds import RMDS
from oodscope.detectors.vim import ViM

from conftest import linear_head_features


def labelled(n: int, dim: int, n_classes: int, seed: int = 0, offset: float = 0.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 3.0, (n_classes, dim)) + offset
    labels = rng.integers(0, n_classes, n)
    h = means[labels] + rng.normal(0.0, 1.0, (n, dim)) * np.linspace(0.5, 1.5, dim)
    return h.astype(dtype), labels


def reference(h: np.ndarray, labels: np.ndarray):
    """Two passes in float64: exact class means, then the product of the class-centred features."""
    h = h.astype(np.float64)
    classes = np.unique(labels)
    means = np.stack([h[labels == c].mean(axis=0) for c in classes])
    centred = h - means[np.searchsorted(classes, labels)]
    return classes, means, centred.T @ centred / len(h)


# --- class statistics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, dim, n_classes",
    [(500, 12, 4), (700, 200, 3)],  # many classes for the width (gathered shifts), few (a BLAS product)
    ids=["gather", "product"],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_class_statistics_match_a_two_pass_reference(n, dim, n_classes, dtype):
    h, labels = labelled(n, dim, n_classes, dtype=dtype)
    statistics = class_statistics(h, labels)
    classes, means, covariance = reference(h, labels)
    np.testing.assert_array_equal(statistics.classes, classes)
    np.testing.assert_array_equal(statistics.counts, np.bincount(labels))
    np.testing.assert_allclose(statistics.means, means, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(statistics.covariance, covariance, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(statistics.covariance, statistics.covariance.T)
    assert statistics.means.flags.c_contiguous and statistics.covariance.flags.c_contiguous


def test_class_statistics_lose_no_digits_far_from_the_origin():
    # a mean of 1e4 and unit spread: the raw second moment minus the means' part would keep 8 of 16 digits
    # (error ~ 1e-8), and even a second moment about the global mean minus the between-class part ~ 1e-11
    h, labels = labelled(2000, 30, 5, offset=1e4)
    _, means, covariance = reference(h, labels)
    statistics = class_statistics(h, labels)
    np.testing.assert_allclose(statistics.means, means, rtol=1e-14)
    np.testing.assert_allclose(
        statistics.covariance, covariance, rtol=0, atol=1e-13 * np.abs(covariance).max()
    )


def test_class_statistics_without_labels_are_the_global_ones():
    h, _ = labelled(300, 8, 3)
    statistics = class_statistics(h, None)
    np.testing.assert_array_equal(statistics.counts, [300])
    np.testing.assert_allclose(statistics.means[0], h.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(statistics.covariance, np.cov(h, rowvar=False, bias=True), rtol=1e-12)


# --- whitening ----------------------------------------------------------------------------------------------


def test_whitening_of_a_well_conditioned_covariance_is_the_inverse_cholesky_factor():
    h, labels = labelled(400, 15, 3)
    covariance = class_statistics(h, labels).covariance
    whitener = whitening(covariance)
    assert whitener.shape == (15, 15) and whitener.flags.f_contiguous
    np.testing.assert_array_equal(np.tril(whitener, -1), 0.0)  # upper triangular: U⁻¹ with Σ = UᵀU
    np.testing.assert_allclose(whitener @ whitener.T, np.linalg.inv(covariance), rtol=1e-10, atol=1e-12)


def test_whitening_falls_back_to_the_pseudo_inverse():
    h, labels = labelled(400, 10, 3)
    h[:, :2] = 0.0  # dead units: Cholesky fails
    dead = class_statistics(h, labels).covariance
    whitener = whitening(dead)
    assert whitener.shape == (10, 8) and whitener.flags.f_contiguous
    np.testing.assert_allclose(whitener @ whitener.T, pinvh(dead), rtol=1e-10, atol=1e-12)
    # a unit repeated up to a 1e-6 noise: Cholesky succeeds, but a pivot is within the safety margin of the
    # pseudo-inverse's cut-off, where the inverse would amplify rounding
    h, labels = labelled(400, 10, 3)
    h[:, 1] = h[:, 0] + 1e-6 * h[:, 0].std() * np.random.default_rng(2).normal(size=400)
    close = class_statistics(h, labels).covariance
    pivots = np.diagonal(np.linalg.cholesky(close)) ** 2
    cutoff = 10 * np.finfo(float).eps * np.diagonal(close).max()
    assert cutoff < pivots.min() < _statistics.CHOLESKY_MARGIN * cutoff
    whitener = whitening(close)
    assert whitener.shape == (10, 10) and not np.tril(whitener, -1).any()  # the eigen route, made triangular
    np.testing.assert_allclose(whitener @ whitener.T, pinvh(close), rtol=1e-6, atol=1e-6)
    # Mahalanobis scores it through the triangular product, like a Cholesky whitening
    fit = Features(layers={"penultimate": h}, labels=labels)
    test, _ = labelled(30, 10, 3, seed=4)
    means = np.stack([h[labels == c].mean(axis=0) for c in range(3)])
    diff = test[:, None, :] - means[None]
    expected = np.einsum("nkd,de,nke->nk", diff, pinvh(close), diff).min(axis=1)
    scores = Mahalanobis().fit(fit).score(Features(layers={"penultimate": test})).scores
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_any_whitening_scores_alike_triangular_or_not():
    """The triangular product is used only where W's live rows are upper triangular: a rotated W (same
    W Wᵀ, as a file might hold) scores the same through a full product."""
    h, labels = labelled(300, 8, 3)
    test, _ = labelled(40, 8, 3, seed=1)
    det = Mahalanobis().fit(Features(layers={"penultimate": h}, labels=labels))
    assert whitener_form(det.whitening_).triangular
    scores = det.score(Features(layers={"penultimate": test})).scores
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))[0]
    det.whitening_ = det.whitening_ @ rotation
    assert not whitener_form(det.whitening_).triangular
    np.testing.assert_allclose(det.score(Features(layers={"penultimate": test})).scores, scores, rtol=1e-10)


def test_dead_units_are_set_aside_and_the_live_ones_whitened_by_cholesky():
    h, labels = labelled(400, 10, 3)
    h[:, [2, 7]] = 0.0
    covariance = class_statistics(h, labels).covariance
    whitener = whitening(covariance)
    assert whitener.shape == (10, 8) and not whitener[[2, 7]].any()
    form = whitener_form(whitener)
    assert form.triangular and form.live.tolist() == [0, 1, 3, 4, 5, 6, 8, 9]
    np.testing.assert_allclose(whitener @ whitener.T, pinvh(covariance), rtol=1e-10, atol=1e-12)


def test_whitening_update_whitens_the_low_rank_update():
    h, labels = labelled(400, 12, 3)
    covariance = class_statistics(h, labels).covariance
    directions = np.random.default_rng(1).normal(0.0, 5.0, (12, 3))
    updated = whitening_update(whitening(covariance), directions)
    expected = np.linalg.inv(covariance + directions @ directions.T)
    np.testing.assert_allclose(updated @ updated.T, expected, rtol=1e-9, atol=1e-12)
    # with dead units and directions 0 on them: the pseudo-inverse of the update
    h[:, :2] = 0.0
    covariance = class_statistics(h, labels).covariance
    directions[:2] = 0.0
    whitener = whitening(covariance)
    assert in_range(whitener, directions) and not in_range(whitener, np.ones((12, 1)))
    updated = whitening_update(whitener, directions)
    expected = pinvh(covariance + directions @ directions.T)
    np.testing.assert_allclose(updated @ updated.T, expected, rtol=1e-9, atol=1e-12)


def test_rmds_with_dead_units_matches_pseudo_inverses():
    h, labels = labelled(500, 10, 3)
    h[:, :2] = 0.0
    test, _ = labelled(40, 10, 3, seed=1)
    det = RMDS().fit(Features(layers={"penultimate": h}, labels=labels))
    assert hasattr(det, "relative_directions_")  # the means are 0 on the dead units: the linear form
    classes, means, covariance = reference(h, labels)
    background = np.cov(h, rowvar=False, bias=True)
    precision, background_precision = pinvh(covariance), pinvh(background)
    diff = test[:, None, :] - means[None]
    class_part = np.einsum("nkd,de,nke->nk", diff, precision, diff).min(axis=1)
    centred = test - h.mean(axis=0)
    expected = class_part - np.einsum("nd,de,ne->n", centred, background_precision, centred)
    scores = det.score(Features(layers={"penultimate": test})).scores
    np.testing.assert_allclose(scores, expected, rtol=1e-8, atol=1e-8)


def test_rmds_when_the_class_means_differ_where_sigma_has_no_variance():
    """A unit constant within each class but not across them: Σ is singular where the means differ, so the
    linear form does not apply and the two pseudo-inverse distances are subtracted."""
    h, labels = labelled(500, 10, 3)
    h[:, 0] = labels.astype(float)
    test, _ = labelled(40, 10, 3, seed=1)
    det = RMDS().fit(Features(layers={"penultimate": h}, labels=labels))
    assert not hasattr(det, "relative_directions_")
    _, means, covariance = reference(h, labels)
    background = np.cov(h, rowvar=False, bias=True)
    diff = test[:, None, :] - means[None]
    class_part = np.einsum("nkd,de,nke->nk", diff, pinvh(covariance), diff).min(axis=1)
    centred = test - h.mean(axis=0)
    expected = class_part - np.einsum("nd,de,ne->n", centred, pinvh(background), centred)
    scores = det.score(Features(layers={"penultimate": test})).scores
    np.testing.assert_allclose(scores, expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "dim, n_classes, offset", [(40, 3, 0.0), (12, 10, 0.0), (24, 4, 50.0)], ids=["few", "many", "far"]
)
def test_rmds_linear_form_matches_the_two_distances(dim, n_classes, offset):
    """With Σ invertible RMDS scores through its linear form; it equals MD_k − MD_0 computed directly from
    the two inverse covariances, with many classes (K > D / 8) and far from the origin too."""
    h, labels = labelled(600, dim, n_classes, offset=offset)
    test, _ = labelled(50, dim, n_classes, seed=1, offset=offset)
    test = np.vstack([test, test[:10] * 3.0])  # some far from every class
    det = RMDS().fit(Features(layers={"penultimate": h}, labels=labels))
    assert det.relative_directions_.shape == det.background_directions_.shape == (dim, n_classes)
    _, means, covariance = reference(h, labels)
    background = np.cov(h, rowvar=False, bias=True)
    precision, background_precision = np.linalg.inv(covariance), np.linalg.inv(background)
    diff = test[:, None, :] - means[None]
    class_part = np.einsum("nkd,de,nke->nk", diff, precision, diff).min(axis=1)
    centred = test - h.mean(axis=0)
    expected = class_part - np.einsum("nd,de,ne->n", centred, background_precision, centred)
    scores = det.score(Features(layers={"penultimate": test})).scores
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


# --- sharing --------------------------------------------------------------------------------------------


def features(seed: int = 0) -> Features:
    h, labels = labelled(300, 32, 4, seed=seed)  # D ≥ 8K: RMDS whitens Σ_0 by updating Σ's whitening
    weight = np.random.default_rng(5).normal(0.0, 1.0, (4, 32)) / 4.0
    bias = np.random.default_rng(6).normal(0.0, 0.1, 4)
    return linear_head_features(h, weight, bias, labels)


@pytest.fixture
def calls(monkeypatch):
    """How many times the scatter pass and the whitening ran."""
    counted = {"scatter": 0, "whitening": 0}

    def counting(name, function):
        def wrapper(*args):
            counted[name] += 1
            return function(*args)

        return wrapper

    monkeypatch.setattr(_statistics, "_class_scatter", counting("scatter", _statistics._class_scatter))
    monkeypatch.setattr(_statistics, "_whitening", counting("whitening", _statistics._whitening))
    return counted


def fit_all(fit: Features) -> list:
    return [Mahalanobis().fit(fit), RMDS().fit(fit), ViM().fit(fit), ViM(dim=3).fit(fit)]


def learned(detector) -> dict:
    return {k: v for k, v in vars(detector).items() if k.endswith("_") and not k.startswith("_")}


def test_inside_the_context_the_statistics_are_computed_once(calls):
    fit, test = features(0), features(1)
    separate = fit_all(fit)
    assert calls == {"scatter": 4, "whitening": 2}
    calls.update(scatter=0, whitening=0)
    with sharing():
        shared = fit_all(fit)
    assert calls == {"scatter": 1, "whitening": 1}  # one pass for all four; Σ whitened once for two
    for alone, together in zip(separate, shared, strict=True):
        assert learned(alone).keys() == learned(together).keys()
        for name, value in learned(alone).items():
            np.testing.assert_array_equal(learned(together)[name], value, err_msg=name)
        np.testing.assert_array_equal(together.score(test).scores, alone.score(test).scores)
    assert shared[0].covariance_ is shared[1].covariance_


def test_normalising_detectors_share_the_normalised_features_and_their_statistics(calls):
    fit, test = features(0), features(1)
    with sharing():
        plain = [Mahalanobis().fit(fit), RMDS().fit(fit)]
        normalised = [Mahalanobis(normalize=True).fit(fit), RMDS(normalize=True).fit(fit)]
        for detector in plain + normalised:
            detector.score(test)
    assert calls["scatter"] == 2 and calls["whitening"] == 2  # one each for h and for h / ‖h‖


def test_outside_the_context_nothing_is_cached(calls):
    fit = features(0)
    h = fit.layer("penultimate")
    with sharing():
        Mahalanobis().fit(fit)
    Mahalanobis().fit(fit)  # the context has ended: computed afresh
    assert calls["scatter"] == 2
    before = Mahalanobis().fit(fit).class_means_
    h[:, 0] += 1.0  # a change in place between two fits is seen
    after = Mahalanobis().fit(fit).class_means_
    np.testing.assert_allclose(after[:, 0], before[:, 0] + 1.0)
    assert calls["scatter"] == 4


def test_inputs_are_recognised_by_identity(calls):
    fit = features(0)
    copy = Features(layers={"penultimate": fit.layer("penultimate").copy()}, labels=fit.labels)
    with sharing():
        Mahalanobis().fit(fit)
        with sharing():  # a nested context shares the enclosing one
            Mahalanobis().fit(fit)
        Mahalanobis().fit(copy)  # equal values, another array
    assert calls["scatter"] == 2


def test_other_threads_have_their_own_cache(calls):
    fit = features(0)
    with sharing():
        Mahalanobis().fit(fit)
        worker = threading.Thread(target=lambda: Mahalanobis().fit(fit))
        worker.start()
        worker.join()
        Mahalanobis().fit(fit)
    assert calls["scatter"] == 2  # the thread computed its own; the second fit here reused the first


def test_vim_uses_the_labels_only_to_share_statistics():
    fit, test = features(0), features(1)
    unlabelled = Features(
        logits=fit.logits, layers=fit.layers, head_weight=fit.head_weight, head_bias=fit.head_bias
    )
    for dim in (3, 16, 24):  # through the principal basis, then the residual one
        with_labels, without = ViM(dim=dim).fit(fit), ViM(dim=dim).fit(unlabelled)
        np.testing.assert_allclose(with_labels.score(test).scores, without.score(test).scores, rtol=1e-10)


def test_vim_residuals_of_rows_nearly_inside_the_principal_subspace():
    # residuals 1e-5 of the norm: through the principal basis, ‖x‖² − ‖xP‖² would keep 6 of 16 digits, so
    # these rows are projected explicitly
    rng = np.random.default_rng(3)
    h = np.zeros((400, 10))
    h[:, :3] = rng.normal(0.0, 10.0, (400, 3)) + 20.0
    h[:, 3:] = rng.normal(0.0, 1e-4, (400, 7))
    weight = np.zeros((3, 10))
    weight[:, :3] = np.eye(3)  # the origin u = −W⁺b lies in the principal subspace too
    bias = np.full(3, 5.0)
    fit = Features(logits=h @ weight.T + bias, layers={"penultimate": h}, head_weight=weight, head_bias=bias)
    det = ViM(dim=3).fit(fit)
    origin = -np.linalg.pinv(weight) @ bias
    _, _, vt = np.linalg.svd(h - origin, full_matrices=True)
    residual = np.linalg.norm((h - origin) @ vt[3:].T, axis=1)
    assert residual.max() < 1e-4 * np.linalg.norm(h - origin, axis=1).min()
    assert det.alpha_ == pytest.approx(fit.logits.max(axis=1).mean() / residual.mean(), rel=1e-9)


def test_vim_scores_through_either_basis_alike():
    """Scoring projects on the smaller basis (here P, 3 < 29); a file saved with R alone scores the same, and
    the scores of near-subspace rows are those of the explicit projection."""
    fit, test = features(0), features(1)
    det = ViM(dim=3).fit(fit)
    scores = det.score(test).scores
    np.testing.assert_allclose(det.principal_space_.T @ det.null_space_, np.zeros((3, 29)), atol=1e-12)
    h = test.layer("penultimate")
    inside = det.origin_ + (h - det.origin_) @ det.principal_space_ @ det.principal_space_.T
    near = Features(
        logits=test.logits, layers={"penultimate": inside + 1e-6 * det.null_space_[:, 0]},
        head_weight=test.head_weight, head_bias=test.head_bias,
    )  # fmt: skip
    expected_near = det.score(near).scores
    del det.principal_space_  # as loaded from a file written before principal_space_ existed
    np.testing.assert_allclose(det.score(test).scores, scores, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(det.score(near).scores, expected_near, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dim, n_classes", [(40, 4), (12, 4)], ids=["update", "factorised"])
def test_rmds_background_whitening_matches_scikit_learn(dim, n_classes):
    # K ≤ D / 8: Σ_0's whitening is the rank-K update of Σ's; otherwise Σ_0 is factorised itself
    h, labels = labelled(600, dim, n_classes)
    test, _ = labelled(50, dim, n_classes, seed=1)
    det = RMDS().fit(Features(layers={"penultimate": h}, labels=labels))
    _, means, covariance = reference(h, labels)
    background = EmpiricalCovariance().fit(h)
    np.testing.assert_allclose(
        det.background_whitening_ @ det.background_whitening_.T,
        np.linalg.inv(background.covariance_),
        rtol=1e-9,
        atol=1e-12,
    )
    precision = np.linalg.inv(covariance)
    diff = test[:, None, :] - means[None]
    expected = np.einsum("nkd,de,nke->nk", diff, precision, diff).min(axis=1) - background.mahalanobis(test)
    scores = det.score(Features(layers={"penultimate": test})).scores
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-9)


def test_evaluate_and_tune_compute_the_statistics_once(calls):
    from oodscope.bench import evaluate, tune

    fit, test, ood = features(0), features(1), features(2)
    detectors = [Mahalanobis(), RMDS(), ViM(), ViM(dim=3)]
    report = evaluate(None, fit, test, {"ood": ood}, detectors=detectors, errors="raise")
    assert calls["scatter"] == 1 and len(report.rows) == len(detectors)
    calls.update(scatter=0, whitening=0)
    tune(ViM(), {"dim": [2, 3, 4]}, fit, test, ood)
    assert calls["scatter"] == 1
