"""NAC-UE against references written from the paper and the official code: a per-sample loop on Features,
torch autograd hooks on a small convnet, the same weights in Keras, and the planner's pass sharing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_iodin import counting_model
from test_odin import keras_twin, small_convnet

from oodscope import GEN, Features, evaluate, extract, load
from oodscope.detectors.nac import NAC, _Bins, kl_uniform_gradient, nac_edges
from oodscope.losses import KLToUniform
from oodscope.needs import GradientOf, PassKind
from oodscope.plan import Plan

from conftest import linear_head_features

BATCH = 10


# --- plain-Python references ------------------------------------------------------------------------------


def official_edges(m: int) -> list[float]:
    """The official ``logspace(1e3, M)``, written out: log₁₀₀₀ of a linear ramp from 1 to √1000 (M/2 points),
    without its last point, then its mirror 1 − r, the last edge moved to 1.01, and 1.2 appended."""
    k = m // 2
    ramp = [math.log(1.0 + i * (math.sqrt(1000.0) - 1.0) / (k - 1), 1000.0) for i in range(k)]
    edges = ramp[:-1] + [1.0 - r for r in reversed(ramp)]
    edges[-1] += 0.01
    return [*edges, 1.2]


def bin_of(state: float, edges: list[float]) -> int | None:
    """The m with edges[m] <= state < edges[m + 1], or None."""
    for m in range(len(edges) - 1):
        if edges[m] <= state < edges[m + 1]:
            return m
    return None


def reference_nac(
    fit_states: list, test_states: list, bins: list, saturation: list
) -> tuple[list, np.ndarray]:
    """Coverage tables (one per layer) of the fit states and the test scores, sample by sample and neuron by
    neuron: −(1/L) Σ_l mean_n min(count_l[bin(s_n), n] / O_l, 1)."""
    tables, scores = [], np.zeros(len(test_states[0]))
    for fit, test, m, o in zip(fit_states, test_states, bins, saturation, strict=True):
        edges = official_edges(m)
        n_neurons = len(fit[0])
        counts = np.zeros((m - 1, n_neurons))
        for row in fit:
            for n, state in enumerate(row):
                if (b := bin_of(float(state), edges)) is not None:
                    counts[b, n] += 1
        table = np.minimum(counts / o, 1.0)
        tables.append(table)
        for i, row in enumerate(test):
            covered = [
                0.0 if (b := bin_of(float(s), edges)) is None else table[b, n] for n, s in enumerate(row)
            ]
            scores[i] -= sum(covered) / n_neurons / len(fit_states)
    return tables, scores


def loop_gradient(logits: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """d/dh of −(1/C) Σ_c log softmax(Wh + b)_c, one sample at a time: Σ_c W_cd (p_c − 1/C)."""
    out = np.zeros((len(logits), weight.shape[1]))
    for i, z in enumerate(logits):
        top = max(z)
        exp = [math.exp(v - top) for v in z]
        p = [e / sum(exp) for e in exp]
        for d in range(weight.shape[1]):
            out[i, d] = sum(weight[c, d] * (p[c] - 1.0 / len(z)) for c in range(len(z)))
    return out


def sigmoid_states(o: np.ndarray, g: np.ndarray, alpha: float) -> list:
    return [
        [1.0 / (1.0 + math.exp(-alpha * a * b)) for a, b in zip(ro, rg, strict=True)]
        for ro, rg in zip(o, g, strict=True)
    ]


def problem(n: int, seed: int, dim: int = 8, n_classes: int = 4) -> Features:
    """Post-ReLU features around class means and a head of network-like scale (small weights)."""
    rng = np.random.default_rng(seed)
    means = np.maximum(np.random.default_rng(99).normal(1.0, 1.5, (n_classes, dim)), 0.0)
    h = np.maximum(means[rng.integers(0, n_classes, n)] + rng.normal(0, 0.8, (n, dim)), 0.0)
    weight = np.random.default_rng(98).normal(0, 0.1, (n_classes, dim)) + means / 20.0
    return linear_head_features(h, weight, np.random.default_rng(97).normal(0, 0.1, n_classes))


FIT, TEST = problem(300, 1), problem(40, 2)


# --- the pieces -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [4, 8, 50, 500])
def test_the_edges_are_the_official_ones(m):
    edges = nac_edges(m)
    np.testing.assert_allclose(edges, official_edges(m), rtol=0, atol=1e-15)
    assert len(edges) == m and edges[0] == 0.0 and edges[-2:].tolist() == [1.01, 1.2]
    widths = np.diff(edges[:-2])
    assert widths.argmin() in (m // 2 - 2, m // 2 - 1) or m == 4, "finest around 0.5"
    assert widths[0] == widths.max() or m == 4, "coarsest next to 0 (and 1)"


@pytest.mark.parametrize("kind", ["nac", "random", "uniform", "uneven"])
@pytest.mark.parametrize("m", [2, 4, 50, 1000])
def test_the_bin_lookup_counts_edges_exactly_as_a_binary_search(kind, m):
    # the grid lookup behind fit and score gives searchsorted's count for every state: on, just below and
    # just above each edge, outside the edges, at +-inf; NaN falls outside every bin
    rng = np.random.default_rng(m)
    edges = {
        "nac": nac_edges(m) if m >= 4 else np.array([0.0, 1.0]),
        "random": np.sort(rng.random(m)),
        "uniform": np.linspace(0.0, 1.0, m),
        "uneven": np.cumsum(rng.random(m) ** 4),  # bins so uneven that large m takes the binary search
    }[kind]
    edges = np.unique(edges)
    span = edges[-1] - edges[0]
    states = np.concatenate(
        [
            edges[0] - 0.2 * span + 1.4 * span * rng.random(5000),
            edges,
            np.nextafter(edges, -np.inf),
            np.nextafter(edges, np.inf),
            [-np.inf, np.inf],
        ]
    )[None, :]
    lookup = _Bins(edges)
    np.testing.assert_array_equal(lookup.count(states), np.searchsorted(edges, states, side="right"))
    assert lookup.count(np.array([[np.nan]]))[0, 0] in (0, len(edges))


def test_the_closed_form_gradient_is_the_loop_one_and_torch_autograd():
    np.testing.assert_allclose(
        kl_uniform_gradient(TEST.logits, TEST.head_weight),
        loop_gradient(TEST.logits, TEST.head_weight),
        rtol=1e-10,
        atol=1e-15,
    )
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    body, head = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU()), torch.nn.Linear(7, 3)
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(16, 5)), dtype=torch.float64)
    body, head = body.double(), head.double()
    h = body(x).detach().requires_grad_(True)
    logits = head(h)
    loss = -torch.log_softmax(logits, dim=1).mean(dim=1).sum()  # summed over the batch, as the official code
    (grad,) = torch.autograd.grad(loss, h)
    closed = kl_uniform_gradient(logits.detach().numpy(), head.weight.detach().numpy())
    np.testing.assert_allclose(closed, grad.numpy(), rtol=1e-10, atol=1e-14)
    # the loss oodscope differentiates is the same function (its ops on the torch backend)
    from oodscope.backends.torch import TorchOps

    assert float(KLToUniform()(logits, TorchOps()).detach()) == pytest.approx(float(loss.detach()), rel=1e-12)


def test_penultimate_states_coverage_and_scores_follow_a_per_sample_loop():
    alpha, bins, saturation = 50.0, 50, 20.0
    nac = NAC(alpha=alpha, bins=bins, saturation=saturation).fit(FIT)
    fit_states = sigmoid_states(FIT.layer("penultimate"), loop_gradient(FIT.logits, FIT.head_weight), alpha)
    test_states = sigmoid_states(
        TEST.layer("penultimate"), loop_gradient(TEST.logits, TEST.head_weight), alpha
    )
    spread = np.asarray(fit_states)
    assert ((spread > 0.05) & (spread < 0.95)).mean() > 0.3, "states are not all saturated: the test can fail"
    tables, expected = reference_nac([fit_states], [test_states], [bins], [saturation])
    np.testing.assert_array_equal(nac.coverage_[0], tables[0])
    np.testing.assert_allclose(nac.edges_[0], official_edges(bins), rtol=0, atol=1e-15)
    scores = nac.score(TEST).scores
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    assert np.unique(scores).size > 5 and (scores >= -1).all() and (scores <= 0).all()


def gradient_features(n: int, seed: int) -> Features:
    """Features of a gradient pass, by hand: two layers and their gradients (any arrays will do), a head."""
    rng = np.random.default_rng(seed)
    layers = {
        "a": np.abs(rng.normal(1.0, 1.0, (n, 5))),
        GradientOf("a"): rng.normal(0, 0.02, (n, 5)),
        "penultimate": np.abs(rng.normal(1.0, 1.0, (n, 3))),
        GradientOf("penultimate"): rng.normal(0, 0.01, (n, 3)),
    }
    return Features(
        logits=rng.normal(size=(n, 4)),
        layers=layers,
        head_weight=np.ones((4, 3)),  # NAC always asks for the head; with a gradient pass it does not read it
        pass_kind=PassKind(loss=KLToUniform()),
    )


def test_several_layers_with_their_own_settings_follow_the_loop():
    fit, test = gradient_features(200, 0), gradient_features(30, 1)
    layers, alpha, bins, saturation = ["a", "penultimate"], [30.0, 100.0], [10, 50], [4.0, 2.0]
    nac = NAC(layers=layers, alpha=alpha, bins=bins, saturation=saturation).fit(fit)

    def states(feats):
        return [
            sigmoid_states(feats.layer(k), feats.layer(GradientOf(k)), a)
            for k, a in zip(layers, alpha, strict=True)
        ]

    tables, expected = reference_nac(states(fit), states(test), bins, saturation)
    assert len(nac.coverage_) == 2 and [t.shape for t in nac.coverage_] == [(9, 5), (49, 3)]
    for got, table in zip(nac.coverage_, tables, strict=True):
        np.testing.assert_array_equal(got, table)
    np.testing.assert_allclose(nac.score(test).scores, expected, rtol=1e-12)
    plain = Features(logits=test.logits, layers=test.layers, head_weight=test.head_weight)
    with pytest.raises(ValueError, match="reads a forward pass with gradients of KLToUniform"):
        nac.score(plain)


def test_several_layers_round_trip_through_a_file(tmp_path):
    fit, test = gradient_features(100, 0), gradient_features(30, 1)
    nac = NAC(layers=("a", "penultimate"), alpha=[30.0, 100.0], bins=[10, 50], saturation=2).fit(fit)
    loaded = load(nac.save(tmp_path / "nac.oodscope"))
    assert loaded.get_params() == nac.get_params()
    for name in ("edges_", "coverage_"):
        assert isinstance(getattr(loaded, name), list)
        for a, b in zip(getattr(loaded, name), getattr(nac, name), strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.score(test).scores, nac.score(test).scores)


def test_the_closed_form_reads_the_plain_pass_and_other_layers_a_shared_gradient_pass():
    plan = Plan(None)
    detectors = {
        "nac": NAC(),
        "gen": GEN(),
        "conv": NAC(layers=["1", "penultimate"], alpha=[30.0, 1000.0]),
        "conv again": NAC(layers=["1"], alpha=10.0, bins=20),  # another setting, the same loss
    }
    for name, detector in detectors.items():
        plan.add(name, detector.needs())
    assert plan.passes() == 2
    assert NAC().needs().gradient is None and NAC().needs().head
    assert NAC(layers="1").needs().kind() == PassKind(loss=KLToUniform())


# --- on a model -------------------------------------------------------------------------------------------


def hooked_states(torch, net, x, layer_module, alpha: list) -> list:
    """The official state by hand: a forward hook keeps the layer's output, a pre-hook the head's input; one
    autograd call of the batch-summed KL loss; spatial sums; σ(α · o · g)."""
    kept = {}
    hooks = [
        layer_module.register_forward_hook(lambda module, inputs, output: kept.__setitem__("layer", output)),
        net[4].register_forward_pre_hook(lambda module, inputs: kept.__setitem__("penultimate", inputs[0])),
    ]
    try:
        logits = net(torch.as_tensor(x))
        loss = -torch.log_softmax(logits, dim=1).mean(dim=1).sum()
        grads = torch.autograd.grad(loss, [kept["layer"], kept["penultimate"]])
    finally:
        for hook in hooks:
            hook.remove()
    o = [kept["layer"].sum(dim=(2, 3)), kept["penultimate"]]
    g = [grads[0].sum(dim=(2, 3)), grads[1]]
    return [
        sigmoid_states(a.detach().double().numpy(), b.double().numpy(), s)
        for a, b, s in zip(o, g, alpha, strict=True)
    ]


CONV = {"alpha": [30.0, 1000.0], "bins": [20, 50], "saturation": [2.0, 3.0]}


def test_a_conv_layer_and_the_penultimate_match_torch_autograd_hooks():
    torch = pytest.importorskip("torch")
    net = small_convnet(torch)
    rng = np.random.default_rng(0)
    fit_x = rng.normal(size=(60, 2, 8, 8)).astype(np.float32)
    test_x = np.concatenate([rng.normal(size=(20, 2, 8, 8)), rng.normal(0, 3, (20, 2, 8, 8))]).astype(
        np.float32
    )

    fit_states = hooked_states(torch, net, fit_x, net[1], CONV["alpha"])
    test_states = hooked_states(torch, net, test_x, net[1], CONV["alpha"])
    for states in fit_states:
        spread = np.asarray(states)
        assert ((spread > 0.05) & (spread < 0.95)).mean() > 0.3, "states are not all saturated"
    tables, expected = reference_nac(fit_states, test_states, CONV["bins"], CONV["saturation"])

    nac = NAC(layers=["1", "penultimate"], **CONV).fit(net, fit_x, batch_size=BATCH)
    for got, table in zip(nac.coverage_, tables, strict=True):
        np.testing.assert_array_equal(got, table)
    result = nac.score(test_x, batch_size=7)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-6)
    assert np.unique(result.scores).size > 5


def test_the_penultimate_in_closed_form_equals_its_gradient_pass():
    """The same tensor as the head's input ("penultimate", closed form, no backward) and as the output of the
    last ReLU (a layer: autograd through the backend) gives the same states, so the same scores."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.ReLU(), torch.nn.Linear(9, 4))
    rng = np.random.default_rng(1)
    fit_x, test_x = rng.normal(size=(80, 6)).astype(np.float32), rng.normal(0, 2, (30, 6)).astype(np.float32)
    params = {"alpha": 300.0, "bins": 20, "saturation": 2.0}
    closed = NAC(**params).fit(net, fit_x)
    autograd = NAC(layers="1", **params).fit(net, fit_x)
    for a, b in zip(closed.coverage_, autograd.coverage_, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(closed.score(test_x).scores, autograd.score(test_x).scores, rtol=1e-12)
    plain = extract(net, test_x, ["penultimate"], with_head=True)
    np.testing.assert_array_equal(closed.score(plain).scores, closed.score(test_x).scores)


def test_nac_agrees_between_torch_and_keras_with_the_same_weights():
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    net = small_convnet(torch)
    model = keras_twin(net, keras)
    rng = np.random.default_rng(2)
    fit_x = rng.normal(size=(48, 2, 8, 8)).astype(np.float32)
    test_x = np.concatenate([rng.normal(size=(16, 2, 8, 8)), rng.normal(0, 3, (16, 2, 8, 8))]).astype(
        np.float32
    )

    from_torch = NAC(layers=["1", "penultimate"], **CONV).fit(net, fit_x, batch_size=16)
    from_keras = NAC(layers=[1, "penultimate"], **CONV).fit(model, np.moveaxis(fit_x, 1, -1), batch_size=16)
    for a, b in zip(from_keras.coverage_, from_torch.coverage_, strict=True):
        np.testing.assert_array_equal(a, b)
    torch_scores = from_torch.score(test_x, batch_size=16).scores
    keras_scores = from_keras.score(np.moveaxis(test_x, 1, -1), batch_size=16).scores
    np.testing.assert_allclose(keras_scores, torch_scores, rtol=1e-4)
    assert np.unique(torch_scores).size > 5


def test_evaluate_runs_one_gradient_pass_for_two_nacs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    ind = rng.normal(size=(30, 1, 8, 8)).astype(np.float32)
    oods = {"wide": rng.normal(0, 3, (20, 1, 8, 8)).astype(np.float32), "shifted": ind[:20] + 1.5}
    settings = {
        "a": {"layers": ["body.1", "penultimate"], "alpha": [30.0, 1000.0], "saturation": 2.0},
        "b": {"layers": "body.1", "alpha": 10.0, "bins": 20, "saturation": 1.0},
    }
    alone, calls = {}, 0
    for name, params in settings.items():
        reference = counting_model(torch)
        nac = NAC(**params).fit(reference, ind, batch_size=BATCH)
        alone[name] = {key: nac.score(values).scores for key, values in {"id": ind, **oods}.items()}
        calls = reference.calls
    assert calls == 3 + 3 + 2 + 2, "one forward (with its backward) per batch: fit, ID and two OOD sets"

    model = counting_model(torch)
    detectors = {name: NAC(**params) for name, params in settings.items()}
    detectors["closed form"], detectors["gen"] = NAC(), GEN()
    report = evaluate(model, ind, ind, oods, detectors, batch_size=BATCH, progress=False)
    assert not report.errors
    # the fit and ID data are the same object: a plain and a gradient pass over 3 + 2 + 2 batches
    assert model.calls == 2 * (3 + 2 + 2), "the NACs share one gradient pass; the closed form the plain one"
    for name in settings:
        np.testing.assert_array_equal(report.id_scores[name], alone[name]["id"])
        for ood in oods:
            np.testing.assert_array_equal(report.ood_scores[name][ood], alone[name][ood])


# --- parameters -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"layers": ["a", "b"], "alpha": [1.0, 2.0, 3.0]},
            r"'alpha' parameter of NAC has 3 value\(s\) for the 2 layer\(s\)",
        ),
        (
            {"layers": ["a", "b"], "bins": [50]},
            r"'bins' parameter of NAC has 1 value\(s\) for the 2 layer\(s\)",
        ),
        (
            {"saturation": [10.0, 50.0]},
            r"'saturation' parameter of NAC has 2 value\(s\) for the 1 layer\(s\)",
        ),
        ({"bins": 51}, r"'bins' parameter of NAC must be an even int in \[4, inf\), or a list"),
        ({"bins": [50, 3], "layers": ["a", "b"]}, r"'bins' parameter of NAC must be an even int"),
        ({"alpha": 0.0}, r"'alpha' parameter of NAC must be a float in \(0, inf\)"),
        (
            {"layers": ["a", "a"]},
            r"'layers' parameter of NAC must be a layer id \(str or int\) or a non-empty",
        ),
    ],
)
def test_bad_parameters_are_refused_clearly(params, message):
    with pytest.raises(ValueError, match=message):
        NAC(**params).fit(FIT)


def test_bad_lengths_fail_before_any_pass_and_other_layers_are_refused():
    torch = pytest.importorskip("torch")
    model = counting_model(torch)
    x = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"'alpha' parameter of NAC has 3 value\(s\) for the 2 layer\(s\)"):
        NAC(layers=["body.1", "penultimate"], alpha=[1.0, 2.0, 3.0]).fit(model, x)
    assert model.calls == 0
    with pytest.raises(ValueError, match=r"NAC reads the layers of its 'layers' parameter \['penultimate'\]"):
        NAC().fit(model, x, feature_layers_id=["body.1"])
