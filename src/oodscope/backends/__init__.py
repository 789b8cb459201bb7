"""Framework backends: the only place where torch and Keras code lives.

A backend runs one model over batches and hands back numpy arrays. The rest of the library never sees a
framework tensor. Backends are picked from the model's type and imported only then, so ``import oodscope``
loads no framework.

The contract (see :class:`Backend`) is deliberately small:

- resolve layer ids (names, integer indices, ``"penultimate"``) without touching the model;
- a context manager for one pass: set up (torch: hooks, eval mode) on enter, undo everything on exit,
  also when the user's forward raises;
- ``run_batch(x)`` -> pre-softmax logits and the raw activations of the requested layers, as numpy;
- ``head_weights()`` -> the final linear layer's (W [C, D], b [C]);
- ``odin_logits(x, temperature, eps)`` -> logits of the ODIN-perturbed input (the one input-gradient need).
"""

from __future__ import annotations

import importlib
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = ["Backend", "HeadNotLinearError", "LayerNotFoundError", "get_backend", "framework_of"]

LayerId = Hashable
PENULTIMATE = "penultimate"


class LayerNotFoundError(KeyError):
    """A requested layer id does not exist in the model; the message lists the available names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class HeadNotLinearError(ValueError):
    """The head layer is not a linear (dense / fully connected) layer, so (W, b) do not exist."""


class Backend:
    """One pass of one model over batches, capturing named layers. Subclassed once per framework.

    Parameters
    ----------
    model
        The user's model; never modified (no attribute added, hooks removed, training mode restored).
    layer_ids : sequence of layer ids
        Layers whose activations ``run_batch`` returns, keyed by the id as given: a layer name, an integer
        index (each backend documents what it counts; negative indices count from the end) or
        ``"penultimate"`` (the input of the head layer).
    head_layer_id : layer id, default -1
        The classifier's final layer. When it is a linear layer with a softmax activation, or a softmax
        layer following a linear one, logits are still the pre-softmax values.

    Unknown ids raise :class:`LayerNotFoundError` at construction, listing up to 20 available names.
    """

    framework: ClassVar[str] = ""
    #: whether feature maps are [N, ..., C] (Keras) rather than [N, C, ...] (torch); used for default pooling
    channels_last: ClassVar[bool] = False

    def __init__(self, model: Any, layer_ids: Sequence[LayerId] = (), head_layer_id: LayerId = -1) -> None:
        raise NotImplementedError

    @classmethod
    def for_pass(cls, model: Any, layer_ids: Sequence[LayerId] = (), head_layer_id: LayerId = -1) -> Backend:
        """A backend for one pass of ``model``; a backend may hand back one it built before for the same
        model, layers and head (the Keras backend does, to keep its compiled function)."""
        return cls(model, layer_ids, head_layer_id)

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def layer_names(self) -> list[str]:
        """Names of the addressable layers, in the order integer indices count them."""
        raise NotImplementedError

    def run_batch(self, x: Any) -> tuple[np.ndarray, dict[LayerId, np.ndarray]]:
        """Forward one batch: ``(logits [B, C], {layer_id: raw activation [B, ...]})`` as numpy arrays."""
        raise NotImplementedError

    def head_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W [C, D], b [C])`` of the head (``logits = penultimate @ W.T + b``); else HeadNotLinearError."""
        raise NotImplementedError

    def odin_logits(self, x: Any, temperature: float, eps: float) -> np.ndarray:
        """Logits of ``x − eps · sign(∇ₓ CE(f(x) / T, argmax f(x)))``, as numpy [B, C]."""
        raise NotImplementedError


_BACKENDS = {
    "torch": ("oodscope.backends.torch", "TorchBackend"),
    "keras": ("oodscope.backends.keras", "KerasBackend"),
}


def framework_of(obj: Any) -> str | None:
    """``"torch"``, ``"keras"`` or None, from the modules that define the object's class hierarchy.

    Reads only ``type(obj).__mro__``, so no framework is imported to answer.
    """
    for klass in type(obj).__mro__:
        root = (klass.__module__ or "").split(".")[0]
        if root == "torch":
            return "torch"
        if root in ("keras", "tf_keras") or (root == "tensorflow" and "keras" in klass.__module__):
            return "keras"
    return None


def get_backend(model: Any) -> type[Backend]:
    """The backend class for ``model``'s framework, imported on first use."""
    framework = framework_of(model)
    if framework is None:
        raise TypeError(
            f"oodscope cannot run a model of type {type(model).__module__}.{type(model).__qualname__}: "
            "expected a torch.nn.Module or a keras.Model. To score precomputed outputs, wrap them in "
            "oodscope.Features(logits=..., layers={...}) and pass that instead of a model."
        )
    module_name, class_name = _BACKENDS[framework]
    return getattr(importlib.import_module(module_name), class_name)


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
