"""SCALE: per-sample rescaling of the activations, then score the recomputed logits."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from .._params import validate_params
from ..detectors.base import Detector
from ._base import (
    _DETECTOR,
    _EPS,
    _PERCENTILE,
    _activations,
    _check_non_negative,
    _kept_count,
    _materialise,
    _row_sums,
    _scale_factor,
    _Scratch,
    _Shaping,
    _top_k,
)

__all__ = ["SCALE", "scale"]


def scale(features: np.ndarray, percentile: float = 85.0, eps: float = 1e-12) -> np.ndarray:
    """SCALE: ``h · exp(s1 / s2)`` with s1 the sum of all activations and s2 the sum of the k largest
    (k = n − round(n·p/100)); nothing is pruned. Activations [N, D] must be non-negative. Keeps the input's
    floating precision (float16 as float32)."""
    validate_params("scale", {"percentile": percentile, "eps": eps}, {"percentile": _PERCENTILE, "eps": _EPS})
    h = _activations(features, "scale")
    _check_non_negative(h, "SCALE")
    return _materialise(*_scale_parts(h, percentile, eps, _Scratch()))


def _scale_parts(
    h: np.ndarray, percentile: float, eps: float, scratch: _Scratch
) -> tuple[np.ndarray, np.ndarray]:
    """SCALE of non-negative rows ``h`` as ``(h, factor)``."""
    top_sum = _row_sums(_top_k(h, _kept_count(h.shape[1], percentile), scratch))
    return h, _scale_factor(_row_sums(h), top_sum, eps, h.dtype, "SCALE")


class SCALE(_Shaping):
    """SCALE: per-sample rescaling of the activations (no pruning), then score the recomputed logits.

    Xu, Chen, Franchi & Yao, "Scaling for Training Time and Post-hoc Out-of-distribution Detection
    Enhancement", ICLR 2024. https://arxiv.org/abs/2310.00227

    With s1 the sum of a sample's penultimate activations h and s2 the sum of its k = n − round(n·p/100)
    largest, h' = h · exp(s1 / s2); with S_inner the wrapped detector (Energy by default):

        S(x) = S_inner(W · h'(x) + b).

    Needs non-negative (post-ReLU) activations. Learns nothing itself.

    Parameters
    ----------
    detector : Detector, optional
        The detector scoring the recomputed logits; ``None`` means ``Energy()``.
    percentile : float, default=85
        p in [0, 100).

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[4.0, 0.0], [1.0, 1.0]])
    >>> SCALE(percentile=50).score(Features(layers={"penultimate": h}, head_weight=np.eye(2))).scores.round(3)
    array([-10.873,  -8.082])
    """

    needs_fit = False
    _non_negative = True
    _parameter_constraints = {"detector": _DETECTOR, "percentile": _PERCENTILE}
    #: OpenOOD's sweep (``configs/postprocessors/scale.yml``), tuned on OOD validation data
    search_space = {"percentile": [65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0]}

    def __init__(self, detector: Detector | None = None, percentile: float = 85.0) -> None:
        self.detector = detector
        self.percentile = percentile

    def _parts(self, h: np.ndarray, scratch: _Scratch) -> tuple[np.ndarray, np.ndarray]:
        return _scale_parts(h, self.percentile, 1e-12, scratch)

    def _shaping_key(self) -> tuple[Hashable, ...]:
        return (float(self.percentile),)
