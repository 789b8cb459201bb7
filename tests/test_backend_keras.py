"""KerasBackend: pre-softmax logits, layer capture, edits, gradients and head weights, on small models
built here, on whichever backend Keras runs (KERAS_BACKEND=tensorflow, jax or torch).

Every value is compared with an independent computation: a ``keras.Model`` built in the test from the
model's own tensors, the head's kernel and bias applied in numpy, gradients derived by hand and computed in
float64 numpy, and an equivalent PyTorch model differentiated with ``torch.autograd`` directly.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import oodscope.backends.keras as keras_backend  # noqa: E402
from oodscope.backends import (  # noqa: E402
    INPUT,
    HeadNotLinearError,
    LayerNotFoundError,
    get_backend,
)
from oodscope.backends.keras import KerasBackend, KerasOps  # noqa: E402
from oodscope.losses import KLToUniform, MaxLogit, PredictedClassCE  # noqa: E402

BACKEND = keras.backend.backend()
needs_tensorflow = pytest.mark.skipif(
    BACKEND != "tensorflow", reason=f"needs the TensorFlow backend of Keras (this one runs on {BACKEND})"
)
tf = pytest.importorskip("tensorflow") if BACKEND == "tensorflow" else None

L = keras.layers
N_CLASSES = 10


def toy_convnet_layers() -> list:
    return [
        L.Conv2D(32, 3, activation="relu", name="conv1"),
        L.MaxPooling2D(name="pool1"),
        L.Conv2D(64, 3, activation="relu", name="conv2"),
        L.MaxPooling2D(name="pool2"),
        L.Flatten(name="flatten"),
        L.Dropout(0.5, name="dropout"),
        L.Dense(N_CLASSES, activation="softmax", name="head"),
    ]


def functional(layers: list, shape: tuple = (28, 28, 1)) -> keras.Model:
    inputs = keras.Input(shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


class SubclassedNet(keras.Model):
    def __init__(self, head_activation=None, softmax_in_call=False):
        super().__init__()
        self.flatten = L.Flatten()
        self.hidden = L.Dense(16, activation="relu")
        self.head = L.Dense(N_CLASSES, activation=head_activation)
        self.softmax_in_call = softmax_in_call

    def call(self, x):
        out = self.head(self.hidden(self.flatten(x)))
        return keras.ops.softmax(out) if self.softmax_in_call else out


def built_subclassed(**kwargs) -> keras.Model:
    model = SubclassedNet(**kwargs)
    model(np.zeros((1, 28, 28, 1), "float32"))
    return model


@pytest.fixture(scope="module")
def models() -> dict:
    keras.utils.set_random_seed(0)
    sequential = keras.Sequential([keras.Input((28, 28, 1)), *toy_convnet_layers()])
    convnet = functional(toy_convnet_layers())
    activation_head = functional(
        [
            L.Conv2D(8, 3, activation="relu"),
            L.GlobalAveragePooling2D(),
            L.Dense(N_CLASSES, name="logits"),
            L.Activation("softmax"),
        ]
    )
    linear_head = functional(
        [
            L.Flatten(),
            L.Dense(16, activation="relu"),
            L.BatchNormalization(),
            L.Dense(N_CLASSES, use_bias=False),
        ]
    )
    # non-zero batch-norm statistics and biases, so that mistakes in inference mode or bias handling show
    bn = linear_head.layers[3]
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 16).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 16).astype("float32"))
    for model in (sequential, convnet, activation_head):
        head = [layer for layer in model.layers if isinstance(layer, L.Dense)][-1]
        head.bias.assign(np.linspace(-1, 1, N_CLASSES).astype("float32"))
    return {
        "sequential": sequential,
        "functional": convnet,
        "activation_head": activation_head,
        "linear_head": linear_head,
        "subclassed": built_subclassed(),
    }


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).random((32, 28, 28, 1), dtype=np.float32)


def numpy(tensor) -> np.ndarray:
    if isinstance(tensor, keras.Variable):
        tensor = tensor.value
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def reference(model, outputs, x) -> np.ndarray:
    """``keras.Model(model.inputs, outputs)(x)``: a sub-model built here, independently of the backend."""
    return numpy(keras.Model(model.inputs, outputs)(x, training=False))


def penultimate_reference(model, x) -> np.ndarray:
    """The input of the last Dense, through a sub-model built here from the public layer.input."""
    dense = [layer for layer in model.layers if isinstance(layer, L.Dense)][-1]
    return reference(model, dense.input, x)


# --- logits -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_softmax_dense_head_gives_pre_softmax_logits(models, x, kind):
    model = models[kind]
    head = model.layers[-1]
    config = model.get_config()
    logits, _ = KerasBackend(model).run_batch(x)
    assert logits.shape == (len(x), N_CLASSES)
    np.testing.assert_allclose(numpy(keras.ops.softmax(logits)), numpy(model(x, training=False)), atol=1e-5)
    expected = penultimate_reference(model, x) @ numpy(head.kernel) + numpy(head.bias)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits.sum(axis=1), 1.0)  # not probabilities
    assert head.activation is keras.activations.softmax
    assert model.get_config() == config


def test_activation_head_logits_are_its_input(models, x):
    model = models["activation_head"]
    backend = KerasBackend(model, ["penultimate"])
    logits, layers = backend.run_batch(x)
    dense = model.get_layer("logits")
    np.testing.assert_allclose(logits, reference(model, dense.output, x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(numpy(keras.ops.softmax(logits)), numpy(model(x)), atol=1e-5)
    np.testing.assert_allclose(layers["penultimate"], penultimate_reference(model, x), rtol=1e-6, atol=1e-6)
    weight, bias = backend.head_weights()
    np.testing.assert_array_equal(weight, numpy(dense.kernel).T)
    np.testing.assert_array_equal(bias, numpy(dense.bias))
    np.testing.assert_allclose(layers["penultimate"] @ weight.T + bias, logits, rtol=1e-5, atol=1e-5)


def test_linear_head_logits_are_the_model_output(models, x):
    model = models["linear_head"]
    backend = KerasBackend(model)
    logits, _ = backend.run_batch(x)
    np.testing.assert_allclose(logits, numpy(model(x, training=False)), rtol=1e-6, atol=1e-6)
    weight, bias = backend.head_weights()
    np.testing.assert_array_equal(weight, numpy(model.layers[-1].kernel).T)
    np.testing.assert_array_equal(bias, np.zeros(N_CLASSES, dtype=np.float32))  # use_bias=False


def test_softmax_op_after_a_linear_dense_head_is_left_out(x):
    # keras.ops in a functional graph are not layers: model.layers[-1] is the Dense, which outputs logits
    inputs = keras.Input((28, 28, 1))
    logits = L.Dense(N_CLASSES)(L.Flatten()(inputs))
    model = keras.Model(inputs, keras.ops.softmax(logits))
    out, _ = KerasBackend(model).run_batch(x)
    np.testing.assert_allclose(numpy(keras.ops.softmax(out)), numpy(model(x)), atol=1e-6)
    np.testing.assert_allclose(out, reference(model, logits, x), rtol=1e-6, atol=1e-6)


# --- layers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_layer_activations_match_an_independent_submodel(models, x, kind):
    model = models[kind]
    conv = [layer for layer in model.layers if isinstance(layer, L.Conv2D)][1]
    position = model.layers.index(conv)
    ids = [conv.name, position, position - len(model.layers), "penultimate", -2, -1]
    logits, layers = KerasBackend(model, ids).run_batch(x)
    assert list(layers) == ids
    expected = reference(model, conv.output, x)
    assert layers[conv.name].shape == (len(x), 11, 11, 64)
    for layer_id in ids[:3]:
        np.testing.assert_array_equal(layers[layer_id], layers[conv.name])
    np.testing.assert_allclose(layers[conv.name], expected, rtol=1e-6, atol=1e-6)
    # the toy convnet's Dense takes the Dropout's output: "penultimate" and -2 name the same tensor
    np.testing.assert_array_equal(layers["penultimate"], layers[-2])
    np.testing.assert_allclose(layers["penultimate"], penultimate_reference(model, x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layers[-1], numpy(keras.ops.softmax(logits)), atol=1e-6)


def test_integer_indices_count_model_layers(models, x):
    # a functional model lists its InputLayer first; Sequential.layers leaves it out
    functional_model, sequential = models["functional"], models["sequential"]
    assert isinstance(functional_model.layers[0], L.InputLayer)
    _, layers = KerasBackend(functional_model, [0, 1]).run_batch(x)
    np.testing.assert_array_equal(layers[0], x)
    _, seq_layers = KerasBackend(sequential, [0]).run_batch(x)
    first = reference(sequential, sequential.layers[0].output, x)
    np.testing.assert_allclose(seq_layers[0], first, rtol=1e-6, atol=1e-6)
    assert layers[1].shape == seq_layers[0].shape == (len(x), 26, 26, 32)
    backend = KerasBackend(sequential)
    assert backend.layer_names() == [layer.name for layer in sequential.layers]


@pytest.mark.parametrize("bad", ["no_such_layer", 8, -9, np.int64(99)])
def test_unknown_layer_ids_raise_with_names_and_how_to_address(models, bad):
    model = models["functional"]  # 8 layers, InputLayer included
    with pytest.raises(LayerNotFoundError) as error:
        KerasBackend(model, [bad])
    message = str(error.value)
    assert repr(bad) in message
    assert all(repr(layer.name) in message for layer in model.layers)
    assert "integer index into model.layers" in message and "penultimate" in message
    if not isinstance(bad, str):
        assert "Integer indices run from -8 to 7" in message
    with pytest.raises(LayerNotFoundError, match="Available layers"):
        KerasBackend(model, head_layer_id=bad)


def test_ids_of_other_types_and_misplaced_penultimate_raise(models):
    model = models["functional"]
    for bad in (1.5, True, None, ("conv1",)):
        with pytest.raises(TypeError, match="layer name \\(str\\), an integer index"):
            KerasBackend(model, [bad])
    with pytest.raises(TypeError, match="sequence of layer ids"):
        KerasBackend(model, "conv1")
    with pytest.raises(ValueError, match="cannot be the head_layer_id"):
        KerasBackend(model, head_layer_id="penultimate")
    inputs = keras.Input((3,))
    softmax_of_input = keras.Model(inputs, L.Softmax()(inputs))
    with pytest.raises(ValueError, match="'penultimate' is undefined"):
        KerasBackend(softmax_of_input, ["penultimate"])


def test_layers_with_several_outputs_or_calls_raise(x):
    class Split(L.Layer):
        def call(self, inputs):
            return inputs[:, :4], inputs[:, 4:]

    inputs = keras.Input((8,))
    first, second = Split(name="split")(inputs)
    shared = L.Dense(8, name="shared")
    model = keras.Model(inputs, L.Dense(3)(shared(shared(L.Concatenate()([first, second])))))
    with pytest.raises(ValueError, match="'split'.*returns 2 tensors"):
        KerasBackend(model, ["split"])
    with pytest.raises(ValueError, match="'shared' is called 2 times"):
        KerasBackend(model, ["shared"])
    data = np.random.default_rng(1).random((5, 8), dtype=np.float32)
    logits, layers = KerasBackend(model, ["penultimate", "concatenate"]).run_batch(data)
    np.testing.assert_array_equal(layers["concatenate"], data)
    np.testing.assert_allclose(logits, numpy(model(data)), rtol=1e-6, atol=1e-6)


def test_nested_model_counts_as_one_layer():
    inner = keras.Sequential([keras.Input((8,)), L.Dense(5, activation="relu"), L.Dense(4)], name="inner")
    inputs = keras.Input((8,))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(inner(inputs)))
    data = np.random.default_rng(2).random((6, 8), dtype=np.float32)
    logits, layers = KerasBackend(model, ["inner", "penultimate"]).run_batch(data)
    np.testing.assert_allclose(layers["inner"], numpy(inner(data)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(layers["inner"], layers["penultimate"])
    np.testing.assert_allclose(numpy(keras.ops.softmax(logits)), numpy(model(data)), atol=1e-6)


def test_layers_reused_by_another_model_are_read_in_this_model():
    # the layers' first call (layer.output) belongs to model_a; model_b must capture its own call
    hidden, out = L.Dense(8, activation="relu", name="hidden"), L.Dense(3, name="out")
    functional([hidden, out], shape=(4,))
    model_b = functional([L.Rescaling(2.0), hidden, out], shape=(4,))
    data = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    logits, layers = KerasBackend(model_b, ["hidden", "penultimate"]).run_batch(data)
    expected = np.maximum(2.0 * data @ numpy(hidden.kernel) + numpy(hidden.bias), 0.0)
    np.testing.assert_allclose(layers["hidden"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, numpy(model_b(data)), rtol=1e-6, atol=1e-6)


def test_multi_input_model():
    first, second = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    model = keras.Model([first, second], L.Dense(4, activation="softmax")(L.Concatenate()([first, second])))
    rng = np.random.default_rng(4)
    data = [rng.random((5, 3), dtype=np.float32), rng.random((5, 2), dtype=np.float32)]
    backend = KerasBackend(model, ["penultimate"])
    logits, layers = backend.run_batch(data)
    np.testing.assert_array_equal(layers["penultimate"], np.concatenate(data, axis=1))
    np.testing.assert_allclose(numpy(keras.ops.softmax(logits)), numpy(model(data)), atol=1e-6)
    # logits = [a, b] @ W + bias: the gradient of the largest logit is W's column, split between the inputs
    grad_logits, _, grads = backend.gradients(data, MaxLogit())
    np.testing.assert_array_equal(grad_logits, logits)
    column = backend.head_weights()[0][logits.argmax(axis=1)]
    assert isinstance(grads[INPUT], list) and len(grads[INPUT]) == 2
    np.testing.assert_allclose(grads[INPUT][0], column[:, :3], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads[INPUT][1], column[:, 3:], rtol=1e-6, atol=1e-7)


def test_public_layer_attributes_are_the_fallback(models, x, monkeypatch):
    model = models["functional"]
    expected_logits, expected = KerasBackend(model, ["conv2", "penultimate"]).run_batch(x)
    monkeypatch.setattr(keras_backend, "_NODES_BY_DEPTH", "_attribute_keras_does_not_have")
    logits, layers = KerasBackend(model, ["conv2", "penultimate"]).run_batch(x)
    np.testing.assert_array_equal(logits, expected_logits)
    for key in expected:
        np.testing.assert_array_equal(layers[key], expected[key])


# --- head weights -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_head_weights_are_the_transposed_kernel(models, kind):
    head = models[kind].layers[-1]
    weight, bias = KerasBackend(models[kind]).head_weights()
    assert weight.shape == (N_CLASSES, 1600) and bias.shape == (N_CLASSES,)
    np.testing.assert_array_equal(weight, numpy(head.kernel).T)
    np.testing.assert_array_equal(bias, numpy(head.bias))


def test_non_dense_head_raises_head_not_linear(models, x):
    model = models["functional"]
    backend = KerasBackend(model, head_layer_id="flatten")
    logits, _ = backend.run_batch(x)  # the logits are the head's output
    assert logits.shape == (len(x), 1600)
    with pytest.raises(HeadNotLinearError, match="'flatten' is a Flatten"):
        backend.head_weights()

    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Softmax()(L.Dense(3, activation="relu", name="hidden")(inputs)))
    with pytest.raises(HeadNotLinearError, match="'hidden'.*'relu'"):
        KerasBackend(model).head_weights()


def test_one_by_one_convolution_head_is_flattened():
    inputs = keras.Input((5, 5, 3))
    features = L.Conv2D(4, 3, activation="relu")(inputs)
    head = L.Conv2D(N_CLASSES, 3, name="conv_head")(features)  # [B, 1, 1, C]
    model = keras.Model(inputs, head)
    data = np.random.default_rng(5).random((4, 5, 5, 3), dtype=np.float32)
    logits, _ = KerasBackend(model).run_batch(data)
    np.testing.assert_allclose(logits, numpy(model(data)).reshape(4, N_CLASSES), rtol=1e-6, atol=1e-6)


def test_non_dense_head_with_softmax_activation_is_refused():
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, L.Conv2D(3, 4, activation="softmax", name="conv_head")(inputs))
    with pytest.raises(ValueError, match="'conv_head'.*'softmax'"):
        KerasBackend(model)


# --- ops, edits and gradients -------------------------------------------------------------------------------


def test_keras_ops_match_numpy():
    ops = KerasBackend.ops
    assert isinstance(ops, KerasOps) and ops.native is keras.ops
    z = np.random.default_rng(7).normal(size=(4, 5)).astype(np.float32)
    tensor = keras.ops.convert_to_tensor(z)
    shifted = z - z.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(numpy(ops.log_softmax(tensor)), log_softmax, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(numpy(ops.logsumexp(tensor)), (z - log_softmax)[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(numpy(ops.max(tensor)), z.max(axis=1))
    np.testing.assert_allclose(numpy(ops.mean(tensor)), z.mean(axis=1), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(numpy(ops.argmax(tensor)), z.argmax(axis=1))
    index = keras.ops.convert_to_tensor(np.array([4, 0, 2, 2]))
    np.testing.assert_array_equal(numpy(ops.pick(tensor, index)), z[np.arange(4), [4, 0, 2, 2]])
    np.testing.assert_allclose(float(numpy(ops.total(tensor))), z.sum(), rtol=1e-6)
    np.testing.assert_array_equal(numpy(ops.stop_gradient(tensor)), z)


def test_the_backend_provides_edits_and_gradients_and_nothing_named_after_a_detector():
    assert KerasBackend.provides == {"edits", "gradients"}
    KerasBackend.require("gradients", "a test")
    KerasBackend.require("edits", "a test")
    assert not hasattr(KerasBackend, "odin_logits")


def softmax64(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def loss_gradient(loss, logits: np.ndarray) -> np.ndarray:
    """dL/dz of each loss of oodscope.losses, derived by hand, in float64."""
    z = logits.astype(np.float64)
    predicted = np.eye(z.shape[1])[z.argmax(axis=1)]
    if isinstance(loss, MaxLogit):
        return predicted
    if isinstance(loss, PredictedClassCE):
        return (softmax64(z / loss.temperature) - predicted) / loss.temperature
    if isinstance(loss, KLToUniform):
        return softmax64(z) - 1.0 / z.shape[1]
    raise AssertionError(loss)


ACTIVATIONS = {
    "linear": (lambda a: a, lambda a: np.ones_like(a)),
    "relu": (lambda a: np.maximum(a, 0.0), lambda a: (a > 0).astype(np.float64)),
    "tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2),
}


def mlp_gradients(x, dense, loss):
    """Flatten, then the ``(Dense layer, activation name)`` pairs, forward and backward in float64 numpy:
    ``(logits, dL/dx [B, D], [dL/d(output of each Dense but the last)])``; the last one gives the logits."""
    h = x.reshape(len(x), -1).astype(np.float64)
    inputs, pre = [], []
    for layer, activation in dense:
        inputs.append(h)
        pre.append(h @ numpy(layer.kernel).astype(np.float64) + numpy(layer.bias).astype(np.float64))
        h = ACTIVATIONS[activation][0](pre[-1])
    grad = loss_gradient(loss, h)
    hidden = []
    for i in reversed(range(len(dense))):
        layer, activation = dense[i]
        if i < len(dense) - 1:
            hidden.insert(0, grad)
        grad = (grad * ACTIVATIONS[activation][1](pre[i])) @ numpy(layer.kernel).astype(np.float64).T
    return h, grad, hidden


def assert_gradient_close(actual, expected, rtol=1e-4):
    """Close relative to the gradient's own scale (PredictedClassCE(1000) gives gradients near 1e-3)."""
    assert actual.shape == expected.shape and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


