"""Shannon entropy of the softmax."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..features import Features
from ._logits import as_logits, log_softmax
from .base import Detector


def entropy_score(logits: Any) -> np.ndarray:
    """Softmax entropy in nats, higher = more OOD: ``H(p) = −Σ_c p_c log p_c``, float64 of shape [N].

    Terms with p_c = 0 contribute exactly 0 (log p_c is computed from the logits, so it stays finite).

    >>> entropy_score([[0.0, 0.0], [50.0, 0.0]]).round(6)
    array([0.693147, 0.      ])
    """
    log_p = log_softmax(as_logits(logits))
    return -(np.exp(log_p) * log_p).sum(axis=1)


class Entropy(Detector):
    """Predictive entropy of the softmax distribution.

    A classic uncertainty baseline with no single originating paper (Shannon, 1948, for the quantity); it
    is among the softmax baselines compared in Liu, Lochman & Zach, "GEN: Pushing the Limits of
    Softmax-Based Out-of-Distribution Detection", CVPR 2023 (https://arxiv.org/abs/2303.17658).

    With p = softmax(z), in nats (already higher = more OOD):

        S(z) = H(p) = −Σ_c p_c log p_c,   in [0, log C].

    Stateless: ``fit`` only validates; ``score`` works without it.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> Entropy().score(Features(logits=np.array([[0.0, 0.0], [50.0, 0.0]]))).scores.round(4)
    array([0.6931, 0.    ])
    """

    requires = frozenset({"logits"})
    needs_fit = False

    def __init__(self) -> None:
        pass

    def _score(self, features: Features) -> np.ndarray:
        return entropy_score(features.logits)
