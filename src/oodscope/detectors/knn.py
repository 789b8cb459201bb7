"""Deep nearest neighbours (KNN / DKNN): distance to the k-th nearest fit sample on the unit sphere."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from .._params import Interval, Options
from ..features import Features
from ..neighbors import BACKENDS, kth_neighbor_distance, l2_normalize, use_faiss
from ._layerwise import Aggregator, _LayerwiseDetector

__all__ = ["DKNN", "KNN", "kth_neighbor_distance", "l2_normalize"]


class KNN(_LayerwiseDetector):
    """Deep nearest neighbours: distance to the k-th nearest fit sample, on L2-normalised features.

    Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022.
    https://arxiv.org/abs/2204.06507

    With z = h / ‖h‖ the normalised features (penultimate by default) and z_(k)(x) the k-th nearest
    normalised fit sample of z(x), the score is the paper's distance (the paper thresholds its negative as a
    confidence), higher = more OOD:

        S(x) = ‖z(x) − z_(k)(x)‖₂.

    The search is exact: faiss's flat (exhaustive) L2 search when faiss is installed, else blocked float32
    BLAS with a partial selection; the distances at ranks k − 2 .. k + 2 are re-measured in float64, so both
    backends give the same scores. The fit features are kept once, normalised, as float32 (faiss searches
    them in place; no index copy is built). Scoring memory is bounded by the blocks: two reused 32 MB
    similarity tiles (numpy backend), or faiss's own blocking.

    Parameters
    ----------
    k : int, default=50
        The neighbour rank; 1 ≤ k ≤ number of fit samples.
    backend : {"auto", "numpy", "faiss"}, default="auto"
        "auto" uses faiss when installed (``pip install 'oodscope[faiss]'``), else numpy.
    layers : list of layer ids, optional
        Layers to use; ``None`` uses every layer of the fit Features (at model level: the extracted ones,
        ``("penultimate",)`` by default).
    aggregator : Aggregator, optional
        Combines the per-layer scores when several layers are used (required then); see
        :mod:`oodscope.aggregation`. The fit scores it learns from leave each fit sample out of its own
        neighbours.

    Attributes
    ----------
    fit_vectors_ : ndarray of shape [N, D], float32
        The normalised fit features (single layer).
    layers_ : list
        The layer ids used.
    layer_detectors_, aggregator_ : with several layers, one fitted KNN per layer and the fitted aggregator.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> fit = Features(layers={"penultimate": np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0]])})
    >>> test = Features(layers={"penultimate": np.array([[3.0, 0.0], [1.0, 1.0]])})
    >>> KNN(k=1, backend="numpy").fit(fit).score(test).scores.round(3)
    array([0.   , 0.719])
    """

    requires = frozenset({"features"})
    _parameter_constraints = {
        "k": Interval(int, 1, None),
        "backend": Options(BACKENDS),
        **_LayerwiseDetector._parameter_constraints,
    }

    def __init__(
        self,
        k: int = 50,
        backend: str = "auto",
        layers: Sequence[Hashable] | None = None,
        aggregator: Aggregator | None = None,
    ) -> None:
        self.k = k
        self.backend = backend
        self.layers = layers
        self.aggregator = aggregator

    def _fit_layer(self, h: np.ndarray, features: Features) -> None:
        if self.k > len(h):
            raise ValueError(f"KNN with k={self.k} needs at least k fit samples; got {len(h)}.")
        use_faiss(self.backend)  # fail at fit, not at score, when backend="faiss" cannot be imported
        self.fit_vectors_ = l2_normalize(h)

    def _score_layer(self, h: np.ndarray, features: Features) -> np.ndarray:
        return kth_neighbor_distance(h, self.fit_vectors_, self.k, self.backend, normalize_queries=True)

    def _fit_layer_scores(self, h: np.ndarray, features: Features) -> np.ndarray:
        # leave-one-out: each fit sample is its own nearest neighbour, so rank k + 1 is the k-th other one
        if self.k + 1 > len(self.fit_vectors_):
            raise ValueError(
                f"KNN with k={self.k} and an aggregator needs at least k + 1 fit samples; got {len(h)}."
            )
        return kth_neighbor_distance(self.fit_vectors_, self.fit_vectors_, self.k + 1, self.backend)


#: the name used by oodeel and the seed notebooks
DKNN = KNN
