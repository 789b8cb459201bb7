"""OptFS: a piecewise-constant feature shaping fitted in closed form on ID data."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._params import Interval, Options, validate_params
from ..features import Features
from ._layerwise import iter_row_blocks, map_row_blocks
from ._logits import as_logits, logsumexp
from .base import Detector

__all__ = ["OptFS", "optfs_score", "optfs_theta"]

PENULTIMATE = "penultimate"
SCORES = ("vanilla", "energy")
#: ‖θ‖ after normalisation, as in the paper's code (only the energy variant depends on it)
THETA_NORM = 1000.0


def _bins(h: np.ndarray, low: float, high: float, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin index [b, D] of each value of float64 rows ``h`` among ``n_bins`` equal bins over [low, high),
    and where a value falls inside that range at all."""
    inside = (h >= low) & (h < high)
    scale = n_bins / (high - low) if high > low else 0.0
    index = np.floor((h - low) * scale)
    np.clip(index, 0, n_bins - 1, out=index)
    return index.astype(np.intp), inside


def _check_arrays(h: np.ndarray, logits: np.ndarray, weight: np.ndarray, name: str) -> None:
    if h.ndim != 2 or len(h) != len(logits) or weight.shape != (logits.shape[1], h.shape[1]):
        raise ValueError(
            f"{name} expects features [N, D], logits [N, C] and head_weight [C, D] of one model; got shapes "
            f"{h.shape}, {logits.shape} and {weight.shape}."
        )


