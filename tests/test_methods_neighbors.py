"""NNGuide, Relation, CARef and CADRef against plain re-derivations of their papers' formulas."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from oodscope import Features, clone
from oodscope.detectors.cadref import CADRef, cadref_confidence, cadref_score
from oodscope.detectors.caref import CARef, caref_score, class_aware_means
from oodscope.detectors.nnguide import NNGuide, content_sample, nnguide_bank, top_k_mean_inner_product
from oodscope.detectors.relation import Relation, relation_score

from conftest import linear_head_features, make_toy

N_CLASSES, DIM = 4, 12
EPS = np.finfo(np.float64).eps


def labelled(n: int, seed: int, dim: int = DIM, n_classes: int = N_CLASSES) -> Features:
    """Post-ReLU features around class means, with a head whose logits mostly classify them right."""
    rng = np.random.default_rng(seed)
    means = np.abs(np.random.default_rng(99).normal(0, 2.0, (n_classes, dim)))
    labels = rng.integers(0, n_classes, n)
    h = np.maximum(means[labels] + rng.normal(0, 1.0, (n, dim)), 0.0)
    weight = np.random.default_rng(97).normal(0, 0.3, (n_classes, dim)) + (means - means.mean(0)) / 2.0
    bias = np.random.default_rng(98).normal(0, 0.1, n_classes)
    return linear_head_features(h, weight, bias, labels)


FIT, TEST = labelled(400, 1), labelled(60, 2)
OOD = Features(
    logits=(h := np.abs(np.random.default_rng(3).normal(0, 1.5, (40, DIM)))) @ FIT.head_weight.T
    + FIT.head_bias,
    layers={"penultimate": h},
    head_weight=FIT.head_weight,
    head_bias=FIT.head_bias,
)
BOTH = [TEST, OOD]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


# --- NNGuide ------------------------------------------------------------------------------------------------


def nnguide_reference(fit: Features, test: Features, k: int) -> np.ndarray:
    """The paper's score, one sample at a time, with the whole fit set as the bank."""
    bank = [unit(h) * logsumexp(z) for h, z in zip(fit.layer("penultimate"), fit.logits, strict=True)]
    scores = []
    for h, z in zip(test.layer("penultimate"), test.logits, strict=True):
        similarities = sorted((float(unit(h) @ b) for b in bank), reverse=True)
        guidance = sum(similarities[:k]) / k
        scores.append(-logsumexp(z) * guidance)
    return np.array(scores)


@pytest.mark.parametrize("k", [1, 7, 10, 100])
@pytest.mark.parametrize("test", BOTH, ids=["id", "ood"])
def test_nnguide_matches_a_loop_over_samples(k, test):
    det = NNGuide(k=k, bank_fraction=1.0).fit(FIT)
    assert det.bank_.shape == (400, DIM) and det.bank_.dtype == np.float32
    # the bank is kept in float32: agreement to its rounding
    np.testing.assert_allclose(det.score(test).scores, nnguide_reference(FIT, test, k), rtol=2e-7)


def test_nnguide_by_hand():
    # bank: [1, 0] * LSE(2, 0) and [0, 1] * LSE(0, 2), with LSE(2, 0) = 2 + log(1 + e^-2)
    energy = 2.0 + math.log1p(math.exp(-2.0))
    fit = Features(logits=np.array([[2.0, 0.0], [0.0, 2.0]]), layers={"penultimate": np.eye(2)})
    x = np.array([[2.0, 0.0], [1.0, 1.0]])
    det = NNGuide(k=1, bank_fraction=1.0).fit(fit)
    scores = det.score(Features(logits=x, layers={"penultimate": x})).scores
    # [2, 0]: cosine 1 with the first bank row; [1, 1]: cosine 1/√2 with either; its energy is 1 + log 2
    expected = [-energy * energy, -(1.0 + math.log(2.0)) * energy / math.sqrt(2.0)]
    np.testing.assert_allclose(scores, expected, rtol=1e-7)
    # k = 2 averages both bank rows: [2, 0] gets (energy + 0) / 2
    det = NNGuide(k=2, bank_fraction=1.0).fit(fit)
    assert det.score(Features(logits=x[:1], layers={"penultimate": x[:1]})).scores[0] == pytest.approx(
        -energy * energy / 2.0, rel=1e-7
    )


