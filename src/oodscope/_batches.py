"""Turn whatever data the user has into a stream of ``(inputs, labels or None)`` batches.

Accepted data (labels are optional everywhere):

- an array or tensor of inputs (numpy, torch, TensorFlow): sliced into batches of ``batch_size``;
- a tuple ``(inputs, labels)`` of two arrays with the same length;
- a dict of arrays: the inputs under ``input_key`` (default: the first of "image", "images", "input",
  "inputs", "x" present), the labels under ``label_key`` (default: "label", "labels" or "y" if present);
- a ``tf.data.Dataset`` that yields batches (iterated as numpy);
- a torch map-style ``Dataset`` (wrapped in a ``DataLoader`` of ``batch_size``);
- any other iterable of batches, e.g. a torch ``DataLoader`` or a list: a batch is an array/tensor (inputs
  only), a tuple or list ``(inputs, labels, ...)`` (further elements are ignored), or a dict as above.

Inputs are handed to the backend as they come (no copy); labels become 1-D numpy arrays (one-hot labels are
turned into class indices). Framework data types are recognised, counted and iterated by the registry in
:mod:`oodscope.backends.data`; this module names no framework.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .backends.data import data_kind, to_numpy

INPUT_KEYS = ("image", "images", "input", "inputs", "x")
LABEL_KEYS = ("label", "labels", "y")


def is_array_like(obj: Any) -> bool:
    """True for numpy arrays and framework tensors (anything with a shape, a dtype and indexing)."""
    return (
        hasattr(obj, "shape")
        and hasattr(obj, "dtype")
        and hasattr(obj, "__getitem__")
        and not isinstance(obj, type)
    )


def as_labels(values: Any, name: str = "Labels") -> np.ndarray:
    """1-D integer class indices (int64 unless already an integer type); one-hot rows [B, C] become class
    indices.

    Whole-valued floats (labels that went through a float tensor) are converted; any other value is refused
    with a ``ValueError`` naming ``name``, never cast: 1.5 is not a class.

    >>> as_labels(np.array([0.0, 2.0]))
    array([0, 2])
    >>> as_labels([0.5, 1.0])
    Traceback (most recent call last):
    ...
    ValueError: Labels must be integer class indices; got 0.5 (dtype float64) among them. ...
    """
    labels = to_numpy(values)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels.argmax(axis=1)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D (or one-hot 2-D); got an array of shape {labels.shape}.")
    if labels.dtype.kind in "iu":
        return labels
    if labels.dtype.kind == "b":
        return labels.astype(np.int64)
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels) & (labels == np.round(labels))
        if whole.all():
            return labels.astype(np.int64)
        example = labels[np.flatnonzero(~whole)[0]]
        reason = f"got {example} (dtype {labels.dtype}) among them"
    else:
        reason = f"got values of dtype {labels.dtype}"
    raise ValueError(
        f"{name} must be integer class indices; {reason}. Map class names or other values to indices "
        "first, e.g. np.unique(labels, return_inverse=True)[1]."
    )


def pick_keys(
    batch: Mapping[str, Any], input_key: str | None, label_key: str | None
) -> tuple[str, str | None]:
    """The input key and the label key (None: no labels) of dict batches, or of a dataset's element spec.

    Given keys must exist; otherwise the first of :data:`INPUT_KEYS` / :data:`LABEL_KEYS` present is taken.
    """
    keys = list(batch)
    if input_key is None:
        input_key = next((key for key in INPUT_KEYS if key in batch), None)
        if input_key is None:
            raise ValueError(
                f"Cannot tell which entry of the batch is the input among {keys}; pass input_key=..., e.g. "
                f"input_key={keys[0]!r} if that is the input (a detector takes it in fit(model, ...), for "
                "every later pass, or in score(...), for one)."
            )
    elif input_key not in batch:
        raise KeyError(f"input_key={input_key!r} is not in the batch; its keys are {keys}.")
    if label_key is None:
        label_key = next((key for key in LABEL_KEYS if key in batch), None)
    elif label_key not in batch:
        raise KeyError(f"label_key={label_key!r} is not in the batch; its keys are {keys}.")
    return input_key, label_key


def _split_dict(batch: Mapping[str, Any], input_key: str | None, label_key: str | None) -> tuple[Any, Any]:
    input_key, label_key = pick_keys(batch, input_key, label_key)
    return batch[input_key], None if label_key is None else batch[label_key]


def split_batch(batch: Any, input_key: str | None = None, label_key: str | None = None) -> tuple[Any, Any]:
    """``(inputs, labels or None)`` of one batch."""
    if isinstance(batch, Mapping):
        return _split_dict(batch, input_key, label_key)
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("Got an empty batch.")
        return batch[0], (batch[1] if len(batch) > 1 else None)
    if is_array_like(batch):
        return batch, None
    raise TypeError(
        f"Cannot read a batch of type {type(batch).__name__}: expected an array/tensor, a tuple "
        "(inputs, labels) or a dict with an input key."
    )


def _is_pair(data: Any) -> bool:
    """An ``(inputs, labels)`` tuple of arrays, which is sliced into batches (any other tuple is a sequence of
    batches)."""
    return isinstance(data, tuple) and len(data) == 2 and all(is_array_like(part) for part in data)


def _slices(inputs: Any, labels: Any, batch_size: int) -> Iterator[tuple[Any, Any]]:
    n = len(inputs)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield inputs[start:stop], (None if labels is None else labels[start:stop])


def count_rows(data: Any) -> int | None:
    """Number of samples in data that ``iter_batches`` batches itself, when known without iterating."""
    if is_array_like(data):
        return len(data)
    if isinstance(data, tuple) and len(data) == 2 and all(is_array_like(part) for part in data):
        return len(data[0])
    if isinstance(data, Mapping):
        first = next(iter(data.values()), None)
        return None if first is None else len(first)
    kind = data_kind(data)
    return None if kind is None else kind.rows(data)


def count_batches(data: Any, batch_size: int) -> int | None:
    """Number of batches ``iter_batches`` will yield, when it is known without iterating."""
    check_batch_size(batch_size)
    rows = count_rows(data)
    if rows is not None:
        return -(-rows // batch_size)
    try:
        n = len(data)
    except TypeError:
        return None
    return n if n >= 0 else None


def iter_batches(
    data: Any, batch_size: int = 128, input_key: str | None = None, label_key: str | None = None
) -> Iterator[tuple[Any, np.ndarray | None]]:
    """``(inputs, labels)`` batches from any accepted data (see the module docstring).

    The data's type and ``batch_size`` are checked at once; batches are produced lazily.
    """
    check_batch_size(batch_size)
    if is_array_like(data):
        stream: Any = _slices(data, None, batch_size)
    elif _is_pair(data):
        inputs, labels = data
        if len(inputs) != len(labels):
            raise ValueError(f"(inputs, labels) have different lengths: {len(inputs)} and {len(labels)}.")
        stream = _slices(inputs, labels, batch_size)
    elif isinstance(data, Mapping):
        inputs, labels = _split_dict(data, input_key, label_key)
        stream = _slices(inputs, labels, batch_size)
    elif (kind := data_kind(data)) is not None:
        stream = (split_batch(batch, input_key, label_key) for batch in kind.batches(data, batch_size))
    elif isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(
            f"Cannot iterate data of type {type(data).__name__}. Pass an array or tensor of inputs, a tuple "
            "(inputs, labels), a dict of arrays, a tf.data.Dataset, a torch Dataset or DataLoader, or any "
            "iterable of batches."
        )
    else:
        stream = (split_batch(batch, input_key, label_key) for batch in data)
    return ((inputs, None if labels is None else as_labels(labels)) for inputs, labels in stream)


def check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")


def note_failed_batch(error: BaseException, number: int, inputs: Any, data: Any) -> None:
    """Add to ``error`` (raised while a pass worked on batch ``number``, counted from 1) what that batch was.

    The model's own message says what went wrong inside it, but not which batch it was given, nor how
    oodscope cut the data into batches; the note says both, with a hint for common mistakes (integer images,
    a list of samples) and the hint of the data's kind in :mod:`oodscope.backends.data` (e.g. for an
    unbatched ``tf.data.Dataset``). Python 3.10 has no exception notes, so there the error is left as it is.
    """
    if not hasattr(error, "add_note"):
        return
    shape = tuple(getattr(inputs, "shape", ()))
    dtype = str(getattr(inputs, "dtype", type(inputs).__name__))
    lines = [f"oodscope: raised during batch {number}: inputs of shape {shape}, {dtype}."]
    if re.search(r"\bu?int\d*\b", dtype):  # numpy "uint8", torch "torch.uint8", TensorFlow "<dtype: 'uint8'>"
        lines.append(
            "Integer inputs reach the model as they are (token ids must stay integers). If these are images "
            "for a model trained on floats, convert them as in training, e.g. x.astype('float32') / 255."
        )
    kind = data_kind(data)
    if kind is not None and kind.failure_hint:
        lines.append(kind.failure_hint)
    if isinstance(data, (list, tuple)) and not _is_pair(data):
        lines.append(
            f"A {type(data).__name__} is read as a sequence of batches (each an array, or (inputs, labels)), "
            "so this batch is one of its elements. To pass single samples, stack them: np.stack(samples)."
        )
    error.add_note(" ".join(lines))
