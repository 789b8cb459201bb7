"""Each logit detector against an independent implementation of its formula."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from scipy.special import logsumexp as scipy_logsumexp
from scipy.special import softmax as scipy_softmax

from oodscope import (
    GEN,
    MLS,
    MSP,
    Energy,
    Entropy,
    Features,
    energy_score,
    entropy_score,
    gen_score,
    mls_score,
    msp_score,
)

RNG = np.random.default_rng(0)
RANDOM_LOGITS = [RNG.normal(0, scale, (200, n_classes)) for scale in (0.5, 3.0) for n_classes in (2, 10, 150)]


def reference_gen(logits, gamma, k):
    p = scipy_softmax(logits, axis=1)
    top = -np.sort(-p, axis=1)[:, : min(k, p.shape[1])]
    return (top**gamma * (1 - top) ** gamma).sum(axis=1)


def reference_entropy(logits):
    p = scipy_softmax(logits, axis=1)
    return -(p * np.log(p)).sum(axis=1)


@pytest.mark.parametrize("logits", RANDOM_LOGITS)
def test_against_reference_formulas(logits):
    rtol = 1e-6
    np.testing.assert_allclose(msp_score(logits), -scipy_softmax(logits, axis=1).max(axis=1), rtol=rtol)
    np.testing.assert_allclose(mls_score(logits), -logits.max(axis=1), rtol=rtol)
    np.testing.assert_allclose(energy_score(logits), -scipy_logsumexp(logits, axis=1), rtol=rtol)
    np.testing.assert_allclose(
        energy_score(logits, 2.5), -2.5 * scipy_logsumexp(logits / 2.5, axis=1), rtol=rtol
    )
    np.testing.assert_allclose(entropy_score(logits), reference_entropy(logits), rtol=rtol)
    for gamma in (0.01, 0.1, 0.5, 1.0, 2.0):
        for k in (1, 3, 100):
            np.testing.assert_allclose(
                gen_score(logits, gamma, k), reference_gen(logits, gamma, k), rtol=rtol
            )


@pytest.mark.parametrize(
    ("detector", "function"),
    [
        (MSP(), msp_score),
        (MLS(), mls_score),
        (Energy(temperature=3.0), lambda z: energy_score(z, 3.0)),
        (Entropy(), entropy_score),
        (GEN(gamma=0.3, k=4), lambda z: gen_score(z, 0.3, 4)),
    ],
)
def test_class_equals_function(detector, function):
    logits = RANDOM_LOGITS[3]
    scores, info = detector.fit(Features(logits=logits)).score(Features(logits=logits))
    np.testing.assert_array_equal(scores, function(logits))
    assert info["logits"] is not None


def mp_reference(logits_row, method, gamma=0.1):
    """High-precision reference with mpmath (60 digits) for one row of logits."""
    mpmath.mp.dps = 60
    z = [mpmath.mpf(float(v)) for v in logits_row]
    lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in z))
    p = [mpmath.exp(v - lse) for v in z]
    if method == "msp":
        return -max(p)
    if method == "energy":
        return -lse
    if method == "entropy":
        return -mpmath.fsum(pi * (v - lse) for pi, v in zip(p, z, strict=True))
    if method == "gen":
        one_minus = [mpmath.fsum(pj for j, pj in enumerate(p) if j != i) for i in range(len(p))]
        return mpmath.fsum(pi**gamma * om**gamma for pi, om in zip(p, one_minus, strict=True))
    raise ValueError(method)


EXTREME_ROWS = [
    [1e4, -1e4, 0.0],
    [-1e4, -1e4 + 1.0, -1e4 + 2.0],
    [40.0, 0.0, 0.0, 0.0],  # 1 - p_max ~ 1e-17: below float64 resolution of p itself
    [800.0, 0.0, 5.0],  # exp(-800) underflows in float64
    [3.0, 3.0, -2.0],  # a tie at the top
]


@pytest.mark.parametrize("row", EXTREME_ROWS)
@pytest.mark.parametrize("method", ["msp", "energy", "entropy", "gen"])
def test_extreme_logits_match_high_precision(row, method):
    functions = {"msp": msp_score, "energy": energy_score, "entropy": entropy_score, "gen": gen_score}
    got = functions[method](np.array([row]))[0]
    expected = float(mp_reference(row, method))
    if method in ("msp", "energy"):
        assert got == pytest.approx(expected, rel=1e-12)
    else:
        # entropy and GEN of a near one-hot row are tiny positive numbers; relative accuracy still holds
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e2, 1e4])
def test_stable_for_large_logits_in_both_precisions(dtype, scale):
    # RuntimeWarnings are errors in this suite (pyproject filterwarnings), so "no warnings" is checked too
    logits = (np.random.default_rng(1).uniform(-1, 1, (64, 10)) * scale).astype(dtype)
    logits[0] = scale  # all equal
    logits[1, 0], logits[1, 1:] = scale, -scale  # one-hot extreme
    for function in (msp_score, mls_score, energy_score, entropy_score, gen_score):
        scores = function(logits)
        assert scores.dtype == np.float64 and np.isfinite(scores).all(), function.__name__
    assert entropy_score(logits)[0] == pytest.approx(np.log(10))
    assert gen_score(logits, 0.1)[0] == pytest.approx(10 * (0.1**0.1 * 0.9**0.1))


def test_softmax_scores_ignore_a_constant_shift_but_mls_and_energy_do_not():
    logits = RANDOM_LOGITS[1]
    for function in (msp_score, entropy_score, gen_score):
        np.testing.assert_allclose(function(logits + 7.0), function(logits), rtol=1e-12)
    np.testing.assert_allclose(mls_score(logits + 7.0), mls_score(logits) - 7.0)
    np.testing.assert_allclose(energy_score(logits + 7.0), energy_score(logits) - 7.0)


def test_gen_k_larger_than_classes_uses_all_and_k1_uses_the_top_probability():
    logits = RANDOM_LOGITS[0]  # two classes
    np.testing.assert_array_equal(gen_score(logits, 0.1, 100), gen_score(logits, 0.1, 2))
    p = scipy_softmax(logits, axis=1).max(axis=1)
    np.testing.assert_allclose(gen_score(logits, 0.5, 1), np.sqrt(p * (1 - p)), rtol=1e-9)


def test_energy_temperature_identity():
    logits = RANDOM_LOGITS[2]
    np.testing.assert_allclose(energy_score(logits, 4.0), 4.0 * energy_score(logits / 4.0), rtol=1e-12)


def test_entropy_exact_at_zero_probability():
    # p underflows to exactly 0 for the second class; its term must be 0, not NaN
    assert entropy_score(np.array([[0.0, -2000.0]]))[0] == 0.0
    assert msp_score(np.array([[0.0, -2000.0]]))[0] == -1.0


def test_single_class_is_well_defined():
    logits = np.array([[1.0], [5.0]])
    np.testing.assert_array_equal(msp_score(logits), [-1.0, -1.0])
    np.testing.assert_array_equal(entropy_score(logits), [0.0, 0.0])
    np.testing.assert_array_equal(gen_score(logits), [0.0, 0.0])


@pytest.mark.parametrize("function", [msp_score, mls_score, energy_score, entropy_score, gen_score])
def test_bad_logits_are_rejected_clearly(function):
    with pytest.raises(ValueError, match="logits must be 2-D"):
        function(np.zeros(5))
    with pytest.raises(ValueError, match="NaN or inf"):
        function(np.array([[0.0, np.nan]]))
    with pytest.raises(TypeError, match="real numbers"):
        function(np.array([["a", "b"]]))


def test_pure_functions_validate_their_hyperparameters():
    with pytest.raises(
        ValueError, match="The 'gamma' parameter of gen_score must be a float in \\(0, inf\\)"
    ):
        gen_score(RANDOM_LOGITS[0], gamma=0)
    with pytest.raises(ValueError, match="The 'k' parameter of gen_score must be an int in \\[1, inf\\)"):
        gen_score(RANDOM_LOGITS[0], k=0)
    with pytest.raises(ValueError, match="The 'temperature' parameter of energy_score"):
        energy_score(RANDOM_LOGITS[0], temperature=-1.0)