LOSSES = [MaxLogit(), PredictedClassCE(1000.0), PredictedClassCE(1.0), KLToUniform()]


@pytest.mark.parametrize("loss", LOSSES, ids=repr)
def test_input_gradient_of_a_linear_model_is_derived_by_hand(loss):
    # z = x W + b: d/dx of sum_i L(z_i) = dL/dz @ W.T, e.g. W's column of the predicted class for MaxLogit
    keras.utils.set_random_seed(3)
    model = functional([L.Dense(5, name="head")], shape=(6,))
    model.layers[-1].bias.assign(np.linspace(-1, 1, 5).astype("float32"))
    data = np.random.default_rng(8).normal(size=(16, 6)).astype(np.float32)
    backend = KerasBackend(model, ["penultimate"])
    logits, layers, grads = backend.gradients(data, loss)
    np.testing.assert_array_equal(logits, backend.run_batch(data)[0])
    np.testing.assert_array_equal(layers["penultimate"], data)
    kernel = numpy(model.layers[-1].kernel).astype(np.float64)
    expected = loss_gradient(loss, data.astype(np.float64) @ kernel + np.linspace(-1, 1, 5)) @ kernel.T
    assert list(grads) == [INPUT]
    assert_gradient_close(grads[INPUT], expected, rtol=1e-5)
    if isinstance(loss, MaxLogit):
        np.testing.assert_allclose(grads[INPUT], kernel[:, logits.argmax(axis=1)].T, rtol=1e-6)


