"""oodscope.training: the built-in models, both trainers, the schedules, save / load round trips.

Data are tiny synthetic images whose class is written as a bright patch at a class-specific place, so a
few optimizer steps are enough to lower the loss. Every round trip compares outputs, not just shapes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from oodscope.training import LR_SCHEDULERS, learning_rate_at

N_CLASSES = 3


def patch_images(n: int, shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` channels-last float32 images and labels; class c lights a 4x4 patch in row band c."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % N_CLASSES
    rng.shuffle(labels)
    images = rng.normal(0.0, 0.2, (n, *shape)).astype(np.float32)
    height = shape[0]
    for i, label in enumerate(labels):
        top = int(label) * (height // N_CLASSES)
        images[i, top : top + 4, 2:6, :] += 2.0
    return images, labels.astype(np.int64)


def channels_first(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)))


# --- framework-free -----------------------------------------------------------------------------------------


def test_importing_training_and_plots_loads_no_framework():
    code = (
        "import sys, oodscope.training, oodscope.plots; "
        "loaded = [m for m in ('torch', 'tensorflow', 'keras', 'matplotlib') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("total", [1, 2, 7, 8, 100])
def test_steps_schedule_multiplies_by_a_tenth_at_half_and_three_quarters(total):
    rates = [learning_rate_at(step, total, 1.0, "steps") for step in range(total)]
    first, second = math.ceil(total / 2), math.ceil(3 * total / 4)
    expected = [1.0 if s < first else 0.1 if s < second else 0.01 for s in range(total)]
    np.testing.assert_allclose(rates, expected, rtol=1e-12)
    if total == 100:
        assert rates[49] == 1.0 and rates[50] == pytest.approx(0.1) and rates[75] == pytest.approx(0.01)


def test_cosine_schedule_decays_from_the_base_rate_to_about_zero():
    total = 200
    rates = np.array([learning_rate_at(step, total, 0.1, "cosine") for step in range(total + 1)])
    assert rates[0] == 0.1
    assert rates[total // 2] == pytest.approx(0.05)
    assert rates[total - 1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (total - 1) / total)))
    assert rates[total - 1] < 1e-5 and rates[total] == pytest.approx(0.0, abs=1e-15)
    assert np.all(np.diff(rates) < 0)
    assert [learning_rate_at(s, total, 0.1, None) for s in (0, 150)] == [0.1, 0.1]


def test_bad_arguments_fail_with_clear_messages():
    from oodscope.training._common import check_training_args

    with pytest.raises(ValueError, match="lr_scheduler must be None, 'cosine' or 'steps'"):
        check_training_args(1, 8, 1e-3, "linear", "adam")
    with pytest.raises(ValueError, match="Unknown optimizer 'adagrad'"):
        check_training_args(1, 8, 1e-3, None, "adagrad")
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        check_training_args(0, 8, 1e-3, None, "adam")
    with pytest.raises(ValueError, match="framework must be 'keras' or 'torch'"):
        from oodscope.training import toy_convnet

        toy_convnet((28, 28, 1), framework="jax")
    assert LR_SCHEDULERS == (None, "cosine", "steps")


# --- torch --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def recording_sgd(torch, seen: list[float]):
    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    return lambda params: RecordingSGD(params, lr=0.5)


def test_torch_toy_convnet_trains_saves_and_reloads(torch, tmp_path):
    from oodscope import extract
    from oodscope.training import evaluate_torch_model, load_torch_model, toy_convnet, train_torch_model

    images, labels = patch_images(192, (28, 28, 1))
    x = torch.as_tensor(channels_first(images))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.as_tensor(labels)), batch_size=32, shuffle=True
    )
    torch.manual_seed(0)
    model = toy_convnet((1, 28, 28), N_CLASSES, framework="torch")
    loss_before = evaluate_torch_model(model, loader)["loss"]
    trained = train_torch_model(
        loader, model=model, epochs=2, validation_data=(x.numpy(), labels), save_dir=tmp_path, seed=0
    )
    assert trained is model and not model.training
    after = evaluate_torch_model(model, (x, labels))
    assert after["loss"] < 0.7 * loss_before
    assert after["accuracy"] > 0.6
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (192, N_CLASSES)
    assert after["accuracy"] == np.mean(logits.argmax(dim=1).numpy() == labels)
    manual_loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels)).item()
    assert after["loss"] == pytest.approx(manual_loss, rel=1e-5)

    path = tmp_path / "toy_convnet.pt"
    metadata = json.loads((tmp_path / "toy_convnet.pt.json").read_text())
    assert metadata["architecture"] == "toy_convnet"
    assert metadata["input_shape"] == [1, 28, 28] and metadata["num_classes"] == N_CLASSES
    reloaded = load_torch_model(path)
    assert not reloaded.training
    with torch.no_grad():
        assert torch.equal(reloaded(x), logits)
    # the .pt is a plain state dict
    plain = toy_convnet((1, 28, 28), N_CLASSES, framework="torch").eval()
    plain.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        assert torch.equal(plain(x), logits)

    feats = extract(model, x, feature_layers_id=["penultimate", "conv2"])
    np.testing.assert_allclose(feats.logits, logits.numpy(), rtol=1e-5, atol=1e-6)
    assert feats.layer("penultimate").shape == (192, 64 * 5 * 5)
    assert feats.layer("conv2").shape == (192, 64)  # pooled feature map
    np.testing.assert_allclose(
        feats.layer("penultimate") @ feats.head_weight.T + feats.head_bias, feats.logits, rtol=1e-4, atol=1e-4
    )


def test_torch_resnet20_one_epoch_on_32x32x3(torch, tmp_path):
    from oodscope import extract
    from oodscope.training import load_torch_model, train_torch_model

    images, labels = patch_images(48, (32, 32, 3), seed=1)
    x = channels_first(images)
    model = train_torch_model(
        (x, labels), "resnet20", epochs=1, batch_size=16, seed=0, save_dir=tmp_path / "r.pt"
    )
    assert model.input_shape == (3, 32, 32) and model.num_classes == N_CLASSES  # read from the data
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 269_722 - 650 + 64 * N_CLASSES + N_CLASSES + 2_752  # option A with 10 classes: 269,722
    with torch.no_grad():
        logits = model(torch.as_tensor(x))
    assert logits.shape == (48, N_CLASSES) and torch.isfinite(logits).all()
    reloaded = load_torch_model(tmp_path / "r.pt")
    with torch.no_grad():
        assert torch.equal(reloaded(torch.as_tensor(x)), logits)
    feats = extract(model, x, feature_layers_id=["penultimate", "stage3"])
    assert feats.layer("penultimate").shape == (48, 64) and feats.layer("stage3").shape == (48, 64)
    np.testing.assert_allclose(feats.logits, logits.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", ["cosine", "steps"])
def test_torch_schedule_steps_once_per_batch(torch, schedule):
    from oodscope.training import train_torch_model

    images, labels = patch_images(40, (8, 8, 1))
    seen: list[float] = []
    train_torch_model(
        (channels_first(images), labels),
        "toy_mlp",
        epochs=2,
        batch_size=8,
        optimizer=recording_sgd(torch, seen),
        lr_scheduler=schedule,
        verbose=False,
    )
    total = 2 * 5
    np.testing.assert_allclose(
        seen, [learning_rate_at(s, total, 0.5, schedule) for s in range(total)], rtol=1e-12
    )


def test_torch_seed_is_reproducible_and_leaves_the_global_rng_alone(torch):
    from oodscope.training import train_torch_model

    images, labels = patch_images(40, (8, 8, 1))
    data = (channels_first(images), labels)
    state = torch.get_rng_state()
    runs = [
        train_torch_model(data, "toy_mlp", epochs=2, batch_size=8, seed=3, verbose=False).state_dict()
        for _ in range(2)
    ]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(runs[0][key], runs[1][key]) for key in runs[0])
    other = train_torch_model(data, "toy_mlp", epochs=2, batch_size=8, seed=4, verbose=False).state_dict()
    assert not torch.equal(runs[0]["head.weight"], other["head.weight"])


def test_torch_builders_reject_channels_last_shapes(torch):
    from oodscope.training import resnet20, toy_convnet

    with pytest.raises(ValueError, match=r"Did you mean \(1, 28, 28\)"):
        toy_convnet((28, 28, 1), framework="torch")
    with pytest.raises(ValueError, match="Unknown model 'resnet18'"):
        from oodscope.training import train_torch_model

        train_torch_model((np.zeros((2, 3, 8, 8)), np.zeros(2)), "resnet18")
    assert resnet20((3, 32, 32), framework="torch")(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# --- keras --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow")
    return pytest.importorskip("keras")


def test_keras_toy_convnet_reference_flow(keras, tmp_path):
    import tensorflow as tf

    from oodscope import extract
    from oodscope.training import load_tf_model, train_tf_model

    images, labels = patch_images(192, (28, 28, 1))
    ds_train = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(192, seed=0).batch(32)
    ds_in = tf.data.Dataset.from_tensor_slices((images, labels)).batch(64)
    path = tmp_path / "toy_convnet.h5"
    model = train_tf_model(
        ds_train,
        model="toy_convnet",
        input_shape=(28, 28, 1),
        num_classes=10,
        batch_size=128,
        epochs=3,
        save_dir=str(path),
        validation_data=ds_in,
        seed=0,
        verbose=0,
    )
    history = model.history.history
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert len(history["val_accuracy"]) == 3
    loss, accuracy = model.evaluate(ds_in, verbose=0)
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (192, 10)
    assert accuracy == pytest.approx(np.mean(probabilities.argmax(axis=1) == labels))
    assert loss == pytest.approx(-np.mean(np.log(probabilities[np.arange(192), labels])), rel=1e-4)

    assert path.is_file()  # kept as legacy HDF5, as asked
    reloaded = load_tf_model(path)
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), probabilities)
    assert reloaded.evaluate(ds_in, verbose=0) == pytest.approx([loss, accuracy], rel=1e-6)
    # the legacy writer must not have dropped the optimizer from the live model's compile config
    assert "optimizer" in model.get_compile_config()

    feats = extract(model, ds_in, feature_layers_id=["penultimate"])
    softmax = np.exp(feats.logits - feats.logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax, probabilities, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(feats.labels, labels)
    assert feats.layer("penultimate").shape == (192, 5 * 5 * 64)


def test_keras_resnet20_one_epoch_on_32x32x3(keras, tmp_path):
    from oodscope import extract
    from oodscope.training import load_tf_model, train_tf_model

    images, labels = patch_images(48, (32, 32, 3), seed=1)
    model = train_tf_model(
        (images, labels), "resnet20", epochs=1, batch_size=16, save_dir=tmp_path, verbose=0
    )
    assert model.output_shape == (None, N_CLASSES)  # classes read from the labels
    assert model.count_params() - sum(w.numpy().size for w in model.non_trainable_weights) == (
        269_722 - 650 + 64 * N_CLASSES + N_CLASSES + 2_752
    )
    loss, accuracy = model.evaluate(images, labels, verbose=0)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0
    probabilities = model.predict(images, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    reloaded = load_tf_model(tmp_path / "resnet20.keras")
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), probabilities)
    feats = extract(model, images, feature_layers_id=["penultimate", "stage3_block3"])
    assert feats.layer("penultimate").shape == (48, 64) and feats.layer("stage3_block3").shape == (48, 64)
    assert feats.head_weight.shape == (N_CLASSES, 64)


@pytest.mark.parametrize("schedule", ["cosine", "steps"])
def test_keras_schedule_steps_once_per_batch(keras, schedule):
    from oodscope.training import train_tf_model

    seen: list[float] = []

    class RecordRate(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    images, labels = patch_images(40, (8, 8, 1))
    model = train_tf_model(
        (images, labels),
        "toy_mlp",
        epochs=2,
        batch_size=8,
        optimizer="sgd",
        learning_rate=0.5,
        lr_scheduler=schedule,
        callbacks=[RecordRate()],
        verbose=0,
    )
    total = 2 * 5
    assert int(model.optimizer.iterations) == total
    np.testing.assert_allclose(
        seen, [learning_rate_at(s, total, 0.5, schedule) for s in range(total)], rtol=1e-6
    )


def test_keras_seed_is_reproducible_and_logits_models_use_from_logits(keras):
    from oodscope.training import train_tf_model

    images, labels = patch_images(40, (8, 8, 1))
    runs = [
        train_tf_model((images, labels), "toy_mlp", epochs=1, batch_size=8, seed=5, verbose=0).get_weights()
        for _ in range(2)
    ]
    for first, second in zip(*runs, strict=True):
        np.testing.assert_array_equal(first, second)

    inputs = keras.Input((8, 8, 1))
    logits_model = keras.Model(inputs, keras.layers.Dense(N_CLASSES)(keras.layers.Flatten()(inputs)))
    trained = train_tf_model((images, labels), logits_model, epochs=1, batch_size=8, verbose=0)
    assert trained is logits_model
    assert trained.loss.get_config()["from_logits"] is True
    # a tf.data.Dataset of single samples is batched with batch_size
    import tensorflow as tf

    samples = tf.data.Dataset.from_tensor_slices((images, labels))
    model = train_tf_model(
        samples, "toy_mlp", input_shape=(8, 8, 1), num_classes=N_CLASSES, epochs=1, batch_size=8, verbose=0
    )
    assert int(model.optimizer.iterations) == 5
    with pytest.raises(ValueError, match="lr_scheduler applies only to an optimizer given by name"):
        train_tf_model(
            (images, labels), logits_model, optimizer=keras.optimizers.SGD(), lr_scheduler="cosine"
        )
