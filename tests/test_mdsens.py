"""MDSEns: Mahalanobis with input preprocessing and a weighted ensemble of layers, checked against Mahalanobis
(eps = 0), an independent derivation in torch autograd, its Keras twin, the planner and persistence."""

from __future__ import annotations

import numpy as np
import pytest
from test_odin import keras_twin, small_convnet

from oodscope import GEN, Features, evaluate, load
from oodscope.detectors import Mahalanobis
from oodscope.detectors.mdsens import ClosestClassDistance, MDSEns, SignOverStd, mdsens_direction
from oodscope.needs import FromPass, Needs, PassKind
from oodscope.plan import Plan

BATCH = 16


def two_block_convnet(torch):
    """Conv(2 → 4)-ReLU-Conv(4 → 6)-ReLU-global average pool-Dense(4), seeded: leaf 1 (the first ReLU) and
    the penultimate features are two different layers."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 6, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 4),
    )


def two_block_twin(net, keras):
    """The Keras functional model with the weights of :func:`two_block_convnet` (channels last): its layer 1
    (the first convolution, with its ReLU) is the torch model's leaf 1."""
    inputs = keras.Input((8, 8, 2))
    hidden = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    hidden = keras.layers.Conv2D(6, 3, activation="relu")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(4)(hidden))
    for keras_index, torch_index in ((1, 0), (2, 2)):
        conv = net[torch_index]
        weights = [conv.weight.detach().numpy().transpose(2, 3, 1, 0), conv.bias.detach().numpy()]
        model.layers[keras_index].set_weights(weights)
    model.layers[4].set_weights([net[6].weight.detach().numpy().T, net[6].bias.detach().numpy()])
    return model


def data(seed: int = 0, n_fit: int = 60, n_test: int = 20):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_fit, 2, 8, 8)).astype(np.float32)
    return x, rng.integers(0, 3, n_fit), rng.normal(size=(n_test, 2, 8, 8)).astype(np.float32)


def channels_last(x):
    return np.moveaxis(x, 1, -1)


# --- eps = 0: the sum of Mahalanobis scores --------------------------------------------------------------


def two_layer_features(seed: int = 0):
    """ID Features (three classes) with a penultimate layer and a block layer, and OOD Features."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (3, 5))
    projection = rng.normal(size=(5, 7))

    def make(h, labels=None):
        return Features(layers={"penultimate": h, "block": np.tanh(h @ projection)}, labels=labels)

    labels = np.repeat(np.arange(3), 40)
    fit = make(means[labels] + rng.normal(size=(120, 5)), labels)
    test_labels = np.repeat(np.arange(3), 20)
    return fit, make(means[test_labels] + rng.normal(size=(60, 5))), make(rng.normal(0, 4, (60, 5)))


def test_without_a_step_it_is_the_weighted_sum_of_mahalanobis_scores():
    fit, id_, ood = two_layer_features()
    per_layer = np.column_stack(
        [Mahalanobis(layers=[layer]).fit(fit).score(ood).scores for layer in ("penultimate", "block")]
    )
    detector = MDSEns(eps=0.0, layers=["penultimate", "block"]).fit(fit)
    np.testing.assert_allclose(detector.score(ood).scores, per_layer.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(detector.layer_scores(ood), per_layer, rtol=1e-12)
    weighted = MDSEns(eps=0.0, layers=["penultimate", "block"], weights=[0.5, -2.0]).fit(fit)
    np.testing.assert_allclose(weighted.score(ood).scores, per_layer @ [0.5, -2.0], rtol=1e-12)
    # the default reads every layer of the fit Features; the paper's confidence is the negative of this
    np.testing.assert_allclose(MDSEns(eps=0.0).fit(fit).score(ood).scores, per_layer.sum(axis=1), rtol=1e-12)
    assert MDSEns(eps=0.0).fit_needs() == MDSEns(eps=0.0).needs() == Needs(layers=("penultimate",))


def test_without_a_step_it_is_the_sum_of_mahalanobis_scores_through_a_model():
    torch = pytest.importorskip("torch")
    net = two_block_convnet(torch)
    x, y, test = data()
    layers = [1, "penultimate"]
    expected = sum(Mahalanobis(layers=[layer]).fit(net, (x, y)).score(test).scores for layer in layers)
    detector = MDSEns(eps=0.0, layers=layers).fit(net, (x, y), batch_size=BATCH)
    np.testing.assert_allclose(detector.score(test).scores, expected, rtol=1e-10)


# --- the step: an independent derivation in torch autograd ----------------------------------------------


def reference_scores(torch, net, pooled, x, y, test, eps, std):
    """MDSEns by hand: class means and the tied covariance of each layer's pooled fit features in numpy, the
    gradient of the distance to the closest class (held fixed) by torch autograd, one step against its sign
    over σ, and the closest-class distance of the moved inputs' features, summed over the layers."""
    total = np.zeros(len(test))
    for layer in pooled:
        with torch.no_grad():
            h = pooled[layer](torch.as_tensor(x)).double().numpy()
        classes = np.unique(y)
        means = np.stack([h[y == c].mean(axis=0) for c in classes])
        centred = h - means[np.searchsorted(classes, y)]
        precision = np.linalg.inv(centred.T @ centred / len(h))

        inputs = torch.as_tensor(test).clone().requires_grad_(True)
        offsets = pooled[layer](inputs)[:, None, :] - torch.as_tensor(means, dtype=torch.float32)
        distances = ((offsets @ torch.as_tensor(precision, dtype=torch.float32)) * offsets).sum(-1)
        closest = distances.detach().argmin(1)
        (grad,) = torch.autograd.grad(distances[torch.arange(len(test)), closest].sum(), inputs)
        moved = (inputs - eps * grad.sign() / torch.as_tensor(std, dtype=torch.float32)).detach()
        with torch.no_grad():
            f = pooled[layer](moved).double().numpy()
        offsets = f[:, None, :] - means
        total += np.einsum("nkd,de,nke->nk", offsets, precision, offsets).min(axis=1)
    return total


