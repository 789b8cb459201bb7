"""AdaSCALE-A and -L: the step direction by hand, the whole score against torch autograd and a per-sample
loop, torch against Keras, one shared pass for both variants, precomputed Features, persistence, bad
parameters."""

from __future__ import annotations

import numpy as np
import pytest
from test_iodin import counting_model
from test_odin import keras_twin, small_convnet

from oodscope import GEN, Features, evaluate, load
from oodscope.detectors.adascale import (
    AdaSCALE,
    SmallestGradientElements,
    adascale_direction,
    adascale_percentiles,
    adascale_score,
    adascale_shift,
)
from oodscope.losses import MaxLogit, Negated
from oodscope.needs import Needs, PassKind, Unperturbed
from oodscope.plan import Plan

BATCH = 10
#: settings whose counts differ on the small convnet's 6 features and 2·8·8 inputs: the relu(ã) term over
#: int(6·20/100) = 1 unit, the shift term over int(6·50/100) = 3 units, int(128·0.05) = 6 input elements moved
SETTINGS = {"percentile": (40.0, 90.0), "k1": 20.0, "k2": 50.0, "lam": 2.0, "o": 0.05, "eps": 0.5}


def test_the_direction_moves_the_elements_of_smallest_gradient_by_its_sign():
    gradient = np.array(
        [
            [[0.5, -0.1], [2.0, -0.2], [0.3, 1.0]],  # the two smallest |g|: -0.1 and -0.2
            [[0.0, 0.7], [0.4, -0.4], [0.4, 0.9]],  # 0 first, then a three-way tie at 0.4: the lowest index
        ]
    )
    direction = adascale_direction(gradient, fraction=2 / 6)  # int(6 · 1/3) = 2 elements per sample
    expected = np.zeros_like(gradient)
    expected[0, 0, 1], expected[0, 1, 1] = -1.0, -1.0
    expected[1, 1, 0] = 1.0  # the zero gradient is chosen but has no sign: it does not move
    np.testing.assert_array_equal(direction, expected)
    # at least one element, however small the fraction; the whole input with fraction 1
    np.testing.assert_array_equal(adascale_direction(gradient, 0.01)[0], [[0, -1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(adascale_direction(gradient, 1.0), np.sign(gradient))
    assert SmallestGradientElements(0.05) == SmallestGradientElements(0.05)
    assert hash(SmallestGradientElements(0.05)) == hash(SmallestGradientElements(0.05))
    np.testing.assert_array_equal(SmallestGradientElements(2 / 6)(gradient), expected)


def test_the_mask_is_what_a_stable_sort_picks_even_with_many_ties():
    rng = np.random.default_rng(5)
    gradient = rng.integers(-3, 4, size=(50, 3, 7)).astype(np.float32)  # 7 distinct |g| over 21 elements
    for fraction in (0.05, 0.2, 0.5, 0.9):
        count = max(1, int(21 * fraction))
        order = np.argsort(np.abs(gradient).reshape(50, -1), axis=1, kind="stable")[:, :count]
        expected = np.zeros((50, 21), np.float32)
        np.put_along_axis(expected, order, 1.0, axis=1)
        expected *= np.sign(gradient.reshape(50, -1))
        np.testing.assert_array_equal(adascale_direction(gradient, fraction).reshape(50, -1), expected)
    a = rng.integers(0, 3, size=(40, 9)).astype(np.float64)  # ties in the features: the lowest index first
    moved = rng.normal(size=(40, 9))
    order = np.argsort(-a, axis=1, kind="stable")
    expected = [
        np.maximum(m[o[:2]], 0).sum() + 0.5 * np.abs(r - m)[o[:4]].sum()
        for r, m, o in zip(a, moved, order, strict=True)
    ]
    np.testing.assert_allclose(adascale_shift(a, moved, k1=25, k2=50, lam=0.5), expected, rtol=1e-12)


def test_the_step_goes_up_the_max_logit():
    """The perturbation moves x against the gradient of −max z, i.e. x + ε·sign(g)·M with g = ∇ max z."""
    move = AdaSCALE(eps=0.5, o=0.5).needs().perturbation
    assert move.loss == Negated(MaxLogit()) and move.step == 0.5
    x = np.zeros((1, 4), np.float32)
    g = np.array([[0.5, -0.1, 2.0, 0.2]])
    moved = move.apply(x, -g)  # the gradient of the loss −max z is −g
    np.testing.assert_array_equal(moved, [[0.0, -0.5, 0.0, 0.5]])
    assert moved.dtype == np.float32


def test_the_shift_statistic_and_the_ecdf_by_hand():
    a = np.array([[3.0, 1.0, 0.0, 2.0], [1.0, 1.0, 0.5, 0.0]])
    moved = np.array([[2.5, 1.0, 0.0, 2.5], [-1.0, 3.0, 0.5, 0.0]])
    # row 0: top-1 = unit 0 (relu 2.5); top-2 = units 0, 3 (shifts 0.5 + 0.5)
    # row 1: top-1 = unit 0 on the tie with unit 1 (relu(−1) = 0); top-2 = units 0, 1 (shifts 2 + 2)
    np.testing.assert_allclose(adascale_shift(a, moved, k1=25, k2=50, lam=3.0), [2.5 + 3.0, 0.0 + 12.0])
    fit = [1.0, 2.0, 2.0, 5.0]  # F(2) = 3/4: a value equal to a fit value counts it (statsmodels' ECDF)
    np.testing.assert_allclose(adascale_percentiles([2.0, 0.0, 5.0], fit, (60, 80)), [65.0, 80.0, 60.0])


def reference_scores(net, torch, x_fit, x_test, variant, percentile, k1, k2, lam, o, eps):
    """AdaSCALE computed with plain torch autograd and per-sample loops, independently of oodscope."""
    body, head = net[:4], net[4]

    def features(x):
        inputs = torch.as_tensor(x).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(net(inputs).max(dim=1).values.sum(), inputs)
        n = g[0].numel()
        smallest = torch.topk(g.abs().flatten(1), int(n * o), dim=1, largest=False).indices
        mask = torch.zeros_like(g).flatten(1).scatter_(1, smallest, 1.0).view_as(g)
        with torch.no_grad():
            moved = inputs + eps * g.sign() * mask
            return body(inputs).double().numpy(), body(moved).double().numpy(), mask.numpy(), g.numpy()

    def shift(a, moved):
        q = []
        for row, row_moved in zip(a, moved, strict=True):
            order = np.argsort(-row, kind="stable")
            top1, top2 = order[: int(len(row) * k1 / 100)], order[: int(len(row) * k2 / 100)]
            q.append(np.maximum(row_moved[top1], 0).sum() + lam * np.abs(row - row_moved)[top2].sum())
        return np.array(q)

    fit_q = shift(*features(x_fit)[:2])
    a, moved, mask, g = features(x_test)
    weight, bias = head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
    scores, percentiles = [], []
    for row, q in zip(a, shift(a, moved), strict=True):
        cdf = np.mean(fit_q <= q)
        p = percentile[0] + (1 - cdf) * (percentile[1] - percentile[0])
        kept = max(1, len(row) - int(np.round(len(row) * p / 100)))
        positive = np.maximum(row, 0)
        r = positive.sum() / np.sort(positive)[::-1][:kept].sum()
        logits = weight @ (row * np.exp(r)) + bias if variant == "a" else r**2 * (weight @ row + bias)
        scores.append(-np.log(np.exp(logits - logits.max()).sum()) - logits.max())
        percentiles.append(p)
    return np.array(scores), np.sort(fit_q), {"a": a, "moved": moved, "mask": mask, "g": g, "p": percentiles}


@pytest.mark.parametrize("variant", ["a", "l"])
def test_the_score_matches_torch_autograd_and_a_per_sample_loop(variant):
    torch = pytest.importorskip("torch")
    net = small_convnet(torch)
    rng = np.random.default_rng(0)
    x_fit = rng.normal(size=(30, 2, 8, 8)).astype(np.float32)
    x_test = np.concatenate([rng.normal(size=(10, 2, 8, 8)), rng.normal(0, 3, (10, 2, 8, 8))]).astype(
        np.float32
    )

    expected, fit_q, parts = reference_scores(net, torch, x_fit, x_test, variant, **SETTINGS)
    # the reference picks the moved elements with torch.topk; they are well separated from the next ones
    np.testing.assert_array_equal(adascale_direction(parts["g"], SETTINGS["o"]) != 0, parts["mask"] != 0)
    assert len(set(parts["p"])) > 5, "the percentile adapts to the sample"
    assert np.abs(parts["a"] - parts["moved"]).max() > 1e-3, "the perturbation moved the features"

    detector = AdaSCALE(variant=variant, **SETTINGS).fit(net, x_fit, batch_size=7)
    np.testing.assert_allclose(detector.fit_shifts_, fit_q, rtol=1e-5)
    assert detector.fit_shifts_.dtype == np.float64
    result = detector.score(x_test, batch_size=6)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5)
    with torch.no_grad():  # info holds the logits of the moved inputs, as for ODIN
        moved_logits = net[4](torch.as_tensor(parts["moved"], dtype=torch.float32)).numpy()
    np.testing.assert_allclose(result.info["logits"], moved_logits, rtol=1e-4, atol=1e-5)


def test_adascale_agrees_between_torch_and_keras_with_the_same_weights():
    """The same weights in torch and in Keras (whichever Keras backend runs the tests) give the same scores.

    The mask picks the 6 smallest |g| of 128 elements, so a gradient that differs between the frameworks in
    its last bits could swap the 6th and 7th element; with these inputs they are at least 1 % apart (checked
    below), far above float32 noise, so the frameworks move the same elements.
    """
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    net = small_convnet(torch)
    model = keras_twin(net, keras)
    rng = np.random.default_rng(0)
    x_fit = rng.normal(size=(24, 2, 8, 8)).astype(np.float32)
    x_test = np.concatenate([rng.normal(size=(8, 2, 8, 8)), rng.normal(0, 3, (8, 2, 8, 8))]).astype(
        np.float32
    )

    inputs = torch.as_tensor(np.concatenate([x_fit, x_test])).requires_grad_(True)
    (g,) = torch.autograd.grad(net(inputs).max(dim=1).values.sum(), inputs)
    smallest = np.sort(np.abs(g.numpy()).reshape(len(inputs), -1), axis=1)
    assert (smallest[:, 6] > 1.01 * smallest[:, 5]).all(), "the 6th and 7th smallest |g| are well apart"

    for variant in ("a", "l"):
        detector = AdaSCALE(variant=variant, **SETTINGS)
        from_torch = detector.fit(net, x_fit, batch_size=8)
        torch_shifts, torch_scores = from_torch.fit_shifts_, from_torch.score(x_test, batch_size=8).scores
        from_keras = detector.fit(model, np.moveaxis(x_fit, 1, -1), batch_size=8)
        np.testing.assert_allclose(from_keras.fit_shifts_, torch_shifts, rtol=1e-4)
        keras_scores = from_keras.score(np.moveaxis(x_test, 1, -1), batch_size=8).scores
        np.testing.assert_allclose(keras_scores, torch_scores, rtol=1e-4)


def test_a_and_l_share_one_pass_and_other_steps_get_their_own():
    a, l_ = AdaSCALE(variant="a"), AdaSCALE(variant="l", percentile=(80.0, 85.0), k1=5.0, k2=1.0)
    assert a.needs() == Needs(
        layers=("penultimate", Unperturbed("penultimate")),
        head=True,
        perturbation=a.needs().perturbation,
    )
    assert a.needs().perturbation.direction == SmallestGradientElements(0.05)
    plan = Plan(None)
    for name, detector in {
        "a": a,
        "l": l_,  # only array math differs: the same pass
        "other o": AdaSCALE(o=0.1),
        "other eps": AdaSCALE(eps=0.25),
        "plain": AdaSCALE(eps=0.0),
        "gen": GEN(),  # the plain pass, with AdaSCALE(eps=0)
    }.items():
        plan.add(name, detector.needs())
    assert plan.passes() == 4
    assert AdaSCALE(eps=0.0).needs().kind() == PassKind()


def test_evaluate_runs_one_gradient_pass_for_both_variants():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    fit = rng.normal(size=(20, 1, 8, 8)).astype(np.float32)
    ind = rng.normal(size=(20, 1, 8, 8)).astype(np.float32)
    oods = {"wide": rng.normal(0, 3, (10, 1, 8, 8)).astype(np.float32)}
    params = {"percentile": (40.0, 90.0), "k1": 20.0, "k2": 50.0, "eps": 0.5}

    expected, batches = {}, (2 + 2 + 1)
    for variant in ("a", "l"):
        alone = counting_model(torch)
        detector = AdaSCALE(variant=variant, **params).fit(alone, fit, batch_size=BATCH)
        expected[variant] = {"id": detector.score(ind).scores, "wide": detector.score(oods["wide"]).scores}
        assert alone.calls == 2 * batches, "a gradient forward and a forward of the moved inputs per batch"

    model = counting_model(torch)
    detectors = {variant: AdaSCALE(variant=variant, **params) for variant in ("a", "l")}
    report = evaluate(model, fit, ind, oods, detectors, batch_size=BATCH, progress=False)
    assert not report.errors
    # A and L share one gradient pass per dataset; evaluate adds a plain pass over the ID data (2 batches),
    # for the model's accuracy
    assert model.calls == 2 * batches + 2, "A and L share one gradient pass per dataset"
    for variant in ("a", "l"):
        np.testing.assert_array_equal(report.id_scores[variant], expected[variant]["id"])
        np.testing.assert_array_equal(report.ood_scores[variant]["wide"], expected[variant]["wide"])
    assert not np.allclose(expected["a"]["id"], expected["l"]["id"])


@pytest.mark.parametrize("variant", ["a", "l"])
def test_precomputed_features_with_both_layers_are_scored_as_they_are(variant):
    rng = np.random.default_rng(2)
    weight, bias = rng.normal(size=(3, 8)), rng.normal(size=3)

    def make(n):
        a = np.maximum(rng.normal(1.0, 1.0, (n, 8)), 0.0)
        moved = np.maximum(a + rng.normal(0, 0.3, (n, 8)), 0.0)
        return (
            a,
            moved,
            Features(
                layers={"penultimate": moved, Unperturbed("penultimate"): a},
                head_weight=weight,
                head_bias=bias,
            ),
        )

    a_fit, moved_fit, fit = make(40)
    a, moved, test = make(15)
    params = {"variant": variant, "percentile": (50.0, 90.0), "k1": 25.0, "k2": 50.0}
    detector = AdaSCALE(eps=0.0, **params).fit(fit)
    fit_shifts = adascale_shift(a_fit, moved_fit, 25.0, 50.0)
    np.testing.assert_array_equal(detector.fit_shifts_, np.sort(fit_shifts))
    expected = adascale_score(a, moved, weight, bias, fit_shifts, **params)
    np.testing.assert_array_equal(detector.score(test).scores, expected)

    # only the layer: nothing moved, ã = a
    plain = Features(layers={"penultimate": a}, head_weight=weight, head_bias=bias)
    only = AdaSCALE(eps=0.0, **params).fit(Features(layers={"penultimate": a_fit}, head_weight=weight))
    np.testing.assert_array_equal(
        only.score(plain).scores,
        adascale_score(a, a, weight, bias, adascale_shift(a_fit, a_fit, 25.0, 50.0), **params),
    )

    # with eps > 0, Features of its own kind of pass (what fit(model) / score(data) extract)
    kind = AdaSCALE(**params).needs().kind()
    perturbed = Features(layers=dict(test.layers), head_weight=weight, head_bias=bias, pass_kind=kind)
    fitted = AdaSCALE(**params).fit(Features(layers=dict(fit.layers), head_weight=weight, pass_kind=kind))
    np.testing.assert_array_equal(fitted.score(perturbed).scores, expected)
    with pytest.raises(ValueError, match=r"AdaSCALE\(.*\) reads a forward pass with inputs moved by"):
        AdaSCALE(**params).fit(fit)


def test_a_model_level_detector_saves_and_loads_bit_identically(tmp_path):
    torch = pytest.importorskip("torch")
    net = small_convnet(torch)
    rng = np.random.default_rng(3)
    x_fit, x_test = rng.normal(size=(20, 2, 8, 8)), rng.normal(size=(8, 2, 8, 8))
    detector = AdaSCALE(variant="l", **SETTINGS).fit(net, x_fit.astype(np.float32), batch_size=8)
    loaded = load(detector.save(tmp_path / "adascale.oodscope"), model=net)
    assert loaded.get_params() == detector.get_params() and isinstance(loaded.percentile, tuple)
    np.testing.assert_array_equal(loaded.fit_shifts_, detector.fit_shifts_)
    assert loaded.fit_shifts_.dtype == np.float64
    x = x_test.astype(np.float32)
    np.testing.assert_array_equal(loaded.score(x).scores, detector.score(x).scores)


def test_the_search_space_is_openood_sweep():
    pairs = AdaSCALE.search_space["percentile"]
    assert len(pairs) == 36 and (60.0, 65.0) in pairs and (95.0, 99.0) in pairs and (80.0, 85.0) in pairs
    assert all(low < high for low, high in pairs)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"variant": "b"}, r"'variant' parameter of AdaSCALE must be one of 'a', 'l'. Got 'b'"),
        (
            {"percentile": (85.0, 60.0)},
            r"'percentile' parameter of AdaSCALE must be a pair \(p_min, p_max\) of floats with "
            r"0 <= p_min < p_max < 100. Got \(85.0, 60.0\)",
        ),
        ({"percentile": (60.0, 100.0)}, r"'percentile' parameter of AdaSCALE .* Got \(60.0, 100.0\)"),
        ({"percentile": 85.0}, r"'percentile' parameter of AdaSCALE .* Got 85.0"),
        ({"k1": 0.0}, r"'k1' parameter of AdaSCALE must be a float in \(0, 100\]. Got 0.0"),
        ({"k2": 101.0}, r"'k2' parameter of AdaSCALE must be a float in \(0, 100\]. Got 101.0"),
        ({"lam": -1.0}, r"'lam' parameter of AdaSCALE must be a float in \[0, inf\). Got -1.0"),
        ({"o": 0.0}, r"'o' parameter of AdaSCALE must be a float in \(0, 1\]. Got 0.0"),
        ({"o": 1.5}, r"'o' parameter of AdaSCALE must be a float in \(0, 1\]. Got 1.5"),
        ({"eps": -0.5}, r"'eps' parameter of AdaSCALE must be a float in \[0, inf\). Got -0.5"),
    ],
)
def test_bad_hyperparameters_are_refused_clearly(params, message):
    features = Features(layers={"penultimate": np.ones((2, 4))}, head_weight=np.eye(4))
    with pytest.raises(ValueError, match=message):
        AdaSCALE(**{"eps": 0.0, **params}).fit(features)
