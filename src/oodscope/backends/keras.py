"""Keras 3 backend: one functional sub-model returns the logits and the requested layers in one call.

The user's model is only read. Layers are addressed through ``model.layers``; their symbolic outputs in the
model's own graph become the outputs of a new ``keras.Model`` that shares the layers (and so the weights) but
adds nothing to them: no layer is called on new symbolic tensors, so no layer gains a node. Edits of a
layer's output and the zero tensors that gradients with respect to a layer are taken through are applied
while that sub-model runs its graph on concrete tensors, never written into the graph.

It works on every backend of Keras 3. On TensorFlow, passes and gradients are compiled with
``tf.function``, which is faster than calling the model eagerly and gives the same numbers; gradients use
``tf.GradientTape`` there, ``jax.value_and_grad`` on JAX and ``torch.autograd.grad`` on PyTorch.

Rules, in short (details in :class:`KerasBackend`):

- integer ids index ``model.layers`` as Keras lists it: a functional model lists its ``InputLayer`` first,
  a ``Sequential`` model does not;
- logits are always pre-softmax: a ``Dense`` head with a non-linear activation is re-applied without it
  (``penultimate @ kernel + bias``), and an ``Activation`` / ``Softmax`` head contributes its input;
- subclassed models expose only their outputs: logits come from ``model(x)``; layers cannot be captured or
  edited, gradients are taken with respect to the input only.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import keras
import numpy as np

from oodscope.backends import (
    INPUT,
    PENULTIMATE,
    Backend,
    EditFn,
    HeadNotLinearError,
    LayerId,
    LossFn,
    Ops,
    layer_not_found,
    loss_reads_unknown,
    loss_value,
)

try:  # what Functional.call wraps each operation in (it passes `training` on); private, so optional
    from keras.src.models.functional import operation_fn as _keras_operation_fn
except ImportError:  # the sub-model's call context still carries training=False to every layer
    _keras_operation_fn = None

__all__ = ["KerasBackend", "KerasOps", "clear_cache"]

_UNSET = object()

#: model -> {(layer ids, head id, edits): KerasBackend}; weak keys, so an entry goes with its model
_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], KerasBackend]] = weakref.WeakKeyDictionary()

#: how many compiled gradient functions (one per loss and targets) a backend keeps on TensorFlow
_MAX_GRADIENT_FUNCTIONS = 8


def clear_cache() -> None:
    """Forget the compiled passes kept by :meth:`KerasBackend.for_pass`; they are rebuilt when needed."""
    _CACHE.clear()


def _hashable(layer_id: Any) -> Any:
    value = int(layer_id) if _is_integer(layer_id) else layer_id
    hash(value)  # TypeError for an unhashable id
    return (type(value).__name__, value)  # 1 and True stay apart


def _identity(function: Any) -> Any:
    """A cache key for an edit: the object itself when hashable (functions hash by identity, frozen
    dataclasses by value), else its id (the cached backend keeps the object alive, so the id stays unique)."""
    try:
        hash(function)
    except TypeError:
        return ("id", id(function))
    return function


#: where a functional model keeps the calls of its layers (one Node per call); read only
_NODES_BY_DEPTH = "_nodes_by_depth"

_SUBCLASSED_HELP = (
    "A subclassed keras.Model exposes only its outputs: Keras keeps no graph of the layers inside its "
    "call(), so intermediate activations cannot be read without changing the model. To capture layers, "
    "build the same layers as a functional model, e.g. inputs = keras.Input(shape); "
    "x = model.conv1(inputs); ...; keras.Model(inputs, model.head(x)) (the layers, and so the weights, "
    "are shared)."
)


class KerasOps(Ops):
    """:class:`~oodscope.backends.Ops` with ``keras.ops`` (row-wise along the last axis), on every Keras
    backend; ``native`` is ``keras.ops``.

    >>> import numpy as np
    >>> ops = KerasOps()
    >>> z = ops.native.convert_to_tensor(np.array([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]]))
    >>> ops.native.convert_to_numpy(ops.pick(z, ops.argmax(z))).tolist()
    [3.0, 5.0]
    """

    native = keras.ops
    channels_last = True

    def log_softmax(self, z: Any) -> Any:
        return keras.ops.log_softmax(z, axis=-1)

    def logsumexp(self, z: Any) -> Any:
        return keras.ops.logsumexp(z, axis=-1)

    def max(self, z: Any) -> Any:
        return keras.ops.max(z, axis=-1)

    def mean(self, z: Any) -> Any:
        return keras.ops.mean(z, axis=-1)

    def argmax(self, z: Any) -> Any:
        return keras.ops.argmax(z, axis=-1)

    def pick(self, z: Any, index: Any) -> Any:
        picked = keras.ops.take_along_axis(z, keras.ops.expand_dims(index, -1), axis=-1)
        return keras.ops.squeeze(picked, axis=-1)

    def total(self, t: Any) -> Any:
        return keras.ops.sum(t)

    def stop_gradient(self, t: Any) -> Any:
        return keras.ops.stop_gradient(t)

    def minimum(self, t: Any, value: float) -> Any:
        return keras.ops.minimum(t, keras.ops.cast(value, t.dtype))

    def maximum(self, t: Any, value: float) -> Any:
        return keras.ops.maximum(t, keras.ops.cast(value, t.dtype))

    def pool(self, t: Any) -> Any:
        return t if len(t.shape) == 2 else keras.ops.mean(t, axis=tuple(range(1, len(t.shape) - 1)))

    def constant(self, array: Any, like: Any) -> Any:
        return keras.ops.convert_to_tensor(np.asarray(array), dtype=like.dtype)

    def svd(self, m: Any) -> tuple[Any, Any, Any]:
        return keras.ops.svd(m, full_matrices=False)


#: where a tensor of the graph is made: ("input", i) or ("op", id(operation), output index)
_Site = tuple


class _TappedModel(keras.Model):
    """The sub-model: a functional model over the user's graph (its layers and their existing nodes).

    Called with ``modifiers`` (``{site: function(tensor) -> tensor}``), it runs the graph as
    ``Functional.call`` does, replacing the tensors made at those sites by what the functions return, so
    that every operation after them sees the replaced tensor. Without modifiers it is ``Functional.call``.
    """

    def __init__(self, inputs: Any, outputs: Any, name: str) -> None:
        super().__init__(inputs, outputs, name=name)

    def call(self, inputs: Any, training: Any = None, mask: Any = None, modifiers: Any = None) -> Any:
        if not modifiers:
            return super().call(inputs, training=training, mask=mask)
        inputs = list(self._standardize_inputs(inputs))
        for i, tensor in enumerate(inputs):
            modify = modifiers.get(("input", i))
            if modify is not None:
                inputs[i] = modify(tensor)
        mapping = getattr(self, "_nnx_op_mapping", None) or {}  # Keras may run a stand-in of an operation
        by_operation: dict[int, dict[int, Callable[[Any], Any]]] = {}
        for site, modify in modifiers.items():
            if site[0] == "op":
                operation_id = id(mapping[site[1]]) if site[1] in mapping else site[1]
                by_operation.setdefault(operation_id, {})[site[2]] = modify

        def operation_fn(operation: Any) -> Any:
            call = (
                operation
                if _keras_operation_fn is None
                else _keras_operation_fn(operation, training=training)
            )
            modifies = by_operation.get(id(operation))
            if modifies is None:
                return call

            def modified(*args: Any, **kwargs: Any) -> Any:
                outputs = call(*args, **kwargs)
                if keras.ops.is_tensor(outputs) and list(modifies) == [0]:
                    return modifies[0](outputs)
                flat = keras.tree.flatten(outputs)
                for index, modify in modifies.items():
                    flat[index] = modify(flat[index])
                return keras.tree.pack_sequence_as(outputs, flat)

            return modified

        outputs = self._run_through_graph(inputs, operation_fn=operation_fn)
        if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
            return outputs[0]
        return outputs


class KerasBackend(Backend):
    """Run a Keras 3 model over batches, capturing and editing layers and taking gradients, without
    modifying the model.

    Parameters
    ----------
    model : keras.Model
        A built functional or ``Sequential`` model, or a subclassed model (logits only, see below). It is
        never modified: no layer is edited, added or removed, no attribute is set, no layer gains a node,
        weights are only read.
    layer_ids : sequence of layer ids, default ()
        Layers whose activations ``run_batch`` and ``gradients`` return, keyed by the ids exactly as given:

        - a name from ``[layer.name for layer in model.layers]`` (top-level layers; a nested model counts as
          one layer and its output is captured);
        - an integer index into ``model.layers``; negative indices count from the end. For a functional
          model ``model.layers[0]`` is its ``InputLayer``; for a ``Sequential`` model it is the first layer
          that was added (Keras leaves the ``InputLayer`` out of ``Sequential.layers``);
        - ``"penultimate"``: the input of the linear head (see below). This keyword wins over a layer that
          happens to be named ``"penultimate"``.

        A layer must produce one tensor and be called once in the model; layers returning a tuple or dict,
        and layers shared by several branches, raise ``ValueError`` naming the layer.
    head_layer_id : layer id, default -1
        The classifier's final layer, addressed like ``layer_ids``. Logits are always pre-softmax:

        - a ``Dense`` head with a linear activation: logits are its output;
        - a ``Dense`` head with a non-linear activation (e.g. ``activation="softmax"``): logits are
          ``penultimate @ kernel + bias``, computed from the head's input and its weights;
        - an ``Activation`` (any activation) or ``Softmax`` head: logits are its input, and the linear
          head (for ``head_weights`` and ``"penultimate"``) is the layer that produces that input, usually
          the ``Dense`` just before it;
        - any other layer: logits are its output; it must not carry a non-linear ``activation``. An output
          of shape ``[B, 1, ..., 1, C]`` (a 1x1-convolution head) is flattened to ``[B, C]``.
    edits : mapping of layer id to function, optional
        ``{layer_id: edit}``, ids addressed like ``layer_ids``: in every forward of this backend the output
        of the layer (for ``"penultimate"``: the head's input, i.e. the output of the operation making it)
        is replaced by ``edit(tensor, ops)`` with ``ops`` a :class:`KerasOps` (``ops.native`` is
        ``keras.ops``). The result must have the tensor's shape; it is cast back to its dtype. Later layers,
        the logits and the taps see the edited tensor; a tap of the edited layer returns it. The operation
        making an edited tensor must be called once in the model; two ids of the same tensor raise
        ``ValueError``.

    Subclassed models (and a ``Sequential`` model whose layers Keras could not trace) have no graph of
    layers, so only their output is reachable: ``layer_ids`` and ``edits`` must be empty (``ValueError``
    otherwise, with how to wrap the layers in a functional model), the logits are ``model(x)`` itself, and
    gradients are taken with respect to the input only. Keras cannot tell which layer ``call()`` runs last,
    so the head (default: the last layer in ``model.layers``, i.e. the last one assigned in ``__init__``) is
    trusted as given: if it outputs probabilities (a ``Softmax`` layer, or a softmax, sigmoid or log-softmax
    activation) the constructor raises ``ValueError``, and ``head_weights`` reads it when it is a ``Dense``
    with a linear activation. A ``UserWarning`` is raised when the first batch of outputs looks like
    probabilities (a softmax applied inside ``call()``). A ``Sequential`` model that was never built raises
    ``ValueError``: building it would create weights.

    Raises
    ------
    LayerNotFoundError
        For an unknown layer name or an out-of-range index; the message lists the layer names.
    TypeError
        For a layer id that is neither a ``str`` nor an ``int``, or an edit that is not callable.
    ValueError
        For an unbuilt model, a layer with several outputs or several calls, ``"penultimate"`` as the head
        or where the linear head has no single input, logits that cannot be recovered (a softmax head
        of a subclassed model), or edits of a subclassed model.

    Notes
    -----
    Inputs (numpy arrays or tensors) are converted to the dtype of the model's input(s), as ``model(x)``
    does. Outputs come back as numpy arrays in Keras' ``[B, ..., C]`` layout; float16 and bfloat16 (mixed
    precision) as float32. On the TensorFlow backend of Keras, ``run_batch`` and ``gradients`` are
    compiled with ``tf.function`` (one function per pass, and one per loss and set of targets, of which the
    last eight are kept), which gives the numbers of an eager call, faster; on JAX and PyTorch they run
    eagerly (``run_batch`` under ``torch.no_grad()`` on PyTorch). Nothing is set up or undone around a
    pass, so ``with backend:`` is optional.

    Examples
    --------
    >>> import keras, numpy as np
    >>> from oodscope.backends import INPUT
    >>> from oodscope.losses import MaxLogit
    >>> inputs = keras.Input((4,), name="pixels")
    >>> hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(hidden))
    >>> backend = KerasBackend(model, layer_ids=["hidden", "penultimate", -1])
    >>> logits, layers = backend.run_batch(np.zeros((2, 4)))
    >>> logits.shape, layers["hidden"].shape, layers[-1].shape
    ((2, 3), (2, 8), (2, 3))
    >>> bool(np.allclose(keras.ops.softmax(logits), layers[-1]))  # logits are pre-softmax
    True
    >>> backend.layer_names()
    ['pixels', 'hidden', 'head']
    >>> logits, layers, grads = backend.gradients(np.ones((2, 4)), MaxLogit(), wrt=[INPUT, "penultimate"])
    >>> grads[INPUT].shape, grads["penultimate"].shape
    ((2, 4), (2, 8))
    >>> kernel = keras.ops.convert_to_numpy(model.get_layer("head").kernel)
    >>> bool(np.allclose(grads["penultimate"], kernel[:, logits.argmax(axis=1)].T))
    True
    >>> zeroed = KerasBackend(model, edits={"hidden": lambda t, ops: ops.native.zeros_like(t)})
    >>> zeroed.run_batch(np.ones((2, 4)))[0]  # the head's bias, zero at initialization
    array([[0., 0., 0.],
           [0., 0., 0.]], dtype=float32)
    """

    framework: ClassVar[str] = "keras"
    channels_last: ClassVar[bool] = True
    provides: ClassVar[frozenset[str]] = frozenset({"edits", "gradients"})
    ops: ClassVar[Ops] = KerasOps()

    def __init__(
        self,
        model: Any,
        layer_ids: Sequence[LayerId] = (),
        head_layer_id: LayerId = -1,
        edits: Mapping[LayerId, EditFn] | None = None,
    ) -> None:
        if not isinstance(model, keras.Model):
            raise TypeError(f"KerasBackend needs a keras.Model; got {type(model).__name__}.")
        if isinstance(layer_ids, str) or _is_integer(layer_ids):
            raise TypeError(
                f"layer_ids must be a sequence of layer ids, e.g. [{layer_ids!r}]; got {layer_ids!r}."
            )
        if edits is None:
            edits = {}
        if not isinstance(edits, Mapping):
            raise TypeError(
                f"edits must be a mapping {{layer_id: edit(tensor, ops)}}; got {type(edits).__name__}."
            )
        for layer_id, edit in edits.items():
            if not callable(edit):
                raise TypeError(
                    f"The edit of layer {layer_id!r} must be a function edit(tensor, ops) -> tensor; got "
                    f"{type(edit).__name__}."
                )
        # Read through a weak reference, so that a cached backend (see `for_pass`) does not keep the model
        # alive: nothing else built here (the sub-model, the layers, the compiled functions) refers back to
        # it. A backend built directly also holds it strongly, in `_keep`; `for_pass` drops that.
        self._model = weakref.ref(model)
        self._keep: Any = model
        self.layer_ids = list(layer_ids)
        self.edits = dict(edits)
        graph = _graph_of(model)
        self._names = [layer.name for layer in model.layers]
        self._backend = keras.backend.backend()
        self._tensorflow = self._backend == "tensorflow"  # compile with tf.function
        self._torch = self._backend == "torch"

        head = self._resolve(head_layer_id, role="head_layer_id")
        if graph is not None and _is_integer(head_layer_id) and len(graph.outputs) > 1:
            producers = [tensor._keras_history.operation.name for tensor in graph.outputs]
            raise ValueError(
                f"Model {model.name!r} has {len(graph.outputs)} outputs (from layers {producers}), so the "
                f"logits are ambiguous: head_layer_id={head_layer_id!r} would take layer {head.name!r} only "
                "because of its position in model.layers. Pass head_layer_id naming the layer whose output "
                f"is the logits, one of {producers}."
            )
        self._head = head
        self._dense = None  # the Dense whose kernel/bias give the logits, when the logits are linear in it
        self._matmul_head = None  # a Dense head whose activation the logits leave out
        self._inputs = None if graph is None else list(graph.inputs)
        self._edit_sites: dict[_Site, Callable[[Any], Any]] = {}
        self._slot_sites: dict[int, _Site | str] = {}  # a tap's site, or why it has none
        if graph is None:
            self._init_graphless(head)
        else:
            self._init_graph(head, graph)
        self._slot_of = {_hashable(layer_id): slot for layer_id, slot in self._layer_slots.items()}
        self._checked_output = graph is not None
        self._graph = None if graph is None else weakref.ref(graph)  # see `_matches`
        self._layers = tuple(model.layers)
        self._weights = tuple(model.weights)
        self._compiled: dict[Any, Any] = {}
        self._spec: Any = _UNSET

    @property
    def model(self) -> Any:
        """The user's model."""
        return self._model()

    @classmethod
    def for_pass(
        cls,
        model: Any,
        layer_ids: Sequence[LayerId] = (),
        head_layer_id: LayerId = -1,
        edits: Mapping[LayerId, EditFn] | None = None,
    ) -> Backend:
        """A backend for one pass; the one built for the same model, layers, head and edits is reused.

        Building the sub-model and tracing its ``tf.function`` costs far more than a small batch, so, as
        Keras does with ``model.predict``, the compiled pass is kept (while the model lives) and reused by
        every later ``extract`` / ``score`` over that model. Edits are the same when they are the same
        function objects (or equal hashable objects, e.g. frozen dataclasses) for the same layer ids. A
        model that gained or lost layers or weight variables since (``Sequential.add``, ``quantize``) is
        noticed and rebuilt; new values in the same variables (training) need nothing. Edits Keras cannot
        see (replacing a layer's ``activation`` attribute after a first pass) are not noticed: call
        :func:`clear_cache` after them.
        """
        try:
            edit_key = frozenset(
                (_hashable(layer_id), _identity(edit)) for layer_id, edit in (edits or {}).items()
            )
            key = (tuple(_hashable(layer_id) for layer_id in layer_ids), _hashable(head_layer_id), edit_key)
            cached = _CACHE.setdefault(model, {})
        except (TypeError, AttributeError):  # an unhashable id or model, or edits that are no mapping
            return cls(model, layer_ids, head_layer_id, edits)
        backend = cached.get(key)
        if backend is None or not backend._matches(model):
            backend = cached[key] = cls(model, layer_ids, head_layer_id, edits)
            backend._keep = None  # the caller holds the model for the pass; the cache must not
        return backend

    def _matches(self, model: Any) -> bool:
        """Whether ``model`` still has the graph, layers and weight variables this backend was built on (a
        compiled pass reads the variables it was traced with: new ones, e.g. after ``quantize``, need a
        rebuild; new values in the same variables, e.g. after training, do not)."""
        graph = _graph_of(model)
        same_graph = graph is None if self._graph is None else graph is self._graph()
        return (
            same_graph
            and _same_items(model.layers, self._layers)
            and _same_items(model.weights, self._weights)
        )

    # --- construction ------------------------------------------------------------------------------------

    def _resolve(self, layer_id: LayerId, role: str) -> Any:
        layers = self.model.layers
        if isinstance(layer_id, str):
            if layer_id == PENULTIMATE:
                raise ValueError(f"'{PENULTIMATE}' is the input of the head layer; it cannot be the {role}.")
            if layer_id not in self._names:
                raise layer_not_found(layer_id, self._names, self._how())
            return layers[self._names.index(layer_id)]
        if not _is_integer(layer_id):
            raise TypeError(
                f"A Keras {role} must be a layer name (str), an integer index into model.layers or "
                f"'{PENULTIMATE}'; got {layer_id!r} of type {type(layer_id).__name__}."
            )
        index, count = int(layer_id), len(layers)
        if not -count <= index < count:
            raise layer_not_found(
                layer_id, self._names, self._how() + f" Integer indices run from {-count} to {count - 1}."
            )
        return layers[index]

    def _how(self) -> str:
        example = self._names[-2] if len(self._names) > 1 else (self._names or ["dense"])[0]
        first = (
            " For a functional model, index 0 is its InputLayer."
            if self._names and isinstance(self.model.layers[0], keras.layers.InputLayer)
            else ""
        )
        return (
            f"Use a name from [l.name for l in model.layers], e.g. {example!r}, or an integer index into "
            f"model.layers, e.g. -2 (negative indices count from the end).{first}"
        )

    def _init_graph(self, head: Any, graph: Any) -> None:
        head_node = _node(graph, head)
        if _is_activation_layer(head):
            logits_tensor = _single_input(head_node, head)
            producer = logits_tensor._keras_history.operation
            self._linear = producer if isinstance(producer, keras.layers.Layer) else None
            penultimate = None
            if self._linear is not None and not isinstance(self._linear, keras.layers.InputLayer):
                penultimate = _single_input(_node(graph, self._linear), self._linear, required=False)
            if isinstance(self._linear, keras.layers.Dense) and _is_linear(self._linear.activation):
                self._dense = self._linear
        else:
            self._linear = head
            penultimate = _single_input(head_node, head, required=False)
            if isinstance(head, keras.layers.Dense):
                self._dense = head
                if not _is_linear(head.activation):
                    if penultimate is None or len(penultimate.shape) != 2:
                        raise ValueError(
                            f"The Dense head {head.name!r} applies "
                            f"{_activation_name(head.activation)!r} to inputs of shape "
                            f"{getattr(penultimate, 'shape', None)}; oodscope recovers its pre-activation "
                            "logits for [batch, features] inputs only."
                        )
                    _check_not_quantized(head)
                    self._matmul_head = head
            else:
                _check_head_activation(head)
            logits_tensor = None if self._matmul_head is not None else _single_output(head_node, head)
        shape = () if logits_tensor is None else tuple(logits_tensor.shape)
        self._flatten_logits = len(shape) > 2 and all(size == 1 for size in shape[1:-1])
        if logits_tensor is not None and len(shape) != 2 and not self._flatten_logits:
            raise ValueError(
                f"The head layer {head.name!r} gives outputs of shape {logits_tensor.shape}; logits must be "
                "[batch, classes]. Pass head_layer_id= for the layer that outputs the class scores."
            )

        tensors: list[Any] = []  # outputs of the sub-model, each symbolic tensor once

        def slot(tensor: Any) -> int:
            for i, known in enumerate(tensors):
                if known is tensor:
                    return i
            tensors.append(tensor)
            return len(tensors) - 1

        def tensor_of(layer_id: LayerId, role: str) -> Any:
            if isinstance(layer_id, str) and layer_id == PENULTIMATE:
                if penultimate is None:
                    raise ValueError(
                        f"'{PENULTIMATE}' is undefined for this model: the linear head "
                        f"{getattr(self._linear, 'name', None)!r} does not take a single input tensor. "
                        "Request a layer by name or index instead."
                    )
                return penultimate
            layer = self._resolve(layer_id, role=role)
            return _single_output(_node(graph, layer), layer)

        self._logits_slot = slot(penultimate if self._matmul_head is not None else logits_tensor)
        self._layer_slots = {}
        for layer_id in self.layer_ids:
            self._layer_slots[layer_id] = slot(tensor_of(layer_id, "layer id"))
        for index in sorted(set(self._layer_slots.values())):
            try:
                self._slot_sites[index] = self._site(graph, tensors[index], "it")
            except ValueError as error:  # a tap is fine; only a gradient with respect to it needs the site
                self._slot_sites[index] = str(error)
        edited: dict[_Site, LayerId] = {}
        for layer_id, edit in self.edits.items():
            site = self._site(graph, tensor_of(layer_id, "edit layer id"), f"The edited layer {layer_id!r}")
            if site in edited:
                raise ValueError(
                    f"The edits of {edited[site]!r} and {layer_id!r} replace the same tensor; give one edit "
                    "per tensor (compose the two functions into one)."
                )
            edited[site] = layer_id
            self._edit_sites[site] = _edit_applier(layer_id, edit, self.ops)
        self._submodel = _TappedModel(graph.input, tensors, name=f"{self.model.name}_oodscope")

    def _site(self, graph: Any, tensor: Any, what: str) -> _Site:
        """Where the sub-model makes ``tensor``: ``("input", i)`` or ``("op", id(operation), index)``."""
        for i, known in enumerate(self._inputs):
            if known is tensor:
                return ("input", i)
        history = tensor._keras_history
        operation = history.operation
        by_depth = getattr(graph, _NODES_BY_DEPTH, None)
        if by_depth is not None:
            calls = sum(node.operation is operation for nodes in by_depth.values() for node in nodes)
            if calls != 1:
                name = getattr(operation, "name", type(operation).__name__)
                raise ValueError(
                    f"{what} is made by {name!r}, which is called {calls} times in the model, so oodscope "
                    "cannot tell which call to change for edits or gradients; use a layer called once."
                )
        return ("op", id(operation), history.tensor_index)

    def _init_graphless(self, head: Any) -> None:
        if self.layer_ids:
            raise ValueError(
                f"Cannot capture layers {self.layer_ids!r} of {type(self.model).__name__}. "
                + _SUBCLASSED_HELP
            )
        if self.edits:
            raise ValueError(
                f"Cannot edit layers {list(self.edits)!r} of {type(self.model).__name__}. " + _SUBCLASSED_HELP
            )
        if _ends_in_probabilities(head):
            raise ValueError(
                f"The head layer {head.name!r} of subclassed model {type(self.model).__name__} applies "
                f"{_activation_name(getattr(head, 'activation', None) or keras.activations.softmax)!r}, and "
                "a subclassed model's pre-activation logits cannot be read from outside. Return logits from "
                "call() (apply the softmax in the loss or afterwards), or build the model as a functional "
                "model. " + _SUBCLASSED_HELP
            )
        self._linear = head
        if isinstance(head, keras.layers.Dense) and _is_linear(head.activation):
            self._dense = head
        self._submodel = None
        self._layer_slots = {}
        self._flatten_logits = False

    # --- forward passes ----------------------------------------------------------------------------------

    def _forward(
        self, x: Any, extra: Mapping[int, Callable[[Any], Any]] | None = None
    ) -> tuple[Any, list[Any]]:
        """Logits and the sub-model's outputs; ``extra`` maps output slots to functions applied to those
        tensors where they are made, after the edits (what gradients with respect to layers add)."""
        if self._submodel is None:
            logits = self.model(x, training=False)
            if not keras.ops.is_tensor(logits):
                raise ValueError(
                    f"The model returns {type(logits).__name__}, not one tensor of logits; oodscope needs a "
                    "classifier with a single output."
                )
            return logits, []
        modifiers = self._modifiers(extra or {})
        if modifiers:
            outputs = self._submodel(x, training=False, modifiers=modifiers)
        else:
            outputs = self._submodel(x, training=False)
        if len(self._submodel.outputs) == 1:
            outputs = [outputs]
        logits = outputs[self._logits_slot]
        if self._flatten_logits:  # e.g. a 1x1-convolution head: [B, 1, 1, C] -> [B, C]
            logits = keras.ops.reshape(logits, (-1, logits.shape[-1]))
        if self._matmul_head is not None:
            kernel, bias = self._matmul_head.kernel, self._matmul_head.bias
            logits = keras.ops.matmul(logits, keras.ops.cast(kernel, logits.dtype))
            if bias is not None:
                logits = keras.ops.add(logits, keras.ops.cast(bias, logits.dtype))
        return logits, list(outputs)

    def _modifiers(self, extra: Mapping[int, Callable[[Any], Any]]) -> dict[_Site, Callable[[Any], Any]]:
        modifiers = dict(self._edit_sites)
        for slot, modify in extra.items():
            site = self._slot_sites[slot]
            edit = modifiers.get(site)
            modifiers[site] = modify if edit is None else _chain(edit, modify)
        return modifiers

    def _compiled_call(self, key: Any, function: Callable[[Any], Any], x: Any) -> Any:
        """``function(x)``, compiled with ``tf.function`` on TensorFlow (once per ``key``), else eager.

        A single-input model gets a signature with a free batch size, so it is traced once. Inputs that do
        not fit it (e.g. a missing channel axis, which Keras adds) use a second function that may retrace.
        """
        if not self._tensorflow:
            return function(x)
        import tensorflow as tf

        if self._spec is _UNSET:
            self._spec = self._input_spec()
        spec = self._spec
        fits = spec is not None and keras.ops.is_tensor(x) and spec.is_compatible_with(x)
        full_key = (key, fits)
        compiled = self._compiled.get(full_key)
        if compiled is None:
            if key != "forward":  # gradient functions: keep the most recent few
                gradient_keys = [known for known in self._compiled if known[0] != "forward"]
                for stale in gradient_keys[: max(0, len(gradient_keys) - _MAX_GRADIENT_FUNCTIONS + 1)]:
                    del self._compiled[stale]
            if fits:
                compiled = tf.function(function, input_signature=[spec])
            else:
                compiled = tf.function(function, reduce_retracing=True)
            self._compiled[full_key] = compiled
        return compiled(x)

    def _input_spec(self) -> Any:
        if self._inputs is None or len(self._inputs) != 1:
            return None
        import tensorflow as tf

        symbolic = self._inputs[0]
        return tf.TensorSpec((None, *symbolic.shape[1:]), symbolic.dtype)

    def _convert(self, x: Any) -> Any:
        if self._inputs is None:
            tensor = keras.ops.convert_to_tensor(x)
            dtype = getattr(self.model, "input_dtype", None)
            if dtype and _is_float(tensor) and keras.backend.standardize_dtype(tensor.dtype) != dtype:
                tensor = keras.ops.cast(tensor, dtype)
            return tensor
        inputs = self._inputs
        if len(inputs) == 1 and not isinstance(x, (list, tuple, dict)):
            return keras.ops.convert_to_tensor(x, dtype=inputs[0].dtype)
        return keras.tree.map_structure(keras.ops.convert_to_tensor, x)

    def _no_grad(self) -> Any:
        if self._torch:
            import torch

            return torch.no_grad()
        return contextlib.nullcontext()

    # --- gradients, per Keras backend ---------------------------------------------------------------------

    def _loss_value(self, loss: LossFn, logits: Any, outputs: Sequence[Any]) -> Any:
        if keras.backend.standardize_dtype(logits.dtype) in ("float16", "bfloat16"):
            logits = keras.ops.cast(logits, "float32")  # the loss in float32, as the outputs come back

        def tensor_of(layer: LayerId) -> Any:
            slot = self._slot_of.get(_hashable(layer))
            if slot is None:
                raise loss_reads_unknown(loss, layer, list(self.layer_ids))
            return outputs[slot]

        value = loss_value(loss, logits, self.ops, tensor_of)
        shape = getattr(value, "shape", None)
        if shape is None or len(shape) != 0:
            raise ValueError(
                f"The loss {loss!r} returned {type(value).__name__} of shape {shape}; gradients need a "
                "scalar tensor (sum over the batch, e.g. ops.total(...))."
            )
        return value

    def _tensorflow_gradients(self, x: Any, loss: LossFn, want_input: bool, slots: tuple[int, ...]) -> Any:
        import tensorflow as tf

        with tf.GradientTape(watch_accessed_variables=False) as tape:
            if want_input:
                tape.watch(x)
            deltas: dict[int, Any] = {}

            def delta_for(slot: int) -> Callable[[Any], Any]:
                def add(tensor: Any) -> Any:
                    _check_float_target(tensor, slot, self._layer_slots)
                    delta = deltas[slot] = tf.zeros_like(tensor)
                    tape.watch(delta)
                    return tensor + delta

                return add

            logits, outputs = self._forward(x, {slot: delta_for(slot) for slot in slots})
            value = self._loss_value(loss, logits, outputs)
        sources = [keras.tree.flatten(x) if want_input else [], [deltas[slot] for slot in slots]]
        grads = tape.gradient(value, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return logits, outputs, grads[0], grads[1]

    def _torch_gradients(self, x: Any, loss: LossFn, want_input: bool, slots: tuple[int, ...]) -> Any:
        import torch

        with torch.enable_grad():  # also when the caller runs under torch.no_grad()
            if want_input:
                x = keras.tree.map_structure(lambda leaf: leaf.detach().clone().requires_grad_(True), x)
            deltas: dict[int, Any] = {}

            def delta_for(slot: int) -> Callable[[Any], Any]:
                def add(tensor: Any) -> Any:
                    _check_float_target(tensor, slot, self._layer_slots)
                    delta = deltas[slot] = torch.zeros_like(tensor, requires_grad=True)
                    return tensor + delta

                return add

            logits, outputs = self._forward(x, {slot: delta_for(slot) for slot in slots})
            value = self._loss_value(loss, logits, outputs)
            sources = [*(keras.tree.flatten(x) if want_input else []), *(deltas[slot] for slot in slots)]
            if value.requires_grad:
                grads = list(torch.autograd.grad(value, sources, allow_unused=True))
            else:  # no target reaches the loss
                grads = [None] * len(sources)
        grads = [
            torch.zeros_like(source) if grad is None else grad
            for source, grad in zip(sources, grads, strict=True)
        ]
        outputs = [output.detach() for output in outputs]
        split = len(sources) - len(slots)
        return logits.detach(), outputs, grads[:split], grads[split:]

    def _jax_gradients(self, x: Any, loss: LossFn, want_input: bool, slots: tuple[int, ...]) -> Any:
        import jax

        zeros = tuple(keras.ops.zeros(shape, dtype) for shape, dtype in self._target_shapes(x, slots))

        def function(inputs: Any, deltas: tuple[Any, ...]) -> Any:
            def add(delta: Any) -> Callable[[Any], Any]:
                return lambda tensor: tensor + keras.ops.cast(delta, tensor.dtype)

            logits, outputs = self._forward(
                inputs, {slot: add(d) for slot, d in zip(slots, deltas, strict=True)}
            )
            return self._loss_value(loss, logits, outputs), (logits, outputs)

        argnums = (0, 1) if want_input else (1,)
        (_, (logits, outputs)), grads = jax.value_and_grad(function, argnums=argnums, has_aux=True)(x, zeros)
        input_grads = keras.tree.flatten(grads[0]) if want_input else []
        return logits, outputs, input_grads, list(grads[-1])

    def _target_shapes(self, x: Any, slots: tuple[int, ...]) -> list[tuple[tuple[int, ...], str]]:
        """Shapes and dtypes of the sub-model outputs at ``slots`` for the batch ``x`` (JAX differentiates
        with respect to arguments, so the zero tensors added to the layers are made before the forward)."""
        symbolic = [self._submodel.outputs[slot] for slot in slots]
        for tensor, slot in zip(symbolic, slots, strict=True):
            if "float" not in keras.backend.standardize_dtype(tensor.dtype):
                _check_float_target(tensor, slot, self._layer_slots)
        batch = keras.tree.flatten(x)[0].shape[0]
        shapes = [(batch, *tensor.shape[1:]) for tensor in symbolic]
        if any(size is None for shape in shapes for size in shape):  # sizes known only for this batch
            outputs = self._forward(x)[1]
            shapes = [tuple(outputs[slot].shape) for slot in slots]
        return [(shape, tensor.dtype) for shape, tensor in zip(shapes, symbolic, strict=True)]

    # --- the Backend contract ----------------------------------------------------------------------------

    def layer_names(self) -> list[str]:
        """Names of ``model.layers``, in the order integer indices count them."""
        return list(self._names)

    def run_batch(self, x: Any) -> tuple[np.ndarray, dict[LayerId, np.ndarray]]:
        """Forward one batch (numpy or tensor) in inference mode, with the backend's edits.

        Returns
        -------
        logits : np.ndarray of shape [B, C]
            Pre-softmax logits.
        activations : dict
            ``{layer_id: raw activation [B, ...]}`` for every requested id, as given; an id that names the
            same layer as another shares its array.
        """
        with self._no_grad():
            logits, outputs = self._compiled_call("forward", self._forward, self._convert(x))
            return self._results(logits, outputs)

    def _results(self, logits: Any, outputs: list[Any]) -> tuple[np.ndarray, dict[LayerId, np.ndarray]]:
        logits = _to_numpy(logits)
        if self._submodel is None:
            self._check_graphless_output(logits)
        arrays = [_to_numpy(output) for output in outputs]
        return logits, {layer_id: arrays[i] for layer_id, i in self._layer_slots.items()}

    def gradients(
        self, x: Any, loss: LossFn, wrt: Sequence[LayerId] = (INPUT,)
    ) -> tuple[np.ndarray, dict[LayerId, np.ndarray], dict[LayerId, np.ndarray]]:
        """Forward one batch, with the backend's edits, and differentiate ``loss(logits, ops)``.

        Parameters
        ----------
        x
            One batch, as for :meth:`run_batch`.
        loss
            A function ``loss(logits, ops) -> scalar`` (e.g. from :mod:`oodscope.losses`) of the [B, C]
            pre-softmax logits tensor (float32 when the model computes in float16 or bfloat16) and
            :class:`KerasOps`, summed over the batch.
        wrt : sequence of targets, default (INPUT,)
            :data:`~oodscope.backends.INPUT` for the model input as converted (to the dtype of the model's
            input), and/or ids from this backend's ``layer_ids`` for the raw output of that layer (after its
            edit, as ``run_batch`` returns it). The input of a subclassed model is its only target.

        Returns
        -------
        logits : np.ndarray [B, C]
        activations : dict
            As ``run_batch`` returns them.
        gradients : dict
            ``{target: gradient}``, each of the target's shape (for a model with several inputs, the input
            gradient has the structure of ``x``); zeros where the loss does not depend on the target.

        Raises
        ------
        ValueError
            For a target that is neither ``INPUT`` nor one of ``layer_ids``, ``INPUT`` of a model with
            integer inputs, a layer with an integer output, a layer made by an operation that the model
            calls several times, or a loss that does not return a scalar.
        """
        if not callable(loss):
            raise TypeError(
                f"loss must be a function loss(logits, ops) -> scalar; got {type(loss).__name__}."
            )
        if isinstance(wrt, str) or _is_integer(wrt):
            raise TypeError(f"wrt must be a sequence of targets, e.g. [{wrt!r}]; got {wrt!r}.")
        want_input, slots = False, []
        for target in wrt:
            if isinstance(target, str) and target == INPUT:
                want_input = True
                continue
            slot = self._target_slot(target)
            if slot not in slots:
                slots.append(slot)
        tensor = self._convert(x)
        if want_input and not all(_is_float(leaf) for leaf in keras.tree.flatten(tensor)):
            raise ValueError(
                "A gradient with respect to the input needs floating-point model inputs; this model takes "
                f"{[keras.backend.standardize_dtype(leaf.dtype) for leaf in keras.tree.flatten(tensor)]}."
            )
        if not want_input and not slots:
            logits, layers = self.run_batch(x)
            return logits, layers, {}
        key = (tuple(slots), want_input)
        method = getattr(self, f"_{self._backend}_gradients", None)
        if method is None:
            raise NotImplementedError(
                "oodscope takes gradients on the tensorflow, jax and torch backends of Keras; this Keras "
                f"runs on {keras.backend.backend()!r}."
            )

        def differentiate(inputs: Any) -> Any:
            return method(inputs, loss, want_input, tuple(slots))

        try:
            hash(loss)
        except TypeError:  # cannot key a compiled function by it: run eagerly
            logits, outputs, input_grads, slot_grads = differentiate(tensor)
        else:
            # a loss whose constants change (learned state) says so by its state_token: a new trace
            token = getattr(loss, "state_token", None)
            logits, outputs, input_grads, slot_grads = self._compiled_call(
                ("gradients", loss, token, *key), differentiate, tensor
            )
        logits, layers = self._results(logits, outputs)
        grads: dict[LayerId, Any] = {}
        if want_input:
            grads[INPUT] = keras.tree.pack_sequence_as(tensor, [_to_numpy(grad) for grad in input_grads])
        by_slot = {slot: _to_numpy(grad) for slot, grad in zip(slots, slot_grads, strict=True)}
        for target in wrt:
            if not (isinstance(target, str) and target == INPUT):
                grads[target] = by_slot[self._slot_of[_hashable(target)]]
        return logits, layers, grads

    def _target_slot(self, target: Any) -> int:
        try:
            slot = self._slot_of.get(_hashable(target))
        except TypeError:
            slot = None
        if slot is None:
            known = ", ".join(repr(layer_id) for layer_id in self.layer_ids) or "none"
            raise ValueError(
                f"Cannot take a gradient with respect to {target!r}: a target is INPUT "
                f"({INPUT!r}) or one of the backend's layer_ids ({known})."
            )
        site = self._slot_sites[slot]
        if isinstance(site, str):
            raise ValueError(site.replace("it is made", f"{target!r} is made", 1))
        return slot

    def _check_graphless_output(self, logits: np.ndarray) -> None:
        if self._checked_output:
            return
        self._checked_output = True
        if logits.ndim != 2:
            raise ValueError(f"The model's output has shape {logits.shape}; logits must be [batch, classes].")
        if (
            logits.shape[1] > 1
            and (logits >= 0).all()
            and np.allclose(logits.sum(axis=1, dtype=np.float64), 1.0, atol=1e-3)
        ):
            warnings.warn(
                f"The outputs of {type(self.model).__name__} look like probabilities (non-negative, rows "
                "summing to 1); oodscope expects pre-softmax logits. If call() ends with a softmax, return "
                "the logits instead.",
                UserWarning,
                stacklevel=3,
            )

    def head_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W [C, D], b [C])`` with ``W`` the head ``Dense`` kernel transposed; ``b`` zeros without bias.

        Raises
        ------
        HeadNotLinearError
            When the linear head is not a ``Dense`` layer, or when an ``Activation`` / ``Softmax`` head
            follows a ``Dense`` that has a non-linear activation of its own.
        """
        dense = self._dense
        if dense is None:
            head, linear = self._head, self._linear
            if linear is None:
                reason = f"the input of the {type(head).__name__} head {head.name!r} is not made by a layer"
            elif linear is not head and isinstance(linear, keras.layers.Dense):
                reason = (
                    f"the Dense layer {linear.name!r} feeding the {type(head).__name__} head {head.name!r} "
                    f"applies the activation {_activation_name(linear.activation)!r}, so the logits are not "
                    "linear in its input"
                )
            else:
                reason = f"the head layer {linear.name!r} is a {type(linear).__name__}, not a Dense layer"
            raise HeadNotLinearError(
                f"The model has no linear head (W, b): {reason}. Pass head_layer_id= for the final Dense "
                "layer, or use a detector that does not need the head weights."
            )
        _check_not_quantized(dense)
        weight = np.array(_variable_to_numpy(dense.kernel).T)
        if dense.bias is None:
            return weight, np.zeros(weight.shape[0], dtype=weight.dtype)
        return weight, np.array(_variable_to_numpy(dense.bias))

    def weight_shapes(self) -> list[tuple[str, list[tuple[int, ...]]]]:
        """Layers of ``model.layers`` that hold weights (a nested model counts as one layer, with all of its
        weights), with the shapes of ``layer.weights``."""
        return [
            (layer.name, [tuple(weight.shape) for weight in layer.weights])
            for layer in self.model.layers
            if layer.weights
        ]


def _chain(first: Callable[[Any], Any], second: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda tensor: second(first(tensor))


def _edit_applier(layer_id: LayerId, edit: EditFn, ops: Ops) -> Callable[[Any], Any]:
    """``edit(tensor, ops)``, checked to be a tensor of the same shape, cast back to the tensor's dtype."""

    def apply(tensor: Any) -> Any:
        result = edit(tensor, ops)
        if not keras.ops.is_tensor(result):
            raise TypeError(
                f"The edit of layer {layer_id!r} returned {type(result).__name__}; it must return a tensor "
                "(use ops.native, i.e. keras.ops, e.g. ops.native.minimum(tensor, 1.0))."
            )
        shape, new_shape = tuple(tensor.shape), tuple(result.shape)
        if len(shape) != len(new_shape) or any(
            old is not None and new is not None and old != new
            for old, new in zip(shape, new_shape, strict=False)
        ):
            raise ValueError(
                f"The edit of layer {layer_id!r} changed the shape of its output from {shape} to "
                f"{new_shape}; an edit must keep the shape."
            )
        if keras.backend.standardize_dtype(result.dtype) != keras.backend.standardize_dtype(tensor.dtype):
            result = keras.ops.cast(result, tensor.dtype)
        return result

    return apply


