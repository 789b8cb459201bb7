"""What a saved detector remembers of the model it was fitted on, so that it is not used with another one.

A detector's learned state (class means, a feature bank, a threshold) is only meaningful for the model whose
activations it learned from. :func:`fingerprint` records three things about a model, read through its
backend without running it:

- the framework (``"torch"``, ``"keras"``);
- the layers that hold weights, by name, with the shapes of their weights (the architecture);
- a SHA-256 hash of the head's weights ``(W, b)`` as float32 (the training run).

:func:`oodscope.save` stores the fingerprint of the detector's model; :func:`oodscope.load` with
``model=...`` compares it with the fingerprint of the model given and raises :class:`ModelMismatchError`
when they differ. Layer names are reported but not compared: a model rebuilt in the same session may get
other automatic names (``dense_3``) for the same layers and weights.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> saved = fingerprint(model)
>>> saved.framework, saved.layers
('torch', (('0', ((8, 4), (8,))), ('2', ((3, 8), (3,)))))
>>> with torch.no_grad():
...     model[2].bias += 1  # the same architecture with other weights
>>> saved.differences(fingerprint(model))
["the head's weights differ (the same architecture, trained otherwise or further)"]
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

__all__ = ["ModelFingerprint", "ModelMismatchError", "fingerprint"]


class ModelMismatchError(ValueError):
    """A saved detector is given a model other than the one it was fitted on; ``differences`` says how."""

    def __init__(self, message: str, differences: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.differences = list(differences)


@dataclasses.dataclass(frozen=True)
class ModelFingerprint:
    """Framework, weight-holding layers with their weight shapes, and a hash of the head's weights.

    Attributes
    ----------
    framework : str
        The :data:`oodscope.backends.MODEL_KINDS` name of the model (``"torch"``, ``"keras"``).
    layers : tuple of (str, tuple of shapes)
        The layers that hold weights, in the model's order, each with the shapes of its weights.
    head_sha256 : str or None
        SHA-256 (hex) of the head's ``W`` and ``b`` as float32, with their shapes; None when the head is not
        a linear layer.
    """

    framework: str
    layers: tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]
    head_sha256: str | None

    def to_json(self) -> dict[str, Any]:
        """A dict of JSON types (lists, strings, ints)."""
        return {
            "framework": self.framework,
            "layers": [[name, [list(shape) for shape in shapes]] for name, shapes in self.layers],
            "head_sha256": self.head_sha256,
        }

    @classmethod
    def from_json(cls, data: Any) -> ModelFingerprint:
        """The inverse of :meth:`to_json`; ValueError for anything malformed."""
        try:
            framework, layers, head = data["framework"], data["layers"], data["head_sha256"]
            parsed = tuple(
                (str(name), tuple(tuple(int(size) for size in shape) for shape in shapes))
                for name, shapes in layers
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed model fingerprint ({type(error).__name__}: {error})") from None
        if not isinstance(framework, str) or not (head is None or isinstance(head, str)):
            raise ValueError("malformed model fingerprint (framework or head hash of the wrong type)")
        return cls(framework, parsed, head)

    def differences(self, other: ModelFingerprint) -> list[str]:
        """How ``other`` (the model given now) differs from this one (the model fitted on); empty if alike."""
        if self.framework != other.framework:
            return [f"it was fitted on a {self.framework} model, and this is a {other.framework} model"]
        found = []
        if [shapes for _, shapes in self.layers] != [shapes for _, shapes in other.layers]:
            found.append("the architecture differs: " + _first_layer_difference(self.layers, other.layers))
        elif None not in (self.head_sha256, other.head_sha256) and self.head_sha256 != other.head_sha256:
            found.append("the head's weights differ (the same architecture, trained otherwise or further)")
        return found


def fingerprint(model: Any, head_layer_id: Hashable = -1) -> ModelFingerprint:
    """The :class:`ModelFingerprint` of ``model`` with its head at ``head_layer_id`` (as in ``fit``).

    Runs no forward pass; reads the layer list, the weight shapes and the head's weights.
    """
    from .backends import HeadNotLinearError, framework_of, get_backend

    with warnings.catch_warnings():  # e.g. "the head is not an nn.Linear", already said when fitting
        warnings.simplefilter("ignore")
        backend = get_backend(model).for_pass(model, [], head_layer_id)
        try:
            layers = tuple((name, tuple(map(tuple, shapes))) for name, shapes in backend.weight_shapes())
        except NotImplementedError:  # a backend that cannot list its weights (an exported graph, say)
            layers = ()
        try:
            weight, bias = backend.head_weights()
        except (HeadNotLinearError, NotImplementedError):
            head = None
        else:
            head = _hash_arrays(weight, bias)
    return ModelFingerprint(framework_of(model) or backend.framework, layers, head)


def _hash_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array, dtype="<f4")
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _first_layer_difference(saved: tuple[Any, ...], given: tuple[Any, ...]) -> str:
    for index, ((saved_name, saved_shapes), (name, shapes)) in enumerate(zip(saved, given, strict=False)):
        if saved_shapes != shapes:
            return (
                f"weight-holding layer {index} is {saved_name!r} with weights {_shapes(saved_shapes)} in the "
                f"model it was fitted on, and {name!r} with weights {_shapes(shapes)} here"
            )
    return (
        f"the model it was fitted on has {len(saved)} layers with weights, this one has {len(given)} "
        f"(the last of the longer one: {(saved if len(saved) > len(given) else given)[-1][0]!r})"
    )


def _shapes(shapes: tuple[tuple[int, ...], ...]) -> str:
    return ", ".join("x".join(map(str, shape)) or "scalar" for shape in shapes)
