"""DICE, VRA, OptFS, WeiPer and NCI against references written from their papers, sample by sample."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from oodscope import DICE, GEN, NCI, VRA, Features, OptFS, ReAct, WeiPer, clone, load
from oodscope.detectors.nci import nci_score
from oodscope.detectors.optfs import optfs_score, optfs_theta
from oodscope.detectors.weiper import _smooth, weiper_densities, weiper_head, weiper_score
from oodscope.shaping.dice import dice_mask
from oodscope.shaping.vra import vra

from conftest import linear_head_features

N_CLASSES, DIM = 4, 10


def problem(n: int, seed: int, dim: int = DIM) -> Features:
    """Post-ReLU features around class means, with a head that reads them (bias included)."""
    rng = np.random.default_rng(seed)
    means = np.maximum(np.random.default_rng(99).normal(1.0, 1.5, (N_CLASSES, dim)), 0.0)
    labels = rng.integers(0, N_CLASSES, n)
    h = np.maximum(means[labels] + rng.normal(0, 0.8, (n, dim)), 0.0)
    weight = np.random.default_rng(98).normal(0, 1.0, (N_CLASSES, dim)) + means / 2.0
    bias = np.random.default_rng(97).normal(0, 0.3, N_CLASSES)
    return linear_head_features(h, weight, bias, labels)


FIT, TEST = problem(300, 1), problem(40, 2)
H_FIT, H_TEST = FIT.layer("penultimate"), TEST.layer("penultimate")
W, B = FIT.head_weight, FIT.head_bias


# --- plain-Python references ----------------------------------------------------------------------------


def percentile_ref(values, q: float) -> float:
    """Linear interpolation between order statistics (the definition np.percentile uses by default)."""
    ordered = sorted(float(v) for v in np.ravel(values))
    position = q / 100.0 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def mean_rows_ref(rows) -> list[float]:
    rows = [list(map(float, row)) for row in rows]
    return [sum(row[d] for row in rows) / len(rows) for d in range(len(rows[0]))]


def logits_ref(h_row, weight, bias) -> list[float]:
    return [
        sum(float(w) * float(x) for w, x in zip(w_row, h_row, strict=True)) + float(b)
        for w_row, b in zip(weight, bias, strict=True)
    ]


def energy_ref(logits) -> float:
    top = max(logits)
    return -(top + math.log(sum(math.exp(z - top) for z in logits)))


def argmax_ref(values) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


# --- NCI ------------------------------------------------------------------------------------------------


def nci_ref(h_fit, h_test, logits, weight, alpha):
    mean = mean_rows_ref(h_fit)
    out = []
    for row, z in zip(h_test, logits, strict=True):
        c = argmax_ref(list(z))
        centred = [float(x) - m for x, m in zip(row, mean, strict=True)]
        norm = math.sqrt(sum(v * v for v in centred))
        dot = sum(float(w) * v for w, v in zip(weight[c], centred, strict=True))
        out.append(-(dot / norm + alpha * sum(abs(float(x)) for x in row)))
    return np.array(out)


@pytest.mark.parametrize("alpha", [0.0, 1e-4, 0.1])
def test_nci_matches_the_paper_formula(alpha):
    det = NCI(alpha=alpha).fit(FIT)
    np.testing.assert_allclose(det.global_mean_, H_FIT.mean(axis=0), rtol=1e-12)
    expected = nci_ref(H_FIT, H_TEST, TEST.logits, W, alpha)
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-10, atol=1e-12)


def test_nci_by_hand():
    # mean of the fit features (2, 1); x = (5, 5): predicted class 0 (w0 = (2, 0)), centred (3, 4), norm 5
    fit = Features(
        logits=np.zeros((2, 2)),
        layers={"penultimate": np.array([[1.0, 0.0], [3.0, 2.0]])},
        head_weight=np.array([[2.0, 0.0], [0.0, 1.0]]),
    )
    test = Features(
        logits=np.array([[1.0, 0.0]]),
        layers={"penultimate": np.array([[5.0, 5.0]])},
        head_weight=fit.head_weight,
    )
    # alignment 2 * 3 / 5 = 1.2 (not divided by |w0| = 2); L1 norm 10
    assert NCI(alpha=0.5).fit(fit).score(test).scores[0] == pytest.approx(-(1.2 + 5.0))
    # a sample at the global mean has no direction: only the L1 term is left
    at_mean = Features(
        logits=np.array([[0.0, 1.0]]),
        layers={"penultimate": np.array([[2.0, 1.0]])},
        head_weight=fit.head_weight,
    )
    assert NCI(alpha=0.5).fit(fit).score(at_mean).scores[0] == pytest.approx(-1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nci_score([[2.0, 1.0]], [[0.0, 1.0]], fit.head_weight, [2.0, 1.0])


# --- DICE -----------------------------------------------------------------------------------------------


def dice_ref(h_fit, h_test, weight, bias, p):
    mean = mean_rows_ref(h_fit)
    contributions = [[float(w) * m for w, m in zip(row, mean, strict=True)] for row in weight]
    threshold = percentile_ref(contributions, p)
    masked = [
        [float(w) if c > threshold else 0.0 for w, c in zip(w_row, c_row, strict=True)]
        for w_row, c_row in zip(weight, contributions, strict=True)
    ]
    logits = [logits_ref(row, masked, bias) for row in h_test]
    return masked, logits


@pytest.mark.parametrize("p", [0.0, 50.0, 70.0, 90.0])
def test_dice_matches_the_paper_formula(p):
    det = DICE(percentile=p).fit(FIT)
    masked, logits = dice_ref(H_FIT, H_TEST, W, B, p)
    np.testing.assert_array_equal(np.where(det.mask_, W, 0.0), np.array(masked))
    expected = np.array([energy_ref(z) for z in logits])
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-10)
    # any logit detector on the sparsified logits: GEN here
    gen = DICE(GEN(gamma=0.5), percentile=p).fit(FIT).score(TEST).scores
    np.testing.assert_allclose(
        gen, GEN(gamma=0.5).score(Features(logits=np.array(logits))).scores, rtol=1e-10
    )


def test_dice_keeps_only_contributions_strictly_above_the_percentile():
    # contributions μ ⊙ W = [[2, 0, 1], [0, 3, 1]]: their median 1 is not kept
    mask = dice_mask([1.0, 1.0, 1.0], [[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]], percentile=50)
    np.testing.assert_array_equal(mask, [[True, False, False], [False, True, False]])
    assert DICE.search_space == {"percentile": [90]}


def test_dice_composes_with_react_on_the_clipped_features():
    combo = ReAct(DICE(percentile=70), percentile=90).fit(FIT)
    clip = percentile_ref(H_FIT, 90)
    assert combo.clip_value_ == pytest.approx(clip, rel=1e-12)
    clipped_fit, clipped_test = np.minimum(H_FIT, clip), np.minimum(H_TEST, clip)
    _, logits = dice_ref(clipped_fit, clipped_test, W, B, 70)
    expected = np.array([energy_ref(z) for z in logits])
    np.testing.assert_allclose(combo.score(TEST).scores, expected, rtol=1e-10)


# --- VRA ------------------------------------------------------------------------------------------------


def vra_ref(h_fit, h_test, weight, bias, q_low, q_high, gamma, per_unit):
    h_fit = np.asarray(h_fit)
    if per_unit:
        lows = [percentile_ref(h_fit[:, d], q_low) for d in range(h_fit.shape[1])]
        highs = [percentile_ref(h_fit[:, d], q_high) for d in range(h_fit.shape[1])]
    else:
        lows = [percentile_ref(h_fit, q_low)] * h_fit.shape[1]
        highs = [percentile_ref(h_fit, q_high)] * h_fit.shape[1]
    scores = []
    for row in h_test:
        shaped = []
        for x, a, b in zip(map(float, row), lows, highs, strict=True):
            shaped.append(0.0 if x < a else b if x > b else x + gamma)  # the paper's piecewise function
        scores.append(energy_ref(logits_ref(shaped, weight, bias)))
    return np.array(lows), np.array(highs), np.array(scores)


@pytest.mark.parametrize(
    ("q_low", "q_high", "gamma", "per_unit"),
    [
        (60, 90, 0.0, True),
        (60, 95, 0.6, True),
        (10, 90, 0.0, False),
        (50, 50, 0.0, True),
        (0, 100, 0.2, False),
    ],
)
def test_vra_matches_the_paper_formula(q_low, q_high, gamma, per_unit):
    det = VRA(percentile_low=q_low, percentile_high=q_high, gamma=gamma, per_unit=per_unit).fit(FIT)
    lows, highs, expected = vra_ref(H_FIT, H_TEST, W, B, q_low, q_high, gamma, per_unit)
    np.testing.assert_allclose(det.low_, lows, rtol=1e-12)
    np.testing.assert_allclose(det.high_, highs, rtol=1e-12)
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-10)


def test_vra_zeroes_low_activations_rather_than_clamping_them():
    h = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 4.0], [4.0, 5.0]])
    # per unit: α = (1, 2), β = (3, 4) at the 25th / 75th percentiles
    np.testing.assert_array_equal(
        vra(np.array([[0.5, 4.5], [2.0, 2.0]]), [1.0, 2.0], [3.0, 4.0]), [[0.0, 4.0], [2.0, 2.0]]
    )
    np.testing.assert_array_equal(vra(np.array([[1.0, 3.5]]), 1.0, 3.0, gamma=0.5), [[1.5, 3.0]])
    feats = Features(layers={"penultimate": h}, head_weight=np.eye(2))
    det = VRA(GEN(), percentile_low=25, percentile_high=75).fit(feats)
    low = Features(layers={"penultimate": np.array([[0.5, 1.5]])}, head_weight=np.eye(2))
    # both units below α: zeroed, so GEN sees two equal logits (a clamp would give logits (1, 2))
    assert det.score(low).scores[0] == pytest.approx(GEN().score(Features(logits=np.zeros((1, 2)))).scores[0])


def test_vra_refuses_crossed_percentiles():
    with pytest.raises(
        ValueError, match="The 'percentile_low' parameter of VRA must not exceed percentile_high"
    ):
        VRA(percentile_low=95, percentile_high=90).fit(FIT)


# --- OptFS ----------------------------------------------------------------------------------------------


def optfs_ref(h_fit, logits_fit, weight, n_bins):
    """θ the way the paper's code builds it: a mask per bin [left + b·width, left + (b + 1)·width)."""
    low, high = percentile_ref(h_fit, 0.1), percentile_ref(h_fit, 99.9)
    width = (high - low) / n_bins
    predicted = [argmax_ref(list(z)) for z in logits_fit]
    sums = [0.0] * n_bins
    for row, c in zip(h_fit, predicted, strict=True):
        for x, w in zip(map(float, row), weight[c], strict=True):
            for b in range(n_bins):
                if low + b * width <= x < low + (b + 1) * width:
                    sums[b] += float(w) * x
    means = [s / len(h_fit) for s in sums]
    norm = math.sqrt(sum(m * m for m in means))
    return [1000.0 * m / norm for m in means], low, high, width