def _check_float_target(tensor: Any, slot: int, slots: Mapping[LayerId, int]) -> None:
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if "float" not in dtype:
        ids = [layer_id for layer_id, known in slots.items() if known == slot]
        named = repr(ids[0]) if len(ids) == 1 else repr(ids)
        raise ValueError(
            f"Cannot take a gradient with respect to layer {named}: its output is {dtype}, not a float."
        )


class _PublicNode:
    """The first call of a layer, through the public ``layer.input`` / ``layer.output``."""

    def __init__(self, layer: Any) -> None:
        self.input_tensors = keras.tree.flatten(layer.input)
        self.output_tensors = keras.tree.flatten(layer.output)


def _graph_of(model: Any) -> Any:
    """The functional graph of ``model`` (a Sequential model keeps one inside); None when it has none."""
    if isinstance(model, keras.Sequential):
        if not model.built:
            raise ValueError(
                f"Sequential model {model.name!r} has not been built, so it has no weights or input shape "
                "yet. Build it first: start it with keras.Input(shape=...), call model.build((None, *shape)) "
                "or call it once on a batch, then train or load its weights."
            )
        return getattr(model, "_functional", None)
    if isinstance(model, keras.Function):  # functional models, including functional-style subclasses
        return model
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) has not been built. Call it once on a batch "
            "(or train or load it) first."
        )
    return None


