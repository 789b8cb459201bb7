"""GMM: negative log-likelihood of the features under a tied-covariance Gaussian mixture fitted on ID data."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .._params import AnyOf, Interval, Options
from ..features import Features
from ._layerwise import Aggregator, _LayerwiseDetector, map_row_blocks
from ._logits import logsumexp
from .mahalanobis import mahalanobis_distances

__all__ = ["GMM", "gmm_score"]


def gmm_score(
    features: Any,
    weights: Any,
    means: Any,
    whitening: Any,
    pca_mean: Any = None,
    pca_components: Any = None,
) -> np.ndarray:
    """GMM score, higher = more OOD: ``−log Σ_k π_k exp(−½ (f − μ_k)ᵀ Λ (f − μ_k))``, float64 [N].

    ``f = (h − pca_mean) @ pca_components`` when a projection is given (else ``f = h``); ``weights`` π [K],
    ``means`` μ [K, P] and ``whitening`` W [P, P'] with W Wᵀ = Λ, the mixture's shared precision matrix.
    The Gaussian normaliser is left out (with a tied covariance it is the same constant for every
    component). Computed in the log domain, so far-away samples get large finite scores instead of
    underflowing.

    >>> gmm_score([[0.0], [2.0]], weights=[0.5, 0.5], means=[[-1.0], [1.0]], whitening=[[1.0]]).round(4)
    array([0.5  , 1.175])
    """
    h = np.asarray(features)
    weights = np.asarray(weights, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    whitening = np.asarray(whitening, dtype=np.float64)
    if (pca_mean is None) != (pca_components is None):
        raise ValueError("gmm_score takes pca_mean and pca_components together, or neither.")
    if pca_components is not None:
        pca_mean = np.asarray(pca_mean, dtype=np.float64)
        pca_components = np.asarray(pca_components, dtype=np.float64)
        if h.ndim != 2 or pca_components.ndim != 2 or pca_mean.shape != (h.shape[1],):
            raise ValueError(
                "gmm_score expects features [N, D], a pca_mean [D] and pca_components [D, P]; got shapes "
                f"{h.shape}, {pca_mean.shape} and {pca_components.shape}."
            )
        h = map_row_blocks(h, lambda block: (block - pca_mean) @ pca_components)
    if h.ndim != 2 or means.ndim != 2 or weights.shape != (len(means),) or means.shape[1] != h.shape[1]:
        raise ValueError(
            "gmm_score expects (projected) features [N, P], weights [K] and means [K, P]; got shapes "
            f"{h.shape}, {weights.shape} and {means.shape}."
        )
    distances = mahalanobis_distances(h, means, whitening)  # [N, K], squared
    return -logsumexp(np.log(weights) - 0.5 * distances)


def _canonical_order(h: np.ndarray) -> np.ndarray:
    """The rows of ``h`` sorted lexicographically, so that a fit whose initialisation draws rows at random
    (k-means++) depends on the set of fit samples and the seed, not on the order the rows came in."""
    _, inverse = np.unique(h, axis=0, return_inverse=True)
    return h[np.argsort(inverse.ravel(), kind="stable")]


class GMM(_LayerwiseDetector):
    """GMM: the negative log-likelihood of the features under a tied-covariance Gaussian mixture.

    A baseline of OpenOOD v1: Yang et al., "OpenOOD: Benchmarking Generalized Out-of-Distribution
    Detection", NeurIPS 2022 Datasets and Benchmarks (postprocessor ``gmm``). https://arxiv.org/abs/2210.07242

    On the fit features of a layer (penultimate by default), optionally reduced by PCA to P dimensions
    (f = (h − m) V, V [D, P] the leading principal directions), scikit-learn's
    ``GaussianMixture(n_components=K, covariance_type="tied", random_state=random_state)`` learns weights
    π_k, means μ_k and one shared precision Λ. The score is the negated log-likelihood without the Gaussian
    normaliser (constant for a tied covariance), higher = more OOD:

        S(x) = −log Σ_k π_k exp(−½ (f(x) − μ_k)ᵀ Λ (f(x) − μ_k)).

    Several layers combine through ``aggregator`` (each layer gets its own PCA and mixture with the same
    hyperparameters). scikit-learn runs at ``fit`` only; the learned parameters are stored as arrays and
    the score is computed in numpy. Labels are not used.

    Differences from OpenOOD (``gmm_postprocessor.py``, ``configs/postprocessors/gmm.yml``):

    - OpenOOD's config lists three layers with ``num_clusters_list [3, 1, 50]``, ``alpha_list [0, 0, 1]``
      and ``reduce_dim_list [none, none, pca_50]``: with weights 0, 0, 1 only the third entry counts, the
      ``layer2`` output flattened, reduced to 50 dimensions by PCA, with 50 components. The defaults here
      are that entry's K = 50 and P = 50, on the penultimate layer; for OpenOOD's setting extract the
      flattened block output (``feature_layers_id`` and a flattening ``postproc_fns``). Its fixed weighted
      sum Σ_l α_l s_l over layers is replaced by an aggregator, and its LDA reduction is not offered.
    - OpenOOD computes log(Σ_k π_k exp(·) + 1e-45), which underflows in high dimension and then gives every
      far-away sample the same score log(1e-45); here the log-sum-exp is exact.
    - When the layer has at most P features no PCA is applied (a full-rank PCA is a rotation, which leaves a
      tied Gaussian mixture's likelihood unchanged); OpenOOD's PCA would fail there.
    - The fit rows are put in a canonical (lexicographic) order first, so that the mixture (whose k-means++
      initialisation draws rows at random) depends on the fit samples and ``random_state`` only, not on the
      order of the rows.
    - pytorch-ood's ``GMM`` fits one full-covariance Gaussian per class and scores the minimum Mahalanobis
      distance; it is not a mixture likelihood.

    Tuning: OpenOOD sweeps nothing and has no APS key (``search_space = {}``; no OOD data used).

    Parameters
    ----------
    n_components : int, default=50
        K, the number of mixture components; at most the number of fit samples.
    pca_dim : int or None, default=50
        P, the PCA dimension; ``None`` (or P ≥ D) fits the mixture on the features themselves. A PCA needs
        at least P fit samples.
    random_state : int, default=0
        Seed of scikit-learn's k-means initialisation (and of its randomized PCA on large inputs), for a
        reproducible fit.
    layers : list of layer ids, optional
        Layers to use; ``None`` uses every layer of the fit Features (at model level: the extracted ones,
        ``("penultimate",)`` by default).
    aggregator : Aggregator, optional
        Combines the per-layer scores when several layers are used (required then).

    Attributes
    ----------
    weights_ : ndarray [K]
        π, the mixture weights.
    means_ : ndarray [K, P]
        μ_k, in the (projected) feature space.
    covariance_ : ndarray [P, P]
        The shared covariance Λ⁻¹ (with scikit-learn's ``reg_covar=1e-6`` added to its diagonal).
    whitening_ : ndarray [P, P]
        W with W Wᵀ = Λ (scikit-learn's ``precisions_cholesky_``).
    pca_mean_ : ndarray [D]
        m, the fit features' mean (only when a PCA is applied).
    pca_components_ : ndarray [D, P]
        V, orthonormal columns (only when a PCA is applied).
    layers_ : list
        The layer ids used (with several: ``layer_detectors_`` and ``aggregator_``).

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> rng = np.random.default_rng(0)
    >>> h = np.concatenate([rng.normal(-3.0, 1.0, (100, 2)), rng.normal(3.0, 1.0, (100, 2))])
    >>> gmm = GMM(n_components=2).fit(Features(layers={"penultimate": h}))
    >>> np.sort(gmm.means_[:, 0]).round(0)
    array([-3.,  3.])
    >>> scores = gmm.score(Features(layers={"penultimate": np.array([[3.0, 3.0], [0.0, 0.0]])})).scores
    >>> bool(scores[1] > scores[0] + 5)
    True
    """

    requires = frozenset({"features"})
    search_space = {}  # OpenOOD sweeps nothing (see the docstring)
    _parameter_constraints = {
        "n_components": Interval(int, 1, None),
        "pca_dim": AnyOf(Interval(int, 1, None), Options([None])),
        "random_state": Interval(int, 0, 2**32 - 1),
        **_LayerwiseDetector._parameter_constraints,
    }
    _state_shapes = {
        "weights_": ("K",),
        "means_": ("K", "P"),
        "covariance_": ("P", "P"),
        "whitening_": ("P", "P"),
        "pca_mean_": ("D",),
        "pca_components_": ("D", "P"),
    }

    def __init__(
        self,
        n_components: int = 50,
        pca_dim: int | None = 50,
        random_state: int = 0,
        layers: Sequence[Hashable] | None = None,
        aggregator: Aggregator | None = None,
    ) -> None:
        self.n_components = n_components
        self.pca_dim = pca_dim
        self.random_state = random_state
        self.layers = layers
        self.aggregator = aggregator

    def _fit_layer(self, h: np.ndarray, features: Features) -> None:
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        n, width = h.shape
        if self.n_components > n:
            raise ValueError(
                f"GMM with n_components={self.n_components} needs at least that many fit samples; got {n}. "
                "Fit on more samples or pass a smaller n_components."
            )
        x = _canonical_order(h).astype(np.float64)
        if self.pca_dim is not None and self.pca_dim < width:
            if self.pca_dim > n:
                raise ValueError(
                    f"GMM with pca_dim={self.pca_dim} needs at least that many fit samples for its PCA; got "
                    f"{n}. Fit on more samples, or pass a smaller pca_dim (or pca_dim=None)."
                )
            pca = PCA(n_components=self.pca_dim, random_state=self.random_state).fit(x)
            self.pca_mean_ = np.asarray(pca.mean_, dtype=np.float64)
            self.pca_components_ = np.ascontiguousarray(pca.components_.T, dtype=np.float64)
            x = (x - self.pca_mean_) @ self.pca_components_
        mixture = GaussianMixture(
            n_components=self.n_components, covariance_type="tied", random_state=self.random_state
        ).fit(x)
        self.weights_ = np.asarray(mixture.weights_, dtype=np.float64)
        self.means_ = np.asarray(mixture.means_, dtype=np.float64)
        self.covariance_ = np.asarray(mixture.covariances_, dtype=np.float64)
        self.whitening_ = np.asarray(mixture.precisions_cholesky_, dtype=np.float64)

    def _score_layer(self, h: np.ndarray, features: Features) -> np.ndarray:
        return gmm_score(
            h,
            self.weights_,
            self.means_,
            self.whitening_,
            getattr(self, "pca_mean_", None),
            getattr(self, "pca_components_", None),
        )