@pytest.mark.parametrize("loss", LOSSES, ids=repr)
def test_gradients_of_a_nonlinear_model_follow_the_chain_rule(loss):
    keras.utils.set_random_seed(4)
    layers = [
        L.Flatten(),
        L.Dense(12, activation="tanh", name="hidden"),
        L.Dense(8, activation="tanh", name="hidden2"),
        L.Dense(5, activation="softmax", name="head"),
    ]
    model = functional(layers, shape=(3, 4, 1))
    data = np.random.default_rng(9).normal(size=(16, 3, 4, 1)).astype(np.float32)
    backend = KerasBackend(model, ["hidden", "penultimate", "hidden2"])
    logits, activations, grads = backend.gradients(data, loss, [INPUT, "hidden", "penultimate", "hidden2"])
    plain_logits, plain_layers = backend.run_batch(data)
    np.testing.assert_allclose(logits, plain_logits, rtol=1e-6, atol=1e-6)
    for key in plain_layers:
        np.testing.assert_allclose(activations[key], plain_layers[key], rtol=1e-6, atol=1e-6)
    dense = [(layers[1], "tanh"), (layers[2], "tanh"), (layers[3], "linear")]
    expected_logits, expected_input, (expected_hidden, expected_hidden2) = mlp_gradients(data, dense, loss)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert list(grads) == [INPUT, "hidden", "penultimate", "hidden2"]
    assert_gradient_close(grads[INPUT], expected_input.reshape(data.shape))
    assert_gradient_close(grads["hidden"], expected_hidden)
    assert_gradient_close(grads["hidden2"], expected_hidden2)
    np.testing.assert_array_equal(grads["penultimate"], grads["hidden2"])


