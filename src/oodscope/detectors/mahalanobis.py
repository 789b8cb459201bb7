"""Mahalanobis distance to the nearest class mean, with one shared (tied) covariance."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .._params import Options
from ..features import Features
from ._layerwise import Aggregator, _LayerwiseDetector, map_row_blocks
from ._statistics import (
    WhitenerForm,
    class_statistics,
    normalized_rows,
    shared,
    whitener_form,
    whitening,
)

__all__ = ["Mahalanobis", "nearest_class_distance", "class_statistics", "mahalanobis_distances", "whitening"]


def mahalanobis_distances(features: Any, means: Any, whitener: Any) -> np.ndarray:
    """Squared Mahalanobis distances [N, K] of features [N, D] to each of the means [K, D].

    ``d_k(h) = (h − μ_k)ᵀ P (h − μ_k)`` with ``P = W Wᵀ`` given by the whitening factor W [D, r] (or its
    :class:`~oodscope.detectors._statistics.WhitenerForm`): the features are whitened once per block of
    rows and compared with the K whitened means, so the cost does not grow with K (no per-class product)
    and memory is one block. Only the columns of live units are read (W's rows of dead units are 0), and
    when W's live rows form an upper-triangular square, as :func:`whitening` gives unless Σ is singular
    beyond its dead units, the product is a triangular one (BLAS ``trmm``): half the flops.
    """
    from scipy.linalg import blas

    form = whitener if isinstance(whitener, WhitenerForm) else whitener_form(whitener)
    live, factor = form.live, form.factor
    means = np.asarray(means, dtype=np.float64)
    centre = means.mean(axis=0)  # a point near the data keeps the expansion below free of cancellation
    offsets = means - centre
    if live is not None:
        offsets, centre = offsets[:, live], centre[live]
    whitened_means = offsets @ factor
    mean_norms = (whitened_means**2).sum(axis=1)

    # scipy's BLAS for every product of a block: alternating with numpy's (another OpenBLAS, whose threads
    # keep spinning a while after each call) slowed the whitening down by half
    def whitened_transposed(block: np.ndarray) -> np.ndarray:
        """(block − c) W, transposed: a Fortran-ordered [r, b] array."""
        if live is None:
            centred = np.subtract(block, centre)
        else:  # the live columns, gathered straight into the operand
            centred = np.take(block, live, axis=1)
            centred -= centre
        # (centred W)ᵀ = Wᵀ centredᵀ: centredᵀ is the Fortran-ordered [r', b] operand BLAS reads as it is
        if form.triangular:
            return blas.dtrmm(1.0, factor, centred.T, lower=0, trans_a=1, overwrite_b=1)
        return blas.dgemm(1.0, factor, centred.T, trans_a=1)

    def distances(block: np.ndarray) -> np.ndarray:
        zt = whitened_transposed(block)
        cross = blas.dgemm(1.0, zt, whitened_means, trans_a=1, trans_b=1)  # z μ̃ᵀ [b, K]
        squared = np.einsum("ij,ij->j", zt, zt)[:, None] - 2.0 * cross + mean_norms
        return np.maximum(squared, 0.0)

    return map_row_blocks(np.asarray(features), distances)


def nearest_class_distance(
    features: Any, means: Any, whitener: Any, form: WhitenerForm | None = None
) -> np.ndarray:
    """The squared Mahalanobis distance [N] of each row to its nearest mean (see
    :func:`mahalanobis_distances`; ``form``, the whitener's :func:`whitener_form` when known). Inside
    :func:`~oodscope._sharing.sharing` it is computed once per (features, means, whitener) objects."""
    return shared(
        "nearest_class_distance",
        (features, means, whitener),
        lambda: mahalanobis_distances(features, means, whitener if form is None else form).min(axis=1),
    )


class Mahalanobis(_LayerwiseDetector):
    """Minimum Mahalanobis distance to the class means, with a tied covariance.

    Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
    Adversarial Attacks", NeurIPS 2018. https://arxiv.org/abs/1807.03888

    From labelled fit features (penultimate by default): class means μ_k and one covariance Σ shared by all
    classes (the class-centred features' maximum-likelihood covariance). The score is the **squared**
    distance to the nearest class mean (the paper's confidence is its negative), higher = more OOD:

        S(x) = min_k (h(x) − μ_k)ᵀ Σ⁻¹ (h(x) − μ_k).

    Σ⁻¹ is applied through a whitening W with W Wᵀ = Σ⁻¹ (:func:`whitening`): the inverse of Σ's Cholesky
    factor when Σ is well conditioned (Σ = UᵀU with every pivot U_ii² above 10³ · D · eps · max_i Σ_ii),
    else the pseudo-inverse Σ⁺ (eigenvalues below ``D · eps · λ_max`` dropped, like ``scipy.linalg.pinvh``
    in scikit-learn's ``EmpiricalCovariance``), so singular covariances, e.g. of dead units, still work.
    The fit costs little more than one float64 product of the centred fit features with themselves
    (:func:`class_statistics`); inside :func:`~oodscope._sharing.sharing` RMDS and
    ViM reuse its statistics. The paper's input preprocessing (a gradient step of size ε on the input) and
    its feature ensemble are not applied: this is the plain distance on the given features; several layers
    combine through ``aggregator``.

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
        The labels seen at fit.
    class_means_ : ndarray [K, D]
    covariance_ : ndarray [D, D]
        The tied covariance Σ.
    whitening_ : ndarray [D, D] or [D, r]
        W with W Wᵀ = Σ⁻¹, Fortran-ordered: upper triangular [D, D] (the inverse Cholesky factor), or
        [D, r] with r = rank(Σ) when Σ is singular (W Wᵀ = Σ⁺).
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
    _state_shapes = {
        "classes_": ("K",),
        "class_means_": ("K", "D"),
        "covariance_": ("D", "D"),
        "whitening_": ("D", "r"),
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
        statistics = class_statistics(self._layer_values(h), features.labels)
        self.classes_, self.class_means_ = statistics.classes, statistics.means
        self.covariance_ = statistics.covariance
        self.whitening_ = whitening(self.covariance_)

    def _score_layer(self, h: np.ndarray, features: Features) -> np.ndarray:
        h = self._layer_values(h)
        return nearest_class_distance(h, self.class_means_, self.whitening_, self._whitener()).copy()

    def _whitener(self) -> WhitenerForm:
        """The whitening's form (live units, triangular or not), computed once per fitted state."""
        cached = getattr(self, "_form", None)
        if cached is None or cached[0] is not self.whitening_:  # holding the array: its id is not reused
            cached = self._form = (self.whitening_, whitener_form(self.whitening_))
        return cached[1]
