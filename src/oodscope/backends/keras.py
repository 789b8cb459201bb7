"""Keras 3 backend: one functional sub-model returns the logits and the requested layers in one call.

The user's model is only read. Layers are addressed through ``model.layers``; their symbolic outputs in the
model's own graph become the outputs of a new ``keras.Model`` that shares the layers (and so the weights) but
adds nothing to them. On the TensorFlow backend of Keras the sub-model is called inside a ``tf.function``,
which is faster than calling the model eagerly and gives the same numbers.

Rules, in short (details in :class:`KerasBackend`):

- integer ids index ``model.layers`` as Keras lists it: a functional model lists its ``InputLayer`` first,
  a ``Sequential`` model does not;
- logits are always pre-softmax: a ``Dense`` head with a non-linear activation is re-applied without it
  (``penultimate @ kernel + bias``), and an ``Activation`` / ``Softmax`` head contributes its input;
- subclassed models expose only their outputs: logits come from ``model(x)``; layers cannot be captured.
"""

from __future__ import annotations

import operator
import warnings
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar

import keras
import numpy as np

from oodscope.backends import (
    PENULTIMATE,
    Backend,
    HeadNotLinearError,
    LayerId,
    layer_not_found,
)

__all__ = ["KerasBackend", "clear_cache"]

_UNSET = object()

#: model -> {(layer ids, head id): KerasBackend}; weak keys, so an entry goes with its model
_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[Any, Any], KerasBackend]] = weakref.WeakKeyDictionary()


def clear_cache() -> None:
    """Forget the compiled passes kept by :meth:`KerasBackend.for_pass`; they are rebuilt when needed."""
    _CACHE.clear()


def _hashable(layer_id: Any) -> Any:
    value = int(layer_id) if _is_integer(layer_id) else layer_id
    hash(value)  # TypeError for an unhashable id
    return (type(value).__name__, value)  # 1 and True stay apart


#: where a functional model keeps the calls of its layers (one Node per call); read only
_NODES_BY_DEPTH = "_nodes_by_depth"

_SUBCLASSED_HELP = (
    "A subclassed keras.Model exposes only its outputs: Keras keeps no graph of the layers inside its "
    "call(), so intermediate activations cannot be read without changing the model. To capture layers, "
    "build the same layers as a functional model, e.g. inputs = keras.Input(shape); "
    "x = model.conv1(inputs); ...; keras.Model(inputs, model.head(x)) (the layers, and so the weights, "
    "are shared)."
)


