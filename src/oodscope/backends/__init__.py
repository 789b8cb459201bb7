"""Framework backends: the only place where framework code lives.

A backend runs one model over batches and hands back numpy arrays. The rest of the library never sees a
framework tensor. Backends are picked from the model's type and imported only then, so ``import oodscope``
loads no framework.

A backend offers *primitives*, never methods named after a detector (see :class:`Backend`):

- resolve layer ids (names, integer indices, ``"penultimate"``) without touching the model;
- a context manager for one pass: set up (torch: hooks, eval mode) on enter, undo everything on exit,
  also when the user's forward raises;
- ``run_batch(x)``: pre-softmax logits and the raw outputs of the requested layers (*taps*), as numpy;
- *edits*: functions applied to a layer's output inside the forward, so that the rest of the network sees
  the edited tensor (given when the backend is built);
- ``gradients(x, loss, wrt)``: the gradient of a scalar loss of the logits (a :mod:`oodscope.losses` object
  or any function ``loss(logits, ops)``; a loss with a ``reads`` attribute also gets those layers' tensors,
  see :func:`loss_value`) with respect to the input and/or captured layer outputs;
- ``head_weights()``: the final linear layer's (W [C, D], b [C]);
- ``weight_shapes()``: the layers that hold weights, with the shapes of those weights (what a saved detector
  remembers of its model, see :mod:`oodscope.fingerprint`).

A backend declares in ``provides`` which optional primitives it has (``"edits"``, ``"gradients"``);
:meth:`Backend.require` raises :class:`UnsupportedError` naming the backend and what asked for it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "INPUT",
    "Backend",
    "HeadNotLinearError",
    "LayerNotFoundError",
    "Ops",
    "UnsupportedError",
    "framework_of",
    "get_backend",
]

LayerId = Hashable
PENULTIMATE = "penultimate"


class LayerNotFoundError(KeyError):
    """A requested layer id does not exist in the model; the message lists the available names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class HeadNotLinearError(ValueError):
    """The head layer is not a linear (dense / fully connected) layer, so (W, b) do not exist."""


#: the model input, as a target of :meth:`Backend.gradients` (a layer id cannot look like this)
INPUT = "<input>"

#: the optional primitives a backend may provide, with how errors describe them
CAPABILITIES = {
    "edits": "edits of a layer's output inside the forward pass",
    "gradients": "gradients of a loss with respect to the input or to layer outputs",
}

#: ``edit(tensor, ops) -> tensor``: replaces a layer's raw output inside the forward (see Backend)
EditFn = Callable[[Any, "Ops"], Any]
#: ``loss(logits, ops) -> scalar tensor``: what :meth:`Backend.gradients` differentiates
LossFn = Callable[[Any, "Ops"], Any]


class UnsupportedError(NotImplementedError):
    """The backend of the model lacks a primitive that a method needs (e.g. gradients of an ONNX session)."""


class Ops:
    """The few tensor operations that losses and edits are written with, the same on every framework.

    Every row-wise operation works along the last axis (the classes of [B, C] logits) and returns [B];
    ``total`` sums everything to a scalar. ``native`` is the framework's own namespace (``torch`` or
    ``keras.ops``) for what these do not cover. A loss written with these runs on every backend::

        def max_logit(logits, ops):
            return ops.total(ops.max(logits))
    """

    native: Any = None
    #: whether feature maps are [B, ..., C] (Keras) rather than [B, C, ...] (torch), for edits of maps
    channels_last: bool = False

    def log_softmax(self, z: Any) -> Any:
        raise NotImplementedError

    def logsumexp(self, z: Any) -> Any:
        raise NotImplementedError

    def max(self, z: Any) -> Any:
        raise NotImplementedError

    def mean(self, z: Any) -> Any:
        raise NotImplementedError

    def argmax(self, z: Any) -> Any:
        raise NotImplementedError

    def pick(self, z: Any, index: Any) -> Any:
        """``z[i, index[i]]`` for every row i: [B]."""
        raise NotImplementedError

    def total(self, t: Any) -> Any:
        raise NotImplementedError

    def stop_gradient(self, t: Any) -> Any:
        raise NotImplementedError

    def minimum(self, t: Any, value: float) -> Any:
        """Element-wise ``min(t, value)`` for a number ``value`` (e.g. clipping a layer in an edit)."""
        raise NotImplementedError

    def maximum(self, t: Any, value: float) -> Any:
        """Element-wise ``max(t, value)`` for a number ``value``."""
        raise NotImplementedError

    def pool(self, t: Any) -> Any:
        """Global average pooling of a feature map to [B, C] (channels first or last as the framework lays
        them out, see ``channels_last``); a [B, D] tensor is returned as it is."""
        raise NotImplementedError

    def constant(self, array: Any, like: Any) -> Any:
        """A numpy array as a constant tensor of the dtype (and device) of the tensor ``like``."""
        raise NotImplementedError

    def svd(self, m: Any) -> tuple[Any, Any, Any]:
        """The thin singular value decomposition of every matrix of ``m`` [..., M, N]: ``(u [..., M, K],
        s [..., K], vh [..., K, N])`` with ``K = min(M, N)``, ``s`` descending, ``m = u · diag(s) · vh``."""
        raise NotImplementedError


