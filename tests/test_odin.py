"""ODIN on both backends: eps=0 is temperature-scaled MSP; eps>0 moves the inputs as the paper says."""

from __future__ import annotations

import numpy as np
import pytest

from oodscope import MSP, ODIN, Features, extract, odin_score


def test_odin_score_is_temperature_scaled_msp():
    logits = np.random.default_rng(0).normal(0, 3, (20, 7))
    np.testing.assert_array_equal(
        odin_score(logits, 10.0), MSP().score(Features(logits=logits / 10.0)).scores
    )


def test_features_cannot_be_perturbed():
    with pytest.raises(ValueError, match=r"a forward pass with inputs moved by .* from a plain forward"):
        ODIN().score(Features(logits=np.zeros((2, 3))))


def torch_case():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )
    x = np.random.default_rng(0).normal(size=(16, 1, 3, 4)).astype(np.float32)

    def manual(eps, temperature):
        inputs = torch.as_tensor(x).clone().requires_grad_(True)
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits / temperature, logits.argmax(1), reduction="sum")
        (grad,) = torch.autograd.grad(loss, inputs)
        with torch.no_grad():
            return model(inputs - eps * grad.sign()).numpy()

    return model, x, manual


def keras_case():
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the reference computation uses tf.GradientTape")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3, 4, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(8, "relu"),
            keras.layers.Dense(3, "softmax"),
        ]
    )
    x = np.random.default_rng(0).normal(size=(16, 3, 4, 1)).astype(np.float32)
    to_logits = keras.Model(model.inputs, model.layers[-1].input)
    kernel, bias = model.layers[-1].kernel, model.layers[-1].bias

    def manual(eps, temperature):
        inputs = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            logits = to_logits(inputs) @ kernel + bias
            loss = tf.reduce_sum(
                keras.losses.sparse_categorical_crossentropy(
                    tf.argmax(logits, 1), logits / temperature, from_logits=True
                )
            )
        grad = tape.gradient(loss, inputs)
        return (to_logits(inputs - eps * tf.sign(grad)) @ kernel + bias).numpy()

    return model, x, manual


@pytest.mark.parametrize("case", [torch_case, keras_case], ids=["torch", "keras"])
def test_model_level_odin(case):
    model, x, manual = case()
    plain = ODIN(temperature=5.0, eps=0.0).fit(model).score(x).scores
    np.testing.assert_allclose(plain, odin_score(extract(model, x).logits, 5.0), rtol=1e-6)
    result = ODIN(temperature=5.0, eps=0.05).fit(model).score(x)
    expected_logits = manual(0.05, 5.0)
    np.testing.assert_allclose(result.info["logits"], expected_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.scores, odin_score(expected_logits, 5.0), rtol=1e-4, atol=1e-6)
    assert (result.scores <= plain + 1e-6).mean() > 0.9, "the perturbation raises the confidence"


@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="exception notes need Python 3.11")
def test_an_error_inside_the_model_says_which_batch():
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    detector = ODIN().fit(model)
    with pytest.raises(RuntimeError) as error:  # 5 features per sample where the model takes 12
        detector.score(np.zeros((7, 5), np.float32), batch_size=4)
    assert "batch 1: inputs of shape (4, 5), float32" in " ".join(error.value.__notes__)


def small_convnet(torch, channels: int = 2):
    """Conv(channels → 6, 3x3)-ReLU-global average pool-Dense(4), seeded."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 6, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 4),
    )


def keras_twin(net, keras, channels: int = 2):
    """The Keras functional model with the weights of :func:`small_convnet` (channels last, 8x8 inputs)."""
    inputs = keras.Input((8, 8, channels))
    hidden = keras.layers.Conv2D(6, 3, activation="relu")(inputs)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(4)(hidden))
    conv, dense = model.layers[1], model.layers[3]
    conv.set_weights([net[0].weight.detach().numpy().transpose(2, 3, 1, 0), net[0].bias.detach().numpy()])
    dense.set_weights([net[4].weight.detach().numpy().T, net[4].bias.detach().numpy()])
    return model


def test_odin_agrees_between_torch_and_keras_with_the_same_weights():
    """The same weights in torch and in Keras (on whichever Keras backend runs the tests) give the same ODIN
    scores: the gradient primitive means the same thing on every framework."""
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    net = small_convnet(torch, channels=1)
    model = keras_twin(net, keras, channels=1)
    x = np.random.default_rng(0).normal(size=(24, 1, 8, 8)).astype(np.float32)

    detector = ODIN(temperature=10.0, eps=0.01)
    from_torch = detector.fit(net).score(x, batch_size=8)
    from_keras = detector.fit(model).score(np.moveaxis(x, 1, -1), batch_size=8)
    np.testing.assert_allclose(from_keras.info["logits"], from_torch.info["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(from_keras.scores, from_torch.scores, rtol=1e-4)
    plain = ODIN(temperature=10.0, eps=0.0).fit(net).score(x).info["logits"]
    assert np.abs(from_torch.info["logits"] - plain).max() > 1e-3, "the perturbation moved the logits"


def test_a_perturbation_moves_every_input_of_a_model_along_its_own_gradient():
    from oodscope import Perturbation

    move = Perturbation(loss=None, step=0.1)
    x = {"image": np.ones((2, 3), np.float32), "extra": np.zeros((2, 1))}
    grad = {"image": np.array([[1.0, -2.0, 0.0]] * 2), "extra": np.array([[-5.0], [3.0]])}
    moved = move.apply(x, grad)
    np.testing.assert_allclose(moved["image"], [[0.9, 1.1, 1.0]] * 2, rtol=1e-6)
    assert moved["image"].dtype == np.float32 and moved["extra"].tolist() == [[0.1], [-0.1]]
    pair = move.apply((x["image"], x["extra"]), (grad["image"], grad["extra"]))
    assert isinstance(pair, tuple) and np.array_equal(pair[1], moved["extra"])


def test_a_backend_without_gradients_names_itself_and_the_detector(monkeypatch):
    torch = pytest.importorskip("torch")
    from oodscope.backends import UnsupportedError
    from oodscope.backends.torch import TorchBackend

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    monkeypatch.setattr(TorchBackend, "provides", frozenset())  # as an ONNX Runtime session would be
    with pytest.raises(
        UnsupportedError, match=r"torch backend \(TorchBackend\) does not provide gradients.*ODIN"
    ):
        ODIN(eps=0.01).fit(model)
    x = np.zeros((4, 1, 3, 4), np.float32)
    assert ODIN(eps=0.0).fit(model).score(x).scores.shape == (4,)  # a plain pass needs no gradients
