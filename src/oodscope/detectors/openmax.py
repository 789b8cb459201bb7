"""OpenMax: the probability of an extra "unknown" class, from Weibull models of the logits' distances to
class means."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._batches import as_labels
from .._params import Interval
from ..features import Features
from ._layerwise import iter_row_blocks, map_row_blocks
from ._logits import as_logits, logsumexp
from .base import Detector

__all__ = ["OpenMax", "fit_weibull_tail", "openmax_score", "weibull_tail_cdf"]

#: libMR's ``translate_amount``: the tail is shifted so that its smallest value sits here before the fit
TRANSLATE = 10000.0


def fit_weibull_tail(distances: Any, tail_size: int = 20) -> tuple[float, float, float]:
    """libMR's ``FitHigh`` in numpy: a Weibull fitted by maximum likelihood to the ``tail_size`` largest
    distances, shifted so that the smallest of them sits at ``TRANSLATE`` = 10,000.

    Returns ``(tail_min, scale, shape)``: the smallest distance of the tail, and the Weibull's scale λ (in
    shifted units) and shape k, for :func:`weibull_tail_cdf`. The shape solves the likelihood equation
    ``Σ x^k ln x / Σ x^k − 1/k − mean(ln x) = 0`` (increasing in k; solved by bracketing) and
    ``λ = (mean x^k)^(1/k)``. A tail without spread (one distinct value) has no finite maximum: its limit,
    shape ∞, is returned (a step at that distance).

    >>> tail_min, scale, shape = fit_weibull_tail([1.0, 2.0, 3.0, 4.0], tail_size=3)
    >>> tail_min, round(scale - 10000.0, 3), round(shape, 1)
    (2.0, 1.406, 13951.2)
    """
    from scipy.optimize import brentq

    values = np.sort(np.asarray(distances, dtype=np.float64).ravel())[-tail_size:]
    if values.size == 0:
        raise ValueError("fit_weibull_tail needs at least one distance.")
    tail_min, top = float(values[0]), float(values[-1])
    top_shifted = TRANSLATE + (top - tail_min)
    if top == tail_min:
        return tail_min, top_shifted, float("inf")
    logs = np.log1p((values - top) / top_shifted)  # ln(x / x_max) <= 0, exactly 0 at the largest
    mean_log = logs.mean()

    def likelihood_equation(shape: float) -> float:
        weights = np.exp(shape * logs)
        return float((weights * logs).sum() / weights.sum() - 1.0 / shape - mean_log)

    low, high = 1.0, 2.0
    while likelihood_equation(low) > 0:
        low /= 2.0
    while likelihood_equation(high) < 0:
        low, high = high, high * 2.0
    shape = brentq(likelihood_equation, low, high, xtol=1e-300, rtol=4 * np.finfo(np.float64).eps)
    log_ratio = (logsumexp((shape * logs)[None, :])[0] - np.log(values.size)) / shape  # ln(λ / x_max)
    return tail_min, float(top_shifted * np.exp(log_ratio)), float(shape)


def weibull_tail_cdf(distances: Any, tail_min: Any, scale: Any, shape: Any) -> np.ndarray:
    """The Weibull CDF of :func:`fit_weibull_tail`'s models at ``distances`` (broadcast together):
    ``1 − exp(−(x / λ)^k)`` with ``x = d + TRANSLATE − tail_min`` (0 where x ≤ 0, as in libMR).

    >>> weibull_tail_cdf([1.0, 2.0, 3.0], tail_min=2.0, scale=10000.0, shape=float("inf")).round(4)
    array([0.    , 0.6321, 1.    ])
    """
    d = np.asarray(distances, dtype=np.float64)
    tail_min = np.asarray(tail_min, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    shape = np.asarray(shape, dtype=np.float64)
    shifted = d + (TRANSLATE - tail_min)
    # ln(x / λ) below, accurate near x = λ, where the CDF of a steep Weibull changes
    finite = np.isfinite(shape)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        log_ratio = np.log1p((d - tail_min - (scale - TRANSLATE)) / scale)
        power = np.where(finite, np.exp(np.where(finite, shape, 1.0) * log_ratio), 0.0)
    step = np.where(log_ratio > 0, np.inf, np.where(log_ratio < 0, 0.0, 1.0))  # the limit of shape -> inf
    power = np.where(finite, power, step)
    return np.where(shifted > 0, -np.expm1(-power), 0.0)


def openmax_score(
    logits: Any, class_means: Any, tail_min: Any, scale: Any, shape: Any, alpha: int = 3
) -> np.ndarray:
    """OpenMax score, higher = more OOD: the probability P₀ of the unknown class, float64 [N].

    With the classes ranked by logit, the i-th (i = 1 .. min(α, C)) gets the weight ω = (α − i + 1) / α and
    the others 0; ``w_c`` is the Weibull CDF of class c (:func:`weibull_tail_cdf`) at ‖z − μ_c‖. Then
    ``v̂_c = z_c (1 − ω_c w_c)``, ``v̂₀ = Σ_c z_c ω_c w_c`` and ``P₀ = exp(v̂₀) / (exp(v̂₀) + Σ_c exp(v̂_c))``,
    computed in the log domain.

    >>> openmax_score([[2.0, 0.0]], class_means=[[4.0, 0.0], [0.0, 4.0]], tail_min=[1.0, 1.0],
    ...               scale=[10000.0, 10000.0], shape=[np.inf, np.inf], alpha=1).round(4)
    array([0.787])
    """
    z = as_logits(logits)
    n_classes = z.shape[1]
    means = np.asarray(class_means, dtype=np.float64)
    models = [np.asarray(value, dtype=np.float64) for value in (tail_min, scale, shape)]
    if means.shape != (n_classes, n_classes) or any(m.shape != (n_classes,) for m in models):
        raise ValueError(
            f"openmax_score expects class means [C, C] and Weibull parameters [C] for the {n_classes} "
            f"classes of the logits; got shapes {means.shape} and {[m.shape for m in models]}."
        )
    ranks = min(alpha, n_classes)
    omega = (alpha - np.arange(ranks)) / alpha

    def unknown_probability(block: np.ndarray) -> np.ndarray:
        rows = np.arange(len(block))
        top = _top_classes(block, ranks)
        revised = block.copy()
        unknown = np.zeros(len(block))
        for rank in range(ranks):
            c = top[:, rank]
            diff = block - means[c]
            distance = np.sqrt(np.einsum("ij,ij->i", diff, diff))
            moved = block[rows, c] * omega[rank] * weibull_tail_cdf(distance, *(m[c] for m in models))
            revised[rows, c] -= moved
            unknown += moved
        every = np.concatenate([unknown[:, None], revised], axis=1)
        return np.exp(unknown - logsumexp(every))

    return map_row_blocks(z, unknown_probability)


def _top_classes(block: np.ndarray, ranks: int) -> np.ndarray:
    """The ``ranks`` largest columns of each row [b, ranks], largest first, ties to the lower class index
    (as a stable sort of the negated logits), by a partial selection: a full sort of C columns costs more
    than the rest of the score."""
    if ranks >= block.shape[1]:
        return np.argsort(-block, axis=1, kind="stable")
    part = np.argpartition(-block, ranks - 1, axis=1)[:, :ranks]
    values = np.take_along_axis(block, part, axis=1)
    top = np.take_along_axis(part, np.lexsort((part, -values), axis=-1), axis=1)
    # a tie at the boundary may have selected a higher class index than a stable sort would: redo those rows
    tied = (block >= values.min(axis=1, keepdims=True)).sum(axis=1) > ranks
    if tied.any():
        top[tied] = np.argsort(-block[tied], axis=1, kind="stable")[:, :ranks]
    return top


class OpenMax(Detector):
    """OpenMax: the probability of an extra "unknown" class, from Weibull models of the distances of the
    logits to each class's mean logit vector.

    Bendale & Boult, "Towards Open Set Deep Networks", CVPR 2016. https://arxiv.org/abs/1511.06233

    Fit, per class c: the mean activation vector μ_c, the mean logits of the fit samples of class c that the
    model classifies correctly, and a Weibull model (libMR's ``FitHigh``: shifted so that the smallest of
    the tail sits at 10,000, maximum likelihood) of the ``tail_size`` largest Euclidean distances
    ‖z_i − μ_c‖ of those samples. Score: the α top-ranked classes of a sample give part of their logit to an
    unknown class, the more the farther the sample is from their mean; with ω_c = (α − i + 1) / α for the
    class of rank i ≤ α (0 for the others) and w_c(x) = WeibullCDF_c(‖z(x) − μ_c‖),
    v̂_c = z_c (1 − ω_c w_c) and v̂₀ = Σ_c z_c ω_c w_c. The score is the unknown class's probability (OpenOOD's
    confidence is its negative), higher = more OOD:

        S(x) = exp(v̂₀(x)) / (exp(v̂₀(x)) + Σ_c exp(v̂_c(x))).

    Needs the logits, and labels at fit (class indices, the columns of the logits). A class without a
    correctly classified fit sample falls back to all its fit samples (with a warning). A class without fit
    samples (a head wider than the classes it was trained on, e.g. 10 outputs trained on 5 digits) gets a
    model whose CDF is 1 at every distance, with a warning: the whole activation of a sample ranking it
    high counts as unknown. A class whose tail holds one distinct distance (e.g. a single sample) gets the
    limit of the Weibull fit, a step at that distance. Scoring costs α distances [N, C] per sample block.

    Differences from the reference implementations (following the paper and OpenOOD's
    ``openmax_postprocessor.py``):

    - Distance: Euclidean, OpenOOD's choice; the paper's ``eucos`` (a weighted Euclidean plus cosine
      distance) is not offered.
    - The Weibull fit is libMR's, reimplemented (no libMR needed): the same shift by 10,000 and the same
      maximum-likelihood estimate. With fewer than ``tail_size`` samples in a class, all are used.
    - The probability is computed in the log domain (no overflow of exp); with α > C, the C classes get the
      weights of the ranks 1 .. C (OpenOOD would fail).
    - pytorch-ood's ``OpenMax`` uses tail size 25, α = 10, ``eucos`` with weight 1 and all fit samples (not
      only the correctly classified ones).

    Tuning: OpenOOD hard-codes tail 20 and α = 3, sweeps nothing and has ``APS_mode: False``
    (``search_space = {}``; no OOD data used). Its ``weibull_threshold = 0.9`` only affects predictions.

    Parameters
    ----------
    tail_size : int, default=20
        How many of the largest distances per class the Weibull is fitted to.
    alpha : int, default=3
        α, the number of top-ranked classes revised per sample.

    Attributes
    ----------
    class_means_ : ndarray [C, C]
        μ_c, the mean logit vector of each class (a row per class).
    tail_min_, scale_, shape_ : ndarray [C]
        Each class's Weibull model (:func:`fit_weibull_tail`): the smallest distance of the tail, and the
        scale (shifted units) and shape (∞ for a tail without spread).
    counts_ : ndarray [C]
        How many fit samples each class's mean and tail come from.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat([0, 1], 50)
    >>> z = np.where(labels[:, None] == [0, 1], 6.0, 0.0) + rng.normal(0, 1.0, (100, 2))
    >>> openmax = OpenMax().fit(Features(logits=z, labels=labels))
    >>> openmax.score(Features(logits=np.array([[6.0, 0.0], [3.0, 3.0]]))).scores.round(3)
    array([0.003, 0.976])
    """

    requires = frozenset({"logits", "labels"})
    search_space = {}  # OpenOOD sweeps nothing (see the docstring)
    _state_shapes = {
        "class_means_": ("C", "C"),
        "tail_min_": ("C",),
        "scale_": ("C",),
        "shape_": ("C",),
        "counts_": ("C",),
    }
    _parameter_constraints = {"tail_size": Interval(int, 1, None), "alpha": Interval(int, 1, None)}

    def __init__(self, tail_size: int = 20, alpha: int = 3) -> None:
        self.tail_size = tail_size
        self.alpha = alpha

    def _fit(self, features: Features) -> None:
        z = features.logits
        n_classes = z.shape[1]
        labels = as_labels(features.labels, "OpenMax's labels")
        if labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() >= n_classes)):
            raise ValueError(
                f"OpenMax needs integer class labels in [0, {n_classes}) that index the logits' columns; got "
                f"labels of dtype {labels.dtype}"
                + (f" in [{labels.min()}, {labels.max()}]." if labels.size else ".")
            )
        absent = np.flatnonzero(np.bincount(labels, minlength=n_classes) == 0)
        if absent.size:
            warnings.warn(
                f"OpenMax: class(es) {absent.tolist()} of the {n_classes} have no fit samples (a head wider "
                "than the classes it was trained on?); their Weibull model is 1 at every distance, so the "
                "whole activation of such a class counts as unknown.",
                stacklevel=4,
            )
        used = np.argmax(z, axis=1) == labels
        correct = np.bincount(labels[used], minlength=n_classes)
        if (correct == 0).any():
            fallback = correct == 0
            used |= fallback[labels]
            warnings.warn(
                f"OpenMax: class(es) {np.flatnonzero(fallback).tolist()} have no correctly classified fit "
                "samples; their mean and Weibull model come from all their fit samples.",
                stacklevel=4,
            )
        rows = np.flatnonzero(used)
        classes = labels[rows]
        sums = np.zeros((n_classes, n_classes))
        for block in iter_row_blocks(len(rows), n_classes):
            np.add.at(sums, classes[block], z[rows[block]].astype(np.float64))
        counts = np.bincount(classes, minlength=n_classes)
        means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
        distances = np.empty(len(rows))
        for block in iter_row_blocks(len(rows), n_classes):
            diff = z[rows[block]].astype(np.float64) - means[classes[block]]
            distances[block] = np.linalg.norm(diff, axis=1)
        order = np.lexsort((distances, classes))  # by class, then by distance
        bounds = np.concatenate([[0], np.cumsum(counts)])
        models = [
            fit_weibull_tail(distances[order[bounds[c] : bounds[c + 1]]], self.tail_size)
            if counts[c]
            else (-1.0, TRANSLATE, np.inf)  # a step below every distance: the CDF is 1 everywhere
            for c in range(n_classes)
        ]
        self.class_means_ = means
        self.tail_min_, self.scale_, self.shape_ = (np.array(part) for part in zip(*models, strict=True))
        self.counts_ = counts

    def _score(self, features: Features) -> np.ndarray:
        return openmax_score(
            features.logits, self.class_means_, self.tail_min_, self.scale_, self.shape_, self.alpha
        )
