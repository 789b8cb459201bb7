"""What a detector needs from a model, declared as data.

A detector never runs a model. It says what it reads (:meth:`~oodscope.detectors.Detector.needs`), and
a planner (:mod:`oodscope.plan`) runs the fewest passes that give every detector its Features:
one plain pass per dataset for everything that can share it, and one perturbed pass per dataset for the
detectors that perturb the input the same way (ODIN-like methods sharing a loss, a step and its direction)::

    ODIN(temperature=1000, eps=0.0014).needs().kind()
    # PassKind(perturbation=Perturbation(loss=PredictedClassCE(temperature=1000.0), step=0.0014,
    #                                    direction=SignOfGradient()), ...)

Besides layers and the head's weights, a detector may need the inputs moved along a gradient first
(:class:`Perturbation`), edits of layers inside the forward (``Needs.edits``) and gradients of a loss with
respect to layer outputs (:class:`Gradient`, read as ``features.layer(GradientOf(layer))``). Detectors whose
needs have the same :class:`PassKind` share one pass.

A detector may read more than one pass of the same data. Two keys of ``Features.layers`` serve this:

- ``Unperturbed(layer)``: in a perturbed pass, the layer as the forward on the *original* inputs gave it.
  That forward is the one the gradient of the perturbation is taken in, so it costs nothing more (AdaSCALE
  compares a layer before and after its perturbation);
- ``FromPass(name, key)``: a layer (or ``LOGITS``) of another pass, declared in ``Needs.also[name]``
  (RankFeat averages the logits of two forwards, each with another block edited). Each of those passes is
  planned like a detector's own: it is shared with every detector that needs the same kind of pass.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "LOGITS",
    "FromPass",
    "Gradient",
    "GradientOf",
    "Needs",
    "PassKind",
    "Perturbation",
    "SignOfGradient",
    "Unperturbed",
]

#: ``reduce(raw_activation_batch, channels_last) -> [B, D]``: a detector's own post-processing of a layer
Reduction = Callable[..., np.ndarray]


@dataclasses.dataclass(frozen=True)
class SignOfGradient:
    """ODIN's direction of the step: the sign of the gradient, in every element of the input.

    >>> SignOfGradient()(np.array([[3.0, -0.5, 0.0]]))
    array([[ 1., -1.,  0.]])
    """

    def __call__(self, gradient: np.ndarray) -> np.ndarray:
        return np.sign(gradient)


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """Inputs moved against the gradient of a loss before the forward pass:
    ``x̃ = x − step · direction(∇ₓ loss(f(x)))``, by default ``x̃ = x − step · sign(∇ₓ loss(f(x)))``.

    ``loss`` is a :mod:`oodscope.losses` object (or any hashable ``loss(logits, ops)``). ``direction`` maps
    one input's gradient (a numpy array [B, ...]) to the per-element step of the same shape, on the host for
    every framework; it must be hashable and compare by value (a frozen dataclass), since it is part of what
    makes two passes different: :class:`SignOfGradient` (ODIN, the default) moves every element, iODIN's
    moves one element per sample. Equal perturbations share one gradient pass. Each batch costs a forward and
    a backward pass for the gradient, and a second forward pass over the moved inputs, which gives the
    Features (logits, layers) of this pass.
    """

    loss: Hashable
    step: float
    direction: Hashable = SignOfGradient()

    def apply(self, x: Any, gradient: Any) -> Any:
        """The moved inputs, in the inputs' precision; a model with several inputs gives a list, tuple or
        dict of arrays, and each is moved along its own gradient (``direction`` is applied to each).

        >>> Perturbation(loss=None, step=0.5).apply(np.array([1.0, 2.0]), np.array([3.0, -0.0]))
        array([0.5, 2. ])
        """
        if isinstance(x, Mapping):
            return {key: self.apply(value, gradient[key]) for key, value in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(self.apply(value, grad) for value, grad in zip(x, gradient, strict=True))
        x = np.asarray(x)
        return (x - self.step * self.direction(np.asarray(gradient))).astype(x.dtype, copy=False)


@dataclasses.dataclass(frozen=True)
class Gradient:
    """Gradients of ``loss(logits, ops)`` with respect to layer outputs (or the input, ``backends.INPUT``),
    read as features: the gradient of target ``t`` is the layer ``GradientOf(t)`` of the Features, reduced
    like an activation (global average pooling unless a reduction is given for ``GradientOf(t)``).

    Detectors with the same loss share one gradient pass; each batch costs a forward and a backward pass.
    """

    loss: Hashable
    wrt: tuple[Hashable, ...]


@dataclasses.dataclass(frozen=True)
class GradientOf:
    """The key of a gradient in :attr:`Features.layers <oodscope.Features.layers>`:
    ``features.layer(GradientOf("penultimate"))``."""

    target: Hashable


@dataclasses.dataclass(frozen=True)
class Unperturbed:
    """The key of a layer as the original inputs gave it, in the Features of a perturbed pass:
    ``features.layer(Unperturbed("penultimate"))`` beside ``features.layer("penultimate")`` (what the moved
    inputs gave).

    It is the tap of the forward pass that the perturbation's gradient is taken in, so reading it runs
    nothing more. It is reduced like the layer itself (the user's post-processing of the layer, else the
    detector's reduction for this key, else global average pooling).
    """

    target: Hashable


#: the key of another pass's logits: ``features.layer(FromPass(name, LOGITS))``
LOGITS = "<logits>"


@dataclasses.dataclass(frozen=True)
class FromPass:
    """The key of what another pass gave, for a detector that reads several passes of the same data:
    ``features.layer(FromPass(name, key))`` holds ``key`` (a layer id, a ``GradientOf``, or :data:`LOGITS`)
    of the pass ``Needs.also[name]`` describes."""

    name: Hashable
    key: Hashable


@dataclasses.dataclass(frozen=True)
class PassKind:
    """What makes two passes different: detectors of the same kind share one pass per dataset.

    ``perturbation``: the inputs are moved first; ``edits``: ``(layer, fn)`` pairs applied inside the forward;
    ``loss``: the loss a gradient pass differentiates. ``PassKind()`` is the plain forward pass.
    """

    perturbation: Perturbation | None = None
    edits: frozenset = frozenset()
    loss: Hashable = None

    def reads(self) -> tuple[Hashable, ...]:
        """The layers that the losses of this pass read (a loss's ``reads`` attribute)."""
        losses = (self.loss, None if self.perturbation is None else self.perturbation.loss)
        return tuple(dict.fromkeys(layer for loss in losses for layer in getattr(loss, "reads", ())))

    def __str__(self) -> str:
        parts = []
        if self.perturbation is not None:
            parts.append(f"inputs moved by {self.perturbation}")
        if self.edits:
            parts.append(f"edits of {', '.join(sorted(repr(layer) for layer, _ in self.edits))}")
        if self.loss is not None:
            parts.append(f"gradients of {self.loss!r}")
        return "a forward pass with " + ", ".join(parts) if parts else "a plain forward pass"


@dataclasses.dataclass(frozen=True)
class Needs:
    """What one detector reads from a model pass.

    Attributes
    ----------
    layers : tuple of layer ids
        Layers whose activations the detector reads (pooled to [N, D] unless a reduction is given).
    head : bool
        Whether it needs the head's weights (W, b).
    perturbation : Perturbation or None
        None: the inputs as given. Else the Features must come from inputs perturbed this way.
    edits : mapping of layer id to function
        ``{layer: edit(tensor, ops)}`` applied to the layers' outputs inside the forward (see
        :class:`oodscope.backends.Backend`); the logits and layers read come from the edited forward. The
        functions must be hashable (plain functions are, by identity) and the same objects every time, so
        that detectors with the same edits share a pass.
    gradient : Gradient or None
        Gradients of a loss read as features (``GradientOf(target)``).
    reductions : mapping of layer id to function
        The detector's own post-processing of some of its layers (``GradientOf`` and ``Unperturbed`` keys
        too), ``fn(values, channels_last)`` on the raw batch (e.g. Gram's statistics); the user's
        ``postproc_fns`` take precedence.
    also : mapping of name to Needs
        Other passes of the same data the detector reads, by a name of its choosing; what pass ``name`` gives
        is in the Features as ``FromPass(name, key)`` for each of its keys and its logits (``LOGITS``). An
        entry has no ``also`` of its own.
    """

    layers: tuple[Hashable, ...] = ()
    head: bool = False
    perturbation: Perturbation | None = None
    edits: Mapping[Hashable, Callable] = dataclasses.field(default_factory=dict)
    gradient: Gradient | None = None
    reductions: Mapping[Hashable, Reduction] = dataclasses.field(default_factory=dict)
    also: Mapping[Hashable, Needs] = dataclasses.field(default_factory=dict)

    def kind(self) -> PassKind:
        """The kind of pass these needs are served by."""
        return PassKind(
            perturbation=self.perturbation,
            edits=frozenset(self.edits.items()),
            loss=None if self.gradient is None else self.gradient.loss,
        )

    def keys(self) -> tuple[Hashable, ...]:
        """The keys its own pass gives in ``Features.layers``: its layers, then ``GradientOf`` of each target
        (the passes of ``also`` add their ``FromPass`` keys beside these)."""
        targets = () if self.gradient is None else self.gradient.wrt
        return self.layers + tuple(GradientOf(target) for target in targets)

    def model_layers(self) -> tuple[Hashable, ...]:
        """Every layer id the model must have for these needs (read, differentiated or edited), also in the
        passes of ``also``."""
        targets = () if self.gradient is None else self.gradient.wrt
        from .backends import INPUT  # the backends package imports no framework

        read = (layer.target if isinstance(layer, Unperturbed) else layer for layer in self.layers)
        others = (layer for need in self.also.values() for layer in need.model_layers())
        losses = self.kind().reads()
        return tuple(
            dict.fromkeys((*read, *(t for t in targets if t != INPUT), *self.edits, *losses, *others))
        )

    def check(self, who: str) -> None:
        """Raise ValueError when these needs cannot be served: ``Unperturbed`` keys without a perturbation,
        or an ``also`` pass with passes of its own."""
        unperturbed = [layer for layer in self.layers if isinstance(layer, Unperturbed)]
        if unperturbed and self.perturbation is None:
            raise ValueError(
                f"{who} reads {unperturbed[0]!r}, the layer before a perturbation, but its pass perturbs "
                "nothing: Unperturbed keys need Needs(perturbation=...)."
            )
        for name, need in self.also.items():
            if need.also:
                raise ValueError(
                    f"{who}'s pass {name!r} declares passes of its own (also=); give them all at once."
                )
            need.check(f"{who}'s pass {name!r}")


def layer_tuple(layers: Any) -> tuple[Hashable, ...]:
    """Layer ids as a tuple: None gives (), a single id gives (id,)."""
    if layers is None:
        return ()
    if isinstance(layers, (str, int)):
        return (layers,)
    return tuple(layers)


def same_function_key(fn: Any) -> Hashable:
    """Equal keys for post-processing functions that compute the same thing (None, or equal partials), so
    that a planner computes them once."""
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        try:
            key = (fn.func, fn.args, tuple(sorted(fn.keywords.items())))
            hash(key)
            return key
        except TypeError:
            pass
    return ("id", id(fn))
