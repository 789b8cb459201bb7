"""DICE: sparsify the head by the ID contributions of its weights, then score the recomputed logits."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from .._params import validate_params
from ..detectors._layerwise import column_mean
from ..detectors.base import Detector
from ..features import Features
from ._base import (
    _DETECTOR,
    _PERCENTILE,
    PENULTIMATE,
    _as_float,
    _over_row_blocks,
    _Scratch,
    _Shaping,
    _single_threaded_blas,
)

__all__ = ["DICE", "dice_mask"]


def dice_mask(mean_features: Any, head_weight: Any, percentile: float = 90.0) -> np.ndarray:
    """The weights DICE keeps: ``contrib = μ ⊙ W`` (μ [D] broadcast over the rows of W [C, D]) above its
    p-th percentile over all C·D entries (linear interpolation, like ``np.percentile``), bool [C, D].

    >>> dice_mask([1.0, 2.0], [[1.0, 1.0], [3.0, 0.0]], percentile=50).astype(int)
    array([[0, 1],
           [1, 0]])
    """
    validate_params("dice_mask", {"percentile": percentile}, {"percentile": _PERCENTILE})
    mean = np.asarray(mean_features, dtype=np.float64)
    weight = np.asarray(head_weight, dtype=np.float64)
    if weight.ndim != 2 or mean.shape != (weight.shape[1],):
        raise ValueError(
            "dice_mask expects the mean features [D] and the head weight [C, D] of one model; got shapes "
            f"{mean.shape} and {weight.shape}."
        )
    contributions = weight * mean
    return contributions > np.percentile(contributions, percentile)


class DICE(_Shaping):
    """DICE: keep only the head weights that contribute most on ID data, then score the recomputed logits.

    Sun & Li, "DICE: Leveraging Sparsification for Out-of-Distribution Detection", ECCV 2022.
    https://arxiv.org/abs/2111.09805

    With μ the mean penultimate features h of the fit data and W [C, D], b the linear head, the contribution
    of weight w_cd is μ_d · w_cd; DICE keeps the weights whose contribution is above the p-th percentile of
    all C·D contributions (mask M) and drops the others. With S_inner the wrapped detector (Energy by
    default, as in the paper), higher = more OOD:

        S(x) = S_inner((M ⊙ W) · h(x) + b).

    The paper shows DICE with other scores too, so any logit detector can be wrapped; and since DICE reads
    the features, it can itself be wrapped by an activation shaping, e.g. ``ReAct(DICE())`` (DICE + ReAct
    in the paper), whose DICE learns μ from the clipped fit features. The paper fits μ on the training set.

    Where it differs: nothing in the formula. OpenOOD uses p = 90 for every benchmark, ImageNet included,
    while the paper (and its scripts) use p = 90 on CIFAR and p = 70 on ImageNet: pass ``percentile=70`` for
    ImageNet-scale models. OpenOOD's "sweep" is p ∈ {90} (``search_space``), not tuned on OOD data (APS mode
    off). pytorch-ood's quantile interpolates like ``np.percentile``, as here.

    Parameters
    ----------
    detector : Detector, optional
        The detector scoring the recomputed logits; ``None`` means ``Energy()``.
    percentile : float, default=90
        p in [0, 100): the share of weights dropped (90 on CIFAR, 70 on ImageNet in the paper).

    Attributes
    ----------
    mean_ : ndarray of shape [D]
        μ, the mean fit features.
    mask_ : ndarray of shape [C, D], bool
        M, the weights kept (from the fit data's head).
    detector_ : Detector
        The wrapped detector, fitted on the fit data's recomputed logits.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[2.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    >>> feats = Features(layers={"penultimate": h}, head_weight=np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]]))
    >>> dice = DICE(percentile=50).fit(feats)  # contributions μ ⊙ W: [[2, 0, 1], [0, 3, 1]], median 1
    >>> dice.mask_.astype(int)
    array([[1, 0, 0],
           [0, 1, 0]])
    >>> dice.score(feats).scores.round(4)
    array([-4.0181, -6.0025])
    """

    needs_fit = True
    search_space = {"percentile": [90]}
    _parameter_constraints = {"detector": _DETECTOR, "percentile": _PERCENTILE}
    _state_shapes = {"mean_": ("D",), "mask_": ("C", "D")}

    def __init__(self, detector: Detector | None = None, percentile: float = 90.0) -> None:
        self.detector = detector
        self.percentile = percentile

    def _state_layer(self) -> str:
        return PENULTIMATE

    def _fit(self, features: Features) -> None:
        self.mean_ = column_mean(features.layer(PENULTIMATE))
        self.mask_ = dice_mask(self.mean_, features.head_weight, self.percentile)
        super()._fit(features)

    def _shaping_key(self) -> tuple[Hashable, ...]:
        return (self.mask_.shape, np.packbits(self.mask_).tobytes())

    def _shape_logits(
        self, h: np.ndarray, weight: np.ndarray, bias: np.ndarray, keep: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        # DICE edits the head, not the activations: logits through the masked weights; the features (for a
        # wrapped detector that reads them) are the given ones
        dtype = _as_float(h[:0]).dtype
        masked_t = np.where(self.mask_, weight, 0).T.astype(dtype)
        bias = bias.astype(dtype)
        logits = np.empty((len(h), masked_t.shape[1]), dtype=dtype)

        def run(start: int, stop: int, scratch: _Scratch) -> None:
            product = np.matmul(_as_float(h[start:stop]), masked_t, out=logits[start:stop])
            product += bias

        with _single_threaded_blas():
            _over_row_blocks(run, len(h), h.shape[1])
        return logits, (_as_float(h) if keep else None)