def _percentiles64(h: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile`` of all values, as computed on their float64 copy (without that copy when large)."""
    if h.size < 4_000_000:
        return [float(v) for v in np.percentile(h.astype(np.float64), qs)]
    from ..shaping._base import percentile  # exact order statistics, interpolated in float64

    return [percentile(h, q) for q in qs]


def optfs_theta(
    features: Any, logits: Any, head_weight: Any, n_bins: int = 100
) -> tuple[np.ndarray, float, float]:
    """The OptFS shaping fitted on ID data: ``(theta [n_bins], low, high)``.

    ``low`` and ``high`` are the 0.1th and 99.9th percentiles of all fit activations; the range [low, high)
    is cut into ``n_bins`` equal bins. With ŷ_i = argmax logits_i, bin b collects the mean over the samples
    of their summed contributions ``w_{ŷ_i, d} · h_{i, d}`` from the activations in that bin; θ is that
    vector scaled to norm 1000 (all zeros when no fit activation lies inside the range).

    >>> theta, low, high = optfs_theta([[0.0, 1.0, 1.5, 3.0, 4.0]], [[1.0]], [[1.0, 1.0, 1.0, -1.0, 1.0]],
    ...                                n_bins=2)  # bins [0.004, 2) and [2, 3.996): sums 2.5 and -3
    >>> theta.round(1), round(low, 3), round(high, 3)
    (array([ 640.2, -768.2]), 0.004, 3.996)
    """
    validate_params("optfs_theta", {"n_bins": n_bins}, {"n_bins": Interval(int, 1, None)})
    h = np.asarray(features)
    logits = as_logits(logits)
    weight = np.asarray(head_weight, dtype=np.float64)
    _check_arrays(h, logits, weight, "optfs_theta")
    if len(h) == 0:
        raise ValueError("optfs_theta needs at least one fit sample.")
    low, high = _percentiles64(h, (0.1, 99.9))
    predicted = np.argmax(logits, axis=1)
    sums = np.zeros(n_bins)
    for rows in iter_row_blocks(len(h), h.shape[1]):
        block = h[rows].astype(np.float64)
        index, inside = _bins(block, low, high, n_bins)
        contributions = weight[predicted[rows]] * block
        sums += np.bincount(index[inside], weights=contributions[inside], minlength=n_bins)
    mean = sums / len(h)
    norm = float(np.linalg.norm(mean))
    theta = mean * (THETA_NORM / norm) if norm > 0 else np.zeros(n_bins)
    return theta, low, high


def _shape(block: np.ndarray, theta: np.ndarray, low: float, high: float) -> np.ndarray:
    index, inside = _bins(block, low, high, theta.size)
    return np.where(inside, theta[index] * block, 0.0)


def optfs_score(
    features: Any,
    logits: Any,
    head_weight: Any,
    head_bias: Any,
    theta: Any,
    low: float,
    high: float,
    ood_score: str = "vanilla",
) -> np.ndarray:
    """OptFS score, higher = more OOD, float64 [N], of the shaped features ``h'_d = θ_{bin(h_d)} · h_d``
    (0 outside [low, high)):

    - ``"vanilla"``: ``−w_ŷ · h'`` with ŷ = argmax of the given logits (no bias);
    - ``"energy"``: ``−log Σ_c exp(w_c · h' + b_c)``.

    >>> optfs_score([[1.0, 3.0]], [[1.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]], [0.0, 0.0], theta=[2.0, -1.0],
    ...             low=0.0, high=4.0)
    array([1.])
    """
    validate_params("optfs_score", {"ood_score": ood_score}, {"ood_score": Options(SCORES)})
    h = np.asarray(features)
    logits = as_logits(logits)
    weight = np.asarray(head_weight, dtype=np.float64)
    bias = np.asarray(head_bias, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    _check_arrays(h, logits, weight, "optfs_score")
    if theta.ndim != 1 or theta.size == 0:
        raise ValueError(f"optfs_score: theta must be a non-empty 1-D array; got shape {theta.shape}.")
    if ood_score == "energy":
        weight_t = weight.T.copy()

        def energy(block: np.ndarray) -> np.ndarray:
            return -logsumexp(_shape(block, theta, low, high) @ weight_t + bias)

        return map_row_blocks(h, energy)
    predicted = np.argmax(logits, axis=1)
    out = np.empty(len(h))
    for rows in iter_row_blocks(len(h), h.shape[1]):
        shaped = _shape(h[rows].astype(np.float64), theta, low, high)
        out[rows] = -np.einsum("nd,nd->n", weight[predicted[rows]], shaped)
    return out


class OptFS(Detector):
    """OptFS: a piecewise-constant shaping of the activations, fitted in closed form on ID data.

    Zhao, Xu, Gupta, Asthana, Zheng & Gould, "Towards Optimal Feature-Shaping Methods for
    Out-of-Distribution Detection", ICLR 2024. https://arxiv.org/abs/2402.00865

    The penultimate activations' range [q_0.001, q_0.999) over all fit values is cut into B equal bins, and
    each activation is multiplied by the value θ_b of its bin: h'_d = θ_{b(h_d)} · h_d (0 outside the
    range). Maximising the expected predicted-class logit of ID data under a norm constraint gives θ in
    closed form, from ID data only: θ_b ∝ mean_i Σ_d 1[h_{i,d} ∈ bin b] · w_{ŷ_i,d} · h_{i,d}, with ŷ_i the
    fit samples' predicted classes, scaled to ‖θ‖ = 1000 (the paper's code). The score is the shaped
    predicted-class logit without bias ("Ours (V)", the paper's code's default), with ŷ = argmax z of the
    original logits, negated so that higher = more OOD:

        S(x) = −w_ŷ · h'(x),

    or, with ``ood_score="energy"`` (the paper's energy variant), S(x) = −log Σ_c exp(w_c · h'(x) + b_c).

    OptFS is a detector of its own rather than a shaping around any logit detector (like ReAct): θ is the
    optimum for this particular score. It needs no labels; the paper fits on the training set. Neither
    OpenOOD nor pytorch-ood has it; ``search_space`` is empty (nothing is tuned, on OOD data or otherwise).

    Parameters
    ----------
    ood_score : {"vanilla", "energy"}, default="vanilla"
        The predicted-class logit of the shaped features, or their energy.
    n_bins : int, default=100
        B, the number of bins (100 in the paper).

    Attributes
    ----------
    theta_ : ndarray of shape [B]
        θ, the shaping value of each bin.
    low_, high_ : float
        q_0.001 and q_0.999 of the fit activations: the range the bins cover.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> rng = np.random.default_rng(0)
    >>> w = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    >>> h = np.abs(rng.normal(size=(200, 4))) + 2.0 * np.repeat(w, 100, axis=0)  # ID: two strong units
    >>> fit = Features(logits=h @ w.T, layers={"penultimate": h}, head_weight=w)
    >>> det = OptFS(n_bins=10).fit(fit)
    >>> ood = np.abs(rng.normal(size=(1, 4)))
    >>> test = Features(logits=ood @ w.T, layers={"penultimate": ood}, head_weight=w)
    >>> bool(det.score(test).scores[0] > np.median(det.score(fit).scores))
    True
    """

    requires = frozenset({"features", "logits", "head"})
    default_layers = (PENULTIMATE,)
    search_space: dict[str, list[Any]] = {}
    _parameter_constraints = {"ood_score": Options(SCORES), "n_bins": Interval(int, 1, None)}
    _state_shapes = {"theta_": ("B",), "low_": (), "high_": ()}

    def __init__(self, ood_score: str = "vanilla", n_bins: int = 100) -> None:
        self.ood_score = ood_score
        self.n_bins = n_bins

    def _state_layer(self) -> str:
        return PENULTIMATE

    def _fit(self, features: Features) -> None:
        theta, self.low_, self.high_ = optfs_theta(
            features.layer(PENULTIMATE), features.logits, features.head_weight, self.n_bins
        )
        if not theta.any():
            warnings.warn(
                f"OptFS: no fit activation lies inside [{self.low_:.4g}, {self.high_:.4g}) with a non-zero "
                "contribution to its predicted class, so the shaping is zero and every score is 0. Fit on "
                "more (and more varied) in-distribution samples.",
                stacklevel=4,
            )
        self.theta_ = theta

    def _score(self, features: Features) -> np.ndarray:
        return optfs_score(
            features.layer(PENULTIMATE),
            features.logits,
            features.head_weight,
            features.head_bias,
            self.theta_,
            self.low_,
            self.high_,
            self.ood_score,
        )
