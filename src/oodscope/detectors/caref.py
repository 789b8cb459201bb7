"""Class-aware relative feature error (CARef): how far the features lie from their predicted class's mean."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from ..features import Features
from ._layerwise import Aggregator, _LayerwiseDetector, iter_row_blocks
from ._logits import as_logits

__all__ = ["CARef", "caref_score", "class_aware_means"]

_EPS = np.finfo(np.float64).eps
_TINY = np.finfo(np.float64).tiny


def class_aware_means(features: Any, logits: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per class c (a column of the logits): the mean features of the fit samples the model *predicts* as c
    (argmax of the logits; true labels are not used), float64 [C, D], and how many there were [C].

    A class that no fit sample is predicted as gets the mean of all fit samples, with a warning (the paper's
    code would give it NaN).

    >>> means, counts = class_aware_means([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]], [[1, 0], [1, 0], [0, 1]])
    >>> means, counts
    (array([[2., 0.],
           [0., 2.]]), array([2, 1]))
    """
    h = np.asarray(features)
    z = as_logits(logits)
    if h.ndim != 2 or len(h) != len(z) or len(h) == 0:
        raise ValueError(
            "class_aware_means expects features [N, D] and logits [N, C] of the same N >= 1 samples; got "
            f"shapes {h.shape} and {z.shape}."
        )
    n_classes, dim = z.shape[1], h.shape[1]
    predicted = np.argmax(z, axis=1)
    counts = np.bincount(predicted, minlength=n_classes)
    sums = np.zeros((n_classes, dim))
    for rows in iter_row_blocks(len(h), dim):
        # each block's rows grouped by class and summed per group: O(N·D), where a one-hot product would
        # cost O(N·C·D)
        order = np.argsort(predicted[rows], kind="stable")
        classes = predicted[rows][order]
        starts = np.flatnonzero(np.concatenate([[True], classes[1:] != classes[:-1]]))
        sums[classes[starts]] += np.add.reduceat(h[rows][order].astype(np.float64), starts, axis=0)
    means = sums / np.maximum(counts, 1)[:, None]
    empty = counts == 0
    if empty.any():
        means[empty] = sums.sum(axis=0) / len(h)
        warnings.warn(
            f"No fit sample is predicted as class(es) {np.flatnonzero(empty).tolist()}; their class mean is "
            "the mean of all fit samples. Fit on data that covers every class.",
            stacklevel=2,
        )
    return means, counts


def relative_errors(features: Any, logits: Any, means: Any, signs: Any = None) -> tuple[np.ndarray, ...]:
    """``(ŷ, the L1 error ‖h − μ_ŷ‖₁, ‖h‖₁)`` per row; with ``signs`` [C, D] the error is split instead into
    ``(ŷ, Σ max(δ, 0), Σ max(−δ, 0), ‖h‖₁)`` with ``δ = (h − μ_ŷ) · signs_ŷ``.

    ‖h‖₁ is floored at ``eps · ‖μ_ŷ‖₁`` (and the smallest normal float), so that a zero feature row, whose
    relative error is unbounded, gets a large finite score instead of a division by zero.
    """
    h = np.asarray(features)
    z = as_logits(logits)
    means = np.asarray(means, dtype=np.float64)
    if h.ndim != 2 or means.ndim != 2 or len(h) != len(z) or means.shape != (z.shape[1], h.shape[1]):
        raise ValueError(
            f"Expected features [N, D], logits [N, C] and class means [C, D]; got shapes {h.shape}, "
            f"{z.shape} and {means.shape}. Use the class means of the same model and layer."
        )
    predicted = np.argmax(z, axis=1)
    n = len(h)
    norms = np.empty(n)
    parts = [np.empty(n) for _ in range(1 if signs is None else 2)]
    for rows in iter_row_blocks(n, h.shape[1]):
        block = h[rows].astype(np.float64)
        centre = means[predicted[rows]]
        delta = block - centre
        if signs is None:
            parts[0][rows] = np.abs(delta).sum(axis=1)
        else:
            delta *= np.asarray(signs)[predicted[rows]]
            parts[0][rows] = np.maximum(delta, 0.0).sum(axis=1)
            parts[1][rows] = np.maximum(-delta, 0.0).sum(axis=1)
        floor = np.maximum(_EPS * np.abs(centre).sum(axis=1), _TINY)
        norms[rows] = np.maximum(np.abs(block).sum(axis=1), floor)
    return (predicted, *parts, norms)


