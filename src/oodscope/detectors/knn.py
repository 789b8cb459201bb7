"""Deep nearest neighbours (KNN / DKNN): distance to the k-th nearest fit sample on the unit sphere."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .._params import AnyOf, Interval, Options
from ..features import Features
from ..neighbors import (
    build_ivf_index,
    default_n_lists,
    default_n_probe,
    ivf_kth_neighbor_distance,
    kth_neighbor_distance,
    l2_normalize,
    load_ivf_index,
)
from ._layerwise import Aggregator, _LayerwiseDetector

__all__ = ["DKNN", "KNN", "kth_neighbor_distance", "l2_normalize"]

INDEXES = ("exact", "ivf")


class KNN(_LayerwiseDetector):
    """Deep nearest neighbours: distance to the k-th nearest fit sample, on L2-normalised features.

    Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022.
    https://arxiv.org/abs/2204.06507

    With z = h / ‖h‖ the normalised features (penultimate by default) and z_(k)(x) the k-th nearest
    normalised fit sample of z(x), the score is the paper's distance (the paper thresholds its negative as a
    confidence), higher = more OOD:

        S(x) = ‖z(x) − z_(k)(x)‖₂.

    The fit features are kept once, normalised, as float32. Two searches find z_(k):

    - ``index="exact"`` (default): float32 matrix products with numpy's BLAS in blocks, a partial selection
      on all cores, then the distances at ranks k − 2 .. k + 2 re-measured in float64: the exact score,
      whatever is installed, at about the cost of the matrix product of all queries with all fit features
      (``benchmarks/bench_feature_detectors.py``: 1.3x the bare float32 product for 10,000 queries against
      10,000 x 1,600 fit features, 1.2–1.4x for 20,000 against 60,000 x 512). Memory: a 32 MB similarity
      tile per thread. No faiss needed. Use it unless the fit set is large and scored often.
    - ``index="ivf"``: faiss's ``IndexIVFFlat`` (``pip install 'oodscope[faiss]'``): at ``fit``, k-means
      cuts the fit features into ``n_lists`` clusters; a query scans its ``n_probe`` nearest clusters. The
      neighbours it finds are re-measured in float64 too, so a score is the true distance to the k-th
      neighbour found, never below the exact one. Scoring gets faster when the fit set is large (about 10⁵
      samples and more) and its features cluster; the k-means makes the fit slower, and the index holds a
      second copy of the fit features. On features without cluster structure, recall stays low unless
      ``n_probe`` is a large share of ``n_lists``, and then the exact search is faster: check the recall
      on a sample of your data before relying on it.

    Measured with the benchmark (k = 50; 2 shared cores, so times are rough; recall: share of queries whose
    IVF distance equals the exact one; rel. err.: mean relative excess of the distance; * default n_probe):

    | fit features; queries             | n_lists | n_probe | recall | rel. err. | IVF fit + score (exact) s |
    |-----------------------------------|---------|---------|--------|-----------|---------------------------|
    | 100 clusters, 200k x 64; 20k      | 1789    | 32      | 1.000  | 0         | 10.7 + 2.0 (14.4)         |
    | same                              | 1789    | 85*     | 1.000  | 0         | 10.7 + 4.9 (14.4)         |
    | 100 clusters, 60k x 64; 20k       | 980     | 16      | 0.998  | 2e-6      | 4.2 + 1.4 (4.7)           |
    | 100 clusters, 10k x 64; 10k       | 256     | 8       | 1.000  | 0         | 0.12 + 0.20 (0.31)        |
    | 10 broad classes, 10k x 1600; 10k | 256     | 32*     | 0.998  | 4e-7      | 2.4 + 8.7 (4.7)           |
    | 10 broad classes, 60k x 512; 20k  | 980     | 63*     | 0.41   | 4e-4      | 16.5 + 23.9 (14.6)        |

    Parameters
    ----------
    k : int, default=50
        The neighbour rank; 1 ≤ k ≤ number of fit samples.
    index : {"exact", "ivf"}, default="exact"
        The search (see above).
    n_lists : int, optional
        ``index="ivf"``: the number of k-means clusters, at most the number N of fit samples. ``None``:
        round(4·√N), at most N // 39 (so that k-means has 39 points per cluster), at least 1.
    n_probe : int, optional
        ``index="ivf"``: the clusters each query scans, at most ``n_lists``; more is slower and closer to
        exact (``n_probe = n_lists`` scans everything). ``None``: round(2·√n_lists), at least 32.
        ``n_lists`` and ``n_probe`` are ignored by the exact search.
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
    ivf_index_ : ndarray of shape [B], uint8
        ``index="ivf"``: the trained faiss index, serialised (it is rebuilt, once, at the first ``score``).
    n_lists_, n_probe_ : int
        ``index="ivf"``: the values used.
    layers_ : list
        The layer ids used.
    layer_detectors_, aggregator_ : with several layers, one fitted KNN per layer and the fitted aggregator.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> fit = Features(layers={"penultimate": np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0]])})
    >>> test = Features(layers={"penultimate": np.array([[3.0, 0.0], [1.0, 1.0]])})
    >>> KNN(k=1).fit(fit).score(test).scores.round(3)
    array([0.   , 0.719])
    """

    requires = frozenset({"features"})
    _parameter_constraints = {
        "k": Interval(int, 1, None),
        "index": Options(INDEXES),
        "n_lists": AnyOf(Interval(int, 1, None), Options([None])),
        "n_probe": AnyOf(Interval(int, 1, None), Options([None])),
        **_LayerwiseDetector._parameter_constraints,
    }
    #: OpenOOD's sweep (``configs/postprocessors/knn.yml``: the paper's k = 50 only), on OOD validation data
    search_space = {"k": [50]}
    _state_shapes = {"fit_vectors_": ("N", "D"), "ivf_index_": ("B",), "n_lists_": (), "n_probe_": ()}

    def __init__(
        self,
        k: int = 50,
        index: str = "exact",
        n_lists: int | None = None,
        n_probe: int | None = None,
        layers: Sequence[Hashable] | None = None,
        aggregator: Aggregator | None = None,
    ) -> None:
        self.k = k
        self.index = index
        self.n_lists = n_lists
        self.n_probe = n_probe
        self.layers = layers
        self.aggregator = aggregator

    def _fit_layer(self, h: np.ndarray, features: Features) -> None:
        n = len(h)
        if self.k > n:
            raise ValueError(f"KNN with k={self.k} needs at least k fit samples; got {n}.")
        self.fit_vectors_ = l2_normalize(h)
        self._ivf_cache = None
        if self.index == "ivf":
            n_lists = default_n_lists(n) if self.n_lists is None else self.n_lists
            if n_lists > n:
                raise ValueError(
                    f"The 'n_lists' parameter of KNN must be at most the number of fit samples ({n}). Got "
                    f"{n_lists} instead. Pass n_lists <= {n}, or n_lists=None (about 4·√N)."
                )
            n_probe = default_n_probe(n_lists) if self.n_probe is None else self.n_probe
            if n_probe > n_lists:
                raise ValueError(
                    f"The 'n_probe' parameter of KNN must be at most n_lists ({n_lists}). Got {n_probe} "
                    f"instead. Pass n_probe <= {n_lists} (n_probe = n_lists scans every cluster), a larger "
                    "n_lists, or n_probe=None."
                )
            self.ivf_index_ = build_ivf_index(self.fit_vectors_, n_lists)
            self.n_lists_, self.n_probe_ = n_lists, n_probe

    def _search(self, queries: np.ndarray, k: int, normalize: bool) -> np.ndarray:
        if not hasattr(self, "ivf_index_"):
            return kth_neighbor_distance(queries, self.fit_vectors_, k, normalize_queries=normalize)
        return ivf_kth_neighbor_distance(
            queries, self.fit_vectors_, self._ivf(), k, self.n_probe_, normalize_queries=normalize
        )

    def _ivf(self) -> Any:
        # the faiss index, rebuilt once from the saved bytes (a faiss object is no learned state: no pickle)
        cached = getattr(self, "_ivf_cache", None)
        if cached is None or cached[0] is not self.ivf_index_:
            cached = self._ivf_cache = (self.ivf_index_, load_ivf_index(self.ivf_index_))
        return cached[1]

    def _score_layer(self, h: np.ndarray, features: Features) -> np.ndarray:
        return self._search(h, self.k, normalize=True)

    def _fit_layer_scores(self, h: np.ndarray, features: Features) -> np.ndarray:
        # leave-one-out: each fit sample is its own nearest neighbour, so rank k + 1 is the k-th other one
        if self.k + 1 > len(self.fit_vectors_):
            raise ValueError(
                f"KNN with k={self.k} and an aggregator needs at least k + 1 fit samples; got {len(h)}."
            )
        return self._search(self.fit_vectors_, self.k + 1, normalize=False)


#: the name used by oodeel and the seed notebooks
DKNN = KNN
