"""iODIN: ODIN with one input element moved, checked against torch autograd, across frameworks and in the
planner (its pass is shared with other iODINs, never with ODIN)."""

from __future__ import annotations

import numpy as np
import pytest
from test_odin import keras_twin, small_convnet

from oodscope import GEN, IODIN, ODIN, Features, Perturbation, evaluate, odin_score
from oodscope.detectors import iodin_direction
from oodscope.losses import PredictedClassCE
from oodscope.plan import Plan

BATCH = 10


def test_the_direction_is_one_signed_element_per_sample_divided_by_its_std():
    gradient = np.array(
        [
            [[[0.1, -0.2], [0.0, 0.3]], [[-0.9, 0.4], [0.2, 0.1]]],  # largest |g| in channel 1: -0.9
            [[[0.5, 0.5], [0.0, 0.0]], [[0.0, -0.5], [0.1, 0.0]]],  # a tie: the first element
        ]
    )
    direction = iodin_direction(gradient, input_std=[[[0.5]], [[2.0]]])
    expected = np.zeros_like(gradient)
    expected[0, 1, 0, 0] = -1.0 / 2.0
    expected[1, 0, 0, 0] = 1.0 / 0.5
    np.testing.assert_array_equal(direction, expected)
    np.testing.assert_array_equal(iodin_direction(gradient), np.sign(expected))  # sigma = 1


def test_several_inputs_have_one_element_moved_each():
    move = IODIN(eps=0.1).needs().perturbation
    x = {"image": np.ones((2, 3), np.float32), "extra": np.zeros((2, 2))}
    grad = {
        "image": np.array([[1.0, -2.0, 0.0], [0.0, 0.0, 3.0]]),
        "extra": np.array([[-5.0, 1.0], [0.0, 2.0]]),
    }
    moved = move.apply(x, grad)
    np.testing.assert_allclose(moved["image"], [[1.0, 1.1, 1.0], [1.0, 1.0, 0.9]], rtol=1e-6)
    assert moved["image"].dtype == np.float32
    np.testing.assert_array_equal(moved["extra"], [[0.1, 0.0], [0.0, -0.1]])


def test_the_perturbation_matches_torch_autograd():
    """One element per sample moves, the one of largest |∇ₓ CE(z/T, ŷ)|, by eps/σ of its channel against the
    gradient's sign; the scores are ODIN's formula on the logits of the moved inputs."""
    torch = pytest.importorskip("torch")
    net = small_convnet(torch)
    x = np.random.default_rng(0).normal(size=(12, 2, 8, 8)).astype(np.float32)
    temperature, eps, std = 5.0, 0.5, np.array([0.5, 2.0])

    inputs = torch.as_tensor(x).clone().requires_grad_(True)
    logits = net(inputs)
    loss = torch.nn.functional.cross_entropy(logits / temperature, logits.argmax(1), reduction="sum")
    (grad,) = torch.autograd.grad(loss, inputs)
    flat_index = grad.abs().flatten(1).argmax(1)
    channel = flat_index // (8 * 8)
    step = torch.zeros_like(grad).flatten(1)
    rows = torch.arange(len(x))
    step[rows, flat_index] = (
        grad.flatten(1)[rows, flat_index].sign() / torch.as_tensor(std, dtype=torch.float32)[channel]
    )
    expected_x = (inputs - eps * step.view_as(grad)).detach()
    with torch.no_grad():
        expected_logits = net(expected_x).numpy()

    detector = IODIN(temperature=temperature, eps=eps, input_std=std.reshape(2, 1, 1))
    moved = detector.needs().perturbation.apply(x, grad.numpy())
    changed = moved != x
    assert changed.reshape(len(x), -1).sum(axis=1).tolist() == [1] * len(x), "one element per sample"
    np.testing.assert_array_equal(np.argwhere(changed.reshape(len(x), -1))[:, 1], flat_index.numpy())
    np.testing.assert_allclose(moved, expected_x.numpy(), rtol=0, atol=1e-6)
    delta = (x - moved).reshape(len(x), -1)[rows.numpy(), flat_index.numpy()]
    np.testing.assert_allclose(np.abs(delta), eps / std[channel.numpy()], rtol=1e-5)

    result = detector.fit(net).score(x, batch_size=5)
    np.testing.assert_allclose(result.info["logits"], expected_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.scores, odin_score(expected_logits, temperature), rtol=1e-5, atol=1e-7)
    plain = IODIN(temperature=temperature, eps=0.0).fit(net).score(x).scores
    assert (result.scores <= plain + 1e-7).all(), "the step raises the confidence in the predicted class"
    assert (result.scores < plain).mean() > 0.5


