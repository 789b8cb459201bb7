"""``OODDataset``: load, split by class, mix ID with OOD data, and batch for TensorFlow or torch."""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._batches import (
    _split_dict,
    as_labels,
    check_batch_size,
    is_array_like,
    iter_batches,
    pick_keys,
)
from ..backends.data import TF_DATASET, data_kind, tensor_kind, to_numpy
from ._images import RESIZE_METHODS, convert_channels, resize_images
from ._pipelines import tf_pipeline, torch_pipeline
from .sources import load_named

__all__ = ["OODDataset"]

logger = logging.getLogger("oodscope.data")

BACKENDS = {"tensorflow": "tensorflow", "tf": "tensorflow", "torch": "torch", "pytorch": "torch"}
_LOAD_KWARGS = ("split", "data_dir")


def default_backend() -> str | None:
    """``"tensorflow"`` when TensorFlow is installed, else ``"torch"`` when torch is, else None.

    Only looks the packages up; imports neither.
    """
    for module in ("tensorflow", "torch"):
        if importlib.util.find_spec(module) is not None:
            return module
    return None


def _resolve_backend(backend: str | None) -> str | None:
    if backend is None:
        return default_backend()
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"backend must be 'tensorflow', 'torch' or None; got {backend!r}.")
    return BACKENDS[backend.lower()]


def _labels_int64(values: Any, name: str = "Labels") -> np.ndarray:
    return as_labels(values, name).astype(np.int64, copy=False)


def _label_values(values: Any, name: str) -> np.ndarray:
    """The distinct class labels of ``values`` (an int, or a list, tuple, set, range or array of ints),
    refusing non-integers and an empty selection."""
    if isinstance(values, (Mapping, str, bytes)) or values is None:
        raise TypeError(
            f"{name} must be a class label or a collection of them, e.g. [0, 1, 2]; got {values!r}."
        )
    if isinstance(values, (set, frozenset)):
        values = sorted(values, key=repr)  # a set has no order to keep; np.asarray would make it one object
    elif not is_array_like(values) and isinstance(values, Iterable):
        values = list(values)
    labels = np.unique(_labels_int64(np.atleast_1d(np.asarray(values)), name))
    if labels.size == 0:
        raise ValueError(f"{name} is empty; name at least one class.")
    return labels


def _class_labels(values: Any) -> np.ndarray:
    """Labels of in-memory data: int64 class indices, which cannot be negative (``num_classes`` is the
    largest + 1)."""
    labels = _labels_int64(values)
    if labels.size and labels.min() < 0:
        raise ValueError(
            f"Labels must be class indices 0, 1, ...; got {labels.min()} among them. Map other values to "
            "indices first, e.g. np.unique(labels, return_inverse=True)[1]."
        )
    return labels


def _inputs_numpy(values: Any) -> np.ndarray:
    """numpy inputs, channels-last: 4-D tensors of a channels-first framework (torch) are taken as
    [N, C, H, W] and transposed, unless they are plainly channels-last already (last axis of 1, 3 or 4 and
    second axis not)."""
    kind = tensor_kind(values)
    array = to_numpy(values)
    if kind is not None and kind.channels_first and array.ndim == 4:
        channels_last = array.shape[3] in (1, 3, 4) and array.shape[1] not in (1, 3, 4)
        if not channels_last:
            array = np.ascontiguousarray(array.transpose(0, 2, 3, 1))
    return array


def _as_images(inputs: np.ndarray) -> np.ndarray:
    return inputs[..., None] if inputs.ndim == 3 else inputs


def _read_tf_dataset(data: Any, input_key: str | None, label_key: str | None) -> tuple[Any, Any]:
    import tensorflow as tf

    spec = data.element_spec
    if isinstance(spec, Mapping):
        input_key, label_key = pick_keys(spec, input_key, label_key)
        input_spec, label_spec = spec[input_key], None if label_key is None else spec[label_key]
        if label_key is None:
            data = data.map(lambda example: (example[input_key],), tf.data.AUTOTUNE)
        else:
            data = data.map(lambda example: (example[input_key], example[label_key]), tf.data.AUTOTUNE)
    elif isinstance(spec, tuple):
        input_spec, label_spec = spec[0], spec[1] if len(spec) > 1 else None
    else:
        input_spec, label_spec = spec, None
    # a batched dataset has an unknown leading dimension; unbatched labels are scalars
    if label_spec is not None:
        batched = (
            label_spec.shape.rank is not None and label_spec.shape.rank >= 1 and label_spec.shape[0] is None
        )
    else:
        batched = (
            input_spec.shape.rank is not None and input_spec.shape.rank >= 1 and input_spec.shape[0] is None
        )
    if not batched:
        data = data.batch(4096)
    return _collect(iter_batches(data.prefetch(tf.data.AUTOTUNE)))


