"""TempScale, KLM, GradNorm, LTS and fDBD against independent re-derivations of their papers' formulas.

The references below are written from the papers, sample by sample, without the implementations' tricks
(closed forms, blocked products, Newton iterations): plain loops, scipy, and torch autograd for GradNorm.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp as scipy_logsumexp
from scipy.special import softmax as scipy_softmax

from oodscope import FDBD, KLM, LTS, MSP, Features, GradNorm, TempScale, load
from oodscope.detectors import (
    KNN,
    fdbd_boundary_norms,
    fdbd_score,
    fit_temperature,
    gradnorm_score,
    klm_score,
    klm_templates,
    lts_factor,
    lts_score,
    msp_score,
    tempscale_score,
)

from conftest import make_toy


def sampled_labels(rng, logits, temperature):
    """Labels drawn from softmax(logits / temperature): a fit set whose NLL-optimal T is near that one."""
    p = scipy_softmax(logits / temperature, axis=1)
    return (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)


# --- TempScale --------------------------------------------------------------------------------------------


def reference_nll(logits, labels, temperature):
    """Σ_i −log softmax(z_i / T)_{y_i}, one sample at a time."""
    total = 0.0
    for z, y in zip(logits, labels, strict=True):
        scaled = z / temperature
        total += scipy_logsumexp(scaled) - scaled[y]
    return total


def reference_nll_derivative(logits, labels, temperature):
    """d/dT of the summed NLL, one sample at a time: Σ_i (z_{i,y} − E_{softmax(z_i/T)}[z_i]) / T²."""
    total = 0.0
    for z, y in zip(logits, labels, strict=True):
        p = scipy_softmax(z / temperature)
        total += (z[y] - p @ z) / temperature**2
    return total


@pytest.mark.parametrize(("gap", "share"), [(2.0, 0.75), (5.0, 0.6), (0.3, 0.99), (1.0, 0.9999)])
def test_tempscale_two_class_closed_form(gap, share):
    """Logits (d, 0) for all samples, a share q labelled 0: the NLL is minimal where sigmoid(d / T) = q,
    i.e. T = d / log(q / (1 − q))."""
    n_first = int(round(share * 10_000))
    labels = np.r_[np.zeros(n_first, int), np.ones(10_000 - n_first, int)]
    logits = np.tile([gap, 0.0], (10_000, 1))
    q = n_first / 10_000
    np.testing.assert_allclose(fit_temperature(logits, labels), gap / np.log(q / (1 - q)), rtol=1e-12)


@pytest.mark.parametrize(("n_classes", "scale", "true_t"), [(3, 1.0, 0.7), (10, 3.0, 1.5), (100, 5.0, 20.0)])
def test_tempscale_minimises_the_nll(n_classes, scale, true_t):
    rng = np.random.default_rng(n_classes)
    logits = rng.normal(0, scale, (600, n_classes))
    labels = sampled_labels(rng, logits, true_t)
    fitted = TempScale().fit(Features(logits=logits, labels=labels)).temperature_
    # a bounded scalar search on the NLL itself (value-based, so it resolves T to about sqrt(eps) only)
    result = minimize_scalar(
        lambda log_t: reference_nll(logits, labels, np.exp(log_t)),
        bounds=(np.log(true_t) - 3, np.log(true_t) + 3),
        method="bounded",
        options={"xatol": 1e-10},
    )
    np.testing.assert_allclose(fitted, np.exp(result.x), rtol=1e-6)
    # the exact optimality condition, dNLL/dT = 0, relative to the size of the per-sample terms
    magnitude = sum(
        abs(reference_nll_derivative(logits[i : i + 1], labels[i : i + 1], fitted)) for i in range(600)
    )
    assert abs(reference_nll_derivative(logits, labels, fitted)) <= 1e-10 * magnitude
    nll = reference_nll(logits, labels, fitted)
    assert nll <= reference_nll(logits, labels, fitted * (1 + 1e-6))
    assert nll <= reference_nll(logits, labels, fitted * (1 - 1e-6))


def test_tempscale_scores_and_scale_equivariance():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2.0, (400, 7))
    labels = sampled_labels(rng, logits, 1.3)
    det = TempScale().fit(Features(logits=logits, labels=labels))
    test = rng.normal(0, 2.0, (50, 7))
    expected = -scipy_softmax(test / det.temperature_, axis=1).max(axis=1)
    np.testing.assert_allclose(det.score(Features(logits=test)).scores, expected, rtol=1e-12)
    np.testing.assert_array_equal(
        tempscale_score(test, det.temperature_), det.score(Features(logits=test)).scores
    )
    # logits c·z have the optimum c·T and the same scores
    scaled = TempScale().fit(Features(logits=4.0 * logits, labels=labels))
    np.testing.assert_allclose(scaled.temperature_, 4.0 * det.temperature_, rtol=1e-10)
    np.testing.assert_allclose(
        scaled.score(Features(logits=4.0 * test)).scores, det.score(Features(logits=test)).scores, rtol=1e-9
    )


def test_tempscale_exact_whatever_the_optimum():
    """Far from T = 1 (where the Newton iteration starts) the optimum is found as exactly."""
    rng = np.random.default_rng(2)
    base = rng.normal(0, 2.0, (3000, 5))
    labels = sampled_labels(rng, base, 1.0)
    reference = fit_temperature(base, labels)
    for true_t in (0.002, 500.0):
        logits = true_t * base  # the same problem at another scale: its optimum is true_t times as large
        fitted = fit_temperature(logits, labels)
        np.testing.assert_allclose(fitted, true_t * reference, rtol=1e-10)
        assert (
            abs(reference_nll_derivative(logits, labels, fitted))
            < 1e-9 * len(logits) * np.abs(logits).mean() / fitted**2
        )


def test_tempscale_without_a_minimum_says_why():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1.0, (100, 4))
    correct = logits.argmax(axis=1)
    det = TempScale()
    with pytest.raises(ValueError, match="classifies every one of them correctly, so the NLL has no minimum"):
        det.fit(Features(logits=logits, labels=correct))
    assert not hasattr(det, "temperature_")
    wrong = logits.argmin(axis=1)  # worse than uniform: the NLL falls as T grows
    with pytest.warns(UserWarning, match="no better than a uniform guess"):
        high = fit_temperature(logits, wrong)
    np.testing.assert_allclose(high, np.sqrt(logits.var(axis=1).mean()) * 1e4, rtol=1e-12)


def test_tempscale_flat_logits_and_bad_labels():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_temperature(np.zeros((5, 3)), [0, 1, 2, 0, 1]) == 1.0
        assert fit_temperature(np.ones((4, 1)), [0, 0, 0, 0]) == 1.0  # one class
    logits = np.array([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"TempScale needs integer class labels in \[0, 2\)"):
        TempScale().fit(Features(logits=logits, labels=np.array([0, 2])))
    with pytest.raises(ValueError, match="TempScale's labels must be integer class indices"):
        TempScale().fit(Features(logits=logits, labels=np.array(["cat", "dog"])))
    with pytest.raises(ValueError, match="fit_temperature got 3 labels for 2 samples"):
        fit_temperature(logits, [0, 1, 1])


# --- KLM --------------------------------------------------------------------------------------------------


def reference_klm(fit_logits, test_logits, eps=1e-6):
    """Templates by grouping the fit samples by predicted class; min over k of Σ p (log(p+ε) − log(d+ε))."""
    n_classes = fit_logits.shape[1]
    groups = {k: [] for k in range(n_classes)}
    for z in fit_logits:
        groups[int(np.argmax(z))].append(scipy_softmax(z))
    templates = [np.mean(groups[k], axis=0) if groups[k] else np.eye(n_classes)[k] for k in range(n_classes)]
    scores = []
    for z in test_logits:
        p = scipy_softmax(z)
        scores.append(min(sum(p * (np.log(p + eps) - np.log(d + eps))) for d in templates))
    return np.array(scores), np.array(templates)


@pytest.mark.parametrize(("n_classes", "scale"), [(2, 1.0), (6, 3.0), (40, 6.0)])
def test_klm_against_a_loop(n_classes, scale):
    rng = np.random.default_rng(n_classes)
    fit = rng.normal(0, scale, (300, n_classes))
    fit[:, -1] -= 100.0  # the last class is never predicted: its template is one-hot
    test = np.vstack([rng.normal(0, scale, (80, n_classes)), np.zeros((1, n_classes))])
    det = KLM().fit(Features(logits=fit))
    expected, templates = reference_klm(fit, test)
    np.testing.assert_allclose(det.templates_, templates, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(det.templates_[-1], np.eye(n_classes)[-1])
    assert det.counts_[-1] == 0 and det.counts_.sum() == 300
    np.testing.assert_allclose(det.score(Features(logits=test)).scores, expected, rtol=1e-9, atol=1e-12)


def test_klm_hand_computed_and_against_scipy_entropy():
    from scipy.stats import entropy

    # fit: softmax(3, 0) and softmax(4, 0) are predicted as class 0, softmax(0, 3) as class 1
    fit = np.array([[3.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    templates, counts = klm_templates(fit)
    d0 = (np.array([np.e**3, 1]) / (np.e**3 + 1) + np.array([np.e**4, 1]) / (np.e**4 + 1)) / 2
    np.testing.assert_allclose(templates, [d0, [1 / (1 + np.e**3), np.e**3 / (1 + np.e**3)]], rtol=1e-14)
    np.testing.assert_array_equal(counts, [2, 1])
    # a posterior equal to a template has divergence 0 exactly; scipy's KL (no ε) agrees to ~ε elsewhere
    assert klm_score([[0.0, 0.0]], [[0.5, 0.5], [0.9, 0.1]])[0] == 0.0
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2.0, (30, 4))
    dense = scipy_softmax(rng.normal(0, 1.0, (4, 4)), axis=1)  # templates without zeros
    p = scipy_softmax(logits, axis=1)
    expected = np.array([min(entropy(row, d) for d in dense) for row in p])
    np.testing.assert_allclose(klm_score(logits, dense), expected, atol=1e-5)


def test_klm_takes_the_minimum_over_all_templates():
    """The nearest template need not be the predicted class's (pytorch-ood before 0.4.0 used only that)."""
    templates = np.array([[0.99, 0.01, 0.0], [0.4, 0.3, 0.3]])
    logits = np.log([[0.45, 0.3, 0.25]])  # predicted class 0, but close to template 1
    p = scipy_softmax(logits, axis=1)[0]
    to_1 = sum(p * (np.log(p + 1e-6) - np.log(templates[1] + 1e-6)))
    np.testing.assert_allclose(klm_score(logits, templates), [to_1], rtol=1e-12)
    with pytest.raises(ValueError, match="the templates have shape"):
        klm_score(logits, templates[:, :2])