def loss_value(loss: LossFn, logits: Any, ops: Ops, tensor_of: Callable[[LayerId], Any]) -> Any:
    """``loss(logits, ops)``, or ``loss(logits, ops, {layer: tensor})`` for a loss that reads layers.

    A loss declares the layers it reads in a ``reads`` attribute (a tuple of layer ids of the backend's taps,
    e.g. a Mahalanobis distance of a layer's features to class means); it then gets their raw outputs in the
    forward it differentiates, as framework tensors (after edits, and after the zero added for a gradient
    with respect to the layer, so that gradients flow through them). ``tensor_of(layer)`` is the backend's
    lookup, which raises for a layer that is not one of its taps.

    A backend may compile the function that calls a loss, keyed by the loss (equal losses share it). A loss
    whose constants change while it stays equal (it reads a detector's learned state, which a refit
    replaces) gives a ``state_token`` attribute that changes with them.
    """
    reads = getattr(loss, "reads", ())
    if not reads:
        return loss(logits, ops)
    return loss(logits, ops, {layer: tensor_of(layer) for layer in reads})


def loss_reads_unknown(loss: Any, layer: LayerId, taps: Sequence[LayerId]) -> ValueError:
    """The error for a loss that reads a layer the backend does not tap."""
    return ValueError(
        f"The loss {loss!r} reads layer {layer!r}, which is not one of this backend's layer_ids "
        f"({list(taps)}); build the backend with it (a planner adds the layers a loss reads)."
    )