def test_nnguide_bank_is_a_sample_of_the_fit_rows_independent_of_their_order():
    det = NNGuide(k=10, bank_fraction=0.1).fit(FIT)
    assert det.bank_.shape == (40, DIM)  # ⌊0.1 · 400⌋
    full = nnguide_bank(FIT.layer("penultimate"), FIT.logits)
    matches = [np.flatnonzero((full == row).all(axis=1)) for row in det.bank_]
    assert all(m.size == 1 for m in matches) and len({int(m[0]) for m in matches}) == 40
    shuffled = NNGuide(k=10, bank_fraction=0.1).fit(FIT.take(np.random.default_rng(0).permutation(400)))
    np.testing.assert_array_equal(shuffled.bank_, det.bank_)
    other = NNGuide(k=10, bank_fraction=0.1, seed=1).fit(FIT)
    assert not np.array_equal(np.sort(other.bank_, axis=0), np.sort(det.bank_, axis=0))
    # at least k rows, and ⌊α N⌋ computed without float noise (0.29 · 100 is 28.999999999999996)
    assert NNGuide(k=50, bank_fraction=0.1).fit(FIT).bank_.shape == (50, DIM)
    assert NNGuide(k=1, bank_fraction=0.29).fit(FIT.take(np.arange(100))).bank_.shape == (29, DIM)
    assert NNGuide(k=1, bank_fraction=0.011).fit(FIT).bank_.shape == (4, DIM)  # 4.4 rounds down