def test_layer_gradients_through_a_linear_tail_are_head_columns(models, x):
    # toy convnet: pool2 -> Flatten -> Dropout (identity in inference) -> Dense; the logits are linear in
    # each of them, so the gradient of the largest logit is the head kernel's column of the predicted class
    model = models["functional"]
    ids = ["pool2", "flatten", "penultimate", -1]
    backend = KerasBackend(model, ids)
    logits, layers, grads = backend.gradients(x, MaxLogit(), [*ids, INPUT])
    plain_logits, plain_layers = backend.run_batch(x)
    np.testing.assert_allclose(logits, plain_logits, rtol=1e-6, atol=1e-6)
    for key in ids:
        np.testing.assert_allclose(layers[key], plain_layers[key], rtol=1e-6, atol=1e-6)
    columns = numpy(model.layers[-1].kernel)[:, logits.argmax(axis=1)].T
    np.testing.assert_allclose(grads["penultimate"], columns, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads["flatten"], columns, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads["pool2"].reshape(len(x), -1), columns, rtol=1e-6, atol=1e-7)
    # the probabilities are computed from the logits, not the reverse: the loss does not depend on them
    np.testing.assert_array_equal(grads[-1], np.zeros_like(layers[-1]))
    assert grads[INPUT].shape == x.shape and np.abs(grads[INPUT]).max() > 0


def test_gradients_of_a_model_with_free_spatial_sizes():
    # 1x1 conv -> global average -> Dense, all linear: d max_c z / d conv = W[:, k] / (H W) at every pixel
    keras.utils.set_random_seed(5)
    conv = L.Conv2D(3, 1, name="conv")
    model = functional([conv, L.GlobalAveragePooling2D(), L.Dense(4, name="head")], shape=(None, None, 2))
    data = np.random.default_rng(10).normal(size=(5, 6, 7, 2)).astype(np.float32)
    backend = KerasBackend(model, ["conv"])
    logits, layers, grads = backend.gradients(data, MaxLogit(), [INPUT, "conv"])
    assert layers["conv"].shape == grads["conv"].shape == (5, 6, 7, 3)
    columns = numpy(model.layers[-1].kernel)[:, logits.argmax(axis=1)].T / 42.0  # [B, 3]
    np.testing.assert_allclose(
        grads["conv"], np.broadcast_to(columns[:, None, None], (5, 6, 7, 3)), rtol=1e-5
    )
    per_pixel = columns @ numpy(conv.kernel)[0, 0].T  # [B, 2]
    np.testing.assert_allclose(grads[INPUT], np.broadcast_to(per_pixel[:, None, None], data.shape), rtol=1e-5)


def test_the_input_layer_as_a_target_is_the_input(models, x):
    backend = KerasBackend(models["functional"], [0])
    _, layers, grads = backend.gradients(x[:8], PredictedClassCE(1000.0), [0, INPUT])
    np.testing.assert_array_equal(layers[0], x[:8])
    np.testing.assert_allclose(grads[0], grads[INPUT], rtol=1e-6, atol=1e-12)


def test_gradient_targets_losses_and_inputs_are_checked(models, x):
    backend = KerasBackend(models["functional"], ["penultimate"])
    with pytest.raises(
        ValueError, match="'conv1'.*INPUT .* or one of the backend's layer_ids \\('penultimate'\\)"
    ):
        backend.gradients(x[:2], MaxLogit(), ["conv1"])
    with pytest.raises(TypeError, match="sequence of targets"):
        backend.gradients(x[:2], MaxLogit(), "penultimate")
    with pytest.raises(TypeError, match="loss must be a function"):
        backend.gradients(x[:2], "max_logit")
    with pytest.raises(ValueError, match="scalar"):
        backend.gradients(x[:2], lambda logits, ops: ops.max(logits))
    logits, layers, grads = backend.gradients(x[:2], MaxLogit(), ())
    np.testing.assert_array_equal(logits, backend.run_batch(x[:2])[0])
    assert grads == {} and list(layers) == ["penultimate"]

    tokens = keras.Input((4,), dtype="int32")
    embedded = L.Embedding(10, 3, name="embedding")(tokens)
    text_model = keras.Model(tokens, L.Dense(2)(L.Flatten()(embedded)))
    ids = np.arange(8, dtype=np.int32).reshape(2, 4)
    text = KerasBackend(text_model, [0, "embedding"])
    with pytest.raises(ValueError, match="floating-point model inputs.*int32"):
        text.gradients(ids, MaxLogit())
    with pytest.raises(ValueError, match="layer 0: its output is int32"):
        text.gradients(ids, MaxLogit(), [0])
    _, _, grads = text.gradients(ids, MaxLogit(), ["embedding"])
    assert grads["embedding"].shape == (2, 4, 3)


