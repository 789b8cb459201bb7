"""OODDataset on synthetic arrays: construction, split_by_class, add_out_data and prepare on both backends."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from oodscope.data import OODDataset, default_backend
from oodscope.data._images import convert_channels, resize_images

BACKENDS = ("tensorflow", "torch")


def seed_preprocess_fn(*inputs):
    """The seed notebook's preprocessing function, verbatim."""
    x = inputs[0] / 255
    return tuple([x] + list(inputs[1:]))


def tagged(n: int = 200, shape=(6, 5, 1), classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose pixel [0, 0, 0] is the sample's index, labels = index % classes."""
    images = np.random.default_rng(0).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images, np.arange(n, dtype=np.int64) % classes


def as_numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def batches(loader) -> list[list[np.ndarray]]:
    return [[as_numpy(part) for part in batch] for batch in loader]


def channels_last(x: np.ndarray, backend: str) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if backend == "torch" and x.ndim == 4 else x


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    pytest.importorskip(request.param)
    return request.param


# --- construction -------------------------------------------------------------------------------------------


def test_arrays_are_stored_without_copy_and_labels_become_int64():
    images, labels = tagged()
    data = OODDataset((images, labels.astype(np.int32)), backend="torch")
    assert np.shares_memory(data.inputs, images)
    assert data.labels.dtype == np.int64 and np.array_equal(data.labels, labels)
    assert len(data) == 200 and data.input_shape == (6, 5, 1) and data.num_classes == 10
    assert data.name is None and not data.has_ood_labels


def test_other_forms_give_the_same_arrays():
    images, labels = tagged(50)
    one_hot = np.eye(10)[labels]
    for form in ({"image": images, "label": one_hot}, {"x": images, "y": labels.astype(float)}):
        data = OODDataset(form, backend="torch")
        assert np.array_equal(data.inputs, images) and np.array_equal(data.labels, labels)
    grey = OODDataset(images[..., 0], backend="torch")  # [N, H, W] gets a channel axis, no labels
    assert grey.inputs.shape == (50, 6, 5, 1) and grey.labels is None and grey.num_classes is None
    custom = OODDataset({"pixels": images, "target": labels}, input_key="pixels", label_key="target")
    assert np.array_equal(custom.labels, labels)


def test_tf_dataset_of_examples_and_of_batches():
    tf = pytest.importorskip("tensorflow")
    images, labels = tagged(70)
    examples = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "id": labels * 2})
    from_examples = OODDataset(examples, backend="torch")
    from_batches = OODDataset(tf.data.Dataset.from_tensor_slices((images, labels)).batch(32))
    for data in (from_examples, from_batches):
        assert np.array_equal(data.inputs, images) and np.array_equal(data.labels, labels)
    unlabelled = OODDataset(tf.data.Dataset.from_tensor_slices(images))
    assert np.array_equal(unlabelled.inputs, images) and unlabelled.labels is None
    named = tf.data.Dataset.from_tensor_slices({"pixels": images, "y": labels})
    with pytest.raises(ValueError, match="Cannot tell which entry .* input among \\['pixels', 'y'\\]"):
        OODDataset(named)
    with pytest.raises(KeyError, match="label_key='target' is not in the batch"):
        OODDataset(named, input_key="pixels", label_key="target")
    keyed = OODDataset(named, input_key="pixels", label_key="y")
    assert np.array_equal(keyed.inputs, images) and np.array_equal(keyed.labels, labels)


def test_torch_dataset_is_read_channels_first():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    images, labels = tagged(70, shape=(6, 5, 3))
    chw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    dataset = TensorDataset(chw, torch.from_numpy(labels))
    for source in (dataset, DataLoader(dataset, batch_size=16), chw):
        data = OODDataset(source, backend="torch")
        assert data.inputs.shape == (70, 6, 5, 3) and np.array_equal(data.inputs, images)
    assert np.array_equal(OODDataset(dataset).labels, labels)