class KerasBackend(Backend):
    """Run a Keras 3 model over batches, capturing layers, without modifying the model.

    Parameters
    ----------
    model : keras.Model
        A built functional or ``Sequential`` model, or a subclassed model (logits only, see below). It is
        never modified: no layer is edited, added or removed, no attribute is set, weights are only read.
    layer_ids : sequence of layer ids, default ()
        Layers whose activations ``run_batch`` returns, keyed by the ids exactly as given:

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

    Subclassed models (and a ``Sequential`` model whose layers Keras could not trace) have no graph of
    layers, so only their output is reachable: ``layer_ids`` must be empty (``ValueError`` otherwise, with
    how to wrap the layers in a functional model), and the logits are ``model(x)`` itself. Keras cannot tell
    which layer ``call()`` runs last, so the head (default: the last layer in ``model.layers``, i.e. the
    last one assigned in ``__init__``) is trusted as given: if it outputs probabilities (a ``Softmax``
    layer, or a softmax, sigmoid or log-softmax activation) the constructor raises ``ValueError``, and
    ``head_weights`` reads it when it is a ``Dense`` with a linear activation. A ``UserWarning`` is raised
    when the first batch of outputs looks like probabilities (a softmax applied inside ``call()``).
    A ``Sequential`` model that was never built raises ``ValueError``: building it would create weights.

    Raises
    ------
    LayerNotFoundError
        For an unknown layer name or an out-of-range index; the message lists the layer names.
    TypeError
        For a layer id that is neither a ``str`` nor an ``int``.
    ValueError
        For an unbuilt model, a layer with several outputs or several calls, ``"penultimate"`` as the head
        or where the linear head has no single input, or logits that cannot be recovered (a softmax head
        of a subclassed model).

    Notes
    -----
    Inputs (numpy arrays or tensors) are converted to the dtype of the model's input(s), as ``model(x)``
    does. Outputs come back as numpy arrays in Keras' ``[B, ..., C]`` layout; float16 and bfloat16 (mixed
    precision) as float32. ``run_batch`` and ``odin_logits`` are compiled with ``tf.function`` on the
    TensorFlow backend of Keras, which gives the numbers of an eager call, faster; other Keras backends
    run the sub-model eagerly, and ``odin_logits`` raises ``NotImplementedError`` there. Nothing is set up
    or undone around a pass, so ``with backend:`` is optional.

    Examples
    --------
    >>> import keras, numpy as np
    >>> inputs = keras.Input((4,), name="pixels")
    >>> hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(hidden))
    >>> backend = KerasBackend(model, layer_ids=["hidden", "penultimate", -1])
    >>> logits, layers = backend.run_batch(np.zeros((2, 4)))
    >>> logits.shape, layers["hidden"].shape, layers[-1].shape
    ((2, 3), (2, 8), (2, 3))
    >>> bool(np.allclose(keras.ops.softmax(logits), layers[-1]))  # logits are pre-softmax
    True
    >>> backend.layer_names()
    ['pixels', 'hidden', 'head']
    """

    framework: ClassVar[str] = "keras"
    channels_last: ClassVar[bool] = True

    def __init__(self, model: Any, layer_ids: Sequence[LayerId] = (), head_layer_id: LayerId = -1) -> None:
        if not isinstance(model, keras.Model):
            raise TypeError(f"KerasBackend needs a keras.Model; got {type(model).__name__}.")
        if isinstance(layer_ids, str) or _is_integer(layer_ids):
            raise TypeError(
                f"layer_ids must be a sequence of layer ids, e.g. [{layer_ids!r}]; got {layer_ids!r}."
            )
        # Read through a weak reference, so that a cached backend (see `for_pass`) does not keep the model
        # alive: nothing else built here (the sub-model, the layers, the compiled functions) refers back to
        # it. A backend built directly also holds it strongly, in `_keep`; `for_pass` drops that.
        self._model = weakref.ref(model)
        self._keep: Any = model
        self.layer_ids = list(layer_ids)
        graph = _graph_of(model)
        self._names = [layer.name for layer in model.layers]
        self._tensorflow = keras.backend.backend() == "tensorflow"

        head = self._resolve(head_layer_id, role="head_layer_id")
        self._head = head
        self._dense = None  # the Dense whose kernel/bias give the logits, when the logits are linear in it
        self._matmul_head = None  # a Dense head whose activation the logits leave out
        if graph is None:
            self._init_graphless(head)
        else:
            self._init_graph(head, graph)
        self._checked_output = graph is not None
        self._inputs = None if graph is None else list(graph.inputs)
        self._graph = None if graph is None else weakref.ref(graph)  # see `_matches`
        self._layers = tuple(model.layers)
        self._weights = tuple(model.weights)
        self._compiled: dict[tuple[str, bool], Any] = {}
        self._spec: Any = _UNSET

    @property
    def model(self) -> Any:
        """The user's model."""
        return self._model()

    @classmethod
    def for_pass(cls, model: Any, layer_ids: Sequence[LayerId] = (), head_layer_id: LayerId = -1) -> Backend:
        """A backend for one pass; the one built for the same model, layers and head is reused.

        Building the sub-model and tracing its ``tf.function`` costs far more than a small batch, so, as
        Keras does with ``model.predict``, the compiled pass is kept (while the model lives) and reused by
        every later ``extract`` / ``score`` over that model. A model that gained or lost layers or weight
        variables since (``Sequential.add``, ``quantize``) is noticed and rebuilt; new values in the same
        variables (training) need nothing. Edits Keras cannot see (replacing a layer's ``activation``
        attribute after a first pass) are not noticed: call :func:`clear_cache` after them.
        """
        try:
            key = (tuple(_hashable(layer_id) for layer_id in layer_ids), _hashable(head_layer_id))
            cached = _CACHE.setdefault(model, {})
        except TypeError:  # an unhashable id (rejected with a clear message below) or model
            return cls(model, layer_ids, head_layer_id)
        backend = cached.get(key)
        if backend is None or not backend._matches(model):
            backend = cached[key] = cls(model, layer_ids, head_layer_id)
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

        self._logits_slot = slot(penultimate if self._matmul_head is not None else logits_tensor)
        self._layer_slots = {}
        for layer_id in self.layer_ids:
            if layer_id == PENULTIMATE:
                if penultimate is None:
                    raise ValueError(
                        f"'{PENULTIMATE}' is undefined for this model: the linear head "
                        f"{getattr(self._linear, 'name', None)!r} does not take a single input tensor. "
                        "Request a layer by name or index instead."
                    )
                tensor = penultimate
            else:
                layer = self._resolve(layer_id, role="layer id")
                tensor = _single_output(_node(graph, layer), layer)
            self._layer_slots[layer_id] = slot(tensor)
        self._submodel = keras.Model(graph.input, tensors, name=f"{self.model.name}_oodscope")

    def _init_graphless(self, head: Any) -> None:
        if self.layer_ids:
            raise ValueError(
                f"Cannot capture layers {self.layer_ids!r} of {type(self.model).__name__}. "
                + _SUBCLASSED_HELP
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

    def _forward(self, x: Any) -> tuple[Any, list[Any]]:
        if self._submodel is None:
            logits = self.model(x, training=False)
            if not keras.ops.is_tensor(logits):
                raise ValueError(
                    f"The model returns {type(logits).__name__}, not one tensor of logits; oodscope needs a "
                    "classifier with a single output."
                )
            return logits, []
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

    def _logits(self, x: Any) -> Any:
        return self._forward(x)[0]

    def _input_gradient(self, x: Any, temperature: Any) -> Any:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = self._logits(x)
            labels = keras.ops.argmax(logits, axis=-1)
            loss = keras.ops.sum(
                keras.losses.sparse_categorical_crossentropy(
                    labels, logits / keras.ops.cast(temperature, logits.dtype), from_logits=True
                )
            )
        return tape.gradient(loss, x)

    def _call(self, name: str, x: Any, *args: Any) -> Any:
        """Call ``self._<name>`` compiled with ``tf.function`` (once per backend; eagerly on other backends).

        A single-input model gets a signature with a free batch size, so it is traced once. Inputs that do
        not fit it (e.g. a missing channel axis, which Keras adds) use a second function that may retrace.
        """
        function = getattr(self, f"_{name}")
        if not self._tensorflow:
            return function(x, *args)
        import tensorflow as tf

        if self._spec is _UNSET:
            self._spec = self._input_spec()
        spec = self._spec
        fits = spec is not None and keras.ops.is_tensor(x) and spec.is_compatible_with(x)
        key = (name, fits)
        if key not in self._compiled:
            if fits:
                scalars = [tf.TensorSpec((), tf.float32)] * len(args)
                self._compiled[key] = tf.function(function, input_signature=[spec, *scalars])
            else:
                self._compiled[key] = tf.function(function, reduce_retracing=True)
        return self._compiled[key](x, *args)

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

    # --- the Backend contract ----------------------------------------------------------------------------

    def layer_names(self) -> list[str]:
        """Names of ``model.layers``, in the order integer indices count them."""
        return list(self._names)

    def run_batch(self, x: Any) -> tuple[np.ndarray, dict[LayerId, np.ndarray]]:
        """Forward one batch (numpy or tensor) in inference mode.

        Returns
        -------
        logits : np.ndarray of shape [B, C]
            Pre-softmax logits.
        activations : dict
            ``{layer_id: raw activation [B, ...]}`` for every requested id, as given; an id that names the
            same layer as another shares its array.
        """
        logits, outputs = self._call("forward", self._convert(x))
        logits = _to_numpy(logits)
        if self._submodel is None:
            self._check_graphless_output(logits)
        arrays = [_to_numpy(output) for output in outputs]
        return logits, {layer_id: arrays[i] for layer_id, i in self._layer_slots.items()}

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

    def odin_logits(self, x: Any, temperature: float, eps: float) -> np.ndarray:
        """Logits of the ODIN-perturbed input, raw (not divided by ``temperature``).

        ``x̃ = x − eps · sign(∇ₓ Σ CE(f(x) / T, argmax f(x)))`` with ``f`` the pre-softmax logits
        (Liang et al., ICLR 2018, https://arxiv.org/abs/1706.02690); returns ``f(x̃)``. ``eps == 0`` returns
        the plain logits exactly.
        """
        if eps == 0:
            return self.run_batch(x)[0]
        if not self._tensorflow:
            raise NotImplementedError(
                "ODIN needs input gradients, which oodscope computes with tf.GradientTape; this Keras runs "
                f"on the {keras.backend.backend()!r} backend. Set KERAS_BACKEND=tensorflow, or use ODIN with "
                "eps=0 (temperature scaling only)."
            )
        tensor = self._convert(x)
        if not all(_is_float(leaf) for leaf in keras.tree.flatten(tensor)):
            raise ValueError("ODIN perturbs the input, which needs floating-point model inputs.")
        gradient = self._call("input_gradient", tensor, keras.ops.convert_to_tensor(temperature, "float32"))
        perturbed = keras.tree.map_structure(
            lambda leaf, grad: leaf - keras.ops.cast(eps, leaf.dtype) * keras.ops.sign(grad), tensor, gradient
        )
        return _to_numpy(self._call("forward", perturbed)[0])


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
