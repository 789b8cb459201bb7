"""Residual, NECO, GMM and OpenMax against independent re-derivations of their papers' formulas."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal, weibull_min
from sklearn.covariance import EmpiricalCovariance
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from oodscope import GMM, NECO, Features, OpenMax, Residual, ViM
from oodscope._sharing import sharing
from oodscope.aggregation import StdNormalizedAggregator
from oodscope.detectors import gmm_score, neco_score, openmax_score, residual_score
from oodscope.detectors.openmax import TRANSLATE, fit_weibull_tail, weibull_tail_cdf

from conftest import linear_head_features

N_CLASSES, DIM = 4, 12


def labelled(n: int, seed: int, dim: int = DIM) -> Features:
    """Gaussian classes with a linear head whose logits classify them mostly right."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0, 2.0, (N_CLASSES, dim))
    labels = rng.integers(0, N_CLASSES, n)
    h = means[labels] + rng.normal(0, 1.0, (n, dim)) @ np.diag(np.linspace(0.5, 1.5, dim))
    weight = means / 2.0
    bias = np.random.default_rng(98).normal(0, 0.1, N_CLASSES)
    return linear_head_features(h, weight, bias, labels)


FIT, TEST = labelled(400, 1), labelled(60, 2)


# --- Residual -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [None, 3, 0.8])
def test_residual_matches_a_loop_over_samples(dim):
    det = Residual(dim=dim).fit(FIT)
    weight, bias, h = FIT.head_weight, FIT.head_bias, FIT.layer("penultimate")
    origin = -np.linalg.pinv(weight) @ bias
    moment = EmpiricalCovariance(assume_centered=True).fit(h - origin).covariance_
    eigenvalues, eigenvectors = np.linalg.eigh(moment)  # ascending
    if dim is None:
        d = DIM // 2  # the official rule for D < 768
    elif isinstance(dim, int):
        d = dim
    else:
        shares = np.cumsum(eigenvalues[::-1]) / eigenvalues.sum()
        d = int(np.argmax(shares >= dim)) + 1
    assert det.dim_ == d
    null_space = eigenvectors[:, : DIM - d]  # the D − d smallest
    np.testing.assert_allclose(det.origin_, origin, rtol=1e-10)
    np.testing.assert_allclose(det.null_space_ @ det.null_space_.T, null_space @ null_space.T, atol=1e-9)
    expected = [
        np.sqrt(sum(((x - origin) @ null_space[:, j]) ** 2 for j in range(DIM - d)))
        for x in TEST.layer("penultimate")
    ]
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-9)


