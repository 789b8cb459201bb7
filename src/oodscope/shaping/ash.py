"""ASH: per-sample activation pruning (and scaling), then score the recomputed logits."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from .._params import Options, validate_params
from ..detectors.base import Detector
from ._base import (
    _DETECTOR,
    _EPS,
    _PERCENTILE,
    _activations,
    _check_non_negative,
    _kept_count,
    _materialise,
    _prune,
    _row_sums,
    _scale_factor,
    _Scratch,
    _Shaping,
    _top_k,
)

__all__ = ["ASH", "ash"]

_VARIANT = Options(["s", "p", "b"])


def ash(features: np.ndarray, percentile: float = 90.0, variant: str = "s", eps: float = 1e-12) -> np.ndarray:
    """ASH: per sample, keep the activations at or above the k-th largest (k = n − round(n·p/100)), zero
    the rest, then:

    - ``"p"`` (prune): nothing more;
    - ``"b"`` (binarize): set exactly k activations to s1 / k (ties at the k-th value broken by position);
    - ``"s"`` (scale): multiply the kept activations by exp(s1 / s2);

    with s1 the sample's activation sum before pruning and s2 after; ``eps`` keeps s1 / s2 finite for an
    all-zero sample. Activations [N, D] must be non-negative. Keeps the input's floating precision (float16
    as float32).
    """
    validate_params(
        "ash",
        {"percentile": percentile, "variant": variant, "eps": eps},
        {"percentile": _PERCENTILE, "variant": _VARIANT, "eps": _EPS},
    )
    h = _activations(features, "ash")
    _check_non_negative(h, "ASH")
    return _materialise(*_ash_parts(h, percentile, variant, eps, _Scratch()))


def _ash_parts(
    h: np.ndarray, percentile: float, variant: str, eps: float, scratch: _Scratch
) -> tuple[np.ndarray, np.ndarray | None]:
    """ASH of non-negative rows ``h`` as ``(g, factor)``: the shaped rows are ``g * factor[:, None]``."""
    k = _kept_count(h.shape[1], percentile)
    if variant == "b":
        binary = np.zeros_like(h)
        top = np.argpartition(-h, k - 1, axis=1)[:, :k]
        np.put_along_axis(binary, top, (_row_sums(h)[:, None] / k).astype(h.dtype), axis=1)
        return binary, None
    pruned = _prune(h, _top_k(h, k, scratch)[:, 0], scratch)  # the k largest and any tied with the k-th
    if variant == "p":
        return pruned, None
    return pruned, _scale_factor(_row_sums(h), _row_sums(pruned), eps, h.dtype, "ASH")


class ASH(_Shaping):
    """ASH: per-sample activation pruning (and scaling), then score the recomputed logits.

    Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for Out-of-Distribution
    Detection", ICLR 2023. https://arxiv.org/abs/2209.09858

    Per sample, keep the k = n − round(n·p/100) largest penultimate activations h (and any tied with the
    k-th) and zero the rest (h_p);
    with s1 = Σh, s2 = Σh_p, ASH-S (the default) rescales: h' = h_p · exp(s1 / s2). ASH-P stops after
    pruning; ASH-B sets each kept value to s1 / k. With S_inner the wrapped detector (Energy by default):

        S(x) = S_inner(W · h'(x) + b).

    Needs non-negative (post-ReLU) activations. Learns nothing itself: it needs fitting only when the
    wrapped detector does.

    Parameters
    ----------
    detector : Detector, optional
        The detector scoring the recomputed logits; ``None`` means ``Energy()``.
    percentile : float, default=90
        p in [0, 100): the share of activations pruned.
    variant : {"s", "p", "b"}, default="s"
        ASH-S, ASH-P or ASH-B.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[4.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    >>> feats = Features(layers={"penultimate": h}, head_weight=np.eye(4))
    >>> ASH(percentile=50, variant="p").score(feats).scores.round(3)
    array([-4.083, -2.386])
    """

    needs_fit = False
    _non_negative = True
    _parameter_constraints = {
        "detector": _DETECTOR,
        "percentile": _PERCENTILE,
        "variant": _VARIANT,
    }
    #: OpenOOD's sweep (``configs/postprocessors/ash.yml``), tuned on OOD validation data
    search_space = {"percentile": [65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0]}

    def __init__(
        self, detector: Detector | None = None, percentile: float = 90.0, variant: str = "s"
    ) -> None:
        self.detector = detector
        self.percentile = percentile
        self.variant = variant

    def _parts(self, h: np.ndarray, scratch: _Scratch) -> tuple[np.ndarray, np.ndarray | None]:
        return _ash_parts(h, self.percentile, self.variant, 1e-12, scratch)

    def _shaping_key(self) -> tuple[Hashable, ...]:
        return (float(self.percentile), self.variant)