# --- GradNorm ---------------------------------------------------------------------------------------------


def autograd_gradnorm(h, weight, bias, temperature, loss_kind):
    """‖∂L/∂W‖₁ per sample by torch autograd, one backward pass each (as the official code does)."""
    torch = pytest.importorskip("torch")
    fc = torch.nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(weight))
        fc.bias.copy_(torch.from_numpy(bias))
    norms = []
    for row in h:
        fc.zero_grad()
        log_q = torch.log_softmax(fc(torch.from_numpy(row)[None]) / temperature, dim=-1)
        n_classes = weight.shape[0]
        if loss_kind == "kl":  # the paper: KL(u ‖ softmax(z / T)), u uniform
            uniform = torch.full_like(log_q, 1.0 / n_classes)
            loss = torch.nn.functional.kl_div(log_q, uniform, reduction="sum")
        else:  # the official code: cross-entropy against all-ones targets
            loss = torch.sum(-torch.ones_like(log_q) * log_q)
        loss.backward()
        norms.append(fc.weight.grad.abs().sum().item())
    return np.array(norms)


@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.3])
def test_gradnorm_equals_the_autograd_gradient_norm(temperature):
    rng = np.random.default_rng(int(temperature * 10))
    n_classes, dim = 7, 12
    weight, bias = rng.normal(size=(n_classes, dim)), rng.normal(size=n_classes)
    h = np.maximum(rng.normal(0.5, 1.0, (25, dim)), 0.0)
    h[0] = 0.0  # no activation: a zero gradient
    logits = h @ weight.T + bias
    scores = (
        GradNorm(temperature=temperature).score(Features(logits=logits, layers={"penultimate": h})).scores
    )
    np.testing.assert_allclose(-scores, autograd_gradnorm(h, weight, bias, temperature, "ones"), rtol=1e-10)
    # the paper's KL to the uniform posterior differs from the all-ones loss by the constant factor 1/C
    kl = autograd_gradnorm(h, weight, bias, temperature, "kl")
    np.testing.assert_allclose(-scores, n_classes * kl, rtol=1e-10)
    assert scores[0] == 0.0