def test_content_sample_is_uniform_and_seeded():
    x = np.random.default_rng(0).normal(size=(20_000, 6))
    chosen = content_sample(x, 2_000)
    assert len(set(chosen.tolist())) == 2_000
    # every quarter of the rows and both halves of each feature's range are hit like a uniform sample
    # (binomial standard deviation about 19 for an expected 500 or 1000)
    assert np.all(np.abs(np.bincount(chosen // 5_000, minlength=4) - 500) < 100)
    assert np.all(np.abs((x[chosen] > 0).sum(axis=0) - 1_000) < 130)
    overlap = len(set(chosen.tolist()) & set(content_sample(x, 2_000, seed=7).tolist()))
    assert abs(overlap - 200) < 60  # independent 10 % samples share about 1 %
    reversed_rows = content_sample(x[::-1], 2_000)
    np.testing.assert_array_equal(x[::-1][reversed_rows], x[chosen])  # same rows, same (hash) order
    # −0.0 and 0.0 are the same value; float32 and float64 copies of the same values hash alike
    signed = np.array([[0.0, 1.0], [-0.0, 2.0], [3.0, -0.0]])
    np.testing.assert_array_equal(content_sample(signed, 2), content_sample(np.abs(signed), 2))
    x32 = x[:50].astype(np.float32)
    np.testing.assert_array_equal(content_sample(x32, 9), content_sample(x32.astype(np.float64), 9))
    with pytest.raises(ValueError, match="1 <= size <= 3"):
        content_sample(signed, 4)


def brute_top_k_mean(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    q = queries / np.where(norms > 0, norms, 1.0)
    products = q @ bank.astype(np.float32).astype(np.float64).T
    return -np.sort(-products, axis=1)[:, :k].mean(axis=1)


@pytest.mark.parametrize("k", [1, 3, 40, 297])
@pytest.mark.parametrize("tile_bytes", [1 << 25, 3000])
def test_top_k_search_is_exact_across_tiles_blocks_and_ties(k, tile_bytes, monkeypatch):
    from oodscope import neighbors

    monkeypatch.setattr(neighbors, "SIMILARITY_BLOCK_BYTES", tile_bytes)
    monkeypatch.setattr(neighbors, "QUERY_ROWS", 8)
    rng = np.random.default_rng(5)
    bank = rng.normal(size=(300, 16)) * rng.uniform(0.5, 3.0, (300, 1))
    bank[100:130] = bank[0]  # a run of equal rows: tied products
    queries = rng.normal(size=(70, 16))
    queries[3] = 0.0  # no direction: every product 0
    queries[4] = bank[0]
    got = top_k_mean_inner_product(queries, bank, k)
    np.testing.assert_allclose(got, brute_top_k_mean(queries, bank, k), rtol=1e-12, atol=1e-12)
    assert got[3] == 0.0
    with pytest.raises(ValueError, match="1 <= k <= 300"):
        top_k_mean_inner_product(queries, bank, 301)


def test_nnguide_with_fewer_fit_samples_than_k_averages_them_all():
    small = FIT.take(np.arange(6))
    with pytest.warns(UserWarning, match="k=10 is more than the 6 fit samples"):
        det = NNGuide().fit(small)
    assert det.bank_.shape == (6, DIM)
    np.testing.assert_allclose(det.score(TEST).scores, nnguide_reference(small, TEST, 6), rtol=2e-7)


def test_nnguide_paper_defaults_and_grid():
    assert NNGuide().get_params() == {"k": 10, "bank_fraction": 0.01, "seed": 0}
    assert NNGuide.search_space == {}


# --- Relation -----------------------------------------------------------------------------------------------


def relation_reference(fit: Features, test: Features, power: float) -> tuple[np.ndarray, int, int]:
    """The score as a double loop over test and fit samples; also how many edges were kept and dropped."""

    def normalise(h):
        return h / math.sqrt(float(h @ h) + 1e-10)

    fit_pairs = [
        (normalise(h), softmax(z)) for h, z in zip(fit.layer("penultimate"), fit.logits, strict=True)
    ]
    scores, kept, dropped = [], 0, 0
    for h, z in zip(test.layer("penultimate"), test.logits, strict=True):
        hn, p = normalise(h), softmax(z)
        total = 0.0
        for hj, pj in fit_pairs:
            r = max(0.0, float(hn @ hj)) * float(p @ pj)
            if abs(r) > 0.03:
                total += math.copysign(abs(r) ** power, r)
                kept += 1
            else:
                dropped += 1
        scores.append(-total)
    return np.array(scores), kept, dropped


@pytest.mark.parametrize("power", [1, 2.5, 4])
@pytest.mark.parametrize("test", BOTH, ids=["id", "ood"])
def test_relation_matches_a_double_loop(power, test):
    fit = FIT.take(np.arange(150))
    expected, kept, dropped = relation_reference(fit, test, power)
    assert kept > 100 and dropped > 100  # the threshold matters on this data
    det = Relation(power=power).fit(fit)
    assert det.fit_vectors_.dtype == np.float32 and det.fit_probabilities_.shape == (150, N_CLASSES)
    # fit state kept in float32: agreement to its rounding
    np.testing.assert_allclose(det.score(test).scores, expected, rtol=1e-6)


def test_relation_by_hand():
    fit_vectors, fit_probabilities = np.eye(2), np.array([[0.9, 0.1], [0.1, 0.9]])
    p = 1.0 / (1.0 + math.exp(-5.0))  # softmax([5, 0])[0]
    # [2, 0] relates to the first fit sample only: cosine 1 times p·[0.9, 0.1]
    # [1, 1]: cosine 1/√2 with both, posterior [1/2, 1/2], so each edge is 0.5/√2 ≈ 0.354
    # [1, 0.05] with a flat posterior: an edge of 0.5 · 0.9988 to the first, 0.5 · 0.0499 ≈ 0.025 <= 0.03 to
    # the second, which is dropped
    features = np.array([[2.0, 0.0], [1.0, 1.0], [1.0, 0.05]])
    logits = np.array([[5.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    cosine = 1.0 / math.sqrt(1.0 + 0.05**2)
    for power in (1, 3):
        expected = [
            -((0.9 * p + 0.1 * (1 - p)) ** power),
            -2 * (0.5 / math.sqrt(2.0)) ** power,
            -((0.5 * cosine) ** power),
        ]
        got = relation_score(features, logits, fit_vectors, fit_probabilities, power)
        np.testing.assert_allclose(got, expected, rtol=1e-9)  # ĥ = h / √(‖h‖² + 1e-10)


def test_relation_blocks_give_the_unblocked_result(monkeypatch):
    from oodscope.detectors import relation

    det = Relation().fit(FIT)
    whole = det.score(OOD).scores
    monkeypatch.setattr(relation, "RELATION_TILE_BYTES", 8 * 512 * 7)  # fit tiles of a few samples
    tiled = det.score(OOD).scores
    np.testing.assert_allclose(tiled, whole, rtol=1e-12)


def test_relation_paper_default_and_openood_grid():
    assert Relation().power == 1
    assert Relation.search_space == {"power": [1, 2, 4, 6, 8]}


# --- CARef and CADRef ---------------------------------------------------------------------------------------


def predicted_class_means(fit: Features) -> np.ndarray:
    h, predicted = fit.layer("penultimate"), fit.logits.argmax(axis=1)
    return np.array([h[predicted == c].mean(axis=0) for c in range(fit.logits.shape[1])])


def caref_reference(fit: Features, test: Features) -> np.ndarray:
    means = predicted_class_means(fit)
    return np.array(
        [
            np.abs(h - means[np.argmax(z)]).sum() / np.abs(h).sum()
            for h, z in zip(test.layer("penultimate"), test.logits, strict=True)
        ]
    )


def confidence_reference(z: np.ndarray, logit_score: str) -> float:
    p = softmax(z)
    if logit_score == "energy":
        return float(logsumexp(z))
    if logit_score == "msp":
        return float(p.max())
    if logit_score == "maxlogit":
        return float(z.max())
    top = np.sort(p)[::-1][: max(10, len(z) // 10)]
    return float(1.0 / np.sum(top**0.1 * (1 - top) ** 0.1))


def cadref_reference(fit: Features, test: Features, logit_score: str) -> np.ndarray:
    """The paper's code's score, with its confidences floored at eps as documented (a max logit can be
    negative; the code would then flip the sign of the positive error's term)."""
    means, weight = predicted_class_means(fit), fit.head_weight
    mean_confidence = np.mean([confidence_reference(z, logit_score) for z in fit.logits])
    scores = []
    for h, z in zip(test.layer("penultimate"), test.logits, strict=True):
        c = int(np.argmax(z))
        positive = negative = 0.0
        for d in range(len(h)):
            delta = (h[d] - means[c, d]) * np.sign(weight[c, d])
            positive += max(delta, 0.0)
            negative += max(-delta, 0.0)
        norm = np.abs(h).sum()
        confidence = max(confidence_reference(z, logit_score), EPS)
        scores.append(positive / norm / confidence + negative / norm / max(mean_confidence, EPS))
    return np.array(scores)


@pytest.mark.parametrize("test", BOTH, ids=["id", "ood"])
def test_caref_matches_a_loop(test):
    det = CARef().fit(FIT)
    np.testing.assert_allclose(det.class_means_, predicted_class_means(FIT), rtol=1e-12)
    np.testing.assert_array_equal(det.class_counts_, np.bincount(FIT.logits.argmax(1), minlength=N_CLASSES))
    np.testing.assert_allclose(det.score(test).scores, caref_reference(FIT, test), rtol=1e-12)


def test_caref_centroids_follow_predictions_not_labels():
    h = np.array([[4.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 1.0]])
    logits = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # the last sample is misclassified
    det = CARef().fit(Features(logits=logits, layers={"penultimate": h}, labels=np.array([0, 0, 1, 1])))
    np.testing.assert_array_equal(det.class_means_, [[2.0, 1.0 / 3.0], [0.0, 3.0]])
    # [2, 1] predicted 0: |2 − 2| + |1 − 1/3| = 2/3 over ‖h‖₁ = 3
    x = np.array([[2.0, 1.0]])
    assert det.score(Features(logits=np.array([[1.0, 0.0]]), layers={"penultimate": x})).scores[0] == (
        pytest.approx(2.0 / 9.0, rel=1e-12)
    )


def test_caref_unpredicted_class_falls_back_to_the_global_mean():
    h = np.array([[4.0, 0.0], [2.0, 0.0]])
    with pytest.warns(UserWarning, match=r"No fit sample is predicted as class\(es\) \[1\]"):
        means, counts = class_aware_means(h, np.array([[1.0, 0.0], [1.0, 0.0]]))
    np.testing.assert_array_equal(means, [[3.0, 0.0], [3.0, 0.0]])
    np.testing.assert_array_equal(counts, [2, 0])


def test_caref_zero_features_score_high_and_finite():
    means = np.array([[1.0, 1.0], [0.0, 0.0]])
    scores = caref_score(np.zeros((2, 2)), np.array([[1.0, 0.0], [0.0, 1.0]]), means)
    assert scores[0] == pytest.approx(1.0 / np.finfo(np.float64).eps) and scores[1] == 0.0


@pytest.mark.parametrize("logit_score", ["energy", "msp", "maxlogit", "gen"])
@pytest.mark.parametrize("test", BOTH, ids=["id", "ood"])
def test_cadref_matches_a_loop(logit_score, test):
    if logit_score == "maxlogit":  # some samples of this data have a negative max logit: the floor acts
        assert (test.logits.max(axis=1) < 0).any()
    det = CADRef(logit_score=logit_score).fit(FIT)
    expected_mean = np.mean([confidence_reference(z, logit_score) for z in FIT.logits])
    assert det.mean_confidence_ == pytest.approx(expected_mean, rel=1e-12)
    np.testing.assert_allclose(det.score(test).scores, cadref_reference(FIT, test, logit_score), rtol=1e-11)


def test_cadref_gen_confidence_takes_the_top_tenth_of_many_classes():
    z = np.random.default_rng(0).normal(0, 3.0, (5, 250))  # M = 25
    expected = [confidence_reference(row, "gen") for row in z]
    np.testing.assert_allclose(cadref_confidence(z, "gen"), expected, rtol=1e-12)


def test_cadref_by_hand_and_its_decomposition_of_caref():
    # h = [3, 1] predicted 0 with μ_0 = [2, 2]: h − μ = [1, −1]; sign(w_0) = [1, −1] makes δ = [1, 1]
    h, z = np.array([[3.0, 1.0]]), np.array([[2.0, 0.0]])
    means, weight = np.array([[2.0, 2.0], [0.0, 3.0]]), np.array([[1.0, -1.0], [-1.0, 1.0]])
    energy = 2.0 + math.log1p(math.exp(-2.0))
    got = cadref_score(h, z, means, weight, mean_confidence=4.0)
    assert got[0] == pytest.approx((2.0 / 4.0) / energy, rel=1e-12)  # E_p = 2/4, E_n = 0
    # with sign(w_0) = [1, 1], δ = [1, −1]: E_p = E_n = 1/4
    got = cadref_score(h, z, means, np.ones((2, 2)), mean_confidence=4.0)
    assert got[0] == pytest.approx(0.25 / energy + 0.25 / 4.0, rel=1e-12)
    # E_p + E_n is CARef's error when no weight is zero: with both confidences 1 the scores coincide
    ones = np.zeros((len(TEST), N_CLASSES))
    ones[np.arange(len(TEST)), TEST.logits.argmax(1)] = 1e6  # MSP = 1, same predictions
    caref_means = CARef().fit(FIT).class_means_
    np.testing.assert_allclose(
        cadref_score(TEST.layer("penultimate"), ones, caref_means, FIT.head_weight, 1.0, "msp"),
        caref_score(TEST.layer("penultimate"), ones, caref_means),
        rtol=1e-12,
    )


def test_cadref_drops_dimensions_with_zero_weight():
    h, z = np.array([[3.0, 1.0]]), np.array([[2.0, 0.0]])
    means, weight = np.array([[2.0, 2.0], [0.0, 3.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])
    energy = 2.0 + math.log1p(math.exp(-2.0))
    assert cadref_score(h, z, means, weight, 4.0)[0] == pytest.approx(0.25 / energy, rel=1e-12)


def test_cadref_non_positive_confidences_warn_and_stay_finite():
    h = np.abs(np.random.default_rng(0).normal(size=(20, 3)))
    w, b = np.array([[1.0, -1.0, 0.5]]), np.array([-10.0])  # one class: LSE = the logit, all negative
    feats = Features(logits=h @ w.T + b, layers={"penultimate": h}, head_weight=w, head_bias=b)
    with pytest.warns(UserWarning, match=r"mean 'energy' confidence of the fit samples is -\d"):
        det = CADRef().fit(feats)
    scores = det.score(feats).scores
    assert np.isfinite(scores).all() and (scores >= 0).all()


def test_cadref_refuses_a_logit_score_changed_after_fit():
    det = CADRef().fit(FIT).set_params(logit_score="msp")
    with pytest.raises(ValueError, match="fitted with logit_score='energy' but is set to 'msp'"):
        det.score(TEST)
    np.testing.assert_allclose(
        det.fit(FIT).score(TEST).scores, CADRef(logit_score="msp").fit(FIT).score(TEST).scores
    )


def test_cadref_keeps_the_head_signs_of_the_fit():
    det = CADRef().fit(FIT)
    np.testing.assert_array_equal(det.weight_signs_, np.sign(FIT.head_weight))
    assert det.weight_signs_.dtype == np.int8


@pytest.mark.parametrize("cls", [NNGuide, Relation, CARef, CADRef])
def test_toy_separation_without_warnings(cls):
    from oodscope import auroc

    toy = make_toy(seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det = cls().fit(toy["fit"])
        assert auroc(det.score(toy["id"]).scores, det.score(toy["ood"]).scores) > 0.95
        np.testing.assert_array_equal(
            clone(det).fit(toy["fit"]).score(toy["ood"]).scores, det.score(toy["ood"]).scores
        )
