"""The :class:`Features` container: everything a detector consumes, as numpy arrays.

A model is run over the data once; what that pass produces (logits, the activations of the requested layers,
the labels when the data carries them) and the classifier head's weights are gathered in one ``Features``
object. Any number of detectors, with any hyperparameters, then fit and score the same object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from ._batches import as_labels
from .backends.data import to_numpy

__all__ = ["Features"]

LayerId = Hashable


@dataclasses.dataclass(frozen=True, eq=False)
class Features:
    """Logits, layer activations, labels and head weights of N samples.

    Parameters
    ----------
    logits : array of shape [N, C], optional
        Pre-softmax outputs of the classifier.
    layers : mapping of layer id to array of shape [N, D], optional
        Activations of named layers, one row per sample, already pooled to 2-D (feature maps are reduced
        by global average pooling at extraction time). Layer ids are the names or indices that were
        requested, e.g. ``"penultimate"``.
    labels : array of shape [N], optional
        Class labels of the samples, when the data has them (some detectors need them at fit time): integer
        class indices or class names (whole-valued floats are converted to integers; other floats are an
        error). Detectors that index the logits with them (SHE) need indices.
    head_weight : array of shape [C, D], optional
        Weight of the final linear layer, laid out so that
        ``logits = penultimate @ head_weight.T + head_bias`` (PyTorch's ``nn.Linear`` layout; a Keras
        ``Dense`` kernel is its transpose).
    head_bias : array of shape [C], optional
        Bias of the final linear layer; zeros when ``head_weight`` is given without it.
    pass_kind : PassKind, optional
        Set when the arrays come from another pass than the plain forward pass: over perturbed inputs (ODIN),
        with edited layers, or with gradients (see :class:`~oodscope.needs.PassKind`); None for a plain
        pass. A detector checks that its Features come from the kind of pass it needs, so plain Features
        cannot be scored by mistake.

    At least one of ``logits`` and ``layers`` must be given. Arrays are kept as given (no copy) except that
    torch / TensorFlow tensors become numpy arrays, integer arrays float64 and half-precision arrays
    (float16, bfloat16) float32; the container never modifies them.

    Raises
    ------
    ValueError
        If the arrays disagree on the number of samples, have the wrong number of dimensions, or hold NaN
        or inf (the message names the field and how many rows are affected).

    Examples
    --------
    >>> import numpy as np
    >>> feats = Features(logits=np.array([[2.0, 0.0], [0.1, 0.0]]), labels=np.array([0, 1]))
    >>> len(feats), feats.n_classes
    (2, 2)
    """

    logits: np.ndarray | None = None
    layers: Mapping[LayerId, np.ndarray] = dataclasses.field(default_factory=dict)
    labels: np.ndarray | None = None
    head_weight: np.ndarray | None = None
    head_bias: np.ndarray | None = None
    pass_kind: Any = None

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # the dataclass is frozen; normalise once, here
        if self.logits is None and not self.layers:
            raise ValueError("Features needs logits or at least one layer's activations; both are empty.")
        n = None
        if self.logits is not None:
            logits = _float_array(self.logits, "logits")
            if logits.ndim != 2:
                raise ValueError(
                    f"Features.logits must be 2-D [n_samples, n_classes]; got shape {logits.shape}. "
                    "For a single sample, pass logits[None, :]."
                )
            _check_finite(logits, "logits")
            set_field(self, "logits", logits)
            n = logits.shape[0]
        if not isinstance(self.layers, Mapping):
            raise TypeError(
                f"Features.layers must be a mapping of layer id to array; got {type(self.layers)}."
            )
        layers = {}
        for layer_id, values in self.layers.items():
            field = f"layers[{layer_id!r}]"
            array = _float_array(values, field)
            if array.ndim != 2:
                raise ValueError(
                    f"Features.{field} must be 2-D [n_samples, n_features]; got shape {array.shape}. "
                    "Pool feature maps first (e.g. mean over the spatial axes) or flatten them."
                )
            n = _check_rows(n, array.shape[0], field)
            _check_finite(array, field)
            layers[layer_id] = array
        set_field(self, "layers", layers)
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.ndim != 1:
                raise ValueError(f"Features.labels must be 1-D [n_samples]; got shape {labels.shape}.")
            if labels.dtype.kind in "fc":  # whole-valued floats become int64; 1.5 is not a class
                labels = as_labels(labels, "Features.labels")
            _check_rows(n, labels.shape[0], "labels")
            set_field(self, "labels", labels)
        self._check_head()

    def _check_head(self) -> None:
        if self.head_weight is None:
            if self.head_bias is not None:
                raise ValueError("Features.head_bias was given without head_weight.")
            return
        weight = _float_array(self.head_weight, "head_weight")
        if weight.ndim != 2:
            raise ValueError(f"Features.head_weight must be 2-D [n_classes, n_features]; got {weight.shape}.")
        n_classes, dim = weight.shape
        if self.logits is not None and n_classes != self.logits.shape[1]:
            raise ValueError(
                f"Features.head_weight has {n_classes} rows but logits have {self.logits.shape[1]} classes. "
                "head_weight is laid out [n_classes, n_features]; transpose a Keras Dense kernel."
            )
        penultimate = self.layers.get("penultimate")
        if penultimate is not None and penultimate.shape[1] != dim:
            raise ValueError(
                f"Features.head_weight has {dim} columns but layers['penultimate'] has "
                f"{penultimate.shape[1]} features; they must match."
            )
        bias = np.zeros(n_classes, dtype=weight.dtype) if self.head_bias is None else self.head_bias
        bias = _float_array(bias, "head_bias")
        if bias.shape != (n_classes,):
            raise ValueError(f"Features.head_bias must have shape ({n_classes},); got {bias.shape}.")
        _check_finite(weight, "head_weight")
        _check_finite(bias[None, :], "head_bias")
        object.__setattr__(self, "head_weight", weight)
        object.__setattr__(self, "head_bias", bias)

    @classmethod
    def _unchecked(cls, **fields: Any) -> Features:
        """Build without validation, for arrays the library derived from already validated ones.

        Only for internal use where the arrays are known to be consistent and finite (shaped features).
        """
        instance = object.__new__(cls)
        for field in dataclasses.fields(cls):
            default = {} if field.name == "layers" else None
            object.__setattr__(instance, field.name, fields.get(field.name, default))
        return instance

    def __len__(self) -> int:
        if self.logits is not None:
            return self.logits.shape[0]
        return next(iter(self.layers.values())).shape[0]

    @property
    def n_classes(self) -> int | None:
        """Number of classes (columns of the logits, or rows of the head), or None if unknown."""
        if self.logits is not None:
            return self.logits.shape[1]
        return None if self.head_weight is None else self.head_weight.shape[0]

    def layer(self, layer_id: LayerId) -> np.ndarray:
        """The activations of one layer, with an error listing the available ids when it is missing."""
        try:
            return self.layers[layer_id]
        except KeyError:
            available = list(self.layers) or "none"
            raise KeyError(
                f"Features hold no layer {layer_id!r}; available layers: {available}. "
                "Request it at extraction time with feature_layers_id=[...]."
            ) from None

    def widths(self) -> dict[str, Any]:
        """The widths that make two Features comparable: ``{"logits": C or None, "layers": {id: D}}``.

        A fitted detector records the widths of its fit Features and checks those of every Features it
        scores (:meth:`check_widths`); ``evaluate`` checks that all its datasets agree.

        >>> Features(logits=np.zeros((2, 3)), layers={"penultimate": np.zeros((2, 8))}).widths()
        {'logits': 3, 'layers': {'penultimate': 8}}
        """
        logits = None if self.logits is None else int(self.logits.shape[1])
        return {"logits": logits, "layers": {key: int(value.shape[1]) for key, value in self.layers.items()}}

    def check_widths(self, reference: Mapping[str, Any], these: str, reference_name: str) -> None:
        """Raise a ``ValueError`` when these Features disagree with ``reference`` (from :meth:`widths`) on
        the number of classes or on the width of a layer both hold.

        ``these`` and ``reference_name`` say what is compared in the message, e.g. ``"the Features given to
        score()"`` and ``"the fit Features of KNN(k=5)"``.
        """
        mine = self.widths()
        problems = []
        if None not in (reference.get("logits"), mine["logits"]) and reference["logits"] != mine["logits"]:
            problems.append(f"logits have {mine['logits']} classes instead of {reference['logits']}")
        for key, width in reference.get("layers", {}).items():
            if key in mine["layers"] and mine["layers"][key] != width:
                problems.append(f"layers[{key!r}] has {mine['layers'][key]} features instead of {width}")
        if problems:
            raise ValueError(
                f"{these[:1].upper()}{these[1:]} do not match {reference_name}: {'; '.join(problems)}. They "
                "come from another model or layer; use features of the same model and layers for every set."
            )

    def take(self, indices: Any) -> Features:
        """A new ``Features`` with the rows selected by ``indices`` (an index array or boolean mask).

        The head weights are shared, not copied.
        """
        indices = np.asarray(indices)
        if indices.dtype == bool and indices.shape != (len(self),):
            raise ValueError(f"A boolean mask must have shape ({len(self)},); got {indices.shape}.")
        return Features(
            logits=None if self.logits is None else self.logits[indices],
            layers={key: value[indices] for key, value in self.layers.items()},
            labels=None if self.labels is None else self.labels[indices],
            head_weight=self.head_weight,
            head_bias=self.head_bias,
            pass_kind=self.pass_kind,
        )

    def __repr__(self) -> str:
        parts = []
        if self.logits is not None:
            parts.append(f"logits={self.logits.shape}")
        if self.layers:
            parts.append("layers={" + ", ".join(f"{k!r}: {v.shape}" for k, v in self.layers.items()) + "}")
        if self.labels is not None:
            parts.append(f"labels={self.labels.shape}")
        if self.head_weight is not None:
            parts.append(f"head_weight={self.head_weight.shape}")
        if self.pass_kind is not None:
            parts.append(f"pass_kind={self.pass_kind}")
        return f"Features(n={len(self)}, " + ", ".join(parts) + ")"


def _float_array(values: Any, field: str) -> np.ndarray:
    try:
        array = to_numpy(values)
    except ValueError as error:  # ragged nested lists
        raise ValueError(
            f"Features.{field} must be a rectangular array; numpy could not make one ({error}). Give every "
            "row the same length."
        ) from None
    if array.dtype.kind in "iub":
        return array.astype(np.float64)
    if array.dtype.kind == "f" and array.dtype.itemsize < 4 or array.dtype.name == "bfloat16":
        return array.astype(np.float32)  # half precision: every value fits float32, and numpy is faster on it
    if array.dtype.kind != "f":
        raise TypeError(f"Features.{field} must hold real numbers; got dtype {array.dtype}.")
    return array


def _check_rows(n: int | None, rows: int, field: str) -> int:
    if n is not None and rows != n:
        raise ValueError(
            f"Features.{field} has {rows} rows but the other fields have {n}; "
            "every field needs one row per sample."
        )
    return rows


def all_finite(array: np.ndarray) -> bool:
    """Whether a numeric array holds no NaN or inf (True when empty); the check every array input shares.

    min and max propagate NaN and reach ±inf: two passes in the array's own precision, without the
    temporary of ``np.isfinite(array).all()``.
    """
    return array.size == 0 or bool(np.isfinite(array.min()) and np.isfinite(array.max()))


def _check_finite(array: np.ndarray, field: str) -> None:
    if all_finite(array):
        return
    finite = np.isfinite(array)
    bad_rows = np.flatnonzero(~finite.reshape(finite.shape[0], -1).all(axis=1))
    raise ValueError(
        f"Features.{field} has {bad_rows.size} row(s) of {array.shape[0]} holding NaN or inf "
        f"(first at row {bad_rows[0]}). Check the model's outputs and the input preprocessing, "
        "or drop those samples."
    )