def test_the_perturbed_score_matches_torch_autograd():
    """Each layer's own step, toward its own closest class mean (leaf 0, the convolution before its ReLU,
    and the penultimate features of the small convnet), σ per channel."""
    torch = pytest.importorskip("torch")
    net = small_convnet(torch)
    x, y, test = data(seed=1)
    eps, std = 0.05, np.array([0.5, 2.0]).reshape(2, 1, 1)
    pooled = {0: lambda t: net[0](t).mean(dim=(2, 3)), "penultimate": lambda t: net[:4](t)}
    expected = reference_scores(torch, net, pooled, x, y, test, eps, std)

    detector = MDSEns(layers=[0, "penultimate"], eps=eps, input_std=std).fit(net, (x, y), batch_size=BATCH)
    result = detector.score(test, batch_size=7)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4)
    plain = MDSEns(layers=[0, "penultimate"], eps=0.0).fit(net, (x, y)).layer_scores(test)
    moved = detector.layer_scores(test)
    assert (moved < plain).mean() > 0.9, "each step moves the inputs toward their closest class mean"
    with torch.no_grad():
        plain_logits = net(torch.as_tensor(test)).numpy()
    assert np.abs(result.info["logits"] - plain_logits).max() > 1e-4, "the first layer's moved inputs' logits"


def test_the_loss_is_the_distance_mahalanobis_scores_also_with_dead_units():
    """The loss on a layer whose units include one without variance (a dead ReLU): its value is the sum of the
    Mahalanobis scores, its gradient 2 Σ⁺ (h − μ_c*) by the pseudo-inverse Mahalanobis whitens with."""
    torch = pytest.importorskip("torch")
    from oodscope.backends import get_backend

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    h = np.maximum(rng.normal(size=(90, 4)) + labels[:, None], 0.0)
    h[:, 2] = 0.0  # dead
    detector = MDSEns(eps=0.01).fit(Features(layers={"penultimate": h}, labels=labels))
    test = rng.normal(1.0, 2.0, (10, 4))
    tensor = torch.as_tensor(test, dtype=torch.float64).requires_grad_(True)
    loss = ClosestClassDistance(detector, "penultimate")
    value = loss(None, get_backend(torch.nn.Linear(1, 1)).ops, {"penultimate": tensor})
    (grad,) = torch.autograd.grad(value, tensor)
    maha = detector.layer_detectors_[0]
    np.testing.assert_allclose(value.item(), maha.score(Features(layers={"penultimate": test})).scores.sum())
    means = maha.class_means_
    offsets = test[:, None, :] - means
    pinv = np.linalg.pinv(maha.covariance_)
    closest = np.einsum("nkd,de,nke->nk", offsets, pinv, offsets).argmin(axis=1)
    np.testing.assert_allclose(grad.numpy(), 2 * (test - means[closest]) @ pinv, rtol=1e-6, atol=1e-9)
    assert (grad.numpy()[:, 2] == 0).all()