def test_gradnorm_hand_computed():
    # p = (3/4, 1/4) for C = 2: |2·3/4 − 1| + |2·1/4 − 1| = 1, times ‖h‖₁ = 3
    np.testing.assert_allclose(gradnorm_score([[1.0, -2.0]], [[np.log(3.0), 0.0]]), [-3.0], rtol=1e-14)
    # at T = 2 the posterior of (2 log 3, 0) is the same, and the 1/T halves the norm
    np.testing.assert_allclose(
        gradnorm_score([[1.0, -2.0]], [[2 * np.log(3.0), 0.0]], 2.0), [-1.5], rtol=1e-14
    )
    with pytest.raises(ValueError, match="features \\[N, D\\] and logits \\[N, C\\] of the same samples"):
        gradnorm_score(np.ones((2, 3)), np.ones((3, 2)))


# --- LTS --------------------------------------------------------------------------------------------------


def reference_lts_factor(h, percentile):
    """r² = (Σ relu(h) / sum of the k largest of relu(h))², k = D − round(D·p/100), sample by sample."""
    factors = []
    for row in h:
        active = np.maximum(row, 0.0)
        k = len(row) - int(np.round(len(row) * percentile / 100.0))
        top = sum(sorted(active, reverse=True)[:k])
        factors.append((sum(active) / top) ** 2 if top > 0 else 0.0)
    return np.array(factors)