def test_residual_hand_computed():
    # features on the x-axis about u = 0: the principal direction is x, the residual the |y| of a sample
    h = np.array([[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [-2.0, 0.0]])
    head = {"head_weight": np.eye(2), "head_bias": np.zeros(2)}
    det = Residual(dim=1).fit(Features(layers={"penultimate": h}, **head))
    test = Features(layers={"penultimate": np.array([[3.0, 4.0], [-5.0, 0.0], [0.0, -2.0]])}, **head)
    np.testing.assert_allclose(det.score(test).scores, [4.0, 0.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(residual_score([[3.0, 4.0]], [1.0, 1.0], [[0.0], [1.0]]), [3.0])


def test_residual_is_vims_residual_and_shares_its_eigendecomposition(monkeypatch):
    import oodscope.detectors.vim as vim_module

    calls = []
    original = vim_module._spectrum

    def counting(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(vim_module, "_spectrum", counting)
    with sharing():
        vim, res = ViM().fit(FIT), Residual().fit(FIT)
    assert len(calls) == 1
    np.testing.assert_array_equal(vim.null_space_, res.null_space_)
    residual = (vim.score(TEST).scores + np.log(np.exp(TEST.logits).sum(axis=1))) / vim.alpha_
    np.testing.assert_allclose(res.score(TEST).scores, residual, rtol=1e-9)
    Residual().fit(FIT)
    assert len(calls) == 2  # outside sharing() nothing is kept


def test_residual_errors_name_the_detector():
    with pytest.raises(ValueError, match=r"Residual's principal subspace must have between 1 and D - 1 = 11"):
        Residual(dim=DIM).fit(FIT)
    with pytest.raises(ValueError, match="Residual needs the weights"):
        Residual().fit(Features(layers=FIT.layers))


# --- NECO ---------------------------------------------------------------------------------------------------


def neco_reference(fit: np.ndarray, test: np.ndarray, d: int, logits=None) -> np.ndarray:
    """The reference code's recipe: StandardScaler, a full PCA, the first d coordinates over the norm."""
    scaler = StandardScaler().fit(fit)
    pca = PCA(n_components=fit.shape[1], svd_solver="full").fit(scaler.transform(fit))
    scores = []
    for i, x in enumerate(scaler.transform(test)):
        reduced = pca.transform(x[None, :])[0, :d]
        ratio = np.linalg.norm(reduced) / np.linalg.norm(x)
        scores.append(-ratio * (1.0 if logits is None else logits[i].max()))
    return np.array(scores)


@pytest.mark.parametrize("dim", [1, 5, 11])
def test_neco_matches_standard_scaler_and_pca(dim):
    det = NECO(dim=dim).fit(FIT)
    expected = neco_reference(FIT.layer("penultimate"), TEST.layer("penultimate"), dim)
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-9)
    scaler = StandardScaler().fit(FIT.layer("penultimate"))
    np.testing.assert_allclose(det.mean_, scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(det.scale_, scaler.scale_, rtol=1e-12)


def test_neco_variance_rule_and_max_logit_variant():
    pca = PCA(svd_solver="full").fit(StandardScaler().fit_transform(FIT.layer("penultimate")))
    d = int(np.argmax(np.cumsum(pca.explained_variance_ratio_) >= 0.9)) + 1
    det = NECO().fit(FIT)
    assert det.dim_ == d
    np.testing.assert_allclose(det.explained_variance_, pca.explained_variance_ * (len(FIT) - 1) / len(FIT))
    variant = NECO(max_logit=True).fit(FIT)
    expected = neco_reference(FIT.layer("penultimate"), TEST.layer("penultimate"), d, TEST.logits)
    np.testing.assert_allclose(variant.score(TEST).scores, expected, rtol=1e-9)
    assert NECO(dim=0.999999).fit(FIT).dim_ == DIM - 1


def test_neco_hand_computed_and_constant_features():
    # m = 0, s = 1, P = the x-axis: the score is −|x| / ‖h‖; a sample at the mean gets −1
    assert neco_score([[3.0, 4.0], [0.0, 0.0]], [0.0, 0.0], [1.0, 1.0], [[1.0], [0.0]]).tolist() == [
        -0.6,
        -1.0,
    ]
    h = FIT.layer("penultimate").copy()
    h[:, 0] = 7.0  # a constant (dead) unit: scale 1, as in StandardScaler
    det = NECO(dim=4).fit(Features(layers={"penultimate": h}))
    assert det.scale_[0] == 1.0 and det.mean_[0] == 7.0
    test = TEST.layer("penultimate")
    np.testing.assert_allclose(
        det.score(Features(layers={"penultimate": test})).scores, neco_reference(h, test, 4), rtol=1e-9
    )


def test_neco_errors():
    with pytest.raises(ValueError, match=r"NECO's principal subspace must have between 1 and D - 1 = 11"):
        NECO(dim=DIM).fit(FIT)
    with pytest.raises(ValueError, match=r"NECO\(max_logit=True\) needs the classifier's logits"):
        NECO(max_logit=True).fit(Features(layers=FIT.layers))
    det = NECO(max_logit=True).fit(FIT)
    with pytest.raises(ValueError, match="logits"):
        det.score(Features(layers=TEST.layers))


# --- GMM ----------------------------------------------------------------------------------------------------


def lexicographic(h: np.ndarray) -> np.ndarray:
    return h[np.lexsort(h.T[::-1])]


def gmm_reference(x: np.ndarray, weights, means, covariance) -> np.ndarray:
    """−log Σ_k π_k exp(−½ (x − μ_k)ᵀ Σ⁻¹ (x − μ_k)), one sample and one component at a time, from scipy's
    Gaussian log-density with its normaliser added back."""
    normaliser = multivariate_normal(mean=np.zeros(len(covariance)), cov=covariance).logpdf(
        np.zeros(len(covariance))
    )
    scores = []
    for row in x:
        terms = [
            np.log(w) + multivariate_normal(mean=m, cov=covariance).logpdf(row) - normaliser
            for w, m in zip(weights, means, strict=True)
        ]
        scores.append(-np.logaddexp.reduce(terms))
    return np.array(scores)


def test_gmm_fits_sklearns_tied_mixture_and_scores_its_likelihood():
    h = lexicographic(FIT.layer("penultimate"))  # already in the detector's canonical order
    det = GMM(n_components=4).fit(Features(layers={"penultimate": h}))
    assert not hasattr(det, "pca_components_")  # D = 12 <= 50: no PCA
    mixture = GaussianMixture(n_components=4, covariance_type="tied", random_state=0).fit(h)
    np.testing.assert_allclose(det.weights_, mixture.weights_, rtol=1e-12)
    np.testing.assert_allclose(det.means_, mixture.means_, rtol=1e-12)
    np.testing.assert_allclose(det.covariance_, mixture.covariances_, rtol=1e-12)
    test = TEST.layer("penultimate")
    expected = gmm_reference(test, mixture.weights_, mixture.means_, mixture.covariances_)
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-9)
    # the same up to sklearn's constant normaliser: −log p(x) − ½ log det(2πΣ)
    _, logdet = np.linalg.slogdet(2 * np.pi * mixture.covariances_)
    np.testing.assert_allclose(det.score(TEST).scores, -mixture.score_samples(test) - 0.5 * logdet, rtol=1e-9)


def test_gmm_pca_is_sklearns_and_far_samples_do_not_underflow():
    h = lexicographic(labelled(300, 3, dim=20).layer("penultimate"))
    det = GMM(n_components=3, pca_dim=5).fit(Features(layers={"penultimate": h}))
    pca = PCA(n_components=5, random_state=0).fit(h)
    np.testing.assert_allclose(np.abs(det.pca_components_.T @ pca.components_.T), np.eye(5), atol=1e-9)
    reduced = (h - pca.mean_) @ det.pca_components_
    mixture = GaussianMixture(n_components=3, covariance_type="tied", random_state=0).fit(reduced)
    np.testing.assert_allclose(det.means_, mixture.means_, rtol=1e-9, atol=1e-9)
    test = labelled(30, 4, dim=20).layer("penultimate")
    far = np.vstack([test, 1e3 * np.ones((1, 20))])
    scores = det.score(Features(layers={"penultimate": far})).scores
    expected = gmm_reference(
        (far - pca.mean_) @ det.pca_components_, mixture.weights_, mixture.means_, mixture.covariances_
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-8)
    assert np.isfinite(scores).all() and scores[-1] > 1e3  # OpenOOD's exp would underflow to log(1e-45)


def test_gmm_hand_computed():
    # one component at 0 with the identity precision: S = ½‖x‖²; two at ±1 with π = ½: see the doctest
    assert gmm_score([[3.0, 4.0]], [1.0], [[0.0, 0.0]], np.eye(2)).tolist() == [12.5]
    expected = -np.log(0.5 * np.exp(-4.5) + 0.5 * np.exp(-0.5))
    np.testing.assert_allclose(
        gmm_score([[2.0]], [0.5, 0.5], [[-1.0], [1.0]], [[1.0]]), [expected], rtol=1e-14
    )


def test_gmm_several_layers_and_errors():
    block = FIT.layer("penultimate") @ np.abs(np.random.default_rng(1).normal(size=(DIM, 6)))
    fit = Features(layers={"penultimate": FIT.layer("penultimate"), "block": block})
    det = GMM(n_components=3, aggregator=StdNormalizedAggregator()).fit(fit)
    single = GMM(n_components=3, layers=["block"]).fit(fit)
    np.testing.assert_array_equal(det.layer_detectors_[1].means_, single.means_)
    with pytest.raises(ValueError, match="n_components=50 needs at least that many fit samples; got 20"):
        GMM().fit(FIT.take(np.arange(20)))
    with pytest.raises(ValueError, match="pca_dim=50 needs at least that many fit samples"):
        GMM(n_components=2).fit(
            Features(layers={"penultimate": np.random.default_rng(0).normal(size=(30, 60))})
        )


# --- OpenMax ------------------------------------------------------------------------------------------------


def openmax_reference_fit(logits, labels, tail):
    """MAVs of the correctly classified samples and, per class, scipy's Weibull fit of the ``tail`` largest
    distances shifted as libMR shifts them (the smallest of the tail at 10,000)."""
    means, models = [], []
    for c in range(logits.shape[1]):
        rows = [z for z, y in zip(logits, labels, strict=True) if y == c and np.argmax(z) == c]
        mean = np.mean(rows, axis=0)
        distances = sorted(np.linalg.norm(z - mean) for z in rows)[-tail:]
        shape, _, scale = weibull_min.fit(np.array(distances) + TRANSLATE - distances[0], floc=0)
        means.append(mean)
        models.append((distances[0], scale, shape, distances))
    return np.array(means), models


def openmax_reference_score(z, means, models, alpha):
    """The paper's recalibration for one sample, written as a loop over classes."""
    ranked = np.argsort(-z, kind="stable")[:alpha]
    omega = np.zeros(len(z))
    for i, c in enumerate(ranked, start=1):
        omega[c] = (alpha - i + 1) / alpha
    revised, unknown = [], 0.0
    for c in range(len(z)):
        tail_min, scale, shape = models[c][:3]
        w = weibull_min.cdf(np.linalg.norm(z - means[c]) + TRANSLATE - tail_min, shape, scale=scale)
        revised.append(z[c] * (1 - omega[c] * w))
        unknown += z[c] * omega[c] * w
    return np.exp(unknown) / (np.exp(unknown) + np.exp(revised).sum())


def test_openmax_matches_a_loop_over_classes():
    det = OpenMax().fit(FIT)
    means, models = openmax_reference_fit(FIT.logits, FIT.labels, tail=20)
    np.testing.assert_allclose(det.class_means_, means, rtol=1e-12)
    np.testing.assert_allclose(det.tail_min_, [m[0] for m in models], rtol=1e-12)
    # scipy's optimiser stops near the maximum; ours solves the likelihood equation
    np.testing.assert_allclose(det.scale_, [m[1] for m in models], rtol=1e-9)
    np.testing.assert_allclose(det.shape_, [m[2] for m in models], rtol=1e-4)
    for c, (_, scale, shape, tail) in enumerate(models):
        x = np.array(tail) + TRANSLATE - tail[0]
        ours = weibull_min.logpdf(x, det.shape_[c], scale=det.scale_[c]).sum()
        assert ours >= weibull_min.logpdf(x, shape, scale=scale).sum() - 1e-9
    # the score from the fitted models, with scipy's CDF
    exact = [(t, s, k, None) for t, s, k in zip(det.tail_min_, det.scale_, det.shape_, strict=True)]
    for alpha in (1, 3, 4, 7):
        expected = [openmax_reference_score(z, det.class_means_, exact, alpha) for z in TEST.logits]
        got = openmax_score(TEST.logits, det.class_means_, det.tail_min_, det.scale_, det.shape_, alpha)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(
        det.score(TEST).scores,
        openmax_score(TEST.logits, means, det.tail_min_, det.scale_, det.shape_, 3),
        rtol=1e-9,
    )


def test_openmax_ranks_tied_logits_like_a_stable_sort():
    rng = np.random.default_rng(5)
    for n_classes in (1, 2, 3, 6, 40):
        logits = rng.integers(0, 3, (300, n_classes)).astype(float)  # many ties, at the α boundary too
        means = rng.integers(0, 3, (n_classes, n_classes)).astype(float)
        tail_min, scale, shape = (
            np.ones(n_classes),
            rng.uniform(TRANSLATE, TRANSLATE + 2, n_classes),
            np.full(n_classes, 3.0),
        )
        models = list(zip(tail_min, scale, shape, strict=True))
        for alpha in (1, 3, 7):
            expected = [openmax_reference_score(z, means, models, alpha) for z in logits]
            got = openmax_score(logits, means, tail_min, scale, shape, alpha)
            np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_weibull_tail_fit_solves_the_likelihood_equations():
    rng = np.random.default_rng(0)
    distances = rng.gamma(2.0, 1.5, 200)
    tail_min, scale, shape = fit_weibull_tail(distances, tail_size=20)
    x = np.sort(distances)[-20:] + TRANSLATE - tail_min
    assert tail_min == np.sort(distances)[-20]
    # ∂/∂k and ∂/∂λ of the log-likelihood vanish at the maximum
    r = (x / scale) ** shape
    assert abs(len(x) / shape + np.log(x / scale).sum() - (r * np.log(x / scale)).sum()) < 1e-6 * len(x)
    assert abs(r.sum() - len(x)) < 1e-9 * len(x)
    np.testing.assert_allclose(
        weibull_tail_cdf(x - TRANSLATE + tail_min, tail_min, scale, shape),
        weibull_min.cdf(x, shape, scale=scale),
        rtol=1e-9,
        atol=1e-300,
    )
    # fewer distances than the tail: all are used; one distinct value: the step limit
    assert fit_weibull_tail([5.0], 20) == (5.0, TRANSLATE, np.inf)
    np.testing.assert_allclose(
        weibull_tail_cdf([4.0, 5.0, 6.0], 5.0, TRANSLATE, np.inf), [0.0, 1 - np.exp(-1), 1.0]
    )


def test_openmax_hand_computed():
    # z = (2, 0), α = 1: class 0 is past its step (w = 1) and gives all its logit to the unknown class
    got = openmax_score([[2.0, 0.0]], [[4.0, 0.0], [0.0, 4.0]], [1.0, 1.0], [TRANSLATE] * 2, [np.inf] * 2, 1)
    np.testing.assert_allclose(got, [np.exp(2) / (np.exp(2) + 2)], rtol=1e-14)
    # inside the step (w = 0): plain softmax of the logits, and P₀ = 1 / (1 + Σ exp z)
    got = openmax_score([[2.0, 0.0]], [[2.5, 0.0], [0.0, 4.0]], [1.0, 1.0], [TRANSLATE] * 2, [np.inf] * 2, 3)
    np.testing.assert_allclose(got, [1 / (1 + np.exp(2) + 1)], rtol=1e-14)


def test_openmax_fallback_and_errors():
    labels = FIT.labels.copy()
    logits = FIT.logits.copy()
    logits[labels == 2, 2] = -100.0  # no sample of class 2 is classified correctly
    fit = Features(logits=logits, labels=labels)
    with pytest.warns(UserWarning, match=r"class\(es\) \[2\] have no correctly classified"):
        det = OpenMax().fit(fit)
    np.testing.assert_allclose(det.class_means_[2], logits[labels == 2].mean(axis=0))
    assert det.counts_[2] == (labels == 2).sum()
    with pytest.raises(ValueError, match=r"integer class labels in \[0, 4\)"):
        OpenMax().fit(Features(logits=FIT.logits, labels=labels + 1))


def test_openmax_counts_a_class_without_fit_samples_as_unknown():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    z = np.zeros((120, 3))
    z[np.arange(120), labels] = 6.0
    z += rng.normal(0, 1.0, z.shape)
    with pytest.warns(UserWarning, match=r"class\(es\) \[2\] of the 3 have no fit samples"):
        det = OpenMax().fit(Features(logits=z, labels=labels))
    assert det.counts_.tolist() == [60, 60, 0] and np.isfinite(det.class_means_).all()
    assert weibull_tail_cdf([0.0, 1e6], det.tail_min_[2], det.scale_[2], det.shape_[2]).tolist() == [1.0, 1.0]
    known, unseen = np.array([[6.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 6.0]])
    assert det.score(Features(logits=unseen)).scores[0] > det.score(Features(logits=known)).scores[0]
