"""Mahalanobis distance to the nearest class mean, with one shared (tied) covariance."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from ..features import Features
from ._layerwise import Aggregator, _LayerwiseDetector, iter_row_blocks, map_row_blocks

__all__ = ["Mahalanobis", "class_statistics", "mahalanobis_distances", "whitening"]


def class_statistics(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classes, class sizes, class means and the tied (within-class) covariance, in float64.

    ``covariance = (1 / N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ`` (the maximum-likelihood estimate, as
    scikit-learn's ``EmpiricalCovariance`` on the class-centred features). Two passes over blocks of rows
    (means, then centred products), so memory stays at one block whatever N.

    Returns
    -------
    classes : ndarray [K]
        The sorted distinct labels.
    counts : ndarray [K]
    means : ndarray [K, D]
    covariance : ndarray [D, D]
    """
    h = np.asarray(features)
    classes, inverse = np.unique(np.asarray(labels), return_inverse=True)
    inverse = inverse.reshape(-1)
    n_classes, dim = classes.size, h.shape[1]
    counts = np.bincount(inverse, minlength=n_classes)
    sums = np.zeros((n_classes, dim))
    for rows in iter_row_blocks(len(h), dim):
        one_hot = np.zeros((rows.stop - rows.start, n_classes))
        one_hot[np.arange(one_hot.shape[0]), inverse[rows]] = 1.0
        sums += one_hot.T @ h[rows].astype(np.float64)
    means = sums / counts[:, None]
    scatter = np.zeros((dim, dim))
    for rows in iter_row_blocks(len(h), dim):
        centred = h[rows].astype(np.float64) - means[inverse[rows]]
        scatter += centred.T @ centred
    return classes, counts, means, scatter / len(h)


def whitening(covariance: Any) -> np.ndarray:
    """A factor L [D, r] with L Lᵀ = pinv(covariance): the eigenvectors over the square roots of the
    eigenvalues above ``D · eps · λ_max`` (the cut-off of ``scipy.linalg.pinvh``); directions without
    variance in the fit data are ignored, so a singular covariance (dead units) is no problem."""
    eigenvalues, eigenvectors = np.linalg.eigh(np.asarray(covariance, dtype=np.float64))
    largest = max(float(eigenvalues[-1]), 0.0) if eigenvalues.size else 0.0
    keep = eigenvalues > largest * eigenvalues.size * np.finfo(np.float64).eps
    return eigenvectors[:, keep] / np.sqrt(eigenvalues[keep])


def mahalanobis_distances(features: Any, means: Any, whitener: Any) -> np.ndarray:
    """Squared Mahalanobis distances [N, K] of features [N, D] to each of the means [K, D].

    ``d_k(h) = (h − μ_k)ᵀ P (h − μ_k)`` with ``P = L Lᵀ`` given by the whitening factor L [D, r]: the
    features are whitened once (one [b, D] x [D, r] product per block) and compared with the K whitened
    means, so the cost does not grow with K (no per-class product) and memory is one block.
    """
    means = np.asarray(means, dtype=np.float64)
    whitener = np.asarray(whitener, dtype=np.float64)
    centre = means.mean(axis=0)  # a point near the data keeps the expansion below free of cancellation
    whitened_means = (means - centre) @ whitener
    mean_norms = (whitened_means**2).sum(axis=1)

    def distances(block: np.ndarray) -> np.ndarray:
        z = (block - centre) @ whitener
        squared = (z**2).sum(axis=1, keepdims=True) - 2.0 * (z @ whitened_means.T) + mean_norms
        return np.maximum(squared, 0.0)

    return map_row_blocks(np.asarray(features), distances)


class Mahalanobis(_LayerwiseDetector):
    """Minimum Mahalanobis distance to the class means, with a tied covariance.

    Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
    Adversarial Attacks", NeurIPS 2018. https://arxiv.org/abs/1807.03888

    From labelled fit features (penultimate by default): class means μ_k and one covariance Σ shared by all
    classes (the class-centred features' maximum-likelihood covariance). The score is the **squared**
    distance to the nearest class mean (the paper's confidence is its negative), higher = more OOD:

        S(x) = min_k (h(x) − μ_k)ᵀ Σ⁺ (h(x) − μ_k).

    Σ⁺ is the pseudo-inverse (eigenvalues below ``D · eps · λ_max`` dropped, like ``scipy.linalg.pinvh`` in
    scikit-learn's ``EmpiricalCovariance``), robust to the singular covariances of dead units. The paper's
    input preprocessing (a gradient step of size ε on the input) and its feature ensemble are not applied:
    this is the plain distance on the given features; several layers combine through ``aggregator``.

    Parameters
    ----------
    layers : list of layer ids, optional
        Layers to use; ``None`` uses every layer of the fit Features (at model level: the extracted ones,
        ``("penultimate",)`` by default).
    aggregator : Aggregator, optional
        Combines the per-layer scores when several layers are used (required then).

    Attributes
    ----------
    classes_ : ndarray [K]
        The labels seen at fit.
    class_means_ : ndarray [K, D]
    covariance_ : ndarray [D, D]
        The tied covariance Σ.
    whitening_ : ndarray [D, r]
        L with L Lᵀ = Σ⁺.
    layers_ : list
        The layer ids used (with several: ``layer_detectors_`` and ``aggregator_``).

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[1.0, 0.0], [3.0, 0.0], [-1.0, 1.0], [-3.0, -1.0]])
    >>> fit = Features(layers={"penultimate": h}, labels=np.array([0, 0, 1, 1]))
    >>> test = Features(layers={"penultimate": np.array([[2.0, 0.0], [0.0, 5.0]])})
    >>> Mahalanobis().fit(fit).score(test).scores.round(3)
    array([ 0., 68.])
    """

    requires = frozenset({"features", "labels"})

    def __init__(
        self, layers: Sequence[Hashable] | None = None, aggregator: Aggregator | None = None
    ) -> None:
        self.layers = layers
        self.aggregator = aggregator

    def _fit_layer(self, h: np.ndarray, features: Features) -> None:
        self.classes_, _, self.class_means_, self.covariance_ = class_statistics(h, features.labels)
        self.whitening_ = whitening(self.covariance_)

    def _score_layer(self, h: np.ndarray, features: Features) -> np.ndarray:
        return mahalanobis_distances(h, self.class_means_, self.whitening_).min(axis=1)