def optfs_shape_ref(row, theta, low, width):
    shaped = []
    for x in map(float, row):
        value = 0.0
        for b, t in enumerate(theta):
            if low + b * width <= x < low + (b + 1) * width:
                value = t * x
        shaped.append(value)
    return shaped


@pytest.mark.parametrize("n_bins", [7, 100])
def test_optfs_matches_the_papers_construction(n_bins):
    theta, low, high, width = optfs_ref(H_FIT, FIT.logits, W, n_bins)
    vanilla = OptFS(n_bins=n_bins).fit(FIT)
    np.testing.assert_allclose(vanilla.theta_, theta, rtol=1e-9, atol=1e-9)
    assert (vanilla.low_, vanilla.high_) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    expected_vanilla, expected_energy = [], []
    for row, z in zip(H_TEST, TEST.logits, strict=True):
        shaped = optfs_shape_ref(row, theta, low, width)
        c = argmax_ref(list(z))
        expected_vanilla.append(-sum(float(w) * x for w, x in zip(W[c], shaped, strict=True)))
        expected_energy.append(energy_ref(logits_ref(shaped, W, B)))
    np.testing.assert_allclose(vanilla.score(TEST).scores, expected_vanilla, rtol=1e-9)
    energy = OptFS(ood_score="energy", n_bins=n_bins).fit(FIT)
    np.testing.assert_allclose(energy.score(TEST).scores, expected_energy, rtol=1e-9)


