"""Temperature scaling (TempScale): the maximum softmax probability at the NLL-optimal temperature."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._batches import as_labels
from .._params import Interval, validate_params
from ..features import Features
from ._layerwise import iter_row_blocks
from ._logits import as_logits
from .base import Detector
from .msp import msp_score

__all__ = ["TempScale", "fit_temperature", "tempscale_score"]

_TEMPERATURE = {"temperature": Interval(float, 0, None, closed="neither")}
#: the search for T spans this factor either side of the logits' spread (RMS over samples of their std)
_SPAN = 1e4


def tempscale_score(logits: Any, temperature: float) -> np.ndarray:
    """Temperature-scaled MSP, higher = more OOD: ``S(z) = −max_c softmax(z / T)_c``, float64 of shape [N].

    >>> tempscale_score([[2.0, 0.0], [0.0, 0.0]], temperature=2.0).round(4)
    array([-0.7311, -0.5   ])
    """
    validate_params("tempscale_score", {"temperature": temperature}, _TEMPERATURE)
    return msp_score(as_logits(logits) / temperature)


def _class_indices(labels: Any, n_samples: int, n_classes: int, owner: str) -> np.ndarray:
    """Labels as integer indices into the logits' columns, with a clear error otherwise."""
    labels = as_labels(labels, f"{owner}'s labels")
    if len(labels) != n_samples:
        raise ValueError(
            f"{owner} got {len(labels)} labels for {n_samples} samples; give one label per sample."
        )
    if labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() >= n_classes)):
        raise ValueError(
            f"{owner} needs integer class labels in [0, {n_classes}) that index the logits' columns; got "
            f"labels of dtype {labels.dtype}"
            + (f" in [{labels.min()}, {labels.max()}]." if labels.size else ".")
        )
    return labels


def _nll_slope(z: np.ndarray, labels: np.ndarray, beta: float) -> tuple[float, float]:
    """First and second derivatives in β = 1/T of the summed NLL, ``Σ_i LSE(β z_i) − β z_{i,y_i}``.

    Per row, with p = softmax(β z): the first is E_p[z] − z_y, the second Var_p(z) ≥ 0 (so the NLL is
    convex in β). Each row is shifted by its max first (neither changes), in blocks of rows.
    """
    slope = curvature = 0.0
    n, n_classes = z.shape
    for rows in iter_row_blocks(n, n_classes):
        d = z[rows].astype(np.float64)
        d -= d.max(axis=1, keepdims=True)
        true = d[np.arange(d.shape[0]), labels[rows]]
        p = np.exp(beta * d)  # the row max contributes exp(0) = 1: no overflow, the sum is at least 1
        p /= p.sum(axis=1, keepdims=True)
        mean = np.einsum("ij,ij->i", p, d)
        slope += float((mean - true).sum())
        d -= mean[:, None]
        curvature += float(np.einsum("ij,ij,ij->", p, d, d))
    return slope, curvature