def test_default_backend_prefers_tensorflow_and_import_is_lazy():
    expected = "tensorflow" if _installed("tensorflow") else "torch" if _installed("torch") else None
    assert default_backend() == expected
    assert OODDataset(np.zeros((2, 3))).backend == expected
    code = (
        "import sys, numpy as np; from oodscope.data import OODDataset; "
        "d = OODDataset((np.zeros((4, 2, 2, 1), np.uint8), np.arange(4))); d.split_by_class([0, 1]); "
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="backend must be 'tensorflow', 'torch' or None"):
        OODDataset(np.zeros((2, 3)), backend="jax")
    with pytest.raises(TypeError, match="load_kwargs, data_dir and sources apply to named data sets only"):
        OODDataset(np.zeros((2, 3)), load_kwargs={"split": "train"})
    with pytest.raises(TypeError, match=r"Unknown load_kwargs \['shuffle_files'\]"):
        OODDataset("digits", load_kwargs={"shuffle_files": True})
    with pytest.raises(ValueError, match="different lengths: 3 and 2"):
        OODDataset((np.zeros((3, 2)), np.zeros(2)))
    with pytest.raises(ValueError, match="integer class indices"):
        OODDataset((np.zeros((2, 2)), np.array([0.5, 1.0])))
    with pytest.raises(TypeError, match="Cannot make an OODDataset from int"):
        OODDataset(3)


# --- split_by_class -----------------------------------------------------------------------------------------


def test_split_by_class_counts_complement_and_explicit_out():
    images, labels = tagged()
    data = OODDataset((images, labels), backend="torch")
    ds_in, ds_out = data.split_by_class([0, 1, 2, 3, 4])
    assert (len(ds_in), len(ds_out)) == (100, 100)
    assert set(ds_in.labels) == {0, 1, 2, 3, 4} and set(ds_out.labels) == {5, 6, 7, 8, 9}
    # order kept and each image stays with its label
    assert np.array_equal(ds_in.inputs[:, 0, 0, 0], np.flatnonzero(labels < 5))
    assert ds_in.num_classes == ds_out.num_classes == 10
    only_in, only_out = data.split_by_class(3, out_labels=[7, 8])
    assert np.array_equal(only_in.labels, [3] * 20) and np.array_equal(np.unique(only_out.labels), [7, 8])
    assert len(only_out) == 40
    with pytest.raises(ValueError, match=r"share \[3\]"):
        data.split_by_class([3], out_labels=[3, 4])
    with pytest.warns(UserWarning, match=r"Labels \[42\] do not occur"):
        data.split_by_class([0, 42])
    with pytest.raises(ValueError, match="no labels"):
        OODDataset(images).split_by_class([0])


def test_split_by_class_copies_each_part_once_and_nothing_more():
    images = np.zeros((20_000, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(20_000, dtype=np.int64) % 10
    data = OODDataset((images, labels), backend="torch")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        ds_in, ds_out = data.split_by_class([0, 1, 2, 3, 4])
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    parts = sum(part.inputs.nbytes + part.labels.nbytes for part in (ds_in, ds_out))
    assert parts == images.nbytes + labels.nbytes
    # the two parts themselves plus a few boolean masks (N bytes each), never a second copy of the images
    assert parts <= peak <= parts + 6 * len(labels) + 65_536
    assert not np.shares_memory(ds_in.inputs, images)


# --- add_out_data -------------------------------------------------------------------------------------------


def test_add_out_data_labels_and_values():
    images, labels = tagged(30)
    ds_in, ds_out = OODDataset((images, labels), backend="torch").split_by_class([0, 1, 2])
    mixed = ds_in.add_out_data(ds_out, in_value=1, out_value=-1)
    assert np.array_equal(mixed.get_ood_labels(), [1] * 9 + [-1] * 21)
    assert np.array_equal(mixed.inputs, np.concatenate([ds_in.inputs, ds_out.inputs]))
    assert np.array_equal(mixed.labels, np.concatenate([ds_in.labels, ds_out.labels]))
    # a second OOD set keeps the OOD labels already there; raw arrays are accepted too
    more = mixed.add_out_data(np.zeros((4, 6, 5, 1), np.uint8), in_value=1, out_value=-1)
    assert np.array_equal(more.get_ood_labels()[-5:], [-1] * 5) and more.labels is None
    # splitting keeps the OOD column aligned
    part_in, _ = mixed.split_by_class([0])
    assert np.array_equal(part_in.get_ood_labels(), [1, 1, 1])
    with pytest.raises(ValueError, match="no OOD labels; mix ID and OOD data with add_out_data"):
        ds_in.get_ood_labels()


def test_add_out_data_resizes_grey_28_and_rgb_32():
    grey = OODDataset((np.full((2, 28, 28, 1), 100, np.uint8), np.array([0, 1])), backend="torch")
    rgb_images = np.zeros((3, 32, 32, 3), np.uint8)
    rgb_images[..., 0] = 200  # pure red: luma 0.2989 * 200 = 59.78
    rgb = OODDataset((rgb_images, np.array([5, 6, 7])), backend="torch")
    with pytest.raises(ValueError, match=r"pass resize=True"):
        grey.add_out_data(rgb)
    to_grey = grey.add_out_data(rgb, resize=True)
    assert to_grey.inputs.shape == (5, 28, 28, 1) and to_grey.inputs.dtype == np.uint8
    assert np.all(to_grey.inputs[2:] == 60) and np.all(to_grey.inputs[:2] == 100)
    to_rgb = grey.add_out_data(rgb, resize=True, shape=(32, 32, 3), resize_method="nearest")
    assert to_rgb.inputs.shape == (5, 32, 32, 3)
    assert np.all(to_rgb.inputs[:2] == 100) and np.array_equal(to_rgb.inputs[2:], rgb_images)
    with pytest.raises(ValueError, match="uint8 0-255 vs float"):
        grey.add_out_data(np.zeros((1, 28, 28, 1), np.float32))


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("size", [(28, 28), (13, 40), (7, 7)])
def test_resize_matches_torch_interpolate(method, size):
    torch = pytest.importorskip("torch")
    images = np.random.default_rng(1).random((3, 32, 32, 2), dtype=np.float32)
    ours = resize_images(images, size, method)
    mode = {"bilinear": "bilinear", "nearest": "nearest-exact"}[method]
    options = {"align_corners": False} if method == "bilinear" else {}
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(images.transpose(0, 3, 1, 2)), size=size, mode=mode, **options
    )
    np.testing.assert_allclose(ours, reference.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


def test_channel_conversion_values():
    rgb = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]], dtype=np.uint8)
    assert np.array_equal(convert_channels(rgb, 1)[0, 0, :, 0], [76, 150, 29])  # BT.601 weights * 255
    grey = np.array([[[[7]]]], dtype=np.uint8)
    assert np.array_equal(convert_channels(grey, 3), [[[[7, 7, 7]]]])
    with pytest.raises(ValueError, match="2 channels to 3"):
        convert_channels(np.zeros((1, 1, 1, 2)), 3)


