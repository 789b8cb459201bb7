"""Logit scaling (LTS): logits multiplied by a per-sample factor from the features' top activations."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._params import InstanceOf, Interval, validate_params
from ..features import Features
from ..needs import PassKind
from ._layerwise import iter_row_blocks
from ._logits import as_logits
from .base import Detector, clone
from .energy import Energy, energy_score

__all__ = ["LTS", "lts_factor", "lts_score"]

PENULTIMATE = "penultimate"
_PERCENTILE = Interval(float, 0, 100, closed="left")


def lts_factor(features: Any, percentile: float = 65.0) -> np.ndarray:
    """LTS's per-sample logit factor ``r²``, float64 [N]: r = s1 / s2, with s1 the sum of relu(h) and s2
    the sum of its k = D − round(D·p/100) largest entries (at least one).

    r ≥ 1 measures how far the activation spreads beyond its top entries. A row without a positive
    activation (s1 = s2 = 0) gets r = 0.

    >>> lts_factor([[4.0, 0.0, 1.0, -1.0]], percentile=75)  # k = 1: (5 / 4)²
    array([1.5625])
    """
    validate_params("lts_factor", {"percentile": percentile}, {"percentile": _PERCENTILE})
    h = np.asarray(features)
    if h.dtype.kind not in "biuf" or h.ndim != 2 or h.shape[1] == 0:
        raise ValueError(
            f"lts_factor expects real-valued features [n_samples, n_features] with at least one feature; got "
            f"shape {h.shape} and dtype {h.dtype}."
        )
    n, dim = h.shape
    kept = max(1, dim - int(np.round(dim * percentile / 100.0)))
    factor = np.empty(n)
    for rows in iter_row_blocks(n, dim):
        block = np.maximum(h[rows].astype(np.float64), 0.0)
        total = block.sum(axis=1)
        top = np.partition(block, dim - kept, axis=1)[:, dim - kept :].sum(axis=1)
        ratio = np.divide(total, top, out=np.zeros_like(total), where=top > 0)
        factor[rows] = ratio**2
    return factor


def lts_score(features: Any, logits: Any, percentile: float = 65.0) -> np.ndarray:
    """LTS with the energy score, higher = more OOD: ``−log Σ_c exp(r² z_c)`` with r² from
    :func:`lts_factor`, float64 [N].

    >>> lts_score([[4.0, 0.0, 1.0, -1.0]], [[2.0, 0.0]], percentile=75).round(4)
    array([-3.168])
    """
    z = as_logits(logits)
    factor = lts_factor(features, percentile)
    if len(factor) != len(z):
        raise ValueError(
            f"lts_score got features of {len(factor)} samples and logits of {len(z)}; give the same samples."
        )
    return energy_score(z * factor[:, None])


class LTS(Detector):
    """Logit scaling: the logits multiplied by r², r = sum / top-k sum of the features' activations.

    Djurisic, Liu & Nikolić, "Logit Scaling for Out-of-Distribution Detection", arXiv 2409.01175, 2024.
    https://arxiv.org/abs/2409.01175

    With h the penultimate features, s1 the sum of relu(h) and s2 the sum of its k = D − round(D·p/100)
    largest entries, r = s1 / s2; the logits (bias included) are multiplied by r², and a logit detector
    scores them (Energy by default, as in the official configurations; any logit score, as the
    official README says). With S_inner the wrapped detector:

        S(x) = S_inner(r(x)² · z(x)),   by default S(x) = −log Σ_c exp(r(x)² z_c(x)).

    It is the logit-space sibling of SCALE (which scales the activations by exp(s1 / s2) before the head)
    and needs no head weights. A row without a positive activation gets r = 0 (the official code divides
    0 by 0). pytorch-ood's ``LTS`` (before 0.4.0) divides the logits by r² and keeps the top 5 %, which
    inverts the effect; this follows the official code (andrijazz/lts, ``lts.py``): multiply, p = 65.

    Parameters
    ----------
    detector : Detector, optional
        The logit detector scoring the scaled logits; ``None`` means ``Energy()``. It must read logits only
        (and labels at fit, e.g. TempScale), from a plain forward pass.
    percentile : float, default=65
        p in [0, 100): the top 100 − p % of the activations make s2. The official code uses 65. LTS is not
        in OpenOOD: ``search_space = {}`` (no APS).

    Attributes
    ----------
    detector_ : Detector
        The wrapped detector, fitted on the scaled fit logits when it learns anything.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[4.0, 0.0, 1.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    >>> z = np.array([[2.0, 0.0], [2.0, 0.0]])
    >>> LTS(percentile=75).score(Features(logits=z, layers={"penultimate": h})).scores.round(4)
    array([ -3.168, -32.   ])
    """

    requires = frozenset({"features", "logits"})
    needs_fit = False
    default_layers = (PENULTIMATE,)
    search_space: dict[str, list[Any]] = {}
    _parameter_constraints = {"detector": InstanceOf(Detector, allow_none=True), "percentile": _PERCENTILE}

    def __init__(self, detector: Detector | None = None, percentile: float = 65.0) -> None:
        self.detector = detector
        self.percentile = percentile

    def _inner(self) -> Detector:
        detector = Energy() if self.detector is None else self.detector
        kind = detector.needs(layers=()).kind()
        if kind != PassKind() or not detector.requires <= {"logits", "labels"}:
            raise ValueError(
                f"LTS cannot wrap {detector!r}: it scales the logits of a plain forward pass, so the wrapped "
                "detector must read logits only (e.g. Energy, MSP, GEN, TempScale)."
            )
        return detector

    def _needs_fit(self) -> bool:
        return self._inner()._needs_fit()

    def _scaled(self, features: Features) -> Features:
        factor = lts_factor(features.layer(PENULTIMATE), self.percentile)
        return Features._unchecked(logits=features.logits * factor[:, None], labels=features.labels)

    def _fit(self, features: Features) -> None:
        inner = clone(self._inner())
        if inner._needs_fit():
            inner._fit_features(self._scaled(features))
        else:
            inner._validate_params()
        self.detector_ = inner

    def _score(self, features: Features) -> np.ndarray:
        inner = getattr(self, "detector_", None) or self._inner()
        return inner._score_features(self._scaled(features)).scores