def test_iodin_agrees_between_torch_and_keras_with_the_same_weights():
    """The same weights in torch and in Keras (whichever Keras backend runs the tests) give the same iODIN
    scores, with σ per channel given in each framework's layout."""
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    net = small_convnet(torch)
    model = keras_twin(net, keras)
    x = np.random.default_rng(1).normal(size=(24, 2, 8, 8)).astype(np.float32)

    from_torch = (
        IODIN(temperature=10.0, eps=0.5, input_std=[[[0.5]], [[2.0]]]).fit(net).score(x, batch_size=8)
    )
    from_keras = (
        IODIN(temperature=10.0, eps=0.5, input_std=[0.5, 2.0])
        .fit(model)
        .score(np.moveaxis(x, 1, -1), batch_size=8)
    )
    np.testing.assert_allclose(from_keras.info["logits"], from_torch.info["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(from_keras.scores, from_torch.scores, rtol=1e-4)
    plain = IODIN(temperature=10.0, eps=0.0).fit(net).score(x).info["logits"]
    assert np.abs(from_torch.info["logits"] - plain).max() > 1e-3, "the perturbation moved the logits"


def test_iodins_share_a_pass_and_odin_gets_its_own():
    plan = Plan(None)
    for name, detector in {
        "a": IODIN(temperature=10.0, eps=0.01),
        "b": IODIN(temperature=10.0, eps=0.01),  # equal: the same pass
        "odin": ODIN(temperature=10.0, eps=0.01),  # the same loss and step, another direction
        "odin again": ODIN(temperature=10.0, eps=0.01),
        "sigma": IODIN(temperature=10.0, eps=0.01, input_std=[0.5, 2.0]),
    }.items():
        plan.add(name, detector.needs())
    assert plan.passes() == 3
    odin = ODIN(temperature=10.0, eps=0.01).needs().perturbation
    assert odin == Perturbation(loss=PredictedClassCE(temperature=10.0), step=0.01), "ODIN's pass as before"
    assert IODIN(input_std=[1.0, 2.0]).needs() == IODIN(input_std=np.array([1.0, 2.0])).needs()


def test_iodin_refuses_features_from_an_odin_pass():
    kind = ODIN(temperature=10.0, eps=0.01).needs().kind()
    features = Features._unchecked(logits=np.zeros((2, 3)), pass_kind=kind)
    with pytest.raises(ValueError, match=r"IODIN\(temperature=10.0, eps=0.01\) reads a forward pass with"):
        IODIN(temperature=10.0, eps=0.01).score(features)


def counting_model(torch):
    class CountingModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = small_convnet(torch, channels=1)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.body(x)

    return CountingModel()


def test_evaluate_runs_one_gradient_pass_for_equal_iodins_and_another_for_odin():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    ind = rng.normal(size=(30, 1, 8, 8)).astype(np.float32)
    oods = {"wide": rng.normal(0, 3, (20, 1, 8, 8)).astype(np.float32), "shifted": ind[:20] + 1.5}

    reference = counting_model(torch)
    iodin = IODIN(temperature=10.0, eps=0.05).fit(reference, batch_size=BATCH)
    expected = {name: iodin.score(values).scores for name, values in {"id": ind, **oods}.items()}
    perturbed_calls = reference.calls
    assert perturbed_calls == 2 * (3 + 2 + 2), (
        "a gradient forward and a forward of the moved inputs per batch"
    )

    model = counting_model(torch)
    detectors = {"a": IODIN(temperature=10.0, eps=0.05), "b": IODIN(temperature=10.0, eps=0.05), "gen": GEN()}
    report = evaluate(model, None, ind, oods, detectors, batch_size=BATCH, progress=False)
    assert not report.errors
    assert model.calls == (3 + 2 + 2) + perturbed_calls, "the two iODINs share one gradient pass"
    for name in ("a", "b"):
        np.testing.assert_array_equal(report.id_scores[name], expected["id"])
        for ood in oods:
            np.testing.assert_array_equal(report.ood_scores[name][ood], expected[ood])

    model = counting_model(torch)
    detectors["odin"] = ODIN(temperature=10.0, eps=0.05)
    report = evaluate(model, None, ind, oods, detectors, batch_size=BATCH, progress=False)
    assert not report.errors
    assert model.calls == (3 + 2 + 2) + 2 * perturbed_calls, "ODIN moves every element: its own pass"
    odin_alone = ODIN(temperature=10.0, eps=0.05).fit(net := counting_model(torch), batch_size=BATCH)
    np.testing.assert_array_equal(report.id_scores["odin"], odin_alone.score(ind).scores)
    assert net.calls == 2 * 3
    assert not np.allclose(report.id_scores["odin"], report.id_scores["a"])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperature": 0.0}, r"'temperature' parameter of IODIN must be a float in \(0, inf\). Got 0.0"),
        ({"eps": -0.1}, r"'eps' parameter of IODIN must be a float in \[0, inf\). Got -0.1"),
        (
            {"input_std": 0.0},
            r"'input_std' parameter of IODIN must be a float in \(0, inf\) or an array-like",
        ),
        ({"input_std": [1.0, -2.0]}, r"'input_std' parameter of IODIN .* Got \[1.0, -2.0\]"),
        ({"input_std": "0.5"}, r"'input_std' parameter of IODIN .* Got '0.5'"),
        ({"input_std": float("nan")}, r"'input_std' parameter of IODIN"),
    ],
)
def test_bad_hyperparameters_are_refused_clearly(params, message):
    with pytest.raises(ValueError, match=message):
        IODIN(**params).score(Features(logits=np.zeros((2, 3))))


def test_a_std_that_does_not_fit_the_input_says_how_to_shape_it():
    torch = pytest.importorskip("torch")
    net = small_convnet(torch)
    x = np.zeros((4, 2, 8, 8), np.float32)
    detector = IODIN(eps=0.01, input_std=[0.5, 2.0]).fit(
        net
    )  # channels-last shape for a channels-first model
    with pytest.raises(
        ValueError, match=r"input_std of shape \(2,\) does not broadcast .* \(2, 8, 8\).*\(3, 1, 1\)"
    ):
        detector.score(x)