def test_optfs_by_hand():
    # one sample, D = 5: the range [0.004, 3.996) in two bins of width 1.996
    theta, low, high = optfs_theta([[0.0, 1.0, 1.5, 3.0, 4.0]], [[1.0]], [[1.0, 1.0, 1.0, -1.0, 1.0]], 2)
    assert (low, high) == (pytest.approx(0.004), pytest.approx(3.996))
    # bin 0 holds 1 and 1.5 (contributions 1 + 1.5), bin 1 holds 3 (contribution -3); 0 and 4 are outside
    np.testing.assert_allclose(theta, np.array([2.5, -3.0]) / math.hypot(2.5, 3.0) * 1000)
    # h' = (2·1, -1·3) for h = (1, 3); class 0 has w = (1, 1) and no bias enters the vanilla score
    assert optfs_score(
        [[1.0, 3.0]], [[1.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]], [5.0, 5.0], [2.0, -1.0], 0.0, 4.0
    )[0] == pytest.approx(1.0)
    # values outside [low, high) are zeroed: h' = (0, 0)
    assert optfs_score(
        [[-1.0, 4.0]], [[1.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]], [5.0, 5.0], [2.0, -1.0], 0.0, 4.0
    )[0] == pytest.approx(0.0)


def test_optfs_warns_when_the_shaping_is_empty():
    constant = Features(
        logits=np.ones((5, 2)), layers={"penultimate": np.ones((5, 3))}, head_weight=np.ones((2, 3))
    )
    with pytest.warns(UserWarning, match="the shaping is zero"):
        det = OptFS().fit(constant)
    np.testing.assert_array_equal(det.score(constant).scores, np.zeros(5))


