"""What a detector needs from a model, declared as data.

A detector never runs a model. It says what it reads (:meth:`~oodscope.detectors.Detector.needs`), and
a planner (:mod:`oodscope.plan`) runs the fewest passes that give every detector its Features:
one plain pass per dataset for everything that can share it, and one perturbed pass per dataset for the
detectors that perturb the input the same way (ODIN-like methods sharing a loss and a step)::

    ODIN(temperature=1000, eps=0.0014).needs()
    # Needs(layers=(), head=False, perturbation=Perturbation(loss=PredictedClassCE(temperature=1000.0),
    #       step=0.0014), reductions={})
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np

__all__ = ["Needs", "Perturbation"]

#: ``reduce(raw_activation_batch, channels_last) -> [B, D]``: a detector's own post-processing of a layer
Reduction = Callable[..., np.ndarray]


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """Inputs moved against the gradient of a loss before the forward pass:
    ``x̃ = x − step · sign(∇ₓ loss(f(x)))``.

    ``loss`` is a :mod:`oodscope.losses` object (or any hashable ``loss(logits, ops)``). Equal perturbations
    share one gradient pass. Each batch costs a forward and a backward pass for the gradient, and a second
    forward pass over the moved inputs, which gives the Features (logits, layers) of this pass.
    """

    loss: Hashable
    step: float

    def apply(self, x: Any, gradient: Any) -> Any:
        """The moved inputs, in the inputs' precision; a model with several inputs gives a list, tuple or
        dict of arrays, and each is moved along its own gradient.

        >>> Perturbation(loss=None, step=0.5).apply(np.array([1.0, 2.0]), np.array([3.0, -0.0]))
        array([0.5, 2. ])
        """
        if isinstance(x, Mapping):
            return {key: self.apply(value, gradient[key]) for key, value in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(self.apply(value, grad) for value, grad in zip(x, gradient, strict=True))
        x = np.asarray(x)
        return (x - self.step * np.sign(gradient)).astype(x.dtype, copy=False)


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
        None: a plain forward pass. Else the Features must come from inputs perturbed this way.
    reductions : mapping of layer id to function
        The detector's own post-processing of some of its layers, ``fn(values, channels_last)`` on the raw
        activation batch (e.g. Gram's statistics); the user's ``postproc_fns`` take precedence.
    """

    layers: tuple[Hashable, ...] = ()
    head: bool = False
    perturbation: Perturbation | None = None
    reductions: Mapping[Hashable, Reduction] = dataclasses.field(default_factory=dict)

    def with_layers(self, layers: Any) -> Needs:
        """The same needs reading ``layers`` instead (a user's override)."""
        return dataclasses.replace(self, layers=layer_tuple(layers))


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
