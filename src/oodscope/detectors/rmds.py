"""Relative Mahalanobis distance (RMDS): class-conditional minus class-agnostic Mahalanobis distance."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from ..features import Features
from ._layerwise import Aggregator, _LayerwiseDetector
from .mahalanobis import class_statistics, mahalanobis_distances, whitening

__all__ = ["RMDS"]


class RMDS(_LayerwiseDetector):
    """Relative Mahalanobis distance: the class-conditional distance minus a background distance.

    Ren, Fort, Liu, Roy, Padhy & Lakshminarayanan, "A Simple Fix to Mahalanobis Distance for Improving
    Near-OOD Detection", 2021. https://arxiv.org/abs/2106.09022

    With MD_k(x) = (h − μ_k)ᵀ Σ⁺ (h − μ_k) the squared Mahalanobis distance to class k under the tied
    covariance Σ (as in :class:`Mahalanobis`) and MD_0(x) = (h − μ_0)ᵀ Σ_0⁺ (h − μ_0) the squared distance
    under one Gaussian fitted to all fit features regardless of class (mean μ_0, covariance Σ_0), the score
    is the paper's minimum relative distance (its confidence is the negative), higher = more OOD:

        S(x) = min_k (MD_k(x) − MD_0(x)) = min_k MD_k(x) − MD_0(x).

    Σ_0 is obtained exactly from the class statistics, Σ_0 = Σ + Σ_k (n_k / N)(μ_k − μ_0)(μ_k − μ_0)ᵀ, so
    the fit makes one pass for the covariance. Pseudo-inverses as in :class:`Mahalanobis`.

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
    class_means_ : ndarray [K, D]
    covariance_ : ndarray [D, D]
        The tied within-class covariance Σ.
    whitening_ : ndarray [D, r]
        L with L Lᵀ = Σ⁺.
    background_mean_ : ndarray [D]
        μ_0.
    background_covariance_ : ndarray [D, D]
        Σ_0.
    background_whitening_ : ndarray [D, r0]
        L_0 with L_0 L_0ᵀ = Σ_0⁺.
    layers_ : list
        The layer ids used (with several: ``layer_detectors_`` and ``aggregator_``).

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[1.0, 0.0], [3.0, 0.0], [-1.0, 1.0], [-3.0, -1.0]])
    >>> fit = Features(layers={"penultimate": h}, labels=np.array([0, 0, 1, 1]))
    >>> test = Features(layers={"penultimate": np.array([[2.0, 0.0], [0.0, 5.0]])})
    >>> RMDS().fit(fit).score(test).scores.round(3)
    array([-0.889, 12.444])
    """

    requires = frozenset({"features", "labels"})

    def __init__(
        self, layers: Sequence[Hashable] | None = None, aggregator: Aggregator | None = None
    ) -> None:
        self.layers = layers
        self.aggregator = aggregator

    def _fit_layer(self, h: np.ndarray, features: Features) -> None:
        self.classes_, counts, self.class_means_, self.covariance_ = class_statistics(h, features.labels)
        self.whitening_ = whitening(self.covariance_)
        weights = counts / counts.sum()
        self.background_mean_ = weights @ self.class_means_
        offsets = self.class_means_ - self.background_mean_
        self.background_covariance_ = self.covariance_ + (offsets * weights[:, None]).T @ offsets
        self.background_whitening_ = whitening(self.background_covariance_)

    def _score_layer(self, h: np.ndarray, features: Features) -> np.ndarray:
        class_part = mahalanobis_distances(h, self.class_means_, self.whitening_).min(axis=1)
        background = mahalanobis_distances(h, self.background_mean_[None, :], self.background_whitening_)
        return class_part - background[:, 0]
