"""PyTorch backend: forward hooks on the requested modules, eval mode for the pass, numpy arrays out.

Imported only when the user passes a ``torch.nn.Module``, so importing torch at the top is fine here.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from . import (
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

__all__ = ["TorchBackend", "TorchOps"]

log = logging.getLogger(__name__)

#: Heads whose input, not output, is the logits; the linear layer is the leaf registered just before them.
_SOFTMAX_HEADS = (nn.Softmax, nn.LogSoftmax)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


class _Tap(NamedTuple):
    """One tensor captured per forward: the ``input`` or the ``output`` of one module."""

    module: nn.Module
    name: str
    kind: str

    def describe(self, capital: bool = False) -> str:
        what = "the input of layer" if self.kind == "input" else "layer"
        if capital:
            what = what[0].upper() + what[1:]
        return f"{what} {self.name!r} ({type(self.module).__name__})"


class TorchOps(Ops):
    """:class:`~oodscope.backends.Ops` on torch tensors (row-wise along the last axis)."""

    native = torch

    def log_softmax(self, z: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(z, dim=-1)

    def logsumexp(self, z: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(z, dim=-1)

    def max(self, z: torch.Tensor) -> torch.Tensor:
        return z.max(dim=-1).values

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return z.mean(dim=-1)

    def argmax(self, z: torch.Tensor) -> torch.Tensor:
        return z.argmax(dim=-1)

    def pick(self, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return z.gather(-1, index.unsqueeze(-1)).squeeze(-1)

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return t.sum()

    def stop_gradient(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach()

    def minimum(self, t: torch.Tensor, value: float) -> torch.Tensor:
        return torch.clamp(t, max=value)

    def maximum(self, t: torch.Tensor, value: float) -> torch.Tensor:
        return torch.clamp(t, min=value)

    def pool(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.ndim == 2 else t.flatten(2).mean(dim=2)

    def constant(self, array: Any, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=like.dtype, device=like.device)

    def svd(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.linalg.svd(m, full_matrices=False)


class TorchBackend(Backend):
    """Run a ``torch.nn.Module`` over batches and capture the requested layers with forward hooks.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier. It is only referenced: the hooks exist only inside a ``with backend:`` block, the
        model is in eval mode only there (every module's own ``training`` flag is restored afterwards, so
        mixed train/eval models come back exactly as they were), and no attribute is added to any module.
    layer_ids : sequence of layer ids
        Layers whose raw outputs :meth:`run_batch` returns, keyed by the ids exactly as given.
    head_layer_id : layer id, default -1
        The layer that produces the logits (see below).

    Notes
    -----
    **Addressing layers.** A layer id is one of

    - a **name** from ``model.named_modules()``, e.g. ``"features.3"`` or ``"fc"`` (the root module, whose
      name is ``""``, cannot be addressed by name);
    - an **integer index** into the *leaf modules* (modules without children), in ``named_modules()``
      order: ``0`` is the first leaf, ``-1`` the last and ``-2`` the one before it. Containers such as
      ``nn.Sequential`` are skipped, so for ``nn.Sequential(conv, nn.ReLU(), nn.Flatten(), linear)`` index
      ``1`` is the ReLU and ``-1`` the linear layer. :meth:`leaf_names` lists what the indices count. A model
      without any submodule is its own single leaf;
    - ``"penultimate"``: the input of the linear head (captured by a forward pre-hook), i.e. the features
      the head maps to logits. This string always means that, even if a module is named so.

    The same module may be requested under several ids (e.g. by name and by index); each id gets the array.
    Unknown names and out-of-range indices raise :class:`~oodscope.backends.LayerNotFoundError`, any id that
    is neither ``str`` nor ``int`` raises ``TypeError``, both at construction.

    **The head and the logits.** ``head_layer_id`` (default ``-1``, the last leaf) names the classifier's
    final layer. If that module is an ``nn.Softmax`` or ``nn.LogSoftmax``, the logits are its *input* and
    the linear head (used by :meth:`head_weights` and for ``"penultimate"``) is the leaf module registered
    just before it. Otherwise the logits are the head module's *output* and the head itself is the linear
    head. Logits therefore stay pre-softmax for a model whose ``forward`` ends in ``F.softmax(self.fc(x))``
    as long as ``head_layer_id="fc"``; pass the name whenever ``fc`` is not the last registered leaf (e.g. a
    dropout registered after it but applied before it). A ``UserWarning`` is issued when an integer head id
    lands on a module that is not an ``nn.Linear`` (nor a softmax after one). Head outputs of shape
    ``[B, C, 1, ...]`` (a 1x1-convolution head) are flattened to ``[B, C]``. A model whose ``forward``
    returns several outputs (a tuple, list or dict) must be given ``head_layer_id`` by name: an index would
    pick the logits by registration order, so the first pass raises a ``ValueError`` listing the candidates.

    **What a hooked layer may return.** The hooked module must output (or, for ``"penultimate"``, receive)
    a single tensor. A module that returns a tuple, list or dict (``nn.LSTM``, ``nn.MultiheadAttention``,
    many transformer blocks) raises a ``ValueError`` naming it: address a sub-module whose output is one
    tensor instead. A module that runs more than once per forward (a shared ``ReLU``), or not at all (an
    ``nn.ModuleList`` container), also raises, since its activation would be ambiguous.

    **Inputs and outputs.** Inputs (numpy arrays or tensors) are moved to the device of the model's first
    parameter or buffer and, when floating, cast to the dtype of its first floating parameter or buffer
    (CPU / float32 for a model without any); integer inputs such as token ids keep their dtype. Captured
    tensors are copied at capture time, so an in-place operation later in ``forward`` (``ReLU(inplace=True)``)
    cannot change them, and returned as numpy arrays (float16 and bfloat16 as float32). Feature maps keep
    torch's ``[B, C, H, W]`` layout.

    **Edits and gradients.** An edit replaces the module's output (for ``"penultimate"``: the head's input)
    by ``edit(tensor, ops)`` inside the forward hook, so the rest of ``forward`` sees the edited tensor.
    :meth:`gradients` differentiates a loss with ``torch.autograd.grad`` on a copy of the input; the gradient
    with respect to a layer's output is taken through a zero tensor added to that output in its hook (so an
    in-place operation later in ``forward`` cannot invalidate it). No parameter gets a ``.grad``.

    Calling :meth:`run_batch` or :meth:`gradients` outside a ``with`` block sets up and undoes the hooks
    around that one call.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> backend = TorchBackend(model, layer_ids=["1", "penultimate"])
    >>> with backend:
    ...     logits, layers = backend.run_batch(torch.zeros(2, 4))
    >>> logits.shape, layers["1"].shape, layers["penultimate"].shape
    ((2, 3), (2, 8), (2, 8))
    >>> backend.leaf_names()
    ['0', '1', '2']
    """

    framework: ClassVar[str] = "torch"
    channels_last: ClassVar[bool] = False
    provides: ClassVar[frozenset[str]] = frozenset({"edits", "gradients"})
    ops: ClassVar[Ops] = TorchOps()

    def __init__(
        self,
        model: Any,
        layer_ids: Sequence[LayerId] = (),
        head_layer_id: LayerId = -1,
        edits: Mapping[LayerId, EditFn] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"TorchBackend needs a torch.nn.Module; got {type(model).__name__}.")
        if isinstance(layer_ids, str) or _is_integer(layer_ids):
            raise TypeError(
                f"layer_ids must be a sequence of layer ids, e.g. [{layer_ids!r}]; got {layer_ids!r}."
            )
        self._model = model
        named = [(name, module) for name, module in model.named_modules() if name]
        self._names = [name for name, _ in named]
        # every path resolves, also the second name of a module registered twice
        self._by_name = {name: module for name, module in model.named_modules(remove_duplicate=False) if name}
        self._leaves = [(name, module) for name, module in named if next(module.children(), None) is None]
        if not self._leaves:
            self._leaves = [("", model)]

        self._taps: list[_Tap] = []
        head_name, head = self._resolve(head_layer_id, role="head_layer_id")
        if isinstance(head, _SOFTMAX_HEADS):
            self._logits_slot = self._tap(head, head_name, "input")
            position = next(i for i, (_, module) in enumerate(self._leaves) if module is head)
            self._linear: tuple[str, nn.Module] | None = self._leaves[position - 1] if position > 0 else None
        else:
            self._logits_slot = self._tap(head, head_name, "output")
            self._linear = (head_name, head)
        self._head_name = head_name
        self._head_by_index = _is_integer(head_layer_id)  # then the model's output is checked once
        self._head_index = head_layer_id
        linear_head = self._linear is not None and isinstance(self._linear[1], nn.Linear)
        if _is_integer(head_layer_id) and not linear_head:
            warnings.warn(
                f"head_layer_id={head_layer_id!r} is the leaf module {head_name!r} "
                f"({type(head).__name__}), which is not an nn.Linear (nor a softmax after one); its "
                f"{'input' if isinstance(head, _SOFTMAX_HEADS) else 'output'} is taken as the logits. If the "
                "logits come from another layer, pass its name, e.g. head_layer_id='fc'.",
                UserWarning,
                stacklevel=2,
            )

        self._layer_slots = {layer_id: self._layer_slot(layer_id) for layer_id in layer_ids}
        self._edits: dict[int, EditFn] = {}
        for layer_id, edit in (edits or {}).items():
            if not callable(edit):
                raise TypeError(f"The edit of layer {layer_id!r} must be a function (tensor, ops) -> tensor.")
            self._edits[self._layer_slot(layer_id)] = edit
        log.debug("TorchBackend: logits from %s", self._taps[self._logits_slot].describe())

        # state of one pass, set by __enter__ and cleared by __exit__
        self._active = False
        self._handles: list[Any] = []
        self._modes: list[tuple[nn.Module, bool]] = []
        self._captured: dict[int, list[Any]] = {}
        # slot -> what a layer gradient is taken with respect to: the layer's output itself (its version at
        # capture in _versions), or a zero tensor added to it
        self._deltas: dict[int, torch.Tensor | None] = {}
        self._versions: dict[int, int] = {}
        self._direct_sources = True  # False once an in-place op changed a captured output in this model
        self._device = torch.device("cpu")
        self._dtype = torch.float32

    # --- layer resolution ---------------------------------------------------------------------------------

    def layer_names(self) -> list[str]:
        """All names from ``model.named_modules()`` except the root's ``""``, in that order.

        These are the names a layer id may use. Integer indices count only the leaf modules among them; see
        :meth:`leaf_names`.
        """
        return list(self._names)

    def leaf_names(self) -> list[str]:
        """Names of the leaf modules (modules without children), in the order integer layer ids count them."""
        return [name for name, _ in self._leaves]

    def _how(self) -> str:
        leaves = self.leaf_names()
        example = leaves[-2] if len(leaves) > 1 else leaves[0]
        index = -2 if len(leaves) > 1 else -1
        return (
            f"Address torch layers by a name from model.named_modules(), e.g. {example!r}, or by an integer "
            f"index over the {len(leaves)} leaf modules (modules without children, in named_modules() "
            "order), "
            f"e.g. {index} for {example!r}."
        )

    def _resolve(self, layer_id: LayerId, role: str) -> tuple[str, nn.Module]:
        if isinstance(layer_id, str):
            if layer_id == PENULTIMATE:
                raise ValueError(f"'{PENULTIMATE}' is the input of the head layer; it cannot be the {role}.")
            module = self._by_name.get(layer_id)
            if module is None:
                raise layer_not_found(layer_id, self._names, self._how())
            return layer_id, module
        if not _is_integer(layer_id):
            raise TypeError(
                f"A torch {role} must be a module name (str), an integer leaf index or '{PENULTIMATE}'; "
                f"got {layer_id!r} of type {type(layer_id).__name__}."
            )
        index, count = int(layer_id), len(self._leaves)
        if not -count <= index < count:
            raise layer_not_found(
                layer_id,
                self._names,
                self._how() + f" Integer indices run from {-count} to {count - 1}.",
            )
        return self._leaves[index]

    def _layer_slot(self, layer_id: LayerId) -> int:
        if isinstance(layer_id, str) and layer_id == PENULTIMATE:
            if self._linear is None:
                raise ValueError(
                    f"'{PENULTIMATE}' is the input of the linear head, but the softmax head "
                    f"{self._head_name!r} is the first leaf module, so no layer precedes it. Pass "
                    "head_layer_id naming the final linear layer."
                )
            return self._tap(self._linear[1], self._linear[0], "input")
        name, module = self._resolve(layer_id, role="layer id")
        return self._tap(module, name, "output")

    def _tap(self, module: nn.Module, name: str, kind: str) -> int:
        for slot, tap in enumerate(self._taps):
            if tap.module is module and tap.kind == kind:
                return slot
        self._taps.append(_Tap(module, name, kind))
        return len(self._taps) - 1

    # --- the pass -------------------------------------------------------------------------------------------

    def __enter__(self) -> TorchBackend:
        if self._active:
            raise RuntimeError("This TorchBackend is already active; a pass cannot be entered twice.")
        try:
            self._modes = [(module, module.training) for module in self._model.modules()]
            self._model.eval()
            for slot, tap in enumerate(self._taps):
                if tap.kind == "output":
                    handle = tap.module.register_forward_hook(self._output_hook(slot))
                else:
                    handle = tap.module.register_forward_pre_hook(self._input_hook(slot), with_kwargs=True)
                self._handles.append(handle)
            self._device, self._dtype = _placement(self._model)
        except BaseException:
            self._undo()
            raise
        self._active = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._undo()

    def _undo(self) -> None:
        try:
            while self._handles:
                self._handles.pop().remove()
        finally:
            for module, training in self._modes:
                module.training = training
            self._modes = []
            self._captured = {}
            self._deltas = {}
            self._versions = {}
            self._active = False

    def _output_hook(self, slot: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            return self._visit(slot, output)

        return hook

    def _input_hook(self, slot: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> Any:
            if args:
                new = self._visit(slot, args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            if len(kwargs) != 1:
                self._visit(slot, None)
                return None
            ((key, value),) = kwargs.items()
            new = self._visit(slot, value)
            return None if new is None else (args, {key: new})

        return hook

    def _visit(self, slot: int, value: Any) -> Any:
        """Edit, shift (for a layer gradient) and record one tap's tensor; returns the tensor that replaces
        the module's output (or input), or None to leave it as it is."""
        values = self._captured.get(slot)
        if values is None:  # a tap this call does not need
            return None
        replaced = None
        if slot in self._edits or slot in self._deltas:
            value = replaced = self._edited(slot, value)
        if isinstance(value, torch.Tensor) and slot not in self._versions:
            # copy now: an in-place op later in forward (ReLU(inplace=True)) would otherwise change it (a
            # gradient source is not copied: its version counter tells whether it changed)
            value = value.clone()
        values.append(value)
        return replaced

    def _edited(self, slot: int, value: Any) -> torch.Tensor:
        tensor = self._single(slot, [value])
        edit = self._edits.get(slot)
        if edit is not None:
            tensor = edit(tensor, self.ops)
            if not isinstance(tensor, torch.Tensor) or tensor.shape != value.shape:
                raise ValueError(
                    f"The edit of {self._taps[slot].describe()} must return a tensor of shape "
                    f"{tuple(value.shape)}; it returned {getattr(tensor, 'shape', type(tensor).__name__)}."
                )
        if slot in self._deltas:
            if self._deltas[slot] is not None:
                raise ValueError(
                    f"{self._taps[slot].describe(capital=True)} ran more than once in one forward pass, so "
                    "the gradient with respect to its output is ambiguous."
                )
            if self._direct_sources and tensor.requires_grad:
                self._deltas[slot], self._versions[slot] = tensor, tensor._version
            else:
                delta = self._deltas[slot] = torch.zeros_like(tensor, requires_grad=True)
                tensor = tensor + delta
        return tensor

    def _forward(self, inputs: torch.Tensor, slots: Sequence[int]) -> dict[int, torch.Tensor]:
        self._captured = {slot: [] for slot in (*slots, *self._edits, *self._deltas)}
        try:
            output = self._model(inputs)
            if self._head_by_index:
                self._check_single_output(output)
            return {slot: self._single(slot, values) for slot, values in self._captured.items()}
        finally:
            self._captured = {}

    def _check_single_output(self, output: Any) -> None:
        """Refuse to pick the logits by position among several outputs: a model whose forward returns a
        tuple, list or dict must be told which layer gives the logits."""
        if not isinstance(output, torch.Tensor):
            if isinstance(output, Mapping):
                what = f"a dict with keys {list(output)}"
            elif isinstance(output, (tuple, list)):
                what = f"a {type(output).__name__} of {len(output)} outputs"
            else:
                what = f"a {type(output).__name__}"
            linear = [name for name, module in self._leaves if isinstance(module, nn.Linear)]
            candidates = linear or self.leaf_names()
            raise ValueError(
                f"{type(self._model).__name__}.forward() returns {what}, so the logits are ambiguous: "
                f"head_layer_id={self._head_index!r} would take the output of the leaf module "
                f"{self._head_name!r} only because of where it is registered. Pass head_layer_id naming the "
                f"layer whose output is the logits; candidates: {candidates[:20]}."
            )
        self._head_by_index = False  # one check per backend

    def _single(self, slot: int, values: list[Any]) -> torch.Tensor:
        tap = self._taps[slot]
        if not values:
            raise ValueError(
                f"{tap.describe(capital=True)} did not run during the forward pass. It may "
                "be a container that forward() never calls (nn.ModuleList, nn.ModuleDict) or a branch that "
                "eval mode skips; address a module that forward() calls (for the logits, pass head_layer_id)."
            )
        if len(values) > 1:
            raise ValueError(
                f"{tap.describe(capital=True)} ran {len(values)} times in one forward pass "
                "(the module is reused), so its activation is ambiguous. Address a module that runs once "
                "per forward pass."
            )
        value = values[0]
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{tap.describe(capital=True)} "
                f"{'received' if tap.kind == 'input' else 'returned'} a {type(value).__name__}, not a single "
                "tensor, so it cannot be captured. Address a sub-module whose output is a single tensor."
            )
        return value

    def _inputs(self, x: Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            tensor = x.detach()
        else:
            array = np.asarray(x)
            if array.dtype == object:
                raise TypeError(f"Model inputs must be numeric arrays or tensors; got {type(x).__name__}.")
            array = np.ascontiguousarray(array)
            if not array.flags.writeable:  # torch.from_numpy warns on read-only arrays
                array = array.copy()
            tensor = torch.from_numpy(array)
        if tensor.is_floating_point():
            return tensor.to(device=self._device, dtype=self._dtype)
        return tensor.to(device=self._device)

    def _logits(self, captured: dict[int, torch.Tensor]) -> torch.Tensor:
        logits = captured[self._logits_slot]
        if logits.ndim > 2 and all(size == 1 for size in logits.shape[2:]):
            logits = logits.reshape(logits.shape[:2])
        if logits.ndim != 2:
            raise ValueError(
                f"The logits ({self._taps[self._logits_slot].describe()}) have shape {tuple(logits.shape)}; "
                "expected [batch, classes]. Pass head_layer_id naming the layer whose output is the logits."
            )
        return logits

    def run_batch(self, x: Any) -> tuple[np.ndarray, dict[LayerId, np.ndarray]]:
        """Forward one batch under ``torch.no_grad()``.

        Parameters
        ----------
        x : numpy array or torch.Tensor
            One batch of model inputs, ``[B, ...]``.

        Returns
        -------
        logits : ndarray of shape [B, C]
            Pre-softmax logits (see the class notes for which tensor that is).
        layers : dict
            ``{layer_id: raw activation [B, ...]}`` for every requested id, keys exactly as given.
        """
        if not self._active:
            with self:
                return self.run_batch(x)
        inputs = self._inputs(x)
        with torch.no_grad():
            captured = self._forward(inputs, range(len(self._taps)))
        arrays: dict[int, np.ndarray] = {}
        for slot in set(self._layer_slots.values()):
            arrays[slot] = _to_numpy(captured[slot])
        layers = {layer_id: arrays[slot] for layer_id, slot in self._layer_slots.items()}
        return _to_numpy(self._logits(captured)), layers

    def head_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W [C, D], b [C])`` of the linear head, copied to numpy; ``logits = penultimate @ W.T + b``.

        The bias is zeros when the layer has none. Needs no forward pass.

        Raises
        ------
        HeadNotLinearError
            If the linear head (see the class notes) is not an ``nn.Linear``.
        """
        if self._linear is None:
            raise HeadNotLinearError(
                f"The softmax head {self._head_name!r} is the first leaf module, so there is no linear layer "
                "before it and no head weights (W, b). Pass head_layer_id naming the final nn.Linear layer."
            )
        name, module = self._linear
        if not isinstance(module, nn.Linear):
            raise HeadNotLinearError(
                f"The head layer {name!r} is a {type(module).__name__}, not an nn.Linear, so its weights "
                "(W, b) are not available. Pass head_layer_id naming the classifier's final nn.Linear layer, "
                "or use a detector that does not need head weights."
            )
        with torch.no_grad():
            weight = _to_numpy(module.weight.detach().clone())
            if module.bias is None:
                bias = np.zeros(weight.shape[0], dtype=weight.dtype)
            else:
                bias = _to_numpy(module.bias.detach().clone())
        return weight, bias

    def weight_shapes(self) -> list[tuple[str, list[tuple[int, ...]]]]:
        """Modules holding parameters or buffers of their own, by ``named_modules()`` name (the root module
        as ``""``), with the shapes of those tensors in ``state_dict()`` order."""
        shapes = []
        for name, module in self._model.named_modules():
            own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            if own:
                shapes.append((name, [tuple(tensor.shape) for tensor in own]))
        return shapes

    def gradients(
        self, x: Any, loss: LossFn, wrt: Sequence[LayerId] = (INPUT,)
    ) -> tuple[np.ndarray, dict[LayerId, np.ndarray], dict[LayerId, np.ndarray]]:
        """Forward one batch and differentiate ``loss(logits, ops)`` with ``torch.autograd.grad``.

        See :meth:`oodscope.backends.Backend.gradients`. The input gradient is taken on a copy of the input
        (``requires_grad`` on the copy only). A layer gradient is taken with respect to the layer's output
        itself, without a copy; should an in-place op later in the forward change that output (its version
        counter moves), the batch runs again, and every later one, with a zero tensor added to the output
        as the gradient's source. An output outside autograd's graph (frozen weights) also gets the zero
        tensor. Float16 and bfloat16 logits are cast to float32 before the loss.
        """
        if not self._active:
            with self:
                return self.gradients(x, loss, wrt)
        targets = list(wrt)
        slots = {}
        for target in targets:
            if isinstance(target, str) and target == INPUT:
                continue
            if target not in self._layer_slots:
                raise ValueError(
                    f"Gradients can be taken with respect to INPUT or a requested layer "
                    f"{list(self._layer_slots)}; {target!r} is neither."
                )
            slots[target] = self._layer_slots[target]
        inputs = self._inputs(x)

        def tapped(captured: dict[int, torch.Tensor]) -> Any:
            def tensor_of(layer: LayerId) -> torch.Tensor:
                if layer not in self._layer_slots:
                    raise loss_reads_unknown(loss, layer, list(self._layer_slots))
                return captured[self._layer_slots[layer]]

            return tensor_of

        if INPUT in targets:
            if not inputs.is_floating_point():
                raise TypeError(
                    f"A gradient with respect to the input needs a floating-point input; got {inputs.dtype} "
                    "(e.g. token ids). Take it with respect to a layer's output instead."
                )
            inputs = inputs.detach().clone().requires_grad_(True)
        self._deltas = dict.fromkeys(slots.values())
        try:
            with torch.enable_grad():
                captured = self._forward(inputs, range(len(self._taps)))
                logits = self._logits(captured)
                if not logits.requires_grad:
                    raise RuntimeError(
                        "The logits do not depend on the input through autograd (does forward() detach or "
                        "use torch.no_grad()?), so no gradient can be taken."
                    )
                value = loss_value(
                    loss,
                    logits.float() if logits.dtype in _HALF_DTYPES else logits,
                    self.ops,
                    tapped(captured),
                )
                if not isinstance(value, torch.Tensor) or value.ndim != 0:
                    raise ValueError(
                        f"The loss must return a scalar tensor; got {getattr(value, 'shape', type(value))}."
                    )
                changed = [
                    slot for slot, version in self._versions.items() if self._deltas[slot]._version != version
                ]
                if not changed:
                    sources = [inputs if _is_input(t) else self._deltas[slots[t]] for t in targets]
                    grads = torch.autograd.grad(value, sources, allow_unused=True)
        finally:
            self._deltas, self._versions = {}, {}
        if changed:
            log.debug(
                "%s changed in place later in the forward pass; layer gradients go through an added zero "
                "tensor from now on.",
                self._taps[changed[0]].describe(capital=True),
            )
            self._direct_sources = False
            return self.gradients(x, loss, wrt)
        gradients = {
            target: _to_numpy(torch.zeros_like(source) if grad is None else grad)
            for target, source, grad in zip(targets, sources, grads, strict=True)
        }
        layers = {layer_id: _to_numpy(captured[slot]) for layer_id, slot in self._layer_slots.items()}
        return _to_numpy(logits), layers, gradients


def _is_input(target: Any) -> bool:
    return isinstance(target, str) and target == INPUT


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device of the first parameter or buffer, dtype of the first floating one (CPU / float32 if none)."""
    device = None
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if device is None:
            device = tensor.device
        if tensor.is_floating_point():
            return device, tensor.dtype
    return device or torch.device("cpu"), torch.float32


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype in _HALF_DTYPES:
        tensor = tensor.float()
    return tensor.cpu().numpy()
