"""ODIN: temperature scaling and input perturbation."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._params import Interval, validate_params
from ..features import Features
from ..losses import PredictedClassCE
from ..needs import Needs, Perturbation
from ._logits import as_logits
from .base import Detector
from .msp import msp_score

_CONSTRAINTS = {
    "temperature": Interval(float, 0, None, closed="neither"),
    "eps": Interval(float, 0, None, closed="left"),
}


def odin_score(logits: Any, temperature: float = 1000.0) -> np.ndarray:
    """Temperature-scaled MSP, higher = more OOD: ``S(z) = −max_c softmax(z / T)_c``, float64 of shape [N].

    Pass the logits of the perturbed inputs to get ODIN; with unperturbed logits this is ODIN with eps = 0.

    >>> odin_score([[2.0, 0.0]], temperature=1.0).round(4)
    array([-0.8808])
    """
    validate_params("odin_score", {"temperature": temperature}, {"temperature": _CONSTRAINTS["temperature"]})
    return msp_score(as_logits(logits) / temperature)


class ODIN(Detector):
    """ODIN: out-of-distribution detector for neural networks.

    Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image Detection in Neural
    Networks", ICLR 2018. https://arxiv.org/abs/1706.02690

    With f the logits, T the temperature and ŷ = argmax f(x), the input is moved to raise the confidence
    in ŷ, and the temperature-scaled maximum softmax probability of the moved input is negated so that
    higher means more OOD:

        x̃ = x − ε · sign(∇ₓ CE(f(x) / T, ŷ)),    S(x) = −max_c softmax(f(x̃) / T)_c.

    The perturbation is applied in the model's input space (after any preprocessing the data pipeline
    already did); the paper's code divides the gradient by the normalisation's standard deviation, i.e. its ε
    lives in pixel space. With ``eps > 0`` this needs the model: ``ODIN().fit(model).score(data)`` runs one
    forward and backward pass and a second forward pass per batch (on any backend that provides gradients),
    and ``info["logits"]`` holds the logits of the perturbed inputs; ``evaluate`` shares that pass between
    ODINs of the same temperature and eps. With ``eps=0`` it scores precomputed :class:`~oodscope.Features`.

    Parameters
    ----------
    temperature : float, default=1000
        T > 0.
    eps : float, default=0.0014
        Perturbation size ε ≥ 0.

    Stateless: ``fit`` only remembers the model.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> ODIN(temperature=1.0, eps=0.0).score(Features(logits=np.array([[2.0, 0.0]]))).scores.round(4)
    array([-0.8808])
    """

    requires = frozenset({"logits"})
    needs_fit = False
    _parameter_constraints = _CONSTRAINTS
    #: the paper's own search (Liang et al., section 4): T in {1, 2, 5, ..., 1000} and 21 evenly spaced eps in
    #: [0, 0.004], tuned on OOD validation data; each eps costs one gradient pass per dataset
    search_space = {
        "temperature": [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
        "eps": [round(0.0002 * i, 4) for i in range(21)],
    }
    _features_only_params = {"eps": 0.0}

    def __init__(self, temperature: float = 1000.0, eps: float = 0.0014) -> None:
        self.temperature = temperature
        self.eps = eps

    def needs(self, layers: Any = None) -> Needs:
        """With ``eps > 0``, the logits of the inputs perturbed along the gradient of
        :class:`~oodscope.losses.PredictedClassCE` at the temperature: a gradient pass, shared by ODINs with
        the same temperature and eps."""
        needs = super().needs(layers)
        if self.eps == 0:
            return needs
        loss = PredictedClassCE(temperature=float(self.temperature))
        return dataclasses.replace(needs, perturbation=Perturbation(loss=loss, step=float(self.eps)))

    def _score(self, features: Features) -> np.ndarray:
        # with eps > 0 the logits come from the perturbed inputs (checked against needs())
        return odin_score(features.logits, self.temperature)