class Backend:
    """One pass of one model over batches: taps, edits and gradients. Subclassed once per framework.

    Parameters
    ----------
    model
        The user's model; never modified (no attribute added, hooks removed, training mode restored).
    layer_ids : sequence of layer ids
        Layers whose raw outputs ``run_batch`` and ``gradients`` return (*taps*), keyed by the id as given: a
        layer name, an integer index (each backend documents what it counts; negative indices count from
        the end) or ``"penultimate"`` (the input of the head layer).
    head_layer_id : layer id, default -1
        The classifier's final layer. When it is a linear layer with a softmax activation, or a softmax
        layer following a linear one, logits are still the pre-softmax values.
    edits : mapping of layer id to function, optional
        ``{layer_id: edit}``: inside every forward of this backend, the raw output of the layer (for
        ``"penultimate"``: the input of the head) is replaced by ``edit(tensor, ops)``, a framework tensor
        of the same shape computed with :class:`Ops` (``ops.native`` for anything else); the layers after
        it, the logits and the taps of later layers see the edited tensor, and a tap of the edited layer
        itself returns the edited tensor. Needs ``"edits"`` in ``provides``.

    Unknown ids raise :class:`LayerNotFoundError` at construction, listing up to 20 available names.
    """

    framework: ClassVar[str] = ""
    #: whether feature maps are [N, ..., C] (Keras) rather than [N, C, ...] (torch); used for default pooling
    channels_last: ClassVar[bool] = False
    #: the optional primitives this backend has; keys of :data:`CAPABILITIES`
    provides: ClassVar[frozenset[str]] = frozenset()
    #: the backend's :class:`Ops`
    ops: ClassVar[Ops] = Ops()

    def __init__(
        self,
        model: Any,
        layer_ids: Sequence[LayerId] = (),
        head_layer_id: LayerId = -1,
        edits: Mapping[LayerId, EditFn] | None = None,
    ) -> None:
        raise NotImplementedError

    @classmethod
    def for_pass(
        cls,
        model: Any,
        layer_ids: Sequence[LayerId] = (),
        head_layer_id: LayerId = -1,
        edits: Mapping[LayerId, EditFn] | None = None,
    ) -> Backend:
        """A backend for one pass of ``model``; a backend may hand back one it built before for the same
        model, layers, head and edits (the Keras backend does, to keep its compiled function)."""
        return cls(model, layer_ids, head_layer_id, edits)

    @classmethod
    def require(cls, capability: str, who: str) -> None:
        """Raise :class:`UnsupportedError` unless this backend provides ``capability`` (needed by ``who``)."""
        if capability not in cls.provides:
            raise UnsupportedError(
                f"The {cls.framework} backend ({cls.__name__}) does not provide {CAPABILITIES[capability]}, "
                f"which {who} needs."
            )

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def layer_names(self) -> list[str]:
        """Names of the addressable layers, in the order integer indices count them."""
        raise NotImplementedError

    def run_batch(self, x: Any) -> tuple[np.ndarray, dict[LayerId, np.ndarray]]:
        """Forward one batch without gradients: ``(logits [B, C], {layer_id: raw output [B, ...]})``."""
        raise NotImplementedError

    def gradients(
        self, x: Any, loss: LossFn, wrt: Sequence[LayerId] = (INPUT,)
    ) -> tuple[np.ndarray, dict[LayerId, np.ndarray], dict[LayerId, np.ndarray]]:
        """Forward one batch and differentiate ``loss(logits, ops)`` (a scalar, summed over the batch).

        ``wrt`` holds :data:`INPUT` (the model input, after any preprocessing the data pipeline did) and/or
        layer ids of this backend's taps (the gradient with respect to that layer's raw output, as
        ``run_batch`` returns it). No parameter gets a gradient, no flag of the model changes.

        Returns ``(logits [B, C], {layer_id: raw output}, {target: gradient, same shape as the target})``, all
        numpy (float16 and bfloat16 as float32). Needs ``"gradients"`` in ``provides``.
        """
        raise NotImplementedError

    def head_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W [C, D], b [C])`` of the head (``logits = penultimate @ W.T + b``); else HeadNotLinearError."""
        raise NotImplementedError

    def weight_shapes(self) -> list[tuple[str, list[tuple[int, ...]]]]:
        """``[(layer name, [shape of each of its weights]), ...]`` for the layers that hold weights, in the
        model's order; reads no weight values and runs nothing."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """A kind of model oodscope can run: how to recognise one (without importing its framework) and which
    backend runs it. Supporting a new kind of model is one backend module plus one entry in
    :data:`MODEL_KINDS`."""

    name: str
    recognises: Callable[[Any], bool]
    module: str
    backend: str


def _defined_in(obj: Any, *roots: str) -> bool:
    return any((klass.__module__ or "").split(".")[0] in roots for klass in type(obj).__mro__)


def _is_keras(obj: Any) -> bool:
    return _defined_in(obj, "keras", "tf_keras") or any(
        (klass.__module__ or "").startswith("tensorflow") and "keras" in klass.__module__
        for klass in type(obj).__mro__
    )


#: the kinds of model, tried in order, the more specific first: a Keras model on the torch backend of Keras
#: is a torch ``nn.Module`` too, and must be run by the Keras backend
MODEL_KINDS: list[ModelKind] = [
    ModelKind("keras", _is_keras, "oodscope.backends.keras", "KerasBackend"),
    ModelKind("torch", lambda obj: _defined_in(obj, "torch"), "oodscope.backends.torch", "TorchBackend"),
]


def framework_of(obj: Any) -> str | None:
    """The name of the :data:`MODEL_KINDS` entry that recognises ``obj`` (``"torch"``, ``"keras"``), or None.

    Reads only ``type(obj).__mro__``, so no framework is imported to answer.
    """
    return next((kind.name for kind in MODEL_KINDS if kind.recognises(obj)), None)


def get_backend(model: Any) -> type[Backend]:
    """The backend class for ``model``'s kind, imported on first use."""
    kind = next((kind for kind in MODEL_KINDS if kind.recognises(model)), None)
    if kind is None:
        raise TypeError(
            f"oodscope cannot run a model of type {type(model).__module__}.{type(model).__qualname__}: "
            "expected a torch.nn.Module or a keras.Model. To score precomputed outputs, wrap them in "
            "oodscope.Features(logits=..., layers={...}) and pass that instead of a model."
        )
    return getattr(importlib.import_module(kind.module), kind.backend)


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or raise ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"This needs the optional dependency {module!r}. Install it with: pip install 'oodscope[{extra}]'"
        ) from error


def layer_not_found(layer_id: LayerId, names: Sequence[str], how: str) -> LayerNotFoundError:
    """A uniform error for an unknown layer id, listing the first 20 names and how to address layers."""
    shown = ", ".join(repr(name) for name in names[:20])
    more = f" ... ({len(names) - 20} more)" if len(names) > 20 else ""
    return LayerNotFoundError(
        f"The model has no layer {layer_id!r}. Available layers: {shown}{more}. {how} "
        f"'{PENULTIMATE}' addresses the input of the head layer."
    )