@pytest.mark.parametrize(("dim", "percentile"), [(10, 65.0), (24, 65.0), (64, 90.0), (7, 0.0)])
def test_lts_against_a_loop(dim, percentile):
    rng = np.random.default_rng(dim)
    h = rng.normal(0.3, 1.0, (40, dim)).astype(np.float32)
    h[0] = -1.0  # no positive activation: r = 0, so the logits vanish
    logits = rng.normal(0, 3.0, (40, 5))
    factor = reference_lts_factor(h.astype(np.float64), percentile)
    np.testing.assert_allclose(lts_factor(h, percentile), factor, rtol=1e-12)
    expected = -scipy_logsumexp(factor[:, None] * logits, axis=1)
    det = LTS(percentile=percentile)
    scores = det.score(Features(logits=logits, layers={"penultimate": h})).scores
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    np.testing.assert_array_equal(lts_score(h, logits, percentile), scores)
    assert scores[0] == pytest.approx(-np.log(5))


def test_lts_hand_computed_and_rounding_of_k():
    # relu → (4, 0, 1, 0); p = 75 keeps k = 1: r = 5 / 4
    np.testing.assert_allclose(lts_factor([[4.0, 0.0, 1.0, -1.0]], 75), [1.5625], rtol=1e-15)
    # D = 10, p = 65: k = 10 − round(6.5) = 4 (numpy rounds half to even, as the official code does)
    h = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(lts_factor(h, 65), [(15 / 14) ** 2], rtol=1e-15)


