"""Simplified Hopfield energy (SHE): inner product with the predicted class's stored pattern."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .._batches import as_labels
from ..features import Features
from ._layerwise import Aggregator, _LayerwiseDetector, iter_row_blocks
from ._logits import as_logits

__all__ = ["SHE", "she_patterns", "she_score"]


def she_patterns(features: Any, logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per class c (a column of the logits): the mean features of the fit samples of class c that the model
    classifies correctly (argmax logits == label), float64 [C, D], and how many there were [C].

    A class without correctly classified samples falls back to the mean of its samples, and a class absent
    from the fit data to zeros; both with a warning.
    """
    h = np.asarray(features)
    logits = as_logits(logits)
    if h.ndim != 2 or len(h) != len(logits):
        raise ValueError(
            "she_patterns expects features [N, D] and logits [N, C] of the same samples; got shapes "
            f"{h.shape} and {logits.shape}."
        )
    n_classes, dim = logits.shape[1], h.shape[1]
    labels = as_labels(labels, "SHE's labels")
    if len(labels) != len(h):
        raise ValueError(
            f"she_patterns got {len(labels)} labels for {len(h)} samples; give one label per sample."
        )
    if labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() >= n_classes)):
        raise ValueError(
            f"SHE needs integer class labels in [0, {n_classes}) that index the logits' columns; got "
            f"labels of dtype {labels.dtype}"
            + (f" in [{labels.min()}, {labels.max()}]." if labels.size else ".")
        )
    predicted = np.argmax(logits, axis=1)
    correct_sums, all_sums = np.zeros((n_classes, dim)), np.zeros((n_classes, dim))
    correct_counts = np.bincount(labels[predicted == labels], minlength=n_classes)
    all_counts = np.bincount(labels, minlength=n_classes)
    for rows in iter_row_blocks(len(h), dim):
        one_hot = np.zeros((rows.stop - rows.start, n_classes))
        one_hot[np.arange(one_hot.shape[0]), labels[rows]] = 1.0
        block = h[rows].astype(np.float64)
        all_sums += one_hot.T @ block
        one_hot[predicted[rows] != labels[rows]] = 0.0
        correct_sums += one_hot.T @ block
    patterns = correct_sums / np.maximum(correct_counts, 1)[:, None]
    fallback = correct_counts == 0
    if fallback.any():
        patterns[fallback] = all_sums[fallback] / np.maximum(all_counts[fallback], 1)[:, None]
        warnings.warn(
            f"SHE: class(es) {np.flatnonzero(fallback).tolist()} have no correctly classified fit samples; "
            "their pattern is the mean of all their fit samples (zeros when there are none).",
            stacklevel=2,
        )
    return patterns, correct_counts


def she_score(features: Any, logits: Any, patterns: Any) -> np.ndarray:
    """SHE score, higher = more OOD: ``−⟨h, S_ŷ⟩`` with ŷ = argmax logits and S [C, D] the class patterns.

    >>> she_score([[1.0, 2.0]], [[0.0, 1.0]], patterns=[[1.0, 0.0], [0.5, 0.5]])
    array([-1.5])
    """
    patterns = np.asarray(patterns, dtype=np.float64)
    logits = as_logits(logits)
    h = np.asarray(features)
    if h.ndim != 2 or patterns.ndim != 2 or len(h) != len(logits):
        raise ValueError(
            f"she_score expects features [N, D], logits [N, C] and patterns [C, D]; got shapes {h.shape}, "
            f"{logits.shape} and {patterns.shape}."
        )
    if patterns.shape != (logits.shape[1], h.shape[1]):
        raise ValueError(
            f"she_score: the patterns have shape {patterns.shape}, but the logits have {logits.shape[1]} "
            f"classes and the features {h.shape[1]} dimensions; use the patterns of the same model and layer."
        )
    predicted = np.argmax(logits, axis=1)
    out = np.empty(len(h))
    for rows in iter_row_blocks(len(h), h.shape[1]):
        out[rows] = -np.einsum("nd,nd->n", h[rows].astype(np.float64), patterns[predicted[rows]])
    return out


class SHE(_LayerwiseDetector):
    """Simplified Hopfield energy: the (negated) match between the features and the predicted class's pattern.

    Zhang, Fu, Chen, Du, Li, Wang, Liu, Han & Zhang, "Out-of-Distribution Detection based on In-Distribution
    Data Patterns Memorization with Modern Hopfield Energy", ICLR 2023.
    https://openreview.net/forum?id=KkazG4lgKL

    Each class c stores one pattern S_c, the mean features (penultimate by default) of the fit samples of
    class c that the model classifies correctly. A sample is compared with the pattern of its predicted class
    ŷ = argmax_c z_c(x); the paper's energy is the negated inner product, so higher = more OOD:

        S(x) = −⟨h(x), S_ŷ(x)⟩.

    Needs labels at fit (to tell which fit samples are correctly classified); labels must be class indices,
    i.e. columns of the logits. A class without a correctly classified fit sample falls back to the mean of
    its fit samples (with a warning).

    Parameters
    ----------
    layers : list of layer ids, optional
        Layers to use; ``None`` uses every layer of the fit Features (at model level: the extracted ones,
        ``("penultimate",)`` by default). The paper uses the penultimate layer.
    aggregator : Aggregator, optional
        Combines the per-layer scores when several layers are used (required then).

    Attributes
    ----------
    patterns_ : ndarray [C, D]
        The stored class patterns S_c.
    counts_ : ndarray [C]
        How many correctly classified fit samples each pattern averages.
    layers_ : list
        The layer ids used (with several: ``layer_detectors_`` and ``aggregator_``).

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    >>> fit = Features(logits=h, layers={"penultimate": h}, labels=np.array([0, 0, 1]))
    >>> she = SHE().fit(fit)
    >>> she.patterns_
    array([[3., 0.],
           [0., 3.]])
    >>> test = np.array([[3.0, 0.0], [0.5, 0.4]])
    >>> she.score(Features(logits=test, layers={"penultimate": test})).scores
    array([-9. , -1.5])
    """

    requires = frozenset({"features", "logits", "labels"})
    _state_shapes = {"patterns_": ("C", "D"), "counts_": ("C",)}

    def __init__(
        self, layers: Sequence[Hashable] | None = None, aggregator: Aggregator | None = None
    ) -> None:
        self.layers = layers
        self.aggregator = aggregator

    def _fit_layer(self, h: np.ndarray, features: Features) -> None:
        self.patterns_, self.counts_ = she_patterns(h, features.logits, features.labels)

    def _score_layer(self, h: np.ndarray, features: Features) -> np.ndarray:
        return she_score(h, features.logits, self.patterns_)
