"""Scalar losses of the logits that gradient-based methods differentiate, written once for every framework.

A loss is any callable ``loss(logits, ops) -> scalar`` (see :class:`oodscope.backends.Ops`): the backend
calls it on its own tensors inside the forward and differentiates it with its own autodiff. A loss that also
depends on layers names them in a ``reads`` attribute and is called ``loss(logits, ops, taps)`` with
``taps = {layer: tensor}`` (see :func:`oodscope.backends.loss_value`). The losses below
are frozen dataclasses, so that equal losses compare equal and detectors that need the same gradient share
one gradient pass (``evaluate`` groups them by loss). Each sums over the batch: samples do not interact in
an evaluation-mode forward, so the gradient with respect to one sample's input is that sample's own.

>>> import numpy as np
>>> from oodscope.losses import PredictedClassCE
>>> PredictedClassCE(temperature=1000.0) == PredictedClassCE(temperature=1000.0)
True
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["KLToUniform", "MaxLogit", "Negated", "PredictedClassCE"]


@dataclasses.dataclass(frozen=True)
class PredictedClassCE:
    """Cross-entropy of the temperature-scaled logits to the predicted class, summed over the batch:
    ``Σ_i −log softmax(z_i / T)[argmax z_i]`` (the loss of ODIN and iODIN)."""

    temperature: float = 1.0

    def __call__(self, logits: Any, ops: Any) -> Any:
        predicted = ops.argmax(ops.stop_gradient(logits))
        return -ops.total(ops.pick(ops.log_softmax(logits / self.temperature), predicted))


@dataclasses.dataclass(frozen=True)
class MaxLogit:
    """The largest logit of each sample, summed over the batch: ``Σ_i max_c z_ic``."""

    def __call__(self, logits: Any, ops: Any) -> Any:
        return ops.total(ops.max(logits))


@dataclasses.dataclass(frozen=True)
class KLToUniform:
    """KL(uniform ‖ softmax(z)) of each sample, summed: ``Σ_i (−mean_c log softmax(z_i)_c − log C)``; the
    constant ``log C`` does not change the gradient and is left out."""

    def __call__(self, logits: Any, ops: Any) -> Any:
        return -ops.total(ops.mean(ops.log_softmax(logits)))


@dataclasses.dataclass(frozen=True)
class Negated:
    """The negative of another loss: a :class:`~oodscope.needs.Perturbation` moves the inputs against the
    gradient of its loss, so ``Negated(MaxLogit())`` moves them up the max logit (AdaSCALE's step)."""

    loss: Any

    def __call__(self, logits: Any, ops: Any) -> Any:
        return -self.loss(logits, ops)