def fit_temperature(logits: Any, labels: Any) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of ``labels`` under softmax(z / T).

    The NLL is convex in β = 1/T (its second derivative is a sum of variances), so its minimiser is the root
    of the first derivative: found by Newton's method on β, safeguarded by bisection (in log β) within
    T ∈ [s / 10⁴, s · 10⁴], s the RMS over samples of the logits' standard deviation across classes; it
    converges to machine precision in a handful of passes. A fit set classified entirely correctly has no
    minimum at all (the NLL falls as T → 0, where every confident score is −1): a ``ValueError`` says so.
    One no better than uniform has it at T → ∞: T is the end of the range, with a warning (the scores then
    rank samples by the spread of their logits). Logits that are constant in every row (one class, say)
    leave T undetermined: 1.

    >>> logits = np.array([[2.0, 0.0]] * 4)  # 3 of 4 labelled 0: sigmoid(2 / T) = 3/4, T = 2 / log 3
    >>> round(fit_temperature(logits, [0, 0, 0, 1]), 6), round(2 / float(np.log(3)), 6)
    (1.820478, 1.820478)
    """
    z = as_logits(logits)
    labels = _class_indices(labels, z.shape[0], z.shape[1], "fit_temperature")
    return _solve_temperature(z, labels)


def _solve_temperature(z: np.ndarray, labels: np.ndarray) -> float:
    """:func:`fit_temperature` on checked float64 logits and label indices."""
    n, n_classes = z.shape
    if n == 0:
        raise ValueError("fit_temperature needs at least one labelled sample; got 0.")
    spread_squared = 0.0
    wrong = 0
    for rows in iter_row_blocks(n, n_classes):
        block = z[rows]
        spread_squared += float(block.var(axis=1).sum())
        wrong += int(np.count_nonzero(block[np.arange(len(block)), labels[rows]] < block.max(axis=1)))
    spread = np.sqrt(spread_squared / n)
    if spread == 0.0:  # every row constant: softmax(z / T) is uniform whatever T is
        return 1.0
    low, high = 1.0 / (spread * _SPAN), _SPAN / spread  # the bracket in β = 1/T
    if _nll_slope(z, labels, low)[0] >= 0.0:
        warnings.warn(
            f"TempScale: the NLL of the {n} fit samples keeps falling as T grows (their logits predict the "
            "labels no better than a uniform guess); T is set to the end of the search range, "
            f"{1 / low:.4g}, where the scores rank samples by the spread of their logits. Check that the "
            "labels belong to the logits (same samples, same class order).",
            stacklevel=4,
        )
        return 1.0 / low
    if _nll_slope(z, labels, high)[0] <= 0.0:
        reason = (
            "the model classifies every one of them correctly, so the NLL has no minimum"
            if wrong == 0
            else f"its minimum lies below the search range although {wrong} are misclassified"
        )
        raise ValueError(
            f"TempScale: the NLL of the {n} fit samples keeps falling as T -> 0 ({reason}), and at such a T "
            "every confident score is -1. Fit on held-out labelled data on which the model makes some "
            "mistakes (the paper uses the validation split), not on the training data."
        )
    beta = 1.0 if low < 1.0 < high else np.sqrt(low * high)
    eps = np.finfo(np.float64).eps
    for _ in range(200):
        slope, curvature = _nll_slope(z, labels, beta)
        if slope == 0.0:
            break
        if slope > 0.0:
            high = beta
        else:
            low = beta
        step = slope / curvature if curvature > 0.0 else np.inf
        if abs(step) <= 4 * eps * beta:  # Newton's step is below the resolution of β: converged
            break
        beta -= step
        if not low < beta < high:  # Newton left the bracket: bisect it instead
            beta = np.sqrt(low * high)
        if high - low <= 4 * eps * high:
            break
    return float(1.0 / beta)


class TempScale(Detector):
    """Temperature scaling: the maximum softmax probability at the temperature fitted by NLL on labelled data.

    Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.
    https://arxiv.org/abs/1706.04599

    A single temperature T is fitted by minimising the negative log-likelihood of the fit labels under
    softmax(z / T); the score is the negated calibrated confidence, higher = more OOD:

        S(x) = −max_c softmax(z(x) / T)_c.

    The fit is exact (:func:`fit_temperature`): the NLL is convex in 1/T, and its minimiser is found by a
    safeguarded Newton iteration to machine precision. OpenOOD runs ``torch.optim.LBFGS([T], lr=0.01,
    max_iter=50)`` once from T = 1.5 (pytorch-ood from T = 1.0), which can stop short of the optimum and
    so depends on the starting point; the paper defines T as the minimiser, which is what is computed here.
    OpenOOD fits on the ID validation split, as the paper does: fit on held-out labelled ID data, not on the
    training data. On data the model classifies without a single error the NLL has no minimum (it falls as
    T → 0, where every confident score is −1): fit then raises a ``ValueError`` saying so.

    No hyperparameters; OpenOOD sweeps nothing (``search_space = {}``, no APS).

    Needs logits, and at fit time labels that index the logits' columns.

    Attributes
    ----------
    temperature_ : float
        The fitted T.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> fit = Features(logits=np.array([[2.0, 0.0]] * 4), labels=np.array([0, 0, 0, 1]))
    >>> det = TempScale().fit(fit)
    >>> round(det.temperature_, 4)
    1.8205
    >>> det.score(Features(logits=np.array([[2.0, 0.0], [0.0, 0.0]]))).scores.round(4)
    array([-0.75, -0.5 ])
    """

    requires = frozenset({"logits", "labels"})
    search_space: dict[str, list[Any]] = {}
    _state_shapes = {"temperature_": ()}

    def __init__(self) -> None:
        pass

    def _fit(self, features: Features) -> None:
        logits = as_logits(features.logits)
        labels = _class_indices(features.labels, len(logits), logits.shape[1], type(self).__name__)
        self.temperature_ = _solve_temperature(logits, labels)

    def _score(self, features: Features) -> np.ndarray:
        return tempscale_score(features.logits, self.temperature_)
