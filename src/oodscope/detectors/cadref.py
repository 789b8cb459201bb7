"""Class-aware decoupled relative feature error (CADRef): CARef's error split by the head's signs and scaled
by a logit confidence."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._params import Options, validate_params
from ..features import Features
from ._logits import as_logits, logsumexp
from .base import Detector
from .caref import class_aware_means, relative_errors
from .gen import gen_score

__all__ = ["CADRef", "LOGIT_SCORES", "cadref_confidence", "cadref_score"]

PENULTIMATE = "penultimate"
#: the confidences the paper's code offers to scale the errors (its ``--logit_method``)
LOGIT_SCORES = ("energy", "msp", "maxlogit", "gen")
#: confidences are floored here: the errors are divided by them, and the method assumes them positive
CONFIDENCE_FLOOR = float(np.finfo(np.float64).eps)

_CONSTRAINTS = {"logit_score": Options(LOGIT_SCORES)}


def cadref_confidence(logits: Any, logit_score: str = "energy") -> np.ndarray:
    """The logit confidence L(x) (higher = more ID) that scales CADRef's positive error, float64 [N]:

    - ``"energy"``: log Σ_c exp z_c (the paper's default);
    - ``"msp"``: max_c softmax(z)_c;
    - ``"maxlogit"``: max_c z_c;
    - ``"gen"``: 1 / Σ_{j ≤ M} p_(j)^γ (1 − p_(j))^γ over the M = max(10, C // 10) largest probabilities,
      γ = 0.1 (the reciprocal of :func:`~oodscope.detectors.gen_score`, as in the paper's code).

    >>> cadref_confidence([[0.0, 0.0]], "energy").round(4), cadref_confidence([[0.0, 0.0]], "msp")
    (array([0.6931]), array([0.5]))
    """
    validate_params("cadref_confidence", {"logit_score": logit_score}, _CONSTRAINTS)
    z = as_logits(logits)
    if logit_score == "energy":
        return logsumexp(z)
    if logit_score == "maxlogit":
        return z.max(axis=1)
    if logit_score == "msp":
        return np.exp(z.max(axis=1) - logsumexp(z))
    entropy = gen_score(z, gamma=0.1, k=max(10, z.shape[1] // 10))
    return 1.0 / np.maximum(entropy, np.finfo(np.float64).tiny)


def cadref_score(
    features: Any,
    logits: Any,
    means: Any,
    head_weight: Any,
    mean_confidence: float,
    logit_score: str = "energy",
) -> np.ndarray:
    """CADRef score, higher = more OOD: ``E_p(x) / L(x) + E_n(x) / L̄``, float64 [N].

    With ŷ = argmax z, μ [C, D] the class means (:func:`~oodscope.detectors.class_aware_means`) and W the
    head [C, D]: ``δ = (h − μ_ŷ) · sign(W_ŷ)``, ``E_p = Σ_d max(δ_d, 0) / ‖h‖₁``, ``E_n = Σ_d max(−δ_d, 0) /
    ‖h‖₁``; L is :func:`cadref_confidence` and L̄ (``mean_confidence``) its mean over the fit data, both
    floored at ``CONFIDENCE_FLOOR``.

    >>> h, z = [[3.0, 1.0]], [[2.0, 0.0]]
    >>> cadref_score(h, z, means=[[2.0, 2.0], [0.0, 3.0]], head_weight=[[1.0, -1.0], [-1.0, 1.0]],
    ...              mean_confidence=4.0).round(4)
    array([0.2351])
    """
    weight = np.asarray(head_weight)
    means = np.asarray(means)
    if weight.shape != means.shape:
        raise ValueError(
            f"cadref_score expects the head weight [C, D] of the class means' shape {means.shape}; got "
            f"{weight.shape}. Use the head of the same model as the penultimate features."
        )
    _, positive, negative, norms = relative_errors(features, logits, means, np.sign(weight))
    confidence = np.maximum(cadref_confidence(logits, logit_score), CONFIDENCE_FLOOR)
    return positive / norms / confidence + negative / norms / max(float(mean_confidence), CONFIDENCE_FLOOR)


class CADRef(Detector):
    """Class-aware decoupled relative feature error: CARef's error split by the signs of the head's weights,
    the part that raises the predicted logit scaled by the sample's own logit confidence.

    Ling, Chang, Zhao, Zhao, Chow & Deng, "CADRef: Robust Out-of-Distribution Detection via Class-Aware
    Decoupled Relative Feature Leveraging", CVPR 2025. https://arxiv.org/abs/2503.00325

    μ_c is the mean penultimate feature of the fit samples predicted as c (as in :class:`CARef`), ŷ the
    predicted class and w_ŷ its row of the head W. The relative feature δ = (h − μ_ŷ) · sign(w_ŷ) is split
    into the dimensions that raise the predicted logit above the class mean's and those that lower it,
    E_p = Σ max(δ, 0) / ‖h‖₁ and E_n = Σ max(−δ, 0) / ‖h‖₁ (so E_p + E_n is CARef's error, up to dimensions
    with zero weight). E_p is divided by the sample's logit confidence L(x) (log Σ_c exp z_c by default,
    the paper's S_logit), E_n by L̄, the mean of L over the fit data. The paper's score is the negated sum;
    with higher = more OOD:

        S(x) = E_p(x) / L(x) + E_n(x) / L̄.

    Follows the paper's code (``LingAndZero/CADRef``, ``ood_methods/CADRef.py``), as pytorch-ood's
    ``CADRef`` does: that class documents that the paper's Equations 7–8 split on the signs of w_ŷ · h and
    write the l1 norm of a sum, against the paper's own description (signs of the *relative* feature
    against the weights) and its Section 4.3 (E_p + E_n recovers CARef's error); the code splits the
    relative feature and sums absolute values. The centroids bucket the fit samples by the model's
    prediction (the code), not by label; a class that no fit sample is predicted as falls back to the mean
    of all fit samples, with a warning (the code would give NaN; pytorch-ood falls back the same way). The
    method assumes positive confidences (a positive logsumexp or max logit): L(x) and L̄ are floored at
    float64 eps, with a warning at fit when L̄ is not positive, and ‖h‖₁ is floored as in :class:`CARef`,
    so that scores stay finite (the code would divide by zero or flip the sign of a term). OpenOOD has no
    CADRef; there is nothing to tune on OOD data (``search_space`` is ``{}``).

    Parameters
    ----------
    logit_score : {"energy", "msp", "maxlogit", "gen"}, default="energy"
        The confidence L (the paper's code's ``--logit_method``; Energy is the paper's choice, the others
        its ablation): see :func:`cadref_confidence`.

    Attributes
    ----------
    class_means_ : ndarray [C, D]
        The class means μ_c.
    class_counts_ : ndarray [C]
        How many fit samples are predicted as each class.
    weight_signs_ : ndarray [C, D], int8
        sign(W) of the head at fit.
    mean_confidence_ : float
        L̄, the mean confidence of the fit samples (with the ``logit_score`` of the fit).
    logit_score_ : str
        The ``logit_score`` L̄ was computed with; scoring with another one needs a refit.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> w, b = np.array([[1.0, -0.5], [-0.5, 1.0]]), np.zeros(2)
    >>> def features(h):  # penultimate features through the head w, b
    ...     return Features(logits=h @ w.T + b, layers={"penultimate": h}, head_weight=w, head_bias=b)
    >>> cadref = CADRef().fit(features(np.array([[4.0, 0.0], [2.0, 0.5], [0.0, 3.0]])))
    >>> cadref.class_means_
    array([[3.  , 0.25],
           [0.  , 3.  ]])
    >>> cadref.score(features(np.array([[3.0, 0.2], [2.0, 1.5]]))).scores.round(4)
    array([0.0054, 0.2176])
    """

    requires = frozenset({"features", "logits", "head"})
    default_layers = (PENULTIMATE,)
    _state_shapes = {
        "class_means_": ("C", "D"),
        "class_counts_": ("C",),
        "weight_signs_": ("C", "D"),
        "mean_confidence_": (),
    }
    _parameter_constraints = _CONSTRAINTS
    search_space: dict[str, list[Any]] = {}

    def __init__(self, logit_score: str = "energy") -> None:
        self.logit_score = logit_score

    def _state_layer(self) -> str:
        return PENULTIMATE

    def _fit(self, features: Features) -> None:
        self.class_means_, self.class_counts_ = class_aware_means(
            features.layer(PENULTIMATE), features.logits
        )
        self.weight_signs_ = np.sign(features.head_weight).astype(np.int8)
        self.mean_confidence_ = float(cadref_confidence(features.logits, self.logit_score).mean())
        self.logit_score_ = self.logit_score
        if not self.mean_confidence_ > 0:
            warnings.warn(
                f"CADRef: the mean {self.logit_score!r} confidence of the fit samples is "
                f"{self.mean_confidence_:.4g} <= 0, but the method divides by it; it is floored at "
                f"{CONFIDENCE_FLOOR:.3g}. Check the logits, or use logit_score='msp' (always positive).",
                stacklevel=4,
            )

    def _score(self, features: Features) -> np.ndarray:
        if self.logit_score != self.logit_score_:
            raise ValueError(
                f"CADRef was fitted with logit_score={self.logit_score_!r} but is set to "
                f"{self.logit_score!r}: its mean fit confidence belongs to the former. Call fit() again "
                "after changing it."
            )
        return cadref_score(
            features.layer(PENULTIMATE),
            features.logits,
            self.class_means_,
            self.weight_signs_,
            self.mean_confidence_,
            self.logit_score_,
        )