# --- WeiPer ---------------------------------------------------------------------------------------------


def smooth_ref(density, size):
    n = len(density)
    left = (size - 1) // 2
    return [sum(density[min(max(i - left + j, 0), n - 1)] for j in range(size)) / size for i in range(n)]


def sym_kl_ref(reference, density, size, eps):
    p = [v + eps for v in reference]
    q = [v + eps for v in smooth_ref(density, size)]
    p = [v / sum(p) for v in p]
    q = [v / sum(q) for v in q]
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True)) + sum(
        b * math.log(b / a) for a, b in zip(p, q, strict=True)
    )


def histogram_ref(values, low, high, n_bins):
    counts, _ = np.histogram(values, bins=n_bins, range=(low, high))  # last bin closed, outliers dropped
    return list(counts / len(values))


def weiper_ref(h_fit, h_test, weight, bias, *, lambda_1, lambda_2, n_repeats, delta, n_bins, s1, s2, seed):
    noise = np.random.default_rng(seed).standard_normal((n_repeats, *np.shape(weight)))  # one draw
    tilde = []
    for r in range(n_repeats):
        for c, w_row in enumerate(weight):
            direction = noise[r, c] / math.sqrt(sum(v * v for v in noise[r, c]))
            tilde.append(
                [
                    float(w) + delta * math.sqrt(sum(x * x for x in w_row)) * u
                    for w, u in zip(w_row, direction, strict=True)
                ]
            )
    biases = [float(b) for b in bias] * n_repeats

    def perturbed(row):
        return logits_ref(row, tilde, biases)

    fit_z = [perturbed(row) for row in h_fit]
    low, high = float(np.min(h_fit)), float(np.max(h_fit))
    low_z, high_z = min(map(min, fit_z)), max(map(max, fit_z))
    mean_h = np.mean([histogram_ref(row, low, high, n_bins) for row in h_fit], axis=0)
    mean_z = np.mean([histogram_ref(z, low_z, high_z, n_bins) for z in fit_z], axis=0)
    scores = []
    for row in h_test:
        z = perturbed(row)
        n_classes = len(bias)
        msp = []
        for r in range(n_repeats):
            part = z[r * n_classes : (r + 1) * n_classes]
            top = max(part)
            msp.append(1.0 / sum(math.exp(v - top) for v in part))
        scores.append(
            sym_kl_ref(mean_h, histogram_ref(row, low, high, n_bins), s1, 0.01)
            + lambda_1 * sym_kl_ref(mean_z, histogram_ref(z, low_z, high_z, n_bins), s2, 0.025)
            - lambda_2 * sum(msp) / n_repeats
        )
    return np.array(scores), (low, high), (low_z, high_z), mean_h, mean_z


