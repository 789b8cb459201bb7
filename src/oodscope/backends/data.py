"""Framework data that oodscope reads itself: recognised by type, counted, cut into batches, made numpy.

Two small registries hold all that the rest of the library knows about framework data types:

- :data:`DATA_KINDS`: data objects that are neither arrays nor plain iterables of batches, e.g. a
  ``tf.data.Dataset`` (iterated as numpy) or a torch map-style ``Dataset`` (read through a ``DataLoader``);
- :data:`TENSOR_KINDS`: framework tensors, and how :func:`to_numpy` reads them.

Objects are recognised from the modules that define their class hierarchy (``type(obj).__mro__``), so no
question asked here imports a framework. A framework is imported only to iterate an object of its own,
which the user has made, so it is loaded already. Supporting one more kind of data (a Hugging Face
``datasets.Dataset``, a Ray dataset) is one more :class:`DataKind` in :data:`DATA_KINDS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = [
    "DATA_KINDS",
    "TENSOR_KINDS",
    "TF_DATASET",
    "TF_TENSOR",
    "TORCH_MAP_DATASET",
    "TORCH_TENSOR",
    "DataKind",
    "TensorKind",
    "data_kind",
    "tensor_kind",
    "to_numpy",
]


def defined_in(obj: Any, module: str) -> bool:
    """True when a class of ``type(obj).__mro__`` is defined in ``module`` or in one of its submodules."""
    prefix = module + "."
    for klass in type(obj).__mro__:
        name = klass.__module__ or ""
        if name == module or name.startswith(prefix):
            return True
    return False


# --- data objects -----------------------------------------------------------------------------------------


def _rows_unknown(data: Any) -> int | None:
    return None


@dataclasses.dataclass(frozen=True)
class DataKind:
    """One kind of framework data object that oodscope cuts into batches itself.

    Attributes
    ----------
    name : str
        How messages name it, e.g. ``"tf.data.Dataset"``.
    recognises : callable
        ``recognises(data) -> bool``, from the object's type, importing nothing.
    batches : callable
        ``batches(data, batch_size) -> iterable``: the raw batches, in order, each an array or tensor, a
        tuple ``(inputs, labels, ...)`` or a dict. Called once, when a pass over the data is set up; the
        batches themselves are read lazily. A kind whose objects come batched already ignores
        ``batch_size``.
    rows : callable
        ``rows(data) -> int or None``: the number of samples when it is known without iterating.
    failure_hint : str
        Added to the note of an error raised while the model ran on one of its batches (empty: none).
    """

    name: str
    recognises: Callable[[Any], bool]
    batches: Callable[[Any, int], Iterable[Any]]
    rows: Callable[[Any], int | None] = _rows_unknown
    failure_hint: str = ""


def _is_tf_dataset(data: Any) -> bool:
    return defined_in(data, "tensorflow") and hasattr(data, "as_numpy_iterator")


def _tf_dataset_batches(data: Any, batch_size: int) -> Iterable[Any]:
    return data.as_numpy_iterator()  # a dataset yields the batches it was made with


def _is_torch_map_dataset(data: Any) -> bool:
    mro = type(data).__mro__
    return (
        defined_in(data, "torch.utils.data.dataset")
        and not any(klass.__name__ == "IterableDataset" for klass in mro)
        and hasattr(data, "__len__")
    )


def _torch_map_dataset_batches(data: Any, batch_size: int) -> Iterable[Any]:
    from torch.utils.data import DataLoader

    return DataLoader(data, batch_size=batch_size, shuffle=False)


TF_DATASET = DataKind(
    name="tf.data.Dataset",
    recognises=_is_tf_dataset,
    batches=_tf_dataset_batches,
    failure_hint=(
        "A tf.data.Dataset is read batch by batch as it yields; if it yields single samples, batch it "
        "first: dataset.batch(128)."
    ),
)

TORCH_MAP_DATASET = DataKind(
    name="torch map-style Dataset",
    recognises=_is_torch_map_dataset,
    batches=_torch_map_dataset_batches,
    rows=len,
)

#: the data kinds, asked in order; the first that recognises an object reads it
DATA_KINDS: tuple[DataKind, ...] = (TF_DATASET, TORCH_MAP_DATASET)


def data_kind(data: Any) -> DataKind | None:
    """The first of :data:`DATA_KINDS` that recognises ``data``, or None."""
    for kind in DATA_KINDS:
        if kind.recognises(data):
            return kind
    return None


# --- tensors ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorKind:
    """The tensors of one framework.

    Attributes
    ----------
    framework : str
        ``"torch"`` or ``"tensorflow"``.
    recognises : callable
        ``recognises(values) -> bool``, from the object's type, importing nothing.
    to_numpy : callable
        ``to_numpy(tensor) -> numpy array``, from any device.
    channels_first : bool
        Whether the framework's 4-D image batches are [N, C, H, W] by convention.
    """

    framework: str
    recognises: Callable[[Any], bool]
    to_numpy: Callable[[Any], np.ndarray]
    channels_first: bool = False


TORCH_TENSOR = TensorKind(
    framework="torch",
    recognises=lambda values: defined_in(values, "torch") and hasattr(values, "detach"),
    to_numpy=lambda tensor: _torch_to_numpy(tensor),
    channels_first=True,
)


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16: float32 holds every value exactly
        tensor = tensor.float()
    return tensor.numpy()


TF_TENSOR = TensorKind(
    framework="tensorflow",
    recognises=lambda values: defined_in(values, "tensorflow") and hasattr(values, "numpy"),
    to_numpy=lambda tensor: tensor.numpy(),  # eager tensors and variables
)

#: the tensor kinds, asked in order
TENSOR_KINDS: tuple[TensorKind, ...] = (TORCH_TENSOR, TF_TENSOR)


def tensor_kind(values: Any) -> TensorKind | None:
    """The first of :data:`TENSOR_KINDS` that recognises ``values``, or None (numpy arrays among them)."""
    if isinstance(values, np.ndarray):
        return None
    for kind in TENSOR_KINDS:
        if kind.recognises(values):
            return kind
    return None


def to_numpy(values: Any) -> np.ndarray:
    """A numpy view or copy of a numpy array, a framework tensor, or anything ``np.asarray`` reads.

    >>> to_numpy([1, 2]).tolist()
    [1, 2]
    """
    if isinstance(values, np.ndarray):
        return values
    kind = tensor_kind(values)
    return np.asarray(values) if kind is None else kind.to_numpy(values)
