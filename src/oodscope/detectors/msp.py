"""Maximum softmax probability (MSP)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..features import Features
from ._logits import as_logits, logsumexp
from .base import Detector


def msp_score(logits: Any) -> np.ndarray:
    """MSP score, higher = more OOD: ``S(z) = −max_c softmax(z)_c``, float64 of shape [N].

    >>> msp_score([[10.0, 0.0], [0.0, 0.0]]).round(4)
    array([-1. , -0.5])
    """
    z = as_logits(logits)
    return -np.exp(z.max(axis=1) - logsumexp(z))


class MSP(Detector):
    """Maximum softmax probability baseline.

    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in
    Neural Networks", ICLR 2017. https://arxiv.org/abs/1610.02136

    With p = softmax(z), the score is negated so that higher means more OOD:

        S(z) = −max_c p_c,   in [−1, −1/C].

    Stateless: ``fit`` only validates; ``score`` works without it.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> MSP().score(Features(logits=np.array([[10.0, 0.0], [0.0, 0.0]]))).scores.round(4)
    array([-1. , -0.5])
    """

    requires = frozenset({"logits"})
    needs_fit = False

    def __init__(self) -> None:
        pass

    def _score(self, features: Features) -> np.ndarray:
        return msp_score(features.logits)
