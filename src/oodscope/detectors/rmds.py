"""Relative Mahalanobis distance (RMDS): class-conditional minus class-agnostic Mahalanobis distance."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from .._params import Options
from ..features import Features
from ._layerwise import Aggregator, _LayerwiseDetector, map_row_blocks
from ._statistics import (
    class_statistics,
    in_range,
    normalized_rows,
    rank_update,
    whitening,
    whitening_update,
)
from .mahalanobis import mahalanobis_distances, nearest_class_distance

__all__ = ["RMDS"]


class RMDS(_LayerwiseDetector):
    """Relative Mahalanobis distance: the class-conditional distance minus a background distance.

    Ren, Fort, Liu, Roy, Padhy & Lakshminarayanan, "A Simple Fix to Mahalanobis Distance for Improving
    Near-OOD Detection", 2021. https://arxiv.org/abs/2106.09022

    With MD_k(x) = (h − μ_k)ᵀ Σ⁻¹ (h − μ_k) the squared Mahalanobis distance to class k under the tied
    covariance Σ (as in :class:`Mahalanobis`) and MD_0(x) = (h − μ_0)ᵀ Σ_0⁻¹ (h − μ_0) the squared distance
    under one Gaussian fitted to all fit features regardless of class (mean μ_0, covariance Σ_0), the score
    is the paper's minimum relative distance (its confidence is the negative), higher = more OOD:

        S(x) = min_k (MD_k(x) − MD_0(x)) = min_k MD_k(x) − MD_0(x).

    Σ_0 is obtained exactly from the class statistics, Σ_0 = Σ + Σ_k (n_k / N)(μ_k − μ_0)(μ_k − μ_0)ᵀ, so
    the fit makes one pass over the features (about one float64 product of the centred fit features with
    themselves; inside :func:`~oodscope._sharing.sharing` the statistics are those of Mahalanobis on the
    same features), and Σ_0 = Σ + B Bᵀ is a rank-K update of Σ.

    The score is computed in its **linear form** whenever the class offsets o_k = μ_k − μ_0 lie in the range
    of Σ: always when Σ is invertible, and with dead units (units that no fit sample activates, so they are 0
    in every mean too). Σ⁻¹ below is then Σ⁺ where Σ is singular. With r = h − μ_0, MD_k − MD_0 expands so
    that the quadratic term rᵀ Σ⁻¹ r cancels, and Woodbury's identity gives MD_0 = rᵀ Σ⁻¹ r − ‖Gᵀ r‖², with
    G = Σ⁻¹ B (I + Bᵀ Σ⁻¹ B)^(−1/2) [D, K]:

        S(x) = min_k (c_k − 2 rᵀ v_k) + ‖Gᵀ r‖²,    v_k = Σ⁻¹ o_k,  c_k = o_kᵀ Σ⁻¹ o_k.

    Scoring M samples then costs one [M, D] x [D, 2K] product instead of two [M, D] x [D, D] whitening
    products, with no cancellation between two large distances. Otherwise (Σ singular in a direction where
    the class means differ) both distances use pseudo-inverses, Σ⁺ and Σ_0⁺ (eigenvalues below
    ``D · eps · λ_max`` dropped), through whitening factors (W Wᵀ = Σ⁺ as in :class:`Mahalanobis`,
    W_0 W_0ᵀ = Σ_0⁺), and are subtracted.

    Parameters
    ----------
    layers : list of layer ids, optional
        Layers to use; ``None`` uses every layer of the fit Features (at model level: the extracted ones,
        ``("penultimate",)`` by default).
    aggregator : Aggregator, optional
        Combines the per-layer scores when several layers are used (required then).
    normalize : bool, default=False
        L2-normalise each feature vector before everything else (fit and score), ĥ = h / ‖h‖: the "++"
        variant of Müller & Hein, "Mahalanobis++: Improving OOD Detection via Feature Normalization",
        ICML 2025 (https://arxiv.org/abs/2505.18032), which makes the tied-covariance Gaussian fit features
        whose norms vary widely (strongest on ViT and Swin backbones).

    Attributes
    ----------
    classes_ : ndarray [K]
    class_means_ : ndarray [K, D]
    covariance_ : ndarray [D, D]
        The tied within-class covariance Σ.
    whitening_ : ndarray [D, D] or [D, r]
        W with W Wᵀ = Σ⁻¹, as in :class:`Mahalanobis` (Fortran-ordered).
    background_mean_ : ndarray [D]
        μ_0.
    background_covariance_ : ndarray [D, D]
        Σ_0.
    background_whitening_ : ndarray [D, r0]
        W_0 with W_0 W_0ᵀ = Σ_0⁺ (Σ_0⁻¹ when invertible; Fortran-ordered), r0 = rank(Σ_0).
    relative_directions_ : ndarray [D, K]
        v_k = Σ⁻¹ (μ_k − μ_0) in the linear form (only when it applies).
    relative_offsets_ : ndarray [K]
        c_k = (μ_k − μ_0)ᵀ Σ⁻¹ (μ_k − μ_0) (only when the linear form applies).
    background_directions_ : ndarray [D, K]
        G in the linear form (only when it applies).
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
    _state_shapes = {
        "classes_": ("K",),
        "class_means_": ("K", "D"),
        "covariance_": ("D", "D"),
        "whitening_": ("D", "r"),
        "background_mean_": ("D",),
        "background_covariance_": ("D", "D"),
        "background_whitening_": ("D", "r0"),
        "relative_directions_": ("D", "K"),
        "relative_offsets_": ("K",),
        "background_directions_": ("D", "K"),
    }

    _parameter_constraints = {
        **_LayerwiseDetector._parameter_constraints,
        "normalize": Options([True, False]),
    }

    def __init__(
        self,
        layers: Sequence[Hashable] | None = None,
        aggregator: Aggregator | None = None,
        normalize: bool = False,
    ) -> None:
        self.layers = layers
        self.aggregator = aggregator
        self.normalize = normalize

    def _layer_values(self, h: np.ndarray) -> np.ndarray:
        """The layer's features as fitted and scored: L2-normalised rows when ``normalize``."""
        return normalized_rows(h) if self.normalize else h

    def _fit_layer(self, h: np.ndarray, features: Features) -> None:
        h = self._layer_values(h)
        statistics = class_statistics(h, features.labels)
        if statistics.classes.size < 2:
            raise ValueError(
                f"RMDS needs at least two classes in the fit labels; got only {statistics.classes.tolist()}. "
                "With one, the class Gaussian is the background Gaussian and every score is 0: use "
                "Mahalanobis() instead."
            )
        self.classes_, self.class_means_ = statistics.classes, statistics.means
        self.covariance_ = statistics.covariance
        self.whitening_ = whitening(self.covariance_)
        weights = statistics.counts / statistics.counts.sum()
        self.background_mean_ = weights @ self.class_means_
        offsets = self.class_means_ - self.background_mean_
        spread = offsets.T * np.sqrt(weights)  # B [D, K], Σ_0 = Σ + B Bᵀ
        self.background_covariance_ = rank_update(self.covariance_, spread)
        # the class offsets lie in the range of Σ (always when Σ is invertible; with dead units, when they
        # are 0 on them, as they are): then Σ_0⁺ follows from Σ⁺ by Woodbury's identity, and the score has
        # its linear form
        in_range_of_sigma = in_range(self.whitening_, spread)
        # the update costs about 4 D r K flops and a thin SVD; factorising and inverting Σ_0, about 2 D³ / 3
        # at half the speed: the update is the cheaper while K ≤ D / 8
        if in_range_of_sigma and 8 * spread.shape[1] <= h.shape[1]:
            self.background_whitening_ = whitening_update(self.whitening_, spread)
        else:
            self.background_whitening_ = whitening(self.background_covariance_)
        if in_range_of_sigma:
            form = relative_form(self.whitening_, offsets, weights)
            self.relative_directions_, self.relative_offsets_, self.background_directions_ = form

    def _score_layer(self, h: np.ndarray, features: Features) -> np.ndarray:
        h = self._layer_values(h)
        if hasattr(self, "relative_directions_"):  # the linear form
            from scipy.linalg import blas

            directions = np.asfortranarray(
                np.hstack([self.relative_directions_, self.background_directions_])
            )
            constants, n_classes = self.relative_offsets_, self.classes_.size

            def relative(block: np.ndarray) -> np.ndarray:
                # [b, 2K]: rᵀ v_k, then Gᵀ r; by scipy's BLAS, like the whitening of Mahalanobis beside it
                centred = np.subtract(block, self.background_mean_, out=block)
                projected = blas.dgemm(1.0, directions, centred.T, trans_a=1).T
                class_part = (constants - 2.0 * projected[:, :n_classes]).min(axis=1)
                return class_part + np.einsum("ij,ij->i", projected[:, n_classes:], projected[:, n_classes:])

            return map_row_blocks(h, relative)
        class_part = nearest_class_distance(h, self.class_means_, self.whitening_)
        background = mahalanobis_distances(h, self.background_mean_[None, :], self.background_whitening_)
        return class_part - background[:, 0]


def relative_form(
    whitener: np.ndarray, offsets: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The class directions V = [v_1 … v_K] [D, K], offsets c [K] and background directions G [D, K] of
    RMDS's linear form (see :class:`RMDS`), from a whitening W [D, r] of Σ (W Wᵀ = Σ⁺), the class offsets
    O = [o_1 … o_K]ᵀ with o_k = μ_k − μ_0 [K, D] (in the range of Σ), and the class weights n_k / N.

    With A = Wᵀ Oᵀ [r, K]: v_k = W A_k, c_k = ‖A_k‖². B = Oᵀ diag(sqrt(n_k / N)), so Bᵀ Σ⁻¹ B = Sᵀ S with
    S = A diag(sqrt(n_k / N)); from its eigendecomposition Q diag(s) Qᵀ, G = Σ⁻¹ B Q diag((1 + s)^(−1/2)).
    """
    from scipy.linalg import blas, eigh

    whitener = np.asfortranarray(whitener, dtype=np.float64)
    projected = blas.dgemm(1.0, whitener, np.asarray(offsets, dtype=np.float64), trans_a=1, trans_b=1)  # A
    directions = blas.dgemm(1.0, whitener, projected)  # V = W A [D, K]
    root = np.sqrt(weights)
    scaled = projected * root
    eigenvalues, eigenvectors = eigh(scaled.T @ scaled)
    correction = (directions * root) @ (eigenvectors / np.sqrt(1.0 + np.maximum(eigenvalues, 0.0)))
    return directions, (projected**2).sum(axis=0), correction