def test_a_layer_called_twice_cannot_be_edited_or_differentiated():
    inputs = keras.Input((8,))
    shared = L.Dense(8, name="shared")
    model = keras.Model(inputs, L.Dense(3)(shared(shared(inputs))))
    data = np.random.default_rng(11).random((5, 8), dtype=np.float32)
    backend = KerasBackend(model, ["penultimate"])
    backend.run_batch(data)  # a tap of its output is fine
    with pytest.raises(ValueError, match="'penultimate' is made by 'shared', which is called 2 times"):
        backend.gradients(data, MaxLogit(), ["penultimate"])
    with pytest.raises(ValueError, match="'penultimate' is made by 'shared', which is called 2 times"):
        KerasBackend(model, edits={"penultimate": lambda t, ops: t})


@pytest.mark.parametrize("kind", ["sequential", "functional", "activation_head"])
def test_an_edit_that_zeros_the_penultimate_leaves_the_head_bias(models, x, kind):
    model = models[kind]
    dense = [layer for layer in model.layers if isinstance(layer, L.Dense)][-1]
    ids = ["penultimate", dense.name, 1]
    plain_logits, plain = KerasBackend(model, ids).run_batch(x)
    edited = KerasBackend(model, ids, edits={"penultimate": lambda t, ops: ops.native.zeros_like(t)})
    logits, layers = edited.run_batch(x)
    np.testing.assert_allclose(logits, np.broadcast_to(numpy(dense.bias), logits.shape), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(layers["penultimate"], np.zeros_like(plain["penultimate"]))
    # the head layer itself ran on the edited tensor too
    bias = np.broadcast_to(numpy(dense.bias), logits.shape)
    expected = bias if kind == "activation_head" else numpy(keras.ops.softmax(bias))
    np.testing.assert_allclose(layers[dense.name], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(layers[1], plain[1])  # before the edit: unchanged
    assert not np.allclose(plain_logits, logits)


@pytest.mark.parametrize("kind", ["functional", "activation_head"])
def test_a_clipping_edit_of_the_penultimate_equals_clipping_by_hand(models, x, kind):
    model = models[kind]
    dense = [layer for layer in model.layers if isinstance(layer, L.Dense)][-1]
    penultimate = penultimate_reference(model, x)
    bound = float(np.quantile(penultimate[penultimate > 0], 0.5))
    backend = KerasBackend(
        model, ["penultimate"], edits={"penultimate": lambda t, ops: ops.native.minimum(t, bound)}
    )
    logits, layers = backend.run_batch(x)
    clipped = np.minimum(penultimate, bound)
    np.testing.assert_allclose(layers["penultimate"], clipped, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        logits, clipped @ numpy(dense.kernel) + numpy(dense.bias), rtol=1e-5, atol=1e-5
    )
    assert np.abs(logits - KerasBackend(model).run_batch(x)[0]).max() > 1e-3
    # the gradient with respect to the edited layer is taken after the edit: still the head's columns
    _, _, grads = backend.gradients(x, MaxLogit(), ["penultimate"])
    np.testing.assert_allclose(
        grads["penultimate"], numpy(dense.kernel)[:, logits.argmax(axis=1)].T, rtol=1e-6
    )


def test_an_edit_inside_the_network_reaches_the_layers_after_it(models, x):
    model = models["linear_head"]  # Input, Flatten, Dense(relu), BatchNormalization, Dense
    hidden, norm, head = model.layers[2:]
    backend = KerasBackend(model, [2, 3], edits={2: lambda t, ops: t * 2.0 + 1.0})
    logits, layers = backend.run_batch(x)
    edited = reference(model, hidden.output, x) * 2.0 + 1.0
    normalized = numpy(norm(keras.ops.convert_to_tensor(edited), training=False))  # eager: no new node
    np.testing.assert_allclose(layers[2], edited, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layers[3], normalized, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, normalized @ numpy(head.kernel), rtol=1e-5, atol=1e-5)


def test_an_edit_of_the_input_and_the_gradient_through_it():
    # z = (2 x) W + b: the logits of the doubled input, and an input gradient of twice W's column
    keras.utils.set_random_seed(6)
    model = functional([L.Dense(4, name="head")], shape=(6,))
    data = np.random.default_rng(12).normal(size=(9, 6)).astype(np.float32)
    backend = KerasBackend(model, ["penultimate", 0], edits={"penultimate": lambda t, ops: t * 2.0})
    logits, layers, grads = backend.gradients(data, MaxLogit(), [INPUT, 0])
    kernel, bias = numpy(model.layers[-1].kernel), numpy(model.layers[-1].bias)
    np.testing.assert_allclose(logits, 2.0 * data @ kernel + bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(layers["penultimate"], 2.0 * data)
    np.testing.assert_array_equal(layers[0], 2.0 * data)
    columns = kernel[:, logits.argmax(axis=1)].T
    np.testing.assert_allclose(grads[INPUT], 2.0 * columns, rtol=1e-6)
    np.testing.assert_allclose(grads[0], columns, rtol=1e-6)


def test_a_penultimate_made_by_an_operation_or_a_layer_with_two_outputs():
    # the head's input is the second output of a layer, or the output of a keras.ops call in the graph
    class Split(L.Layer):
        def call(self, inputs):
            return inputs[:, :4], inputs[:, 4:]

    inputs = keras.Input((8,))
    head = L.Dense(3, name="head")
    _, second = Split(name="split")(inputs)
    split_model = keras.Model(inputs, head(second))
    hidden_inputs = keras.Input((8,))
    other_head = L.Dense(3, name="head")
    ops_model = keras.Model(hidden_inputs, other_head(keras.ops.tanh(L.Dense(4)(hidden_inputs))))
    data = np.random.default_rng(14).normal(size=(6, 8)).astype(np.float32)
    for model, dense in ((split_model, head), (ops_model, other_head)):
        dense.bias.assign(np.array([0.1, 0.5, -0.2], np.float32))  # one largest logit once the input is zero
        kernel, bias = numpy(dense.kernel), numpy(dense.bias)
        backend = KerasBackend(model, ["penultimate"], edits={"penultimate": lambda t, ops: t * 0.0})
        logits, layers, grads = backend.gradients(data, MaxLogit(), ["penultimate"])
        np.testing.assert_array_equal(layers["penultimate"], np.zeros((6, 4), np.float32))
        np.testing.assert_allclose(logits, np.broadcast_to(bias, (6, 3)), atol=1e-7)
        np.testing.assert_allclose(grads["penultimate"], kernel[:, logits.argmax(axis=1)].T, rtol=1e-6)
        plain = KerasBackend(model, ["penultimate"]).run_batch(data)[1]["penultimate"]
        expected = data[:, 4:] if model is split_model else plain
        np.testing.assert_allclose(plain, expected)
        assert np.abs(plain).max() > 0


def test_edits_are_checked(models, x):
    model = models["functional"]
    with pytest.raises(TypeError, match="edits must be a mapping"):
        KerasBackend(model, edits=[("conv1", lambda t, ops: t)])
    with pytest.raises(TypeError, match="edit of layer 'conv1' must be a function"):
        KerasBackend(model, edits={"conv1": 2.0})
    with pytest.raises(LayerNotFoundError, match="no_such_layer"):
        KerasBackend(model, edits={"no_such_layer": lambda t, ops: t})
    with pytest.raises(ValueError, match="edits of 'penultimate' and 'dropout' replace the same tensor"):
        KerasBackend(model, edits={"penultimate": lambda t, ops: t, "dropout": lambda t, ops: t})
    with pytest.raises(ValueError, match="edit of layer 'conv1' changed the shape.*keep the shape"):
        KerasBackend(model, edits={"conv1": lambda t, ops: t[:, 1:]}).run_batch(x[:2])
    with pytest.raises(TypeError, match="edit of layer 'conv1' returned float"):
        KerasBackend(model, edits={"conv1": lambda t, ops: 0.0}).run_batch(x[:2])
    # a float64 result is cast back to the layer's dtype
    logits, layers = KerasBackend(
        model, ["conv1"], edits={"conv1": lambda t, ops: ops.native.cast(t, "float64")}
    ).run_batch(x[:4])
    assert layers["conv1"].dtype == logits.dtype == np.float32
    np.testing.assert_allclose(logits, KerasBackend(model).run_batch(x[:4])[0], rtol=1e-6, atol=1e-6)


def test_gradients_agree_with_an_equivalent_torch_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 5 * 5, 5),
    ).eval()
    images = np.random.default_rng(13).random((16, 1, 12, 12), dtype=np.float32)  # NCHW
    temperature, eps = 1000.0, 0.002

    # the reference: torch autograd on the torch model
    inputs = torch.from_numpy(images).requires_grad_(True)
    torch_logits = net(inputs)
    loss = torch.nn.functional.cross_entropy(
        torch_logits / temperature, torch_logits.argmax(dim=1), reduction="sum"
    )
    (torch_grad,) = torch.autograd.grad(loss, inputs)
    with torch.no_grad():
        torch_perturbed = net(inputs - eps * torch.sign(torch_grad)).numpy()
    torch_logits, torch_grad = torch_logits.detach().numpy(), torch_grad.numpy()

    # the same weights in a channels-last Keras model; Permute puts the features in torch's flatten order
    keras_inputs = keras.Input((12, 12, 1))
    conv = L.Conv2D(4, 3, activation="relu")
    linear = L.Dense(5)
    features = L.Flatten()(L.Permute((3, 1, 2))(L.MaxPooling2D(2)(conv(keras_inputs))))
    model = keras.Model(keras_inputs, linear(features))
    conv.kernel.assign(net[0].weight.detach().numpy().transpose(2, 3, 1, 0))
    conv.bias.assign(net[0].bias.detach().numpy())
    linear.kernel.assign(net[4].weight.detach().numpy().T)
    linear.bias.assign(net[4].bias.detach().numpy())

    nhwc = images.transpose(0, 2, 3, 1)
    backend = KerasBackend(model)
    logits, _, grads = backend.gradients(nhwc, PredictedClassCE(temperature), (INPUT,))
    np.testing.assert_allclose(logits, torch_logits, rtol=1e-4, atol=1e-6)
    assert_gradient_close(grads[INPUT].transpose(0, 3, 1, 2), torch_grad, rtol=1e-3)
    perturbed, _ = backend.run_batch(nhwc - eps * np.sign(grads[INPUT]))
    np.testing.assert_allclose(perturbed, torch_perturbed, rtol=1e-4, atol=1e-5)
    assert np.abs(perturbed - logits).max() > 1e-3  # the step does something


# --- inputs and batches -------------------------------------------------------------------------------------


def test_numpy_tensor_and_float64_inputs_agree(models, x):
    backend = KerasBackend(models["functional"], ["conv1", "penultimate"])
    logits, layers = backend.run_batch(x)
    others = [x.astype(np.float64), keras.ops.convert_to_tensor(x)]
    if tf is not None:
        others.append(tf.constant(x))
    for other in others:
        other_logits, other_layers = backend.run_batch(other)
        np.testing.assert_array_equal(other_logits, logits)
        for key in layers:
            np.testing.assert_array_equal(other_layers[key], layers[key])
    loss = PredictedClassCE(1000.0)
    _, _, grads = backend.gradients(x, loss, [INPUT, "conv1"])
    for other in others:
        _, _, other_grads = backend.gradients(other, loss, [INPUT, "conv1"])
        for key in grads:
            assert other_grads[key].dtype == np.float32
            np.testing.assert_allclose(other_grads[key], grads[key], rtol=1e-6, atol=1e-9)


def test_input_without_the_channel_axis_is_accepted_as_by_keras(models, x):
    # Keras adds a missing trailing axis of size 1; the backend then uses its shape-flexible path
    backend = KerasBackend(models["functional"], ["conv1"])
    logits, layers = backend.run_batch(x)
    squeezed_logits, squeezed_layers = backend.run_batch(x[..., 0])
    np.testing.assert_allclose(squeezed_logits, logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(squeezed_layers["conv1"], layers["conv1"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["sequential", "activation_head", "subclassed"])
def test_results_do_not_depend_on_the_batch_size(models, x, kind):
    ids = [] if kind == "subclassed" else ["penultimate"]
    backend = KerasBackend(models[kind], ids)
    full_logits, full_layers = backend.run_batch(x)
    for size in (1, 7):
        parts = [backend.run_batch(x[i : i + size]) for i in range(0, len(x), size)]
        np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), full_logits, rtol=1e-5, atol=1e-5)
        for key in ids:
            stacked = np.concatenate([p[1][key] for p in parts])
            np.testing.assert_allclose(stacked, full_layers[key], rtol=1e-5, atol=1e-5)


def test_sequential_built_by_a_call_accepts_other_batch_sizes(x):
    keras.utils.set_random_seed(1)
    model = keras.Sequential(toy_convnet_layers())
    model(x)  # builds it with an input of batch size 32
    logits, layers = KerasBackend(model, [0]).run_batch(x[:5])
    np.testing.assert_allclose(numpy(keras.ops.softmax(logits)), numpy(model(x[:5])), atol=1e-5)
    assert layers[0].shape == (5, 26, 26, 32)


def test_unbuilt_models_raise_instead_of_building():
    model = keras.Sequential(toy_convnet_layers())
    with pytest.raises(ValueError, match="has not been built.*model.build"):
        KerasBackend(model)
    assert not model.built and not model.weights
    with pytest.raises(ValueError, match="has not been built"):
        KerasBackend(SubclassedNet())


def test_half_precision_outputs_come_back_as_float32():
    inputs = keras.Input((4,))
    hidden = L.Dense(8, activation="relu", dtype="mixed_float16")(inputs)
    model = keras.Model(inputs, L.Dense(3, activation="softmax", dtype="mixed_float16")(hidden))
    data = np.random.default_rng(6).random((5, 4), dtype=np.float32)
    logits, layers = KerasBackend(model, ["penultimate"]).run_batch(data)
    assert logits.dtype == layers["penultimate"].dtype == np.float32
    np.testing.assert_allclose(numpy(keras.ops.softmax(logits)), numpy(model(data)), atol=2e-3)
    grad_logits, _, grads = KerasBackend(model, ["penultimate"]).gradients(
        data, MaxLogit(), [INPUT, "penultimate"]
    )
    assert grads[INPUT].dtype == grads["penultimate"].dtype == grad_logits.dtype == np.float32
    kernel = numpy(model.layers[-1].kernel).astype(np.float32)
    np.testing.assert_allclose(grads["penultimate"], kernel[:, logits.argmax(axis=1)].T, rtol=2e-3, atol=2e-3)


@needs_tensorflow
def test_compiled_and_eager_passes_agree(models, x):
    # the tf.function path gives the numbers of an eager call through keras.ops, gradients included
    compiled = KerasBackend(models["functional"], ["conv1"], edits={"conv2": lambda t, ops: t * 0.5})
    eager = KerasBackend(models["functional"], ["conv1"], edits={"conv2": lambda t, ops: t * 0.5})
    eager._tensorflow = False
    logits, layers = eager.run_batch(x)
    np.testing.assert_array_equal(logits, compiled.run_batch(x)[0])
    np.testing.assert_array_equal(layers["conv1"], compiled.run_batch(x)[1]["conv1"])
    loss = PredictedClassCE(1000.0)
    expected = compiled.gradients(x, loss, [INPUT, "conv1"])[2]
    for key, grad in eager.gradients(x, loss, [INPUT, "conv1"])[2].items():
        np.testing.assert_allclose(grad, expected[key], rtol=1e-5, atol=1e-9)
    assert not eager._compiled


# --- subclassed models --------------------------------------------------------------------------------------


def test_subclassed_model_gives_its_output_as_logits(models, x):
    model = models["subclassed"]
    backend = KerasBackend(model)
    logits, layers = backend.run_batch(x)
    assert layers == {}
    np.testing.assert_allclose(logits, numpy(model(x, training=False)), rtol=1e-6, atol=1e-6)
    weight, bias = backend.head_weights()
    np.testing.assert_array_equal(weight, numpy(model.head.kernel).T)
    np.testing.assert_array_equal(bias, numpy(model.head.bias))
    # the input gradient goes through model(x) directly
    loss = PredictedClassCE(2.0)
    grad_logits, grad_layers, grads = backend.gradients(x, loss)
    np.testing.assert_allclose(grad_logits, logits, rtol=1e-6, atol=1e-6)
    assert grad_layers == {} and list(grads) == [INPUT]
    dense = [(model.hidden, "relu"), (model.head, "linear")]
    _, expected, _ = mlp_gradients(x, dense, loss)
    np.testing.assert_allclose(grads[INPUT], expected.reshape(x.shape), rtol=1e-4, atol=1e-7)


def test_subclassed_model_layers_raise_with_how_to_fix(models, x):
    with pytest.raises(ValueError, match="exposes only its outputs.*functional model"):
        KerasBackend(models["subclassed"], ["penultimate"])
    with pytest.raises(ValueError, match="exposes only its outputs"):
        KerasBackend(models["subclassed"], ["hidden"])
    with pytest.raises(ValueError, match="Cannot edit layers \\['hidden'\\].*exposes only its outputs"):
        KerasBackend(models["subclassed"], edits={"hidden": lambda t, ops: t})
    with pytest.raises(ValueError, match="INPUT .* or one of the backend's layer_ids \\(none\\)"):
        KerasBackend(models["subclassed"]).gradients(x[:2], MaxLogit(), ["penultimate"])


def test_subclassed_model_with_a_softmax_head_or_output(x):
    with pytest.raises(ValueError, match="'softmax'.*Return logits from call"):
        KerasBackend(built_subclassed(head_activation="softmax"))
    backend = KerasBackend(built_subclassed(softmax_in_call=True))
    with pytest.warns(UserWarning, match="look like probabilities"):
        backend.run_batch(x)


# --- the model is never changed -----------------------------------------------------------------------------


def snapshot(model, x) -> dict:
    try:
        config = model.get_config()
    except NotImplementedError:
        config = None
    output = numpy(model(x, training=False))  # first, so that a model's first call cannot change the flags
    layers = model.layers
    return {
        "weights": [np.array(w) for w in model.get_weights()],
        "config": config,
        "n_layers": len(layers),
        "activations": [getattr(layer, "activation", None) for layer in layers],
        "attributes": [sorted(vars(layer)) for layer in [*layers, model]],
        "flags": [
            {k: v for k, v in vars(layer).items() if v is None or isinstance(v, (bool, int, float, str))}
            for layer in [*layers, model]
        ],
        "nodes": [(len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in [*layers, model]],
        "output": output,
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert len(before["weights"]) == len(after["weights"])
    for old, new in zip(before["weights"], after["weights"], strict=True):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(before["output"], after["output"])
    for key in ("config", "n_layers", "activations", "attributes", "flags", "nodes"):
        assert before[key] == after[key], key


@pytest.mark.parametrize("kind", ["sequential", "functional", "activation_head", "linear_head", "subclassed"])
def test_the_model_is_left_unchanged(models, x, kind):
    model = models[kind]
    before = snapshot(model, x)
    ids = [] if kind == "subclassed" else ["penultimate", 1, -1]
    edits = {} if kind == "subclassed" else {"penultimate": lambda t, ops: ops.native.minimum(t, 0.5)}
    with KerasBackend(model, ids) as backend:
        backend.run_batch(x)
        backend.head_weights()
        backend.gradients(x, PredictedClassCE(1000.0), [INPUT, *ids])
    with KerasBackend(model, ids, edits=edits) as backend:
        backend.run_batch(x)
        backend.gradients(x[:5], MaxLogit(), [INPUT, *ids])
    with pytest.raises(RuntimeError, match="inside the pass"):
        with KerasBackend(model, ids) as backend:
            backend.run_batch(x[:3])
            raise RuntimeError("inside the pass")
    assert_same_snapshot(before, snapshot(model, x))
    if BACKEND == "torch":  # no gradient is left on, and no flag changed in, the model's parameters
        assert all(variable.value.grad is None for variable in model.weights)
        assert [variable.value.requires_grad for variable in model.weights] == [
            variable.trainable for variable in model.weights
        ]


def test_backend_is_picked_for_keras_models(models):
    assert get_backend(models["sequential"]) is KerasBackend
    assert get_backend(models["subclassed"]) is KerasBackend
    assert KerasBackend.framework == "keras" and KerasBackend.channels_last is True
    with pytest.raises(TypeError, match="keras.Model"):
        KerasBackend(object())


# --- the compiled pass is kept per model --------------------------------------------------------------------


def traces(backend: KerasBackend) -> int:
    return sum(function.experimental_get_tracing_count() for function in backend._compiled.values())


def test_passes_over_the_same_model_and_layers_reuse_one_backend(models, x):
    from oodscope import extract

    model = models["functional"]
    first = KerasBackend.for_pass(model, ["penultimate"])
    assert KerasBackend.for_pass(model, ["penultimate"]) is first
    assert KerasBackend.for_pass(model, ["penultimate"], edits={}) is first
    assert KerasBackend.for_pass(model, ["penultimate", "conv1"]) is not first
    for batch_size in (7, 32):
        extract(model, x, ["penultimate"], batch_size=batch_size, progress=False)
    assert KerasBackend.for_pass(model, ["penultimate"]) is first
    if BACKEND == "tensorflow":
        assert traces(first) == 1
    cached = extract(model, x, ["penultimate"], progress=False)
    np.testing.assert_array_equal(cached.layer("penultimate"), penultimate_reference(model, x))


def test_the_cache_key_holds_the_edits(models):
    model = models["functional"]

    def halve(t, ops):
        return t * 0.5

    edited = KerasBackend.for_pass(model, ["penultimate"], edits={"conv1": halve})
    assert KerasBackend.for_pass(model, ["penultimate"], edits={"conv1": halve}) is edited
    assert KerasBackend.for_pass(model, ["penultimate"]) is not edited
    assert KerasBackend.for_pass(model, ["penultimate"], edits={"conv2": halve}) is not edited
    assert (
        KerasBackend.for_pass(model, ["penultimate"], edits={"conv1": lambda t, ops: t * 0.5}) is not edited
    )
    both = KerasBackend.for_pass(model, [], edits={"conv1": halve, "conv2": halve})
    assert KerasBackend.for_pass(model, [], edits={"conv2": halve, "conv1": halve}) is both


@needs_tensorflow
def test_a_gradient_function_is_traced_once_per_loss_and_targets(models, x):
    backend = KerasBackend(models["functional"], ["penultimate"])
    for size in (7, 32):
        backend.gradients(x[:size], PredictedClassCE(1000.0), [INPUT])
        backend.gradients(x[:size], PredictedClassCE(1000.0), [INPUT])  # an equal loss: the same function
    assert len(backend._compiled) == 1 and traces(backend) == 1
    backend.gradients(x, PredictedClassCE(1.0), [INPUT, "penultimate"])
    backend.gradients(x, MaxLogit(), [INPUT])
    assert len(backend._compiled) == 3 and traces(backend) == 3
    for temperature in range(2, 12):  # the most recent eight are kept
        backend.gradients(x[:2], PredictedClassCE(float(temperature)), [INPUT])
    assert len(backend._compiled) == keras_backend._MAX_GRADIENT_FUNCTIONS


def test_the_cache_does_not_keep_a_model_alive(x):
    import gc
    import weakref

    from oodscope import extract

    cases = ((lambda: functional(toy_convnet_layers()), ["penultimate"]), (built_subclassed, None))
    for build, layers in cases:
        model = build()
        extract(model, x, layers, progress=False)
        extract(model, x[:5], layers, progress=False)
        assert len(keras_backend._CACHE[model]) == 1
        ref = weakref.ref(model)
        del model
        gc.collect()
        assert ref() is None


def test_a_sequential_model_that_gains_or_loses_layers_is_rebuilt(x):
    model = keras.Sequential([keras.Input((28, 28, 1)), L.Flatten(), L.Dense(6, name="d6"), L.Dense(4)])
    backend = KerasBackend.for_pass(model)
    assert backend.run_batch(x)[0].shape == (32, 4)
    model.pop()
    assert KerasBackend.for_pass(model).run_batch(x)[0].shape == (32, 6)
    model.add(L.Dense(3))
    rebuilt = KerasBackend.for_pass(model)
    assert rebuilt is not backend and rebuilt.run_batch(x)[0].shape == (32, 3)
    keras_backend.clear_cache()
    assert KerasBackend.for_pass(model) is not rebuilt


def test_a_layer_given_new_variables_is_rebuilt_not_read_stale(x):
    model = keras.Sequential([keras.Input((28, 28, 1)), L.Flatten(), L.Dense(16, name="hidden"), L.Dense(4)])
    cached = KerasBackend.for_pass(model)
    before = cached.run_batch(x)[0]
    model.get_layer("hidden").quantize("int8")  # replaces the layer's kernel variable
    rebuilt = KerasBackend.for_pass(model)
    assert rebuilt is not cached
    logits = rebuilt.run_batch(x)[0]
    np.testing.assert_allclose(logits, numpy(model(x, training=False)), atol=1e-5)
    assert not np.allclose(logits, before)


@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="exception notes need Python 3.11")
def test_an_error_inside_a_keras_model_says_which_batch():
    from oodscope import extract

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    channels_first = np.zeros((5, 1, 8, 8), np.float32)  # torch layout for a channels-last model
    with pytest.raises(ValueError) as error:
        extract(model, channels_first)
    assert "batch 1: inputs of shape (5, 1, 8, 8), float32" in " ".join(error.value.__notes__)


@needs_tensorflow
@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="exception notes need Python 3.11")
def test_an_unbatched_tf_dataset_gets_a_note_to_batch_it():
    from oodscope import extract

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    samples = tf.data.Dataset.from_tensor_slices(np.zeros((5, 8, 8, 1), np.float32))  # not batched
    with pytest.raises(ValueError) as error:
        extract(model, samples)
    notes = " ".join(error.value.__notes__)
    assert "batch 1: inputs of shape (8, 8, 1), float32" in notes and "dataset.batch(128)" in notes


@pytest.mark.parametrize("as_dict", [True, False], ids=["dict", "list"])
def test_several_outputs_need_the_head_by_name(as_dict):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    fc, aux = keras.layers.Dense(3, name="fc")(h), keras.layers.Dense(2, name="aux")(h)
    model = keras.Model(inputs, {"logits": fc, "aux": aux} if as_dict else [fc, aux])
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"2 outputs .*logits are ambiguous.*head_layer_id"):
        KerasBackend(model)
    logits, _ = KerasBackend(model, head_layer_id="fc").run_batch(x)
    assert logits.shape == (5, 3)