# --- prepare ------------------------------------------------------------------------------------------------


def test_prepare_layout_dtypes_and_seed_preprocess(backend):
    images, labels = tagged(200, shape=(6, 5, 3))
    data = OODDataset((images, labels), backend=backend)
    raw = batches(data.prepare(64))
    assert [len(batch[0]) for batch in raw] == [64, 64, 64, 8]
    x, y = raw[0]
    expected_shape = (64, 3, 6, 5) if backend == "torch" else (64, 6, 5, 3)
    assert x.shape == expected_shape and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(np.concatenate([channels_last(b[0], backend) for b in raw]), images)
    assert np.array_equal(np.concatenate([b[1] for b in raw]), labels)

    x, y = batches(data.prepare(64, seed_preprocess_fn))[1]
    assert x.dtype == np.float32 and x.shape == expected_shape
    np.testing.assert_allclose(channels_last(x, backend), images[64:128] / 255, rtol=1e-6)
    assert np.array_equal(y, labels[64:128])


def test_prepare_framework_types(backend):
    data = OODDataset(tagged(10), backend=backend)
    prepared = data.prepare(4, seed_preprocess_fn)
    if backend == "torch":
        import torch

        assert isinstance(prepared, torch.utils.data.DataLoader) and len(prepared) == 3
        x, y = next(iter(prepared))
        assert isinstance(x, torch.Tensor) and x.is_contiguous() and isinstance(y, torch.Tensor)
        assert np.shares_memory(prepared.dataset.columns[0], data.inputs)  # a view, not a copy
    else:
        import tensorflow as tf

        assert isinstance(prepared, tf.data.Dataset) and int(prepared.cardinality()) == 3
        assert prepared.element_spec[0].shape.as_list() == [None, 6, 5, 1]
        assert prepared.element_spec[0].dtype == tf.float32 and prepared.element_spec[1].dtype == tf.int64