def test_lts_wraps_logit_detectors():
    toy = make_toy()
    h_fit = toy["fit"].layer("penultimate")
    factor = lts_factor(toy["ood"].layer("penultimate"))
    wrapped = LTS(MSP()).score(toy["ood"]).scores
    np.testing.assert_array_equal(wrapped, msp_score(toy["ood"].logits * factor[:, None]))
    # a wrapped detector that learns is fitted on the scaled fit logits (TempScale: with the labels)
    scaled_fit = Features(logits=toy["fit"].logits * lts_factor(h_fit)[:, None], labels=toy["fit"].labels)
    det = LTS(TempScale()).fit(toy["fit"])
    direct = TempScale().fit(scaled_fit)
    assert det.detector_.temperature_ == direct.temperature_
    np.testing.assert_array_equal(
        det.score(toy["ood"]).scores,
        tempscale_score(toy["ood"].logits * factor[:, None], direct.temperature_),
    )
    with pytest.raises(ValueError, match="LTS cannot wrap KNN.*read logits only"):
        LTS(KNN()).fit(toy["fit"])


def test_lts_with_a_fitted_detector_round_trips(tmp_path):
    toy = make_toy()
    det = LTS(KLM()).fit(toy["fit"])
    loaded = load(det.save(tmp_path / "lts.oodscope"))
    np.testing.assert_array_equal(loaded.detector_.templates_, det.detector_.templates_)
    np.testing.assert_array_equal(loaded.score(toy["ood"]).scores, det.score(toy["ood"]).scores)


# --- fDBD -------------------------------------------------------------------------------------------------


def reference_fdbd(h_fit, h, weight, bias, distance_as_normalizer=True):
    """Σ_{c≠ŷ} |z_ŷ − z_c| / ‖w_ŷ − w_c‖ over ‖h − μ‖ (or ‖h‖), negated, sample by sample."""
    mean = h_fit.mean(axis=0)
    scores = []
    for row in h:
        z = weight @ row + bias
        top = int(np.argmax(z))
        total = sum(
            abs(z[top] - z[c]) / np.linalg.norm(weight[top] - weight[c]) for c in range(len(z)) if c != top
        )
        scores.append(-total / np.linalg.norm(row - mean if distance_as_normalizer else row))
    return np.array(scores)


def boundary_distance(h, w_a, b_a, w_b, b_b):
    """Euclidean distance from h to the hyperplane where the logits of classes a and b are equal, found as the
    foot of the perpendicular x0 = h − t·(w_a − w_b) with z_a(x0) = z_b(x0)."""
    normal, offset = w_a - w_b, b_a - b_b
    t = (normal @ h + offset) / (normal @ normal)
    foot = h - t * normal
    assert abs(normal @ foot + offset) < 1e-9 * (1 + abs(normal @ h + offset))
    return np.linalg.norm(h - foot)


@pytest.mark.parametrize("distance_as_normalizer", [True, False])
def test_fdbd_against_a_loop(distance_as_normalizer):
    rng = np.random.default_rng(7)
    n_classes, dim = 6, 16
    weight, bias = rng.normal(size=(n_classes, dim)), rng.normal(size=n_classes)
    h_fit = np.maximum(rng.normal(0.5, 1.0, (200, dim)), 0.0)
    h = np.maximum(rng.normal(0.5, 1.5, (40, dim)), 0.0)

    def feats(x):
        return Features(
            logits=x @ weight.T + bias, layers={"penultimate": x}, head_weight=weight, head_bias=bias
        )

    det = FDBD(distance_as_normalizer=distance_as_normalizer).fit(feats(h_fit))
    expected = reference_fdbd(h_fit, h, weight, bias, distance_as_normalizer)
    np.testing.assert_allclose(det.score(feats(h)).scores, expected, rtol=1e-10)
    np.testing.assert_allclose(det.mean_, h_fit.mean(axis=0), rtol=1e-12)
    # each term is the true Euclidean distance to the boundary between ŷ and c
    x = h[0]
    z = weight @ x + bias
    top = int(np.argmax(z))
    geometric = sum(
        boundary_distance(x, weight[top], bias[top], weight[c], bias[c]) for c in range(n_classes) if c != top
    )
    normaliser = np.linalg.norm(x - det.mean_) if distance_as_normalizer else np.linalg.norm(x)
    np.testing.assert_allclose(det.score(feats(h[:1])).scores, [-geometric / normaliser], rtol=1e-10)


