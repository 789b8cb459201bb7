"""NCI: neural-collapse inspired score (alignment with the predicted class's weight, plus an L1 term)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._params import Interval
from ..features import Features
from ._layerwise import column_mean, iter_row_blocks
from ._logits import as_logits
from .base import Detector

__all__ = ["NCI", "nci_score"]

PENULTIMATE = "penultimate"


def nci_score(
    features: Any, logits: Any, head_weight: Any, global_mean: Any, alpha: float = 1e-4
) -> np.ndarray:
    """NCI score, higher = more OOD: ``−(w_ŷ·(h − μ_G) / ‖h − μ_G‖₂ + α‖h‖₁)``, float64 [N].

    ŷ = argmax logits, ``w_ŷ`` its row of the head ``W`` [C, D] (not normalised, as in the paper's code),
    ``μ_G`` [D] the global mean of the fit features. A sample exactly at ``μ_G`` has no direction: its first
    term is 0.

    >>> nci_score([[3.0, 4.0]], [[1.0, 0.0]], head_weight=[[1.0, 0.0], [0.0, 1.0]], global_mean=[0.0, 0.0],
    ...           alpha=0.5).round(4)
    array([-4.1])
    """
    h = np.asarray(features)
    logits = as_logits(logits)
    weight = np.asarray(head_weight, dtype=np.float64)
    mean = np.asarray(global_mean, dtype=np.float64)
    if h.ndim != 2 or len(h) != len(logits) or weight.shape != (logits.shape[1], h.shape[1]):
        raise ValueError(
            "nci_score expects features [N, D], logits [N, C] and head_weight [C, D] of one model; got "
            f"shapes {h.shape}, {logits.shape} and {weight.shape}."
        )
    if mean.shape != (h.shape[1],):
        raise ValueError(f"nci_score: global_mean must have shape ({h.shape[1]},); got {mean.shape}.")
    predicted = np.argmax(logits, axis=1)
    out = np.empty(len(h))
    for rows in iter_row_blocks(len(h), h.shape[1]):
        block = h[rows].astype(np.float64)
        centred = block - mean
        norms = np.sqrt(np.einsum("nd,nd->n", centred, centred))
        aligned = np.einsum("nd,nd->n", weight[predicted[rows]], centred)
        cosine = np.divide(aligned, norms, out=np.zeros_like(aligned), where=norms > 0)
        out[rows] = -(cosine + alpha * np.abs(block).sum(axis=1))
    return out


class NCI(Detector):
    """NCI: how well the centred features align with the predicted class's weight, plus their L1 norm.

    Liu & Qin, "Detecting Out-of-Distribution Through the Lens of Neural Collapse", CVPR 2025.
    https://arxiv.org/abs/2311.01479

    Under neural collapse, ID features centred on the global mean μ_G of the training features point along
    the head's weight w_ŷ of their predicted class ŷ = argmax z; OOD features do not, and have smaller
    activations. The paper's ID score is the alignment plus α times the L1 norm of h; negated, higher = more
    OOD:

        S(x) = −( w_ŷ · (h − μ_G) / ‖h − μ_G‖₂ + α ‖h‖₁ ).

    As in the paper's code (and OpenOOD's), the first term is not divided by ‖w_ŷ‖ (under neural collapse
    the rows of W have about equal norms); a sample exactly at μ_G gets 0 for it. The paper fits μ_G on the
    training set. OpenOOD's implementation (from the authors) is the same formula; pytorch-ood's defaults to
    α = 0 (the alignment only); here α follows the paper's and OpenOOD's 1e-4.

    OpenOOD tunes α on OOD validation data (APS mode) over ``search_space``:
    α ∈ {1e-4, 1e-3, 1e-2, 0.1}.

    Parameters
    ----------
    alpha : float, default=1e-4
        α ≥ 0, the weight of the L1 norm.

    Attributes
    ----------
    global_mean_ : ndarray of shape [D]
        μ_G, the mean of the fit features (penultimate layer).

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[2.0, 0.0], [0.0, 2.0]])
    >>> w = np.eye(2)
    >>> fit = Features(logits=h @ w.T, layers={"penultimate": h}, head_weight=w)
    >>> test = np.array([[3.0, -1.0], [0.5, 0.5]])
    >>> NCI(alpha=0.0).fit(fit).score(Features(logits=test @ w.T, layers={"penultimate": test},
    ...                                         head_weight=w)).scores.round(4)
    array([-0.7071,  0.7071])
    """

    requires = frozenset({"features", "logits", "head"})
    default_layers = (PENULTIMATE,)
    search_space = {"alpha": [1e-4, 1e-3, 1e-2, 0.1]}
    _parameter_constraints = {"alpha": Interval(float, 0, None)}
    _state_shapes = {"global_mean_": ("D",)}

    def __init__(self, alpha: float = 1e-4) -> None:
        self.alpha = alpha

    def _state_layer(self) -> str:
        return PENULTIMATE

    def _fit(self, features: Features) -> None:
        self.global_mean_ = column_mean(features.layer(PENULTIMATE))

    def _score(self, features: Features) -> np.ndarray:
        return nci_score(
            features.layer(PENULTIMATE), features.logits, features.head_weight, self.global_mean_, self.alpha
        )
