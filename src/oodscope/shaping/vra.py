"""VRA: zero abnormally low activations, cap high ones, then score the recomputed logits."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from .._params import Interval, Options, validate_params
from ..detectors.base import Detector
from ._base import _DETECTOR, PENULTIMATE, _activations, _Scratch, _Shaping, _shared, percentile

__all__ = ["VRA", "vra"]

_PERCENTILE = Interval(float, 0, 100)
_GAMMA = Interval(float, 0, None)


def vra(features: Any, low: Any, high: Any, gamma: float = 0.0) -> np.ndarray:
    """The VRA activation of activations [N, D]: 0 below ``low``, ``h + gamma`` from ``low`` to ``high``
    (both included), ``high`` above it. ``low`` and ``high`` are scalars or per-unit arrays [D]. Keeps the
    input's floating precision (float16 as float32).

    >>> vra(np.array([[0.2, 0.5, 1.0, 3.0]]), low=0.5, high=2.0, gamma=0.1)
    array([[0. , 0.6, 1.1, 2. ]])
    """
    validate_params("vra", {"gamma": gamma}, {"gamma": _GAMMA})
    h = _activations(features, "vra")
    low = np.broadcast_to(np.asarray(low, dtype=h.dtype), h.shape[1:])
    high = np.broadcast_to(np.asarray(high, dtype=h.dtype), h.shape[1:])
    return _vra_rows(h, low, high, gamma, _Scratch())


def _vra_rows(
    h: np.ndarray, low: np.ndarray, high: np.ndarray, gamma: float, scratch: _Scratch
) -> np.ndarray:
    out = np.add(h, h.dtype.type(gamma), out=scratch("vra", h.shape, h.dtype))
    above = np.greater(h, high, out=scratch("above", h.shape, bool))
    np.copyto(out, np.broadcast_to(high, h.shape), where=above)
    below = np.less(h, low, out=above)
    np.copyto(out, h.dtype.type(0), where=below)
    return out


def _unit_percentiles(h: np.ndarray, qs: list[float]) -> np.ndarray:
    """Per-unit percentiles [len(qs), D] (``np.percentile`` along the samples, in float64), a few columns
    at a time so that the sorted copy stays small."""
    out = np.empty((len(qs), h.shape[1]))
    step = max(1, (1 << 22) // max(len(h), 1))
    for start in range(0, h.shape[1], step):
        columns = h[:, start : start + step].astype(np.float64)
        out[:, start : start + step] = np.percentile(columns, qs, axis=0)
    return out


class VRA(_Shaping):
    """Variational rectified activation: zero abnormally low activations, cap high ones, then score.

    Xu, Lian, Liu & Tao, "VRA: Variational Rectified Activation for Out-of-distribution Detection",
    NeurIPS 2023. https://arxiv.org/abs/2302.11716

    The paper derives, by a variational argument, that the activation change best separating ID from OOD
    suppresses both abnormally low and abnormally high activations (and amplifies the rest), and
    approximates it by a piecewise function of each penultimate activation h_d with thresholds α_d ≤ β_d:
    g(h_d) = 0 if h_d < α_d; h_d + γ if α_d ≤ h_d ≤ β_d; β_d if h_d > β_d (γ = 0: VRA; γ > 0: VRA+). The
    thresholds are the ``percentile_low`` and ``percentile_high`` percentiles of the fit activations, per
    unit (the paper's code on CIFAR) or over all units at once. With W, b the linear head and S_inner the
    wrapped detector (Energy by default, as in the paper), higher = more OOD:

        S(x) = S_inner(W · g(h(x)) + b).

    Where it differs: OpenOOD and pytorch-ood **clamp** the activations below α up to α instead of zeroing
    them, and OpenOOD takes α, β over all units at once, from the ID validation split (percentiles 10 and 90
    by default); here the paper's rule (zero below α) with per-unit thresholds by default, as in the paper's
    CIFAR runs (60th and 90th percentiles of the training features for VRA on CIFAR-10; 60 and 95 on
    CIFAR-100). The paper's ImageNet runs use hand-set constants (α = 0.5, β = 1.0 on ResNet-50), which
    percentiles can only approximate. ``search_space`` is the paper's grid, percentile_low ∈ {50, 60, 65,
    70} × percentile_high ∈ {80, 85, 90, 95, 99} (γ ∈ {0.2, ..., 0.7} for VRA+), which the paper tunes on
    Gaussian-noise images; OpenOOD's grid (percentile_high ∈ {85, 90, 95, 99} × percentile_low ∈ {1, 5, 10,
    15}, tuned on OOD validation data) was made for its clamping rule, under which low percentiles of 1-15
    zero almost nothing of ReLU features, so it does not carry over to the paper's rule.

    Parameters
    ----------
    detector : Detector, optional
        The detector scoring the recomputed logits; ``None`` means ``Energy()``.
    percentile_low : float, default=60
        The percentile of the fit activations below which an activation is zeroed (α), in [0, 100].
    percentile_high : float, default=90
        The percentile above which it is capped (β), in [percentile_low, 100].
    gamma : float, default=0.0
        γ ≥ 0, added to the activations between the thresholds (0: VRA, the paper's default; > 0: VRA+).
    per_unit : bool, default=True
        Thresholds per unit (the paper's code) or one pair over all units (OpenOOD).

    Attributes
    ----------
    low_, high_ : ndarray of shape [D]
        α and β per unit (all equal when ``per_unit=False``).
    detector_ : Detector
        The wrapped detector, fitted on the fit data's recomputed logits.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 4.0], [4.0, 5.0]])
    >>> feats = Features(layers={"penultimate": h}, head_weight=np.eye(2))
    >>> det = VRA(percentile_low=25, percentile_high=75).fit(feats)
    >>> det.low_, det.high_
    (array([1., 2.]), array([3., 4.]))
    >>> det.score(feats).scores.round(4)
    array([-0.6931, -2.3133, -3.3133, -4.3133, -4.3133])
    """

    needs_fit = True
    search_space = {"percentile_low": [50, 60, 65, 70], "percentile_high": [80, 85, 90, 95, 99]}
    _parameter_constraints = {
        "detector": _DETECTOR,
        "percentile_low": _PERCENTILE,
        "percentile_high": _PERCENTILE,
        "gamma": _GAMMA,
        "per_unit": Options([True, False]),
    }
    _state_shapes = {"low_": ("D",), "high_": ("D",)}

    def __init__(
        self,
        detector: Detector | None = None,
        percentile_low: float = 60.0,
        percentile_high: float = 90.0,
        gamma: float = 0.0,
        per_unit: bool = True,
    ) -> None:
        self.detector = detector
        self.percentile_low = percentile_low
        self.percentile_high = percentile_high
        self.gamma = gamma
        self.per_unit = per_unit

    def _state_layer(self) -> str:
        return PENULTIMATE

    def _fit_shape(self, h: np.ndarray) -> None:
        low, high = float(self.percentile_low), float(self.percentile_high)
        if low > high:
            raise ValueError(
                f"The 'percentile_low' parameter of VRA must not exceed percentile_high ({high:g}). Got "
                f"{low:g} instead."
            )
        if self.per_unit:
            self.low_, self.high_ = _unit_percentiles(h, [low, high])
            return
        bounds = [_shared(("percentile", q), (h,), lambda q=q: percentile(h, q)) for q in (low, high)]
        self.low_, self.high_ = (np.full(h.shape[1], value) for value in bounds)

    def _parts(self, h: np.ndarray, scratch: _Scratch) -> tuple[np.ndarray, None]:
        return _vra_rows(h, self.low_.astype(h.dtype), self.high_.astype(h.dtype), self.gamma, scratch), None

    def _shaping_key(self) -> tuple[Hashable, ...]:
        return (self.low_.tobytes(), self.high_.tobytes(), float(self.gamma))
