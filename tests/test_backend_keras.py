"""KerasBackend: pre-softmax logits, layer capture, head weights and ODIN, on small models built here.

Every value is compared with an independent computation: a ``keras.Model`` built in the test from the
model's own tensors, the head's kernel and bias applied in numpy, a ``tf.GradientTape`` written out here.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import oodscope.backends.keras as keras_backend  # noqa: E402
from oodscope.backends import HeadNotLinearError, LayerNotFoundError, get_backend  # noqa: E402
from oodscope.backends.keras import KerasBackend  # noqa: E402

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
    return tensor.numpy() if hasattr(tensor, "numpy") else keras.ops.convert_to_numpy(tensor)


def reference(model, outputs, x) -> np.ndarray:
    """``keras.Model(model.inputs, outputs)(x)``: a sub-model built here, independently of the backend."""
    return numpy(keras.Model(model.inputs, outputs)(tf.constant(x), training=False))


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
    np.testing.assert_array_equal(backend.odin_logits(data, 2.0, 0.0), logits)
    perturbed = backend.odin_logits(data, 2.0, 0.05)
    assert perturbed.shape == logits.shape and not np.allclose(perturbed, logits)


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


# --- ODIN ---------------------------------------------------------------------------------------------------


def manual_odin(model, penultimate_layer, head, x, temperature, eps):
    """The ODIN logits written out: a gradient of the summed cross-entropy w.r.t. the input."""
    features = keras.Model(model.inputs, penultimate_layer)

    def logits_of(inputs):
        return tf.matmul(features(inputs, training=False), head.kernel) + head.bias

    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        logits = logits_of(inputs)
        loss = tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(tf.argmax(logits, axis=1), logits / temperature)
        )
    perturbed = inputs - eps * tf.sign(tape.gradient(loss, inputs))
    return logits_of(perturbed).numpy()


def test_odin_eps_zero_is_the_plain_logits_and_eps_matches_a_manual_tape(models, x):
    model = models["functional"]
    backend = KerasBackend(model)
    plain, _ = backend.run_batch(x)
    np.testing.assert_array_equal(backend.odin_logits(x, temperature=1000.0, eps=0.0), plain)
    head = model.layers[-1]
    for temperature, eps in [(1000.0, 0.002), (1.0, 0.01)]:
        perturbed = backend.odin_logits(x, temperature=temperature, eps=eps)
        expected = manual_odin(model, head.input, head, x, temperature, eps)
        np.testing.assert_allclose(perturbed, expected, rtol=1e-5, atol=1e-5)
        assert np.abs(perturbed - plain).max() > 1e-3  # the perturbation does something


def test_odin_raises_the_temperature_scaled_confidence(models, x):
    # the step descends the cross-entropy of the predicted class, so its softmax probability goes up
    backend = KerasBackend(models["linear_head"])
    plain, _ = backend.run_batch(x)
    perturbed = backend.odin_logits(x, temperature=10.0, eps=0.001)

    def confidence(logits):
        return numpy(keras.ops.softmax(logits / 10.0)).max(axis=1)

    assert (confidence(perturbed) > confidence(plain)).mean() > 0.9


# --- inputs and batches -------------------------------------------------------------------------------------


def test_numpy_tensor_and_float64_inputs_agree(models, x):
    backend = KerasBackend(models["functional"], ["conv1", "penultimate"])
    logits, layers = backend.run_batch(x)
    for other in (tf.constant(x), x.astype(np.float64), keras.ops.convert_to_tensor(x)):
        other_logits, other_layers = backend.run_batch(other)
        np.testing.assert_array_equal(other_logits, logits)
        for key in layers:
            np.testing.assert_array_equal(other_layers[key], layers[key])
    np.testing.assert_allclose(
        backend.odin_logits(tf.constant(x), 1000.0, 0.002), backend.odin_logits(x, 1000.0, 0.002), atol=1e-6
    )


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


def test_eager_path_for_other_keras_backends(models, x):
    # without TensorFlow the sub-model runs eagerly through keras.ops; ODIN then needs TensorFlow
    compiled = KerasBackend(models["functional"], ["conv1"])
    eager = KerasBackend(models["functional"], ["conv1"])
    eager._tensorflow = False
    logits, layers = eager.run_batch(x)
    np.testing.assert_array_equal(logits, compiled.run_batch(x)[0])
    np.testing.assert_array_equal(layers["conv1"], compiled.run_batch(x)[1]["conv1"])
    np.testing.assert_array_equal(eager.odin_logits(x, 1000.0, 0.0), logits)
    with pytest.raises(NotImplementedError, match="backend"):
        eager.odin_logits(x, 1000.0, 0.002)


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
    # the ODIN gradient goes through model(x) directly
    np.testing.assert_array_equal(backend.odin_logits(x, 1000.0, 0.0), logits)
    hidden_input = keras.Input((28, 28, 1))
    rebuilt = keras.Model(hidden_input, model.hidden(model.flatten(hidden_input)))
    expected = manual_odin(rebuilt, rebuilt.outputs[0], model.head, x, 1000.0, 0.002)
    np.testing.assert_allclose(backend.odin_logits(x, 1000.0, 0.002), expected, rtol=1e-5, atol=1e-5)


def test_subclassed_model_layers_raise_with_how_to_fix(models):
    with pytest.raises(ValueError, match="exposes only its outputs.*functional model"):
        KerasBackend(models["subclassed"], ["penultimate"])
    with pytest.raises(ValueError, match="exposes only its outputs"):
        KerasBackend(models["subclassed"], ["hidden"])


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
    with KerasBackend(model, ids) as backend:
        backend.run_batch(x)
        backend.head_weights()
        backend.odin_logits(x, 1000.0, 0.002)
    with pytest.raises(RuntimeError, match="inside the pass"):
        with KerasBackend(model, ids) as backend:
            backend.run_batch(x[:3])
            raise RuntimeError("inside the pass")
    assert_same_snapshot(before, snapshot(model, x))


def test_backend_is_picked_for_keras_models(models):
    assert get_backend(models["sequential"]) is KerasBackend
    assert get_backend(models["subclassed"]) is KerasBackend
    assert KerasBackend.framework == "keras" and KerasBackend.channels_last is True
    with pytest.raises(TypeError, match="keras.Model"):
        KerasBackend(object())


# --- the compiled pass is kept per model --------------------------------------------------------------------


def traces(backend: KerasBackend) -> int:
    return sum(function.experimental_get_tracing_count() for function in backend._compiled.values())


def test_passes_over_the_same_model_and_layers_reuse_one_compiled_function(models, x):
    from oodscope import extract

    model = models["functional"]
    first = KerasBackend.for_pass(model, ["penultimate"])
    assert KerasBackend.for_pass(model, ["penultimate"]) is first
    assert KerasBackend.for_pass(model, ["penultimate", "conv1"]) is not first
    for batch_size in (7, 32):
        extract(model, x, ["penultimate"], batch_size=batch_size, progress=False)
    assert KerasBackend.for_pass(model, ["penultimate"]) is first and traces(first) == 1
    cached = extract(model, x, ["penultimate"], progress=False)
    np.testing.assert_array_equal(cached.layer("penultimate"), penultimate_reference(model, x))


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

    samples = tf.data.Dataset.from_tensor_slices(np.zeros((5, 8, 8, 1), np.float32))  # not batched
    with pytest.raises(ValueError) as error:
        extract(model, samples)
    notes = " ".join(error.value.__notes__)
    assert "batch 1: inputs of shape (8, 8, 1), float32" in notes and "dataset.batch(128)" in notes