def _same_items(items: Sequence[Any], known: tuple[Any, ...]) -> bool:
    return len(items) == len(known) and all(map(operator.is_, items, known))


def _node(graph: Any, layer: Any) -> Any:
    """The call of ``layer`` inside ``graph`` (a layer may also be called in other models)."""
    by_depth = getattr(graph, _NODES_BY_DEPTH, None)
    if by_depth is None:  # public fallback: the first call of the layer
        return _PublicNode(layer)
    nodes = [node for nodes in by_depth.values() for node in nodes if node.operation is layer]
    if len(nodes) != 1:
        raise ValueError(
            f"Layer {layer.name!r} is called {len(nodes)} times in the model, so its activation is "
            "ambiguous; request a layer that is called once (e.g. the one after it)."
        )
    return nodes[0]


def _to_numpy(tensor: Any) -> np.ndarray:
    array = keras.ops.convert_to_numpy(tensor)
    if array.dtype == np.float16 or array.dtype.name == "bfloat16":  # mixed precision: hand out float32
        return array.astype(np.float32)
    return array


def _variable_to_numpy(variable: Any) -> np.ndarray:
    # numpy 2 warns when np.array() converts a TensorFlow variable; Keras variables have their own numpy()
    return variable.numpy() if hasattr(variable, "numpy") else keras.ops.convert_to_numpy(variable)


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_float(tensor: Any) -> bool:
    return "float" in keras.backend.standardize_dtype(tensor.dtype)