def test_fdbd_boundary_norms_and_identical_rows():
    rng = np.random.default_rng(8)
    weight = rng.normal(size=(5, 30))
    weight[3] = weight[1] + 1e-9 * rng.normal(size=30)  # nearly identical rows: no digits lost
    weight[4] = weight[0]  # identical rows: no boundary
    norms = fdbd_boundary_norms(weight)
    for p in range(5):
        for c in range(5):
            if p == c:
                assert norms[p, c] == 1.0
            elif {p, c} == {0, 4}:
                assert norms[p, c] == np.inf
            else:
                np.testing.assert_allclose(norms[p, c], np.linalg.norm(weight[p] - weight[c]), rtol=1e-12)
    h = np.abs(rng.normal(size=(20, 30)))
    fit = Features(logits=h @ weight.T, layers={"penultimate": h}, head_weight=weight)
    with pytest.warns(UserWarning, match=r"1 pair\(s\) of classes have identical weight rows.*\(0, 4\)"):
        det = FDBD().fit(fit)
    scores = det.score(fit).scores
    assert np.isfinite(scores).all()
    # the pair (0, 4) is left out: the sum runs over the other classes only
    z = fit.logits[0]
    top = int(np.argmax(z))
    kept = [c for c in range(5) if c != top and {top, c} != {0, 4}]
    total = sum((z[top] - z[c]) / np.linalg.norm(weight[top] - weight[c]) for c in kept)
    np.testing.assert_allclose(scores[0], -total / np.linalg.norm(h[0] - h.mean(axis=0)), rtol=1e-6)


def test_fdbd_hand_computed():
    # W = I: the boundary between the classes is the diagonal, at distance |z_0 − z_1| / √2
    norms = fdbd_boundary_norms(np.eye(2))
    np.testing.assert_allclose(norms, [[1.0, np.sqrt(2)], [np.sqrt(2), 1.0]], rtol=1e-15)
    scores = fdbd_score([[3.0, 0.0], [1.2, 1.0]], [[3.0, 0.0], [1.2, 1.0]], norms, mean=[1.0, 1.0])
    np.testing.assert_allclose(
        scores, [-(3 / np.sqrt(2)) / np.sqrt(5), -(0.2 / np.sqrt(2)) / 0.2], rtol=1e-14
    )
    # at the centre the normaliser is floored at 1e-8, not 0
    assert fdbd_score([[1.0, 1.0]], [[1.0, 0.0]], norms, mean=[1.0, 1.0])[0] == pytest.approx(
        -1 / np.sqrt(2) / 1e-8
    )
    with pytest.raises(ValueError, match="the mean has shape"):
        fdbd_score([[1.0, 1.0]], [[1.0, 0.0]], norms, mean=[1.0])


# --- all five on the toy problem --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [KLM, GradNorm, LTS, FDBD])
def test_search_spaces_and_defaults(cls):
    assert set(cls.search_space) <= set(cls().get_params())
    for name, values in cls.search_space.items():
        assert getattr(cls(), name) in values
    assert TempScale.search_space == {} and KLM.search_space == {} and GradNorm.search_space == {}
    assert LTS.search_space == {} and FDBD.search_space == {"distance_as_normalizer": [True, False]}
    assert (
        LTS().percentile == 65.0 and GradNorm().temperature == 1.0 and FDBD().distance_as_normalizer is True
    )