def _collect(batches: Iterable[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray | None]:
    inputs, labels = [], []
    for x, y in batches:
        inputs.append(_inputs_numpy(x))
        labels.append(y)
    if not inputs:
        raise ValueError("The dataset is empty.")
    if any(y is None for y in labels):
        return np.concatenate(inputs), None
    return np.concatenate(inputs), np.concatenate(labels)


def _read_object(data: Any, input_key: str | None, label_key: str | None) -> tuple[Any, Any]:
    """``(inputs, labels or None)`` of an in-memory data object, as numpy."""
    if is_array_like(data):
        return _inputs_numpy(data), None
    if isinstance(data, tuple) and data and all(is_array_like(part) for part in data):
        if len(data) > 2:
            raise TypeError(
                f"A tuple of arrays is (inputs,) or (inputs, labels); got {len(data)} arrays. Give OOD "
                "labels with add_out_data(), and other columns as a dict of arrays."
            )
        if len(data) == 2 and len(data[0]) != len(data[1]):
            raise ValueError(f"(inputs, labels) have different lengths: {len(data[0])} and {len(data[1])}.")
        return _inputs_numpy(data[0]), data[1] if len(data) == 2 else None
    if isinstance(data, Mapping):
        inputs, labels = _split_dict(data, input_key, label_key)
        return _inputs_numpy(inputs), labels
    if data_kind(data) is TF_DATASET:
        return _read_tf_dataset(data, input_key, label_key)
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__") and not hasattr(data, "__getitem__"):
        raise TypeError(
            f"Cannot make an OODDataset from {type(data).__name__}. Pass a dataset name (e.g. 'mnist'), an "
            "array of inputs, an (inputs, labels) tuple, a dict of arrays, a tf.data.Dataset or a torch "
            "Dataset / DataLoader."
        )
    return _collect(iter_batches(data, 1024, input_key, label_key))


class OODDataset:
    """A labelled image data set held as numpy arrays, ready to split into ID / OOD and to batch.

    Parameters
    ----------
    dataset_id
        What to load:

        - a known name (see :func:`oodscope.data.known_datasets`): ``"mnist"``, ``"fashion_mnist"``,
          ``"cifar10"``, ``"cifar100"``, ``"svhn_cropped"`` (the tensorflow-datasets names),
          ``"animal_mnist"``, ``"digits"`` (scikit-learn's 8x8 digits). Where the data comes from is
          described in :mod:`oodscope.data.sources`; nothing is downloaded;
        - an array or tensor of inputs (no labels), an ``(inputs, labels)`` tuple, or a dict of arrays (the
          inputs under ``input_key``, by default the first of "image", "images", "input", "inputs", "x"; the
          labels under ``label_key``, by default "label", "labels" or "y");
        - a ``tf.data.Dataset`` (of single examples, as tfds gives them, or of batches) yielding dicts or
          ``(inputs, labels)`` tuples;
        - a torch ``Dataset`` of ``(input, label)`` items, a ``DataLoader``, or any iterable of batches;
        - another ``OODDataset``: shares its arrays (no copy), e.g. to use another ``backend``.

    backend : {"tensorflow", "torch"}, optional
        The framework :meth:`prepare` builds pipelines for. Default: TensorFlow when it is installed,
        else torch. Frameworks are imported only by :meth:`prepare` (and to read their own datasets).
    load_kwargs : dict, optional
        For named data sets: ``split`` (``"train"`` or ``"test"``, the default; see
        :func:`oodscope.data.sources.load_named`) and ``data_dir``.
    input_key, label_key : str, optional
        The feature names to read from dict-like data (for CIFAR-10 through tfds, ``input_key="image"``).
    data_dir : path, optional
        A folder searched first for named data (also ``$OODSCOPE_DATA_DIR``).
    sources : sequence of str, optional
        For named data sets, the sources to try in order (default ``("local", "packages", "tfds",
        "huggingface")``).

    Notes
    -----
    Data is stored as numpy arrays, without copies where possible: inputs keep their dtype (named data sets
    are uint8 [N, H, W, C], like tfds), labels become int64 class indices (one-hot rows are turned into
    indices), 3-D inputs [N, H, W] get a channel axis [N, H, W, 1], and 4-D torch tensors are taken as
    channels-first [N, C, H, W] and stored channels-last (unless plainly channels-last already: last axis of
    1, 3 or 4 and second axis not). Where named data came from is in ``source`` (also logged at INFO level on
    the ``oodscope.data`` logger).

    Examples
    --------
    >>> images = np.arange(6 * 4, dtype=np.uint8).reshape(6, 2, 2, 1)
    >>> data = OODDataset((images, np.array([0, 1, 2, 0, 1, 2])), backend="torch")
    >>> ds_in, ds_out = data.split_by_class([0, 1])
    >>> len(ds_in), len(ds_out), ds_out.labels
    (4, 2, array([2, 2]))
    >>> mixed = ds_in.add_out_data(ds_out)
    >>> mixed.get_ood_labels()
    array([0, 0, 0, 0, 1, 1])
    """

    def __init__(
        self,
        dataset_id: Any,
        backend: str | None = None,
        load_kwargs: Mapping[str, Any] | None = None,
        input_key: str | None = None,
        label_key: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        sources: Sequence[str] | None = None,
    ) -> None:
        self.backend = _resolve_backend(backend)
        load_kwargs = dict(load_kwargs or {})
        self._ood_labels: np.ndarray | None = None
        if isinstance(dataset_id, OODDataset):
            self.name, self.split, self.source = dataset_id.name, dataset_id.split, dataset_id.source
            self._inputs, self._labels = dataset_id._inputs, dataset_id._labels
            self._ood_labels, self._num_classes = dataset_id._ood_labels, dataset_id._num_classes
            return
        if isinstance(dataset_id, str):
            unknown = sorted(set(load_kwargs) - set(_LOAD_KWARGS))
            if unknown:
                raise TypeError(f"Unknown load_kwargs {unknown}; accepted: {list(_LOAD_KWARGS)}.")
            if data_dir is not None and load_kwargs.get("data_dir") not in (None, data_dir):
                raise ValueError(
                    "data_dir is given twice, as an argument and in load_kwargs, with two values."
                )
            loaded = load_named(
                dataset_id,
                load_kwargs.get("split", "test"),
                data_dir=data_dir if data_dir is not None else load_kwargs.get("data_dir"),
                sources=sources,
                input_key=input_key,
                label_key=label_key,
            )
            self.name, self.split, self.source = loaded.name, loaded.split, loaded.source
            self._inputs, self._labels, self._num_classes = loaded.inputs, loaded.labels, loaded.num_classes
            return
        if load_kwargs or data_dir is not None or sources is not None:
            raise TypeError(
                "load_kwargs, data_dir and sources apply to named data sets only; got data of type "
                + type(dataset_id).__name__
            )
        inputs, labels = _read_object(dataset_id, input_key, label_key)
        self.name, self.split, self.source = None, None, type(dataset_id).__name__
        self._inputs = _as_images(np.asarray(inputs))
        self._labels = None if labels is None else _class_labels(labels)
        if self._labels is not None and len(self._labels) != len(self._inputs):
            raise ValueError(f"{len(self._inputs)} inputs but {len(self._labels)} labels.")
        self._num_classes = (
            None if self._labels is None or not len(self._labels) else int(self._labels.max()) + 1
        )
        logger.info(
            "Using in-memory data (%s): %d samples of shape %s.", self.source, len(self), self.input_shape
        )

    # --- construction without loading -----------------------------------------------------------------------

    def _derive(
        self, inputs: np.ndarray, labels: np.ndarray | None, ood_labels: np.ndarray | None
    ) -> OODDataset:
        new = object.__new__(type(self))
        new.backend, new.name, new.split, new.source = self.backend, self.name, self.split, self.source
        new._num_classes = self._num_classes
        new._inputs, new._labels, new._ood_labels = inputs, labels, ood_labels
        return new

    # --- what it holds --------------------------------------------------------------------------------------

    @property
    def inputs(self) -> np.ndarray:
        """The inputs [N, ...] (images channels-last [N, H, W, C]), as stored (not a copy)."""
        return self._inputs

    @property
    def labels(self) -> np.ndarray | None:
        """Class labels, int64 [N], or None for unlabelled data."""
        return self._labels

    @property
    def num_classes(self) -> int | None:
        """Size of the label space: the data set's class count for named sets (kept by splits, so MNIST digits
        0-4 still say 10), else the largest label + 1; None without labels."""
        return self._num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (28, 28, 1)."""
        return tuple(self._inputs.shape[1:])

    @property
    def has_ood_labels(self) -> bool:
        """Whether the data has an OOD-label column (see :meth:`add_out_data`)."""
        return self._ood_labels is not None

    def get_ood_labels(self) -> np.ndarray:
        """The OOD-label column [N] made by :meth:`add_out_data`: ``in_value`` (ID), ``out_value`` (OOD)."""
        if self._ood_labels is None:
            raise ValueError("This dataset has no OOD labels; mix ID and OOD data with add_out_data() first.")
        return self._ood_labels

    def __len__(self) -> int:
        return len(self._inputs)

    def __repr__(self) -> str:
        what = self.source if self.name is None else f"{self.name}/{self.split}"
        labels = "unlabelled" if self._labels is None else f"{self._num_classes} classes"
        ood = ", with OOD labels" if self._ood_labels is not None else ""
        return (
            f"OODDataset({what!r}, {len(self)} samples of shape {self.input_shape} {self._inputs.dtype}, "
            f"{labels}{ood}, backend={self.backend!r})"
        )

    # --- splitting and mixing -------------------------------------------------------------------------------

    def _require_labels(self, action: str) -> np.ndarray:
        if self._labels is None:
            raise ValueError(f"Cannot {action}: this dataset has no labels.")
        return self._labels

    def _subset(self, mask: np.ndarray) -> OODDataset:
        ood = None if self._ood_labels is None else self._ood_labels[mask]
        labels = None if self._labels is None else self._labels[mask]
        return self._derive(self._inputs[mask], labels, ood)

    def split_by_class(
        self, in_labels: int | Iterable[int], out_labels: int | Iterable[int] | None = None
    ) -> tuple[OODDataset, OODDataset]:
        """Split into the samples whose label is in ``in_labels`` and the others (or those in ``out_labels``).

        One boolean mask over the labels; each part is one copy of its own samples.

        Parameters
        ----------
        in_labels : int or iterable of int
            Labels of the in-distribution part.
        out_labels : int or iterable of int, optional
            Labels of the out-of-distribution part; default all other labels.

        Returns
        -------
        (OODDataset, OODDataset)
            ``(in_dataset, out_dataset)``; both keep the original labels and ``num_classes``.
        """
        labels = self._require_labels("split by class")
        wanted_in = _label_values(in_labels, "in_labels")
        is_in = np.isin(labels, wanted_in)
        if out_labels is None:
            wanted = wanted_in
            is_out = ~is_in
        else:
            wanted_out = _label_values(out_labels, "out_labels")
            overlap = np.intersect1d(wanted_in, wanted_out)
            if overlap.size:
                raise ValueError(
                    f"in_labels and out_labels share {overlap.tolist()}: a class cannot be both ID and OOD. "
                    "Remove it from one of them."
                )
            wanted = np.concatenate([wanted_in, wanted_out])
            is_out = np.isin(labels, wanted_out)
        missing = np.setdiff1d(wanted, labels)
        if missing.size:
            warnings.warn(
                f"Labels {missing.tolist()} do not occur in this dataset.", UserWarning, stacklevel=2
            )
        return self._subset(is_in), self._subset(is_out)

    def add_out_data(
        self,
        out_dataset: Any,
        in_value: int = 0,
        out_value: int = 1,
        resize: bool = False,
        shape: Sequence[int] | None = None,
        resize_method: str = "bilinear",
    ) -> OODDataset:
        """This data (ID) followed by ``out_dataset`` (OOD), with an OOD-label column.

        Parameters
        ----------
        out_dataset : OODDataset or anything OODDataset accepts
            The OOD samples.
        in_value, out_value : int
            OOD labels of the ID and of the OOD samples. When this dataset already has OOD labels (from an
            earlier call), they are kept.
        resize : bool, default False
            Bring both parts to one image shape: ``shape`` if given, else this dataset's shape. Channels
            are converted (grey -> RGB repeats the grey level, RGB -> grey is the BT.601 luma) and the
            spatial size resized with ``resize_method`` (``"bilinear"`` or ``"nearest"``, half-pixel
            centres as ``tf.image.resize``), in numpy; uint8 stays uint8. Without ``resize``, different
            shapes are an error.
        shape : (height, width) or (height, width, channels), optional
            Target shape when ``resize`` is True.
        resize_method : {"bilinear", "nearest"}

        Returns
        -------
        OODDataset
            A new dataset; class labels are kept when both parts have them (else dropped), ``num_classes``
            is this dataset's.

        Examples
        --------
        >>> grey = OODDataset((np.zeros((2, 28, 28), np.uint8), np.array([0, 1])), backend="torch")
        >>> rgb = OODDataset((np.zeros((3, 32, 32, 3), np.uint8), np.array([5, 6, 7])), backend="torch")
        >>> mixed = grey.add_out_data(rgb, resize=True)
        >>> mixed.inputs.shape, mixed.get_ood_labels(), mixed.labels
        ((5, 28, 28, 1), array([0, 0, 1, 1, 1]), array([0, 1, 5, 6, 7]))
        """
        in_value, out_value = (
            int(_labels_int64([value], name)[0])
            for value, name in ((in_value, "in_value"), (out_value, "out_value"))
        )
        if in_value == out_value:
            raise ValueError(
                f"in_value and out_value are both {in_value}: the OOD label must tell ID from OOD samples. "
                "Pass two different values (default 0 for ID, 1 for OOD)."
            )
        other = out_dataset if isinstance(out_dataset, OODDataset) else OODDataset(out_dataset, self.backend)
        x_in, x_out = self._inputs, other._inputs
        if resize:
            if resize_method not in RESIZE_METHODS:
                raise ValueError(f"resize_method must be one of {RESIZE_METHODS}; got {resize_method!r}.")
            target = tuple(self.input_shape if shape is None else _image_shape(shape))
            if x_in.ndim != 4 or x_out.ndim != 4 or len(target) not in (2, 3):
                raise ValueError(
                    f"resize needs images [N, H, W, C] and a target (H, W[, C]); got inputs of shapes "
                    f"{self.input_shape} and {other.input_shape} and target {target}."
                )
            x_in, x_out = (_fit_images(x, target, resize_method) for x in (x_in, x_out))
        if x_in.shape[1:] != x_out.shape[1:]:
            raise ValueError(
                f"ID inputs have shape {x_in.shape[1:]} but OOD inputs {x_out.shape[1:]}; pass resize=True "
                "to convert the OOD images to the ID shape (or shape=(height, width, channels))."
            )
        if (x_in.dtype.kind == "f") != (x_out.dtype.kind == "f"):
            raise ValueError(
                f"ID inputs are {x_in.dtype} and OOD inputs {x_out.dtype}; their value ranges probably "
                "differ (uint8 0-255 vs float). Convert one of them first."
            )
        inputs = np.concatenate([x_in, x_out])
        labels = None
        if self._labels is not None and other._labels is not None:
            labels = np.concatenate([self._labels, other._labels])
        in_part = self._ood_labels if self._ood_labels is not None else np.full(len(self), in_value)
        ood_labels = np.concatenate([in_part, np.full(len(other), out_value)])
        return self._derive(inputs, labels, ood_labels)

    # --- batching -------------------------------------------------------------------------------------------

    def prepare(
        self,
        batch_size: int = 128,
        preprocess_fn: Callable[..., Any] | None = None,
        augment_fn: Callable[..., Any] | None = None,
        shuffle: bool = False,
        with_ood_labels: bool = False,
        with_labels: bool | None = None,
        shuffle_buffer_size: int | None = None,
        seed: int | None = None,
        drop_remainder: bool = False,
        training: bool | None = None,
    ) -> Any:
        """Batches for the backend: a ``tf.data.Dataset`` (TensorFlow) or a torch ``DataLoader`` (torch).

        Every batch is a tuple, in this order:

        - ``x``: the inputs. TensorFlow: channels-last tensors [B, H, W, C] of the stored dtype (uint8 for
          named data sets). torch: tensors with images channels-first [B, C, H, W] (what torch convnets
          expect), other inputs as stored;
        - ``y``: int64 class labels [B], when ``with_labels`` (default: when the data has labels);
        - the OOD label [B] (see :meth:`add_out_data`), when ``with_ood_labels``.

        So ``(x, y)`` by default, ``(x, y, ood)`` with OOD labels, ``(x,)`` with ``with_labels=False``
        (``(x, ood)`` with OOD labels). ``preprocess_fn(*batch)`` and then, for training,
        ``augment_fn(*batch)`` are called on whole batches of framework tensors and return the new batch,
        e.g. ``def preprocess_fn(*inputs): return tuple([inputs[0] / 255] + list(inputs[1:]))``.

        Parameters
        ----------
        batch_size : int, default 128
        preprocess_fn, augment_fn : callable, optional
            Functions of the batch's tensors. ``augment_fn`` is applied to training data only (see
            ``training``), after ``preprocess_fn``.
        shuffle : bool, default False
            Shuffle the samples, anew for each epoch.
        with_ood_labels : bool, default False
            Append the OOD-label column (the data must have one).
        with_labels : bool, optional
            Include the class labels; default: when the data has them.
        shuffle_buffer_size : int, optional
            TensorFlow only: the shuffle buffer; default the whole data set (a uniform shuffle). torch always
            shuffles uniformly.
        seed : int, optional
            Seed of the shuffle: the same seed gives the same order, epoch after epoch.
        drop_remainder : bool, default False
            Drop the last, smaller batch.
        training : bool, optional
            Whether these are training batches (so ``augment_fn`` applies); default ``shuffle``.
        """
        check_batch_size(batch_size)
        for name, function in (("preprocess_fn", preprocess_fn), ("augment_fn", augment_fn)):
            if function is not None and not callable(function):
                raise TypeError(f"{name} must be a function of the batch's tensors; got {function!r}.")
        for name, value in (("shuffle_buffer_size", shuffle_buffer_size), ("seed", seed)):
            lowest = 1 if name == "shuffle_buffer_size" else 0
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest
            ):
                raise ValueError(f"{name} must be None or an int >= {lowest}; got {value!r}.")
        if self.backend is None:
            raise ImportError(
                "prepare() needs TensorFlow or torch. Install one: pip install 'oodscope[tensorflow]' or "
                "pip install 'oodscope[torch]'"
            )
        if len(self) == 0:
            raise ValueError("Cannot prepare an empty dataset.")
        columns = [self._inputs]
        if with_labels or (with_labels is None and self._labels is not None):
            columns.append(self._require_labels("include labels (with_labels=True)"))
        if with_ood_labels:
            columns.append(self.get_ood_labels())
        functions = [function for function in (preprocess_fn,) if function is not None]
        if augment_fn is not None:
            if training if training is not None else shuffle:
                functions.append(augment_fn)
            else:
                logger.info("augment_fn is not applied: these are not training batches (shuffle=False).")
        if self.backend == "tensorflow":
            return tf_pipeline(
                columns, batch_size, functions, shuffle, shuffle_buffer_size, seed, drop_remainder
            )
        return torch_pipeline(columns, batch_size, functions, shuffle, seed, drop_remainder)


def _image_shape(shape: Any) -> tuple[int, ...]:
    """``shape`` given to ``add_out_data``: (height, width) or (height, width, channels) of positive ints."""
    values = tuple(shape) if isinstance(shape, Sequence) and not isinstance(shape, str) else None
    if (
        values is None
        or len(values) not in (2, 3)
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        raise ValueError(
            f"shape must be (height, width) or (height, width, channels) of positive ints; got {shape!r}."
        )
    return tuple(int(v) for v in values)


def _fit_images(images: np.ndarray, target: tuple[int, ...], method: str) -> np.ndarray:
    size = (int(target[0]), int(target[1]))
    channels = images.shape[-1] if len(target) == 2 else int(target[2])
    if channels < images.shape[-1]:  # fewer channels: convert first, then resize less data
        return resize_images(convert_channels(images, channels), size, method)
    return convert_channels(resize_images(images, size, method), channels)
