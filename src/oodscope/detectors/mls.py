"""Maximum logit score (MLS)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..features import Features
from ._logits import as_logits
from .base import Detector


def mls_score(logits: Any) -> np.ndarray:
    """MLS score, higher = more OOD: ``S(z) = −max_c z_c``, float64 of shape [N].

    >>> mls_score([[3.0, 1.0], [0.5, 0.2]])
    array([-3. , -0.5])
    """
    return -as_logits(logits).max(axis=1)


class MLS(Detector):
    """Maximum logit score.

    Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022
    (https://arxiv.org/abs/1911.11132); Vaze et al., "Open-Set Recognition: A Good Closed-Set Classifier
    Is All You Need", ICLR 2022 (https://arxiv.org/abs/2110.06207).

    The largest pre-softmax logit, negated so that higher means more OOD:

        S(z) = −max_c z_c.

    Unlike MSP it is not invariant to adding a constant to all logits, so it needs true pre-softmax logits.
    Stateless: ``fit`` only validates; ``score`` works without it.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> MLS().score(Features(logits=np.array([[3.0, 1.0], [0.5, 0.2]]))).scores
    array([-3. , -0.5])
    """

    requires = frozenset({"logits"})
    needs_fit = False

    def __init__(self) -> None:
        pass

    def _score(self, features: Features) -> np.ndarray:
        return mls_score(features.logits)