def caref_score(features: Any, logits: Any, means: Any) -> np.ndarray:
    """CARef score, higher = more OOD: ``‖h − μ_ŷ‖₁ / ‖h‖₁`` with ŷ = argmax logits and μ [C, D] the class
    means (:func:`class_aware_means`), float64 [N].

    >>> caref_score([[2.0, 2.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], means=[[2.0, 0.0], [0.0, 2.0]])
    array([0.5, 3. ])
    """
    _, error, norms = relative_errors(features, logits, means)
    return error / norms


class CARef(_LayerwiseDetector):
    """Class-aware relative feature error: the L1 distance to the predicted class's mean, relative to ‖h‖₁.

    Ling, Chang, Zhao, Zhao, Chow & Deng, "CADRef: Robust Out-of-Distribution Detection via Class-Aware
    Decoupled Relative Feature Leveraging", CVPR 2025. https://arxiv.org/abs/2503.00325

    Each class c keeps μ_c, the mean features (penultimate by default) of the fit samples the model
    predicts as c. A sample is compared with the mean of its predicted class ŷ = argmax_c z_c(x); the
    paper's score is the negated relative error, so with higher = more OOD:

        S(x) = ‖h(x) − μ_ŷ(x)‖₁ / ‖h(x)‖₁.

    The paper's text averages the training features of each class; its code (``LingAndZero/CADRef``,
    ``utils/get_stat.py``) buckets them by the model's prediction, which this class follows, so no labels
    are needed. A class that no fit sample is predicted as falls back to the mean of all fit samples, with a
    warning (the paper's code would give NaN; pytorch-ood falls back the same way). A zero feature row has
    an unbounded relative error: its ‖h‖₁ is floored at eps · ‖μ_ŷ‖₁, a score of about 4.5e15.
    OpenOOD has no CARef; there is nothing to tune (``search_space`` is ``{}``).

    Parameters
    ----------
    layers : list of layer ids, optional
        Layers to use; ``None`` uses every layer of the fit Features (at model level: the extracted ones,
        ``("penultimate",)`` by default). The paper uses the penultimate layer.
    aggregator : Aggregator, optional
        Combines the per-layer scores when several layers are used (required then).

    Attributes
    ----------
    class_means_ : ndarray [C, D]
        The class means μ_c.
    class_counts_ : ndarray [C]
        How many fit samples are predicted as each class.
    layers_ : list
        The layer ids used (with several: ``layer_detectors_`` and ``aggregator_``).

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[4.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # the head is the identity
    >>> caref = CARef().fit(Features(logits=h, layers={"penultimate": h}))
    >>> caref.class_means_
    array([[3., 0.],
           [0., 3.]])
    >>> x = np.array([[3.0, 0.0], [2.0, 1.0]])
    >>> caref.score(Features(logits=x, layers={"penultimate": x})).scores.round(4)
    array([0.    , 0.6667])
    """

    requires = frozenset({"features", "logits"})
    _state_shapes = {"class_means_": ("C", "D"), "class_counts_": ("C",)}
    search_space: dict[str, list[Any]] = {}

    def __init__(
        self, layers: Sequence[Hashable] | None = None, aggregator: Aggregator | None = None
    ) -> None:
        self.layers = layers
        self.aggregator = aggregator

    def _fit_layer(self, h: np.ndarray, features: Features) -> None:
        self.class_means_, self.class_counts_ = class_aware_means(h, features.logits)

    def _score_layer(self, h: np.ndarray, features: Features) -> np.ndarray:
        return caref_score(h, features.logits, self.class_means_)