def test_torch_and_keras_agree_with_the_same_weights():
    """The same weights in torch and in Keras (whichever Keras backend runs the tests) give the same scores,
    with σ per channel in each framework's layout: two layers of the two-block net, and the default layer of
    the small convnet."""
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    x, y, test = data(seed=2, n_test=24)
    net = two_block_convnet(torch)
    model = two_block_twin(net, keras)
    from_torch = MDSEns(layers=[1, "penultimate"], eps=0.05, input_std=[[[0.5]], [[2.0]]])
    from_torch = from_torch.fit(net, (x, y)).score(test, batch_size=8)
    from_keras = MDSEns(layers=[1, "penultimate"], eps=0.05, input_std=[0.5, 2.0])
    from_keras = from_keras.fit(model, (channels_last(x), y)).score(channels_last(test), batch_size=8)
    np.testing.assert_allclose(from_keras.scores, from_torch.scores, rtol=1e-4)
    np.testing.assert_allclose(from_keras.info["logits"], from_torch.info["logits"], rtol=1e-4, atol=1e-5)
    plain = MDSEns(layers=[1, "penultimate"], eps=0.0).fit(net, (x, y)).score(test).scores
    assert np.abs(from_torch.scores - plain).max() > 1e-3 * np.abs(plain).max(), "the steps moved the scores"

    net = small_convnet(torch)
    model = keras_twin(net, keras)
    from_torch = MDSEns(eps=0.05).fit(net, (x, y)).score(test, batch_size=8).scores
    from_keras = MDSEns(eps=0.05).fit(model, (channels_last(x), y)).score(channels_last(test)).scores
    np.testing.assert_allclose(from_keras, from_torch, rtol=1e-4)


def models(torch_only: bool = False):
    cases = ["torch"] if torch_only else ["torch", "keras"]
    return pytest.mark.parametrize("framework", cases)


def build(framework: str):
    torch = pytest.importorskip("torch")
    net = two_block_convnet(torch)
    if framework == "torch":
        return net, lambda x: x
    keras = pytest.importorskip("keras")
    return two_block_twin(net, keras), channels_last


@models()
def test_a_refit_on_other_data_changes_the_scores_accordingly(framework):
    """The loss reads the learned state: after a refit, the gradient is that of the new class means (the
    compiled Keras function is traced anew), as for a detector fitted on the new data alone."""
    model, layout = build(framework)
    x, y, test = data(seed=3)
    other_x, other_y, _ = data(seed=4)
    other_x = other_x * 2.0 + 0.5
    layers = [1, "penultimate"]
    detector = MDSEns(layers=layers, eps=0.05).fit(model, (layout(x), y), batch_size=BATCH)
    first = detector.score(layout(test)).scores
    detector.fit(model, (layout(other_x), other_y), batch_size=BATCH)
    again = detector.score(layout(test)).scores
    fresh = MDSEns(layers=layers, eps=0.05).fit(model, (layout(other_x), other_y), batch_size=BATCH)
    np.testing.assert_allclose(again, fresh.score(layout(test)).scores, rtol=1e-6)
    assert np.abs(again - first).max() > 0.1 * np.abs(first).max()
    detector.fit(model, (layout(x), y), batch_size=BATCH)  # and back
    np.testing.assert_allclose(detector.score(layout(test)).scores, first, rtol=1e-6)


# --- the planner ----------------------------------------------------------------------------------------


def test_needs_one_perturbed_pass_per_layer_and_a_plain_fit_pass():
    detector = MDSEns(layers=["a", "b", "c"], eps=0.01, input_std=[0.5, 2.0])
    needs = detector.needs()
    assert needs.layers == ("a",) and needs.perturbation.loss == ClosestClassDistance(detector, "a")
    assert needs.perturbation.step == 0.01 and needs.perturbation.direction == SignOverStd((0.5, 2.0))
    assert list(needs.also) == ["b", "c"]
    assert needs.also["c"].perturbation.loss.reads == ("c",)
    assert needs.model_layers() == ("a", "b", "c")
    assert detector.fit_needs() == Needs(layers=("a", "b", "c"))
    assert detector.fit_needs().kind() == PassKind()
    assert MDSEns(eps=0.01).needs().layers == ("penultimate",), "the penultimate layer by default"
    assert needs.perturbation.loss != ClosestClassDistance(MDSEns(layers=["a"], eps=0.01), "a")
    plan = Plan(None)
    plan.add("mds", needs)
    plan.add("mds <fit>", detector.fit_needs())
    plan.add("gen", GEN().needs())
    assert plan.passes() == 4, "three perturbed passes, and the plain one shared with GEN"