def test_prepare_columns_with_and_without_labels(backend):
    images, labels = tagged(20)
    ds_in, ds_out = OODDataset((images, labels), backend=backend).split_by_class(range(5))
    mixed = ds_in.add_out_data(ds_out)
    x, y, ood = batches(mixed.prepare(32, seed_preprocess_fn, with_ood_labels=True))[0]
    assert np.array_equal(ood, mixed.get_ood_labels()) and np.array_equal(y, mixed.labels)
    assert ood.dtype == np.int64 and x.dtype == np.float32
    only_x = batches(mixed.prepare(32, seed_preprocess_fn, with_labels=False))[0]
    assert len(only_x) == 1 and only_x[0].shape[0] == 20
    x, ood = batches(mixed.prepare(32, with_labels=False, with_ood_labels=True))[0]
    assert np.array_equal(ood, [0] * 10 + [1] * 10)
    unlabelled = OODDataset(images, backend=backend)
    assert len(batches(unlabelled.prepare(8))[0]) == 1
    with pytest.raises(ValueError, match="no labels"):
        unlabelled.prepare(8, with_labels=True)
    with pytest.raises(ValueError, match="no OOD labels"):
        ds_in.prepare(8, with_ood_labels=True)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ds_in.prepare(0)


def test_shuffle_is_a_permutation_deterministic_given_seed_and_new_each_epoch(backend):
    images, labels = tagged(200)
    data = OODDataset((images, labels), backend=backend)
    loader = data.prepare(32, shuffle=True, seed=7)
    first, second = batches(loader), batches(loader)
    order = np.concatenate([channels_last(b[0], backend)[:, 0, 0, 0] for b in first]).astype(int)
    assert sorted(order) == list(range(200)) and not np.array_equal(order, np.arange(200))
    # every image still travels with its own label
    assert np.array_equal(np.concatenate([b[1] for b in first]), order % 10)
    order2 = np.concatenate([channels_last(b[0], backend)[:, 0, 0, 0] for b in second]).astype(int)
    assert not np.array_equal(order, order2)  # reshuffled for the next epoch
    again = batches(data.prepare(32, shuffle=True, seed=7))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    other_seed = batches(data.prepare(32, shuffle=True, seed=8))
    assert not np.array_equal(first[0][0], other_seed[0][0])
    dropped = batches(data.prepare(32, shuffle=True, seed=7, drop_remainder=True))
    assert [len(b[0]) for b in dropped] == [32] * 6


def test_tf_shuffle_buffer_size():
    pytest.importorskip("tensorflow")
    data = OODDataset(tagged(100), backend="tensorflow")
    in_order = batches(data.prepare(100, shuffle=True, shuffle_buffer_size=1, seed=0))[0][1]
    assert np.array_equal(in_order, np.arange(100) % 10)  # a buffer of one cannot reorder
    local = batches(data.prepare(100, shuffle=True, shuffle_buffer_size=10, seed=0))[0][0][:, 0, 0, 0]
    assert not np.array_equal(local, np.arange(100)) and local[0] < 10  # the first pick is among the first 10


def test_augment_applies_to_training_batches_only(backend):
    data = OODDataset(tagged(40), backend=backend)

    def flip_sign(*inputs):
        return tuple([-inputs[0]] + list(inputs[1:]))

    train = batches(data.prepare(40, seed_preprocess_fn, augment_fn=flip_sign, shuffle=True, seed=0))[0][0]
    test = batches(data.prepare(40, seed_preprocess_fn, augment_fn=flip_sign))[0][0]
    assert test.min() >= 0 and test.max() > 0.9  # preprocessed, not flipped
    np.testing.assert_allclose(np.sort(-train.ravel()), np.sort(test.ravel()))  # same values, flipped
    forced = batches(data.prepare(40, seed_preprocess_fn, augment_fn=flip_sign, training=True))[0][0]
    assert forced.max() <= 0


def test_prepared_batches_feed_extract():
    torch = pytest.importorskip("torch")
    from oodscope import extract

    images, labels = tagged(50, shape=(4, 4, 1))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    loader = OODDataset((images, labels), backend="torch").prepare(16, seed_preprocess_fn)
    features = extract(model, loader)
    with torch.no_grad():
        expected = model(torch.from_numpy(images.transpose(0, 3, 1, 2) / 255).float()).numpy()
    np.testing.assert_allclose(features.logits, expected, rtol=1e-5, atol=1e-6)
    assert np.array_equal(features.labels, labels)


def test_prepared_tf_batches_feed_keras():
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    images, labels = tagged(50, shape=(4, 4, 1))
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    data = OODDataset((images, labels), backend="tensorflow")
    predicted = model.predict(data.prepare(16, seed_preprocess_fn, with_labels=False), verbose=0)
    expected = model.predict(images / 255, verbose=0)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)