@pytest.mark.parametrize(
    "params",
    [
        {},
        {
            "lambda_1": 0.1,
            "lambda_2": 1.0,
            "n_repeats": 7,
            "delta": 2.4,
            "n_bins": 60,
            "smoothing": 8,
            "smoothing_perturbed": 40,
            "random_state": 5,
        },
        {"n_repeats": 3, "n_bins": 11, "smoothing": 1, "smoothing_perturbed": 2, "random_state": 1},
    ],
)
def test_weiper_matches_the_paper_formula(params):
    det = WeiPer(**params).fit(FIT)
    p = det.get_params()
    expected, h_range, z_range, mean_h, mean_z = weiper_ref(
        H_FIT,
        H_TEST,
        W,
        B,
        lambda_1=p["lambda_1"],
        lambda_2=p["lambda_2"],
        n_repeats=p["n_repeats"],
        delta=p["delta"],
        n_bins=p["n_bins"],
        s1=p["smoothing"],
        s2=p["smoothing_perturbed"],
        seed=p["random_state"],
    )
    np.testing.assert_allclose(det.feature_range_, h_range, rtol=1e-12)
    np.testing.assert_allclose(det.perturbed_range_, z_range, rtol=1e-10)
    np.testing.assert_allclose(det.density_, mean_h, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(det.perturbed_density_, mean_z, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-9)


def test_weiper_histograms_equal_numpy_histogram():
    rng = np.random.default_rng(0)
    for trial in range(100):
        values = rng.normal(size=(5, 37)) * rng.uniform(0.1, 10)
        low, high = np.sort(rng.normal(size=2))
        values[0, :3] = [low, high, high]  # the range's ends: the first and the (closed) last bin
        n_bins = int(rng.integers(1, 50))
        expected = [np.histogram(row, bins=n_bins, range=(low, high))[0] / values.shape[1] for row in values]
        np.testing.assert_array_equal(
            weiper_densities(values, low, high, n_bins), expected, err_msg=str(trial)
        )
    # a range of one point: the values at it fill the first bin
    np.testing.assert_array_equal(weiper_densities([[1.0, 1.0, 2.0, 0.0]], 1.0, 1.0, 3), [[0.5, 0.0, 0.0]])


def test_weiper_perturbations_keep_their_length_relative_to_each_class_projection():
    tilde = weiper_head(W, n_repeats=20, delta=1.8, random_state=3)
    offsets = np.linalg.norm(tilde - W, axis=2)
    np.testing.assert_allclose(
        offsets, 1.8 * np.broadcast_to(np.linalg.norm(W, axis=1), offsets.shape), rtol=1e-12
    )
    np.testing.assert_array_equal(tilde, weiper_head(W, n_repeats=20, delta=1.8, random_state=3))
    assert not np.array_equal(tilde, weiper_head(W, n_repeats=20, delta=1.8, random_state=4))


def test_weiper_smoothing_is_the_papers_same_padded_uniform_kernel():
    torch = pytest.importorskip("torch")
    densities = np.random.default_rng(0).random((3, 17))
    for size in (1, 2, 4, 15, 20):
        conv = torch.nn.Conv1d(1, 1, size, padding="same", padding_mode="replicate", bias=False).double()
        with torch.no_grad():
            conv.weight.fill_(1.0 / size)
            expected = conv(torch.as_tensor(densities)[:, None, :]).numpy()[:, 0, :]
        np.testing.assert_allclose(_smooth(densities, size), expected, rtol=1e-12, err_msg=str(size))


def test_weiper_by_hand():
    # histograms over [0, 1] in 2 bins: the top value falls in the (closed) last bin, 2 falls outside
    np.testing.assert_array_equal(weiper_densities([[0.0, 0.5, 1.0, 2.0]], 0.0, 1.0, 2), [[0.25, 0.5]])
    # p_h = (1/2, 1/2) equals the reference: no divergence; one class: MSP = 1, so S = -λ2
    score = weiper_score(
        [[0.0, 1.0]],
        [[[1.0, 0.0]]],
        [0.0],
        [0.5, 0.5],
        [0.0, 1.0],
        (0.0, 1.0),
        (0.0, 1.0),
        smoothing=1,
        smoothing_perturbed=1,
        lambda_1=0.0,
        lambda_2=0.5,
    )
    assert score[0] == pytest.approx(-0.5)
    # p_z̃ = (1, 0) against the reference (0, 1): with ε = 0.025 both become (1.025, 0.025) / 1.05 and back
    a, b = 1.025 / 1.05, 0.025 / 1.05
    kl = 2 * (a - b) * math.log(a / b)
    score = weiper_score(
        [[0.0, 1.0]],
        [[[1.0, 0.0]]],
        [0.0],
        [0.5, 0.5],
        [0.0, 1.0],
        (0.0, 1.0),
        (0.0, 1.0),
        smoothing=1,
        smoothing_perturbed=1,
        lambda_1=2.0,
        lambda_2=0.0,
    )
    assert score[0] == pytest.approx(2.0 * kl)


def test_weiper_is_reproducible_and_keeps_its_fitted_perturbations(tmp_path):
    first = WeiPer(n_repeats=10).fit(FIT).score(TEST).scores
    np.testing.assert_array_equal(WeiPer(n_repeats=10).fit(FIT).score(TEST).scores, first)
    other = WeiPer(n_repeats=10, random_state=1).fit(FIT).score(TEST).scores
    assert not np.allclose(other, first)
    det = WeiPer(n_repeats=10).fit(FIT)
    det.set_params(delta=2.4, random_state=7, lambda_2=0.0)  # the perturbation changes at the next fit only
    assert (det.n_repeats_, det.delta_, det.random_state_) == (10, 1.8, 0)
    expected = clone(det).set_params(delta=1.8, random_state=0).fit(FIT).score(TEST).scores
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-12)
    loaded = load(det.save(tmp_path / "weiper.oodscope"))
    np.testing.assert_array_equal(loaded.score(TEST).scores, det.score(TEST).scores)
    loaded.noise_checksum_ += 1.0  # as if another numpy had drawn other perturbations
    loaded._head_cache = None
    with pytest.raises(ValueError, match="numpy's random stream differs"):
        loaded.score(TEST)


