"""GradNorm: the L1 norm of the last layer's gradient of the KL divergence to the uniform posterior."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._params import Interval, validate_params
from ..features import Features
from ._layerwise import iter_row_blocks
from ._logits import as_logits, log_softmax
from .base import Detector

__all__ = ["GradNorm", "gradnorm_score"]

PENULTIMATE = "penultimate"
_CONSTRAINTS = {"temperature": Interval(float, 0, None, closed="neither")}


def gradnorm_score(features: Any, logits: Any, temperature: float = 1.0) -> np.ndarray:
    """GradNorm score, higher = more OOD: ``−(1/T) Σ_c |C·p_c − 1| · ‖h‖₁`` with p = softmax(z / T), float64
    of shape [N].

    ``features`` h [N, D] must be the input of the linear head that gave ``logits`` z [N, C]: the score is
    then −‖∂L/∂W‖₁ for L = −Σ_c log softmax(z / T)_c, in closed form (∂L/∂W = (1/T)(C·p − 1) hᵀ).

    >>> gradnorm_score([[1.0, -2.0]], [[0.0, 0.0]])  # a uniform posterior: a zero gradient
    array([-0.])
    >>> gradnorm_score([[1.0, -2.0]], [[np.log(3.0), 0.0]])  # p = (3/4, 1/4): (1/2 + 1/2) * 3
    array([-3.])
    """
    validate_params("gradnorm_score", {"temperature": temperature}, _CONSTRAINTS)
    z = as_logits(logits)
    h = np.asarray(features)
    if h.ndim != 2 or len(h) != len(z):
        raise ValueError(
            "gradnorm_score expects features [N, D] and logits [N, C] of the same samples; got shapes "
            f"{h.shape} and {z.shape}."
        )
    n, n_classes = z.shape
    out = np.empty(n)
    for rows in iter_row_blocks(n, max(n_classes, h.shape[1])):
        p = np.exp(log_softmax(z[rows] / temperature))
        spread = np.abs(n_classes * p - 1.0).sum(axis=1)
        out[rows] = -spread * np.abs(h[rows].astype(np.float64)).sum(axis=1) / temperature
    return out


class GradNorm(Detector):
    """GradNorm: the L1 norm of the last layer's gradient of the KL divergence to the uniform posterior.

    Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional Shifts in the Wild",
    NeurIPS 2021. https://arxiv.org/abs/2110.00218

    The paper backpropagates L = −Σ_c log softmax(z / T)_c (KL(u ‖ softmax(z / T)) up to a constant and the
    factor 1/C; the official code sums with all-ones targets) to the weight W of the last linear layer, and
    takes the L1 norm of the gradient as its confidence (large for ID). With h the penultimate features,
    the head's input, ∂L/∂W = (1/T)(C·p − 1) hᵀ with p = softmax(z / T), whose L1 norm factorises, so
    with higher meaning more OOD:

        S(x) = −(1/T) · Σ_c |C·p_c(x) − 1| · Σ_d |h_d(x)|.

    No backward pass and no per-sample loop (the official code and OpenOOD run one backward per sample);
    the closed form equals the gradient's norm exactly. ``features`` must be the input of the linear head
    whose outputs are the logits. pytorch-ood's ``GradNorm`` is another method (Lee & AlRegib, ICIP 2020),
    and its ``GradNormKL`` (before 0.4.0) differentiates a binary cross-entropy against 1/C over all the
    parameters, not this loss with respect to W.

    Parameters
    ----------
    temperature : float, default=1.0
        T > 0; the paper uses T = 1. OpenOOD sweeps nothing (``search_space = {}``, no APS).

    Stateless: ``fit`` only validates; ``score`` works without it.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[1.0, 2.0], [1.0, 2.0]])
    >>> z = np.array([[4.0, 0.0], [0.5, 0.0]])
    >>> GradNorm().score(Features(logits=z, layers={"penultimate": h})).scores.round(4)
    array([-5.7842, -1.4695])
    """

    requires = frozenset({"features", "logits"})
    needs_fit = False
    default_layers = (PENULTIMATE,)
    search_space: dict[str, list[Any]] = {}
    _parameter_constraints = _CONSTRAINTS

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def _score(self, features: Features) -> np.ndarray:
        return gradnorm_score(features.layer(PENULTIMATE), features.logits, self.temperature)
