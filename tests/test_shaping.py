"""ReAct, ASH and SCALE against plain per-sample reference implementations."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy.special import logsumexp

from oodscope import ASH, GEN, MSP, ODIN, SCALE, Energy, Features, ReAct, gen_score

RNG = np.random.default_rng(0)
DIM, N_CLASSES = 40, 6
W = RNG.normal(size=(N_CLASSES, DIM))
B = RNG.normal(size=N_CLASSES)


def features(n: int, seed: int) -> Features:
    rng = np.random.default_rng(seed)
    h = np.maximum(rng.normal(0.3, 1.0, (n, DIM)), 0.0)  # post-ReLU, continuous: no ties above zero
    return Features(logits=h @ W.T + B, layers={"penultimate": h}, head_weight=W, head_bias=B)


FIT, TEST = features(300, 1), features(50, 2)


def energy(logits):
    return -logsumexp(logits, axis=1)


def top_k_reference(row, percentile):
    k = max(1, DIM - int(np.round(DIM * percentile / 100)))
    order = np.argsort(-row, kind="stable")
    keep = np.zeros(DIM, dtype=bool)
    keep[order[:k]] = True
    kth = row[order[k - 1]]
    keep |= row == kth  # ties with the k-th value are kept (only zeros can tie here)
    return keep, k


def test_react_clips_at_the_fit_percentile():
    det = ReAct(percentile=80).fit(FIT)
    c = np.percentile(FIT.layer("penultimate"), 80)
    assert det.clip_value_ == pytest.approx(c)
    expected = energy(np.minimum(TEST.layer("penultimate"), c) @ W.T + B)
    np.testing.assert_allclose(det.score(TEST).scores, expected, rtol=1e-10)


def test_react_composes_with_any_logit_detector():
    det = ReAct(GEN(gamma=0.3, k=3), percentile=90).fit(FIT)
    shaped = np.minimum(TEST.layer("penultimate"), det.clip_value_) @ W.T + B
    np.testing.assert_allclose(det.score(TEST).scores, gen_score(shaped, 0.3, 3), rtol=1e-10)
    before = det.score(TEST).scores
    det.set_params(detector__gamma=0.8)
    assert det.detector.gamma == 0.8
    assert not np.allclose(det.fit(FIT).score(TEST).scores, before), "the nested parameter takes effect"


@pytest.mark.parametrize("percentile", [10, 65, 90])
def test_ash_s_matches_a_per_sample_loop(percentile):
    expected = []
    for row in TEST.layer("penultimate"):
        keep, _ = top_k_reference(row, percentile)
        pruned = np.where(keep, row, 0.0)
        shaped = pruned * np.exp(row.sum() / pruned.sum())
        expected.append(energy((shaped @ W.T + B)[None])[0])
    np.testing.assert_allclose(ASH(percentile=percentile).score(TEST).scores, expected, rtol=1e-9)


def test_ash_p_and_b_match_per_sample_loops():
    p_expected, b_expected = [], []
    for row in TEST.layer("penultimate"):
        keep, k = top_k_reference(row, 70)
        p_expected.append(energy((np.where(keep, row, 0.0) @ W.T + B)[None])[0])
        order = np.argsort(-row, kind="stable")[:k]
        binary = np.zeros(DIM)
        binary[order] = row.sum() / k
        b_expected.append(energy((binary @ W.T + B)[None])[0])
    np.testing.assert_allclose(ASH(percentile=70, variant="p").score(TEST).scores, p_expected, rtol=1e-9)
    np.testing.assert_allclose(ASH(percentile=70, variant="b").score(TEST).scores, b_expected, rtol=1e-9)


@pytest.mark.parametrize("percentile", [0, 50, 85])
def test_scale_matches_a_per_sample_loop(percentile):
    expected = []
    for row in TEST.layer("penultimate"):
        k = max(1, DIM - int(np.round(DIM * percentile / 100)))
        s2 = np.sort(row)[::-1][:k].sum()
        expected.append(energy(((row * np.exp(row.sum() / s2)) @ W.T + B)[None])[0])
    np.testing.assert_allclose(SCALE(percentile=percentile).score(TEST).scores, expected, rtol=1e-9)


def test_scale_with_ties_at_the_kth_value_is_exact():
    h = np.array([[3.0, 2.0, 2.0, 2.0, 0.0]])  # k = 2 at p = 60: s2 = 3 + 2 = 5 even though three values tie
    feats = Features(layers={"penultimate": h}, head_weight=np.eye(5))
    expected = energy(h * np.exp(9.0 / 5.0))
    np.testing.assert_allclose(SCALE(percentile=60).score(feats).scores, expected, rtol=1e-12)


def test_ash_and_scale_refuse_negative_activations():
    h = np.array([[1.0, -0.5], [0.2, 0.3]])
    feats = Features(layers={"penultimate": h}, head_weight=np.eye(2))
    for det in (ASH(), SCALE()):
        with pytest.raises(ValueError, match="non-negative .* go down to -0.5"):
            det.score(feats)
    ReAct().fit(feats).score(feats)  # ReAct has no such assumption


def test_shaping_needs_the_head_and_the_penultimate_layer():
    with pytest.raises(ValueError, match="needs the weights \\(W, b\\)"):
        ReAct().fit(Features(layers={"penultimate": np.ones((3, 2))}))
    with pytest.raises(KeyError, match="no layer 'penultimate'"):
        ReAct().fit(Features(layers={"other": np.ones((3, 2))}, head_weight=np.eye(2)))


def test_shaping_cannot_wrap_input_gradient_methods():
    with pytest.raises(ValueError, match="cannot wrap ODIN"):
        ASH(ODIN()).score(TEST)


def test_stateless_composition_scores_without_fit_and_stateful_needs_it():
    np.testing.assert_array_equal(ASH(MSP()).score(TEST).scores, ASH(MSP()).fit(FIT).score(TEST).scores)
    assert ASH(Energy())._needs_fit() is False
    assert ReAct(MSP())._needs_fit() is True


def test_non_linear_head_gives_a_clear_error_at_model_level():
    torch = pytest.importorskip("torch")
    from oodscope.backends import HeadNotLinearError

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Tanh())
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(HeadNotLinearError, match="Tanh"):
        ReAct().fit(model, x)


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(5).normal(size=5_000_000),
        np.random.default_rng(6).integers(0, 4, size=4_500_000).astype(np.float64),  # heavy ties
        np.zeros(4_200_000),
    ],
    ids=["normal", "ties", "zeros"],
)
def test_fast_percentile_equals_numpy(values):
    from oodscope.shaping import percentile

    for q in (0.0, 1.0, 50.0, 85.0, 90.0, 99.99, 100.0):
        assert percentile(values, q) == float(np.percentile(values, q)), q


def test_fast_percentile_float32_matches_numpy_closely():
    from oodscope.shaping import percentile

    values = np.maximum(np.random.default_rng(7).normal(size=(3000, 1500)), 0).astype(np.float32)
    assert percentile(values, 90) == pytest.approx(float(np.percentile(values, 90)), rel=1e-6)


def test_shapings_inside_sharing_give_the_same_scores_and_share_their_work(monkeypatch):
    from oodscope import shaping

    rng = np.random.default_rng(3)
    # float32, as models give
    h = np.maximum(rng.normal(0.2, 1.0, (2700, 1600)), 0).astype(np.float32)
    w, b = rng.normal(size=(10, 1600)).astype(np.float32) * 0.05, np.zeros(10, np.float32)
    fit = Features(layers={"penultimate": h[:1200]}, head_weight=w, head_bias=b)
    test = Features(layers={"penultimate": h}, head_weight=w, head_bias=b)
    detectors = [ReAct(), ReAct(GEN()), ASH(), ASH(MSP()), ASH(percentile=65), SCALE(), SCALE(percentile=60)]
    assert len(h) * h.shape[1] >= 1 << 22, "large enough for the threaded blocks"
    alone = [det.fit(fit).score(test).scores for det in detectors]

    calls = {"shape": 0, "percentile": 0}
    shape_logits, percentile = shaping._Shaping._shape_logits, shaping.percentile

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(shaping._Shaping, "_shape_logits", counting("shape", shape_logits))
    # where ReAct looks it up (its own module)
    monkeypatch.setattr(sys.modules[ReAct.__module__], "percentile", counting("percentile", percentile))
    with shaping.sharing():
        shared = [det.fit(fit).score(test).scores for det in detectors]
    for one, other in zip(alone, shared, strict=True):
        np.testing.assert_array_equal(other, one)
    assert calls["percentile"] == 1, "both ReActs clip at the same fit percentile"
    assert calls["shape"] == 5, "ReAct() / ReAct(GEN()) and ASH() / ASH(MSP()) share their recomputed logits"
    assert shaping._MEMO.get(None) is None, "nothing is kept after the block"


def test_a_new_shaping_needs_only_its_parts():
    from oodscope import shaping

    class Halve(shaping._Shaping):
        needs_fit = False

        def __init__(self, detector=None):
            self.detector = detector

        def _parts(self, h, scratch):
            return h * 0.5, None

    expected = energy(0.5 * TEST.layer("penultimate") @ W.T + B)
    np.testing.assert_allclose(Halve().score(TEST).scores, expected, rtol=1e-12)
    with shaping.sharing():  # shares nothing, but works inside evaluate and tune
        np.testing.assert_allclose(Halve().score(TEST).scores, expected, rtol=1e-12)


def test_ash_and_scale_treat_negative_zero_as_zero():
    # the top-k reads non-negative floats as integers; -0.0 is the one value whose bit pattern sorts apart
    rng = np.random.default_rng(4)
    h = np.maximum(rng.normal(0.0, 1.0, (60, DIM)), 0.0).astype(np.float32)
    negative_zero = np.where(h == 0, np.float32(-0.0), h)
    assert np.signbit(negative_zero).any()
    w, b = W.astype(np.float32), B.astype(np.float32)
    for det in [shaping(percentile=p) for shaping in (ASH, SCALE) for p in (30, 65, 90)]:
        plain = det.score(Features(layers={"penultimate": h}, head_weight=w, head_bias=b)).scores
        signed = det.score(Features(layers={"penultimate": negative_zero}, head_weight=w, head_bias=b)).scores
        np.testing.assert_array_equal(signed, plain)


def test_blocked_threaded_shaping_equals_one_shot_on_the_whole_array():
    # large enough for several threads, each reusing its work arrays over blocks of ~256k values; the
    # last block is shorter than the others
    from oodscope.shaping import ash, react, scale

    rng = np.random.default_rng(8)
    h = np.maximum(rng.normal(0.2, 1.0, (2999, 1403)), 0.0).astype(np.float32)
    w = rng.normal(size=(7, 1403)).astype(np.float32)
    b = rng.normal(size=7).astype(np.float32)
    feats = Features(layers={"penultimate": h}, head_weight=w, head_bias=b)
    react_det = ReAct(percentile=80).fit(feats)
    cases = [
        (react_det, react(h, react_det.clip_value_)),
        (ASH(percentile=85), ash(h, 85)),
        (ASH(percentile=70, variant="p"), ash(h, 70, variant="p")),
        (SCALE(percentile=90), scale(h, 90)),
    ]
    for det, shaped in cases:
        expected = energy(shaped.astype(np.float64) @ w.T.astype(np.float64) + b)
        np.testing.assert_allclose(det.score(feats).scores, expected, rtol=2e-5, atol=1e-4)