def test_the_loss_is_the_same_before_and_after_fit_and_its_token_changes_with_each_state(tmp_path):
    fit, _, ood = two_layer_features()
    detector = MDSEns(layers=["penultimate", "block"])
    before = detector.needs()
    tokens = [detector.fit(fit).needs().perturbation.loss.state_token]
    assert detector.needs() == before and hash(detector.needs().kind()) == hash(before.kind())
    tokens.append(detector.fit(fit).needs().perturbation.loss.state_token)
    loaded = load(detector.save(tmp_path / "mds.oodscope"))
    tokens.append(loaded.needs().perturbation.loss.state_token)
    assert len(set(tokens)) == 3 and None not in tokens


def counting(torch):
    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = two_block_convnet(torch)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.body(x)

    return Counting()


def test_evaluate_fits_on_a_plain_pass_and_scores_as_alone():
    torch = pytest.importorskip("torch")
    x, y, test = data(seed=5, n_fit=40, n_test=32)
    oods = {"wide": test * 3.0}
    layers = ["body.1", "penultimate"]

    alone_model = counting(torch)
    alone = MDSEns(layers=layers, eps=0.05).fit(alone_model, (x, y), batch_size=BATCH)
    assert alone_model.calls == 3, "fitting is one plain forward per batch"
    expected = {"id": alone.score(test).scores, "wide": alone.score(oods["wide"]).scores}
    assert alone_model.calls == 3 + 2 * 2 * 2 * 2, "per layer, a gradient forward and a second forward"

    model = counting(torch)
    detectors = {"mds": MDSEns(layers=layers, eps=0.05), "gen": GEN()}
    report = evaluate(model, (x, y), test, oods, detectors, batch_size=BATCH, progress=False)
    assert not report.errors
    assert model.calls == 3 + 2 * (2 + 2 * 2 * 2), "fit: one plain pass; each set: GEN's, and two per layer"
    np.testing.assert_array_equal(report.id_scores["mds"], expected["id"])
    np.testing.assert_array_equal(report.ood_scores["mds"]["wide"], expected["wide"])
    np.testing.assert_array_equal(report.id_scores["gen"], GEN().fit(model).score(test).scores)


def test_tune_searches_eps_through_the_model():
    torch = pytest.importorskip("torch")
    from oodscope import tune

    net = two_block_convnet(torch)
    x, y, test = data(seed=8)
    result = tune(
        MDSEns(layers=[1, "penultimate"]),
        {"eps": [0.0, 0.05]},
        (x, y),
        test,
        test * 3.0,
        model=net,
        errors="raise",
        batch_size=BATCH,
        keep_scores=True,
    )
    alone = MDSEns(layers=[1, "penultimate"], eps=0.05).fit(net, (x, y)).score(test).scores
    np.testing.assert_allclose(result.scores[1]["id"], alone, rtol=1e-6)


# --- persistence, the weights, errors --------------------------------------------------------------------


def test_save_and_load_round_trip_bit_identically_and_score_through_the_model(tmp_path):
    torch = pytest.importorskip("torch")
    net = two_block_convnet(torch)
    x, y, test = data(seed=6)
    detector = MDSEns(layers=[1, "penultimate"], eps=0.05, input_std=[[[0.5]], [[2.0]]])
    detector.fit(net, (x, y), batch_size=BATCH).calibrate(test)
    detector.weights_ = np.array([0.25, 2.0])  # as fit_weights would leave it
    loaded = load(detector.save(tmp_path / "mds.oodscope"), model=net)
    for mine, theirs in zip(detector.layer_detectors_, loaded.layer_detectors_, strict=True):
        for name in ("class_means_", "covariance_", "whitening_"):
            np.testing.assert_array_equal(getattr(theirs, name), getattr(mine, name))
    np.testing.assert_array_equal(loaded.weights_, detector.weights_)
    assert loaded.layers_ == [1, "penultimate"] and loaded.threshold_ == detector.threshold_
    assert loaded.fit_widths_ == detector.fit_widths_
    assert FromPass("penultimate", "penultimate") in loaded.fit_widths_["layers"]
    np.testing.assert_array_equal(loaded.score(test).scores, detector.score(test).scores)