# --- all five ---------------------------------------------------------------------------------------------


def test_dice_and_vra_share_their_work_like_the_other_shapings(monkeypatch):
    from oodscope.shaping import _Shaping, sharing

    detectors = [DICE(), DICE(GEN()), VRA(), VRA(GEN()), VRA(per_unit=False), ReAct(DICE())]
    alone = [det.fit(FIT).score(TEST).scores for det in detectors]
    calls = {"DICE": 0, "other": 0}

    def counting(name, method):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return method(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(DICE, "_shape_logits", counting("DICE", DICE._shape_logits))
    monkeypatch.setattr(_Shaping, "_shape_logits", counting("other", _Shaping._shape_logits))
    with sharing():
        together = [det.fit(FIT).score(TEST).scores for det in detectors]
    for one, other in zip(alone, together, strict=True):
        np.testing.assert_array_equal(other, one)
    # DICE() and DICE(GEN()) share their sparsified logits; the DICE inside ReAct sees clipped features
    assert calls["DICE"] == 2
    # VRA() and VRA(GEN()) share theirs (1), VRA(per_unit=False) has other thresholds (1), ReAct clips the
    # fit data (its DICE learns from them) and the test data (2)
    assert calls["other"] == 4


def test_search_spaces_are_valid_parameters():
    for cls in (NCI, DICE, VRA, OptFS, WeiPer):
        for name, values in cls.search_space.items():
            for value in values:
                cls(**{name: value}).fit(FIT)
