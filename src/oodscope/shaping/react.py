"""ReAct: clip the penultimate activations, then score the recomputed logits."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from .._params import Interval, validate_params
from ..detectors.base import Detector
from ._base import _DETECTOR, _PERCENTILE, _activations, _Scratch, _Shaping, _shared, percentile

__all__ = ["ReAct", "react"]


def react(features: np.ndarray, threshold: float) -> np.ndarray:
    """Clip activations [N, D] from above: ``min(h, c)``, in the features' own precision (float16 as
    float32).

    >>> react(np.array([[0.5, 3.0]]), threshold=1.0)
    array([[0.5, 1. ]])
    """
    validate_params("react", {"threshold": threshold}, {"threshold": Interval(float, None, None)})
    h = _activations(features, "react")
    return np.minimum(h, h.dtype.type(threshold))


class ReAct(_Shaping):
    """ReAct: clip the penultimate activations, then score the recomputed logits.

    Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations", NeurIPS 2021.
    https://arxiv.org/abs/2111.12797

    With c the p-th percentile of all penultimate activations of the fit data, W, b the linear head and
    S_inner the wrapped detector's score (higher = more OOD; Energy by default, as in the paper):

        S(x) = S_inner(W · min(h(x), c) + b).

    Parameters
    ----------
    detector : Detector, optional
        The detector scoring the recomputed logits; ``None`` means ``Energy()``.
    percentile : float, default=90
        p in [0, 100).

    Attributes
    ----------
    clip_value_ : float
        The clipping value c.
    detector_ : Detector
        The wrapped detector, fitted on the shaped fit data.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import GEN, Features
    >>> h = np.array([[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]])
    >>> feats = Features(layers={"penultimate": h}, head_weight=np.eye(2))
    >>> ReAct(GEN(), percentile=50).fit(feats).clip_value_
    1.0
    """

    needs_fit = True
    _parameter_constraints = {"detector": _DETECTOR, "percentile": _PERCENTILE}
    #: OpenOOD's sweep (``configs/postprocessors/react.yml``: the paper's 90 only), on OOD validation data
    search_space = {"percentile": [90.0]}

    _state_shapes = {"clip_value_": ()}

    def __init__(self, detector: Detector | None = None, percentile: float = 90.0) -> None:
        self.detector = detector
        self.percentile = percentile

    def _fit_shape(self, h: np.ndarray) -> None:
        q = self.percentile
        self.clip_value_ = _shared(("percentile", q), (h,), lambda: percentile(h, q))

    def _parts(self, h: np.ndarray, scratch: _Scratch) -> tuple[np.ndarray, None]:
        return np.minimum(h, h.dtype.type(self.clip_value_), out=scratch("clipped", h.shape, h.dtype)), None

    def _shaping_key(self) -> tuple[Hashable, ...]:
        return (self.clip_value_,)