def test_fit_weights_on_separable_data_gives_positive_weights():
    fit, id_, ood = two_layer_features()
    detector = MDSEns(eps=0.0, layers=["penultimate", "block"]).fit(fit)
    assert detector.fit_weights(id_, ood) is detector
    assert detector.weights_.shape == (2,) and (detector.weights_ > 0).all(), detector.weights_
    np.testing.assert_allclose(detector.score(ood).scores, detector.layer_scores(ood) @ detector.weights_)
    detector.fit(fit)
    np.testing.assert_array_equal(detector.weights_, [1.0, 1.0])  # a refit returns to the given weights


def test_fit_weights_through_the_model():
    torch = pytest.importorskip("torch")
    net = two_block_convnet(torch)
    x, y, test = data(seed=7)
    detector = MDSEns(layers=[1, "penultimate"], eps=0.01).fit(net, (x, y), batch_size=BATCH)
    detector.fit_weights(test, test * 4.0 + 1.0, batch_size=7)
    assert (detector.weights_ > 0).all()


def test_the_direction_is_the_sign_over_the_std():
    gradient = np.random.default_rng(0).normal(size=(4, 2, 3, 3)).astype(np.float32)
    gradient[0, 1, 2, 2] = 0.0
    direction = mdsens_direction(gradient, [[[0.5]], [[2.0]]])
    assert direction.dtype == np.float32 and direction[0, 1, 2, 2] == 0.0
    np.testing.assert_array_equal(direction, np.sign(gradient) / np.array([0.5, 2.0]).reshape(2, 1, 1))
    np.testing.assert_array_equal(SignOverStd()(gradient), np.sign(gradient))
    with pytest.raises(ValueError, match=r"input_std of shape \(2,\) does not broadcast .*\(2, 3, 3\)"):
        mdsens_direction(gradient, [0.5, 2.0])  # a channels-last std for channels-first inputs


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"eps": -0.1}, r"'eps' parameter of MDSEns must be a float in \[0, inf\). Got -0.1"),
        ({"weights": [1.0, float("nan")]}, r"'weights' parameter of MDSEns must be None or a non-empty list"),
        ({"weights": []}, r"'weights' parameter of MDSEns must be None or a non-empty list"),
        ({"weights": [1.0, 2.0, 3.0]}, r"'weights' parameter of MDSEns has 3 values, but it reads 2 layers"),
        ({"layers": "penultimate"}, r"'layers' parameter of MDSEns must be an instance of list or tuple"),
        ({"layers": []}, r"'layers' parameter of MDSEns must name at least one layer"),
        (
            {"layers": ["block", "block"]},
            r"MDSEns reads each layer once; got the layers \['block', 'block'\]",
        ),
        ({"input_std": 0.0}, r"'input_std' parameter of MDSEns must be a float in \(0, inf\) or an array"),
        ({"input_std": [1.0, -2.0]}, r"'input_std' parameter of MDSEns"),
    ],
)
def test_bad_parameters_are_refused_clearly(params, message):
    fit, _, _ = two_layer_features()
    params = {"layers": ["penultimate", "block"], **params}
    with pytest.raises(ValueError, match=message):
        MDSEns(**params).fit(fit)


def test_bad_uses_are_refused_clearly():
    fit, id_, ood = two_layer_features()
    detector = MDSEns(eps=0.0).fit(fit)
    with pytest.raises(ValueError, match=r"'cv' argument of MDSEns.fit_weights must be an int in \[2, inf\)"):
        detector.fit_weights(id_, ood, cv=1)
    with pytest.raises(
        ValueError, match="at least cv=5 samples in each of id_data and ood_data; got 60 and 3"
    ):
        detector.fit_weights(id_, ood.take(np.arange(3)))
    with pytest.raises(ValueError, match=r"reads a forward pass with inputs moved by .*ClosestClassDistance"):
        MDSEns(eps=0.01).fit(fit).score(ood)  # a step needs the model
    with pytest.raises(TypeError, match="no model is known"):
        detector.layer_scores(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="class labels"):
        MDSEns().fit(Features(layers=fit.layers))