def _is_linear(activation: Any) -> bool:
    return activation is None or activation is keras.activations.linear


def _activation_name(activation: Any) -> str:
    return getattr(activation, "__name__", repr(activation))


def _ends_in_probabilities(layer: Any) -> bool:
    probabilities = (keras.activations.softmax, keras.activations.sigmoid, keras.activations.log_softmax)
    return isinstance(layer, keras.layers.Softmax) or getattr(layer, "activation", None) in probabilities


def _is_activation_layer(layer: Any) -> bool:
    return isinstance(layer, (keras.layers.Activation, keras.layers.Softmax))


def _check_head_activation(layer: Any) -> None:
    activation = getattr(layer, "activation", None)
    if callable(activation) and not _is_linear(activation):
        name = _activation_name(activation)
        raise ValueError(
            f"The head layer {layer.name!r} ({type(layer).__name__}) applies the activation {name!r}, and "
            "oodscope recovers pre-activation logits only for Dense heads. Pass head_layer_id= for a layer "
            "whose output is the logits."
        )


def _check_not_quantized(dense: Any) -> None:
    mode = getattr(dense, "quantization_mode", None)
    if mode:
        raise NotImplementedError(
            f"The head layer {dense.name!r} is quantized ({mode}); oodscope reads float Dense heads only."
        )


def _single_input(node: Any, layer: Any, required: bool = True) -> Any:
    tensors = node.input_tensors
    if len(tensors) == 1:
        return tensors[0]
    if not required:
        return None
    raise ValueError(f"Layer {layer.name!r} takes {len(tensors)} input tensors; expected one.")


def _single_output(node: Any, layer: Any) -> Any:
    tensors = node.output_tensors
    if len(tensors) != 1:
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) returns {len(tensors)} tensors (a tuple, list or "
            "dict); oodscope captures layers that return one tensor. Request a layer that consumes one of "
            "them instead."
        )
    return tensors[0]
