"""k-th nearest-neighbour distances, the search behind KNN: exact (blocked BLAS) or approximate (faiss IVF).

The exact search computes float32 similarity tiles with numpy's BLAS and selects each query's best
candidates on all cores; whatever else is installed, this is the path, because a float32 matrix product is
the bound of an exhaustive search and numpy's BLAS is the one tuned for the machine (faiss-cpu's bundled
BLAS can be several times slower). The approximate search scans a few clusters of a faiss ``IndexIVFFlat``.
Both then re-measure the distances around rank k in float64, so every score is a true distance to a
neighbour that was found, independent of float32 rounding; the exact search returns the exact k-th distance.
Memory is bounded by blocks of queries and tiles of references.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .features import all_finite

__all__ = [
    "build_ivf_index",
    "default_n_lists",
    "default_n_probe",
    "ivf_kth_neighbor_distance",
    "kth_neighbor_distance",
    "l2_normalize",
    "load_ivf_index",
]

#: bytes of one float32 similarity tile of the exact search
SIMILARITY_BLOCK_BYTES = 1 << 25
#: queries per block when the references need several tiles: tall enough for BLAS to run at full speed
QUERY_ROWS = 512
#: ranks k - WINDOW .. k + WINDOW are re-measured in float64, so float32 rounding cannot change the result
WINDOW = 2
#: the selection's threshold comes from the maxima of this many interleaved strips per row (see _candidates)
STRIPS = 16
#: queries per float64 re-measurement step: their candidates (5 x D float64 each) stay in the core's cache
REMEASURE_ROWS = 16


def l2_normalize(x: Any) -> np.ndarray:
    """Rows of ``x`` divided by their L2 norm (norms in float64), as float32 [N, D]; zero rows stay zero.

    >>> l2_normalize([[3.0, 4.0], [0.0, 0.0]])
    array([[0.6, 0.8],
           [0. , 0. ]], dtype=float32)
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"l2_normalize expects a 2-D array [n_samples, n_features]; got shape {x.shape}.")
    out = np.empty(x.shape, dtype=np.float32)
    rows = max(1, (1 << 20) // max(x.shape[1], 1))
    for start in range(0, x.shape[0], rows):
        out[start : start + rows] = _as_float64(x[start : start + rows], normalize=True)
    return out


def _as_float64(x: np.ndarray, normalize: bool) -> np.ndarray:
    """A float64 copy of ``x`` [b, D], its rows divided by their norms when ``normalize`` (zero rows stay
    zero)."""
    out = np.array(x, dtype=np.float64)
    if normalize:
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))
        out /= np.where(norms > 0, norms, 1.0)[:, None]
    return out


def _check_inputs(queries: Any, references: Any, k: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    refs = np.ascontiguousarray(references, dtype=np.float32)
    queries = np.asarray(queries)
    if queries.ndim != 2 or refs.ndim != 2 or queries.shape[1] != refs.shape[1]:
        raise ValueError(
            f"queries [M, D] and references [N, D] must share D; got {queries.shape} and {refs.shape}."
        )
    for name, array in (("queries", queries), ("references", refs)):
        if not all_finite(array):
            raise ValueError(f"The {name} hold NaN or inf; nearest neighbours need finite values.")
    if not 1 <= k <= refs.shape[0]:
        raise ValueError(
            f"k={k} nearest neighbours need 1 <= k <= {refs.shape[0]} (the number of references)."
        )
    lowest, highest = max(1, k - WINDOW), min(refs.shape[0], k + WINDOW)  # 1-based ranks re-measured exactly
    return queries, refs, lowest, highest


def kth_neighbor_distance(
    queries: Any, references: Any, k: int = 50, normalize_queries: bool = False
) -> np.ndarray:
    """Exact Euclidean distance from each query to its k-th nearest reference, float64 [M].

    Candidates come from float32 matrix products (numpy's BLAS, in blocks) and a partial selection on all
    cores; the distances to the references ranked k − 2 .. k + 2 are then re-measured in float64, so
    float32 rounding, which can only reorder near-ties, does not change the result. Memory: a 32 MB
    similarity tile per thread, plus the candidates.

    Parameters
    ----------
    queries : array [M, D]
    references : array [N, D]
        Converted to C-contiguous float32 (no copy when it already is).
    k : int, default=50
        1 ≤ k ≤ N.
    normalize_queries : bool, default=False
        L2-normalise the queries (block by block, so no normalised copy of all queries is made).

    >>> refs = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> kth_neighbor_distance([[0.0, 0.0]], refs, k=2)
    array([1.])
    """
    queries, refs, lowest, highest = _check_inputs(queries, references, k)
    search = _ExactSearch(refs, highest, queries.shape[0], shifted=True)

    def kth_distance(block: np.ndarray) -> np.ndarray:
        q64 = _as_float64(block, normalize_queries)
        values, columns = search.best(q64.astype(np.float32))
        window = _ranked(values, columns, lowest, highest)
        return _remeasure(q64, refs, window, k - lowest)

    return search.map(queries, kth_distance)


def _blocks(n: int, rows: int) -> Iterator[slice]:
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


@functools.cache
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # finds the BLAS libraries once (milliseconds); limiting them is then cheap


def _lanes(n_blocks: int) -> int:
    """Threads for ``n_blocks`` blocks: as many as BLAS may use (all cores unless limited, e.g. by
    OMP_NUM_THREADS or threadpoolctl), at most 8 and at most one per block."""
    if n_blocks <= 1:
        return 1
    threads = [info["num_threads"] for info in _blas_controller().select(user_api="blas").info()]
    return max(1, min(max(threads, default=1), 8, n_blocks))


class _ExactSearch:
    """The ``keep`` largest similarities of each query to the references, by blocked float32 BLAS products
    and a selection of candidates per tile; what to do with them (re-measure distances, average inner
    products) is the caller's.

    The similarity is the inner product q·r, or with ``shifted`` q·r − ‖r‖²/2, which ranks references like
    −‖q − r‖ (dropped when every reference has the same norm). A block of ``rows`` queries is multiplied with
    tiles of ``tile`` references into a reused [rows, tile] float32 buffer of about SIMILARITY_BLOCK_BYTES
    (one per thread), and :func:`_candidates` keeps each tile's best. :meth:`map` runs a function of each
    block of queries on all cores.
    """

    def __init__(self, refs: np.ndarray, keep: int, n_queries: int, shifted: bool) -> None:
        self.refs, self.keep = refs, keep
        n_refs = refs.shape[0]
        tile = max(1, SIMILARITY_BLOCK_BYTES // (4 * QUERY_ROWS))
        rows = QUERY_ROWS if n_refs > tile else min(4 * QUERY_ROWS, SIMILARITY_BLOCK_BYTES // (4 * n_refs))
        self.rows, self.tile = max(1, min(rows, n_queries)), min(tile, n_refs)
        self.half_sq_norms = None
        if shifted:
            half = 0.5 * np.einsum("ij,ij->i", refs, refs, dtype=np.float64)
            # for unit vectors the shift is a constant
            if np.ptp(half) > 1e-6 * max(half.max(), 1e-30):
                self.half_sq_norms = half.astype(np.float32)
        self.scratch = threading.local()

    def best(self, q32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``keep`` largest similarities of each of (at most ``rows``) float32 queries and their
        reference indices, [b, keep] each (unordered)."""
        b, n_refs = q32.shape[0], self.refs.shape[0]
        if not hasattr(self.scratch, "similarity"):
            self.scratch.similarity = np.empty(self.rows * self.tile, dtype=np.float32)
        values = np.empty((b, 0), dtype=np.float32)
        columns = np.empty((b, 0), dtype=np.int64)
        floor = None  # per row, the keep-th best value so far: later tiles only compete above it
        for start in range(0, n_refs, self.tile):
            stop = min(start + self.tile, n_refs)
            similarity = self.scratch.similarity[: b * (stop - start)].reshape(b, stop - start)
            np.matmul(q32, self.refs[start:stop].T, out=similarity)
            if self.half_sq_norms is not None:
                similarity -= self.half_sq_norms[start:stop]
            tile_values, tile_columns = _candidates(similarity, min(self.keep, stop - start), floor)
            values, columns = _best(
                np.concatenate([values, tile_values], axis=1),
                np.concatenate([columns, tile_columns + start], axis=1),
                self.keep,
            )
            if values.shape[1] == self.keep:
                floor = values.min(axis=1)
        return values, columns

    def map(self, queries: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``fn`` of each block of ``rows`` queries (a float64 array [b] each), concatenated [M]."""
        out = np.empty(queries.shape[0], dtype=np.float64)
        blocks = list(_blocks(queries.shape[0], self.rows))

        def run(block: slice) -> None:
            out[block] = fn(queries[block])

        lanes = _lanes(len(blocks))
        if lanes == 1:
            for block in blocks:
                run(block)
            return out
        # one lane per BLAS thread, each lane with single-threaded BLAS: a lane selects from the tile it has
        # just computed (still in its core's cache) while the others multiply, and no BLAS thread spins idle
        # waiting for the selection (on 2 cores: 1.2-1.6x faster than threaded BLAS, then threaded selection)
        with _blas_controller().limit(limits=1, user_api="blas"), ThreadPoolExecutor(lanes) as pool:
            list(pool.map(run, blocks))
        return out


def _candidates(
    similarity: np.ndarray, keep: int, floor: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, candidate columns that hold the ``keep`` largest values of ``similarity`` (exact and
    tie-safe), as [b, C] values and columns, padded with -inf (column 0) where a row has fewer than C.

    Each row is cut into STRIPS interleaved strips (columns g, g + G, ..., G = n // STRIPS). The ``keep``-th
    largest of the G maxima over the strips is a lower bound t of the row's ``keep``-th largest value
    (those ``keep`` maxima are ``keep`` values of the row at least t), so the values ≥ t hold the row's top
    ``keep``. On data without heavy ties only a few more than ``keep`` pass; the cost is one pass for the
    maxima, one comparison and a scan of the mask, instead of a partial sort of the whole row. With a
    ``floor`` per row (the best values found so far in earlier tiles), only values ≥ floor can matter, and
    it serves as t without the pass over the maxima. A row where too many values pass (ties at t: a zero
    query, many duplicate references; a floor that is still low) is selected without the floor, and at
    last by a partial sort.
    """
    b, n = similarity.shape
    width = n // STRIPS
    if floor is not None:
        threshold = floor
    elif width < 4 * keep:  # too few columns for the strips to pay off: select among all of them
        return _top_of_rows(similarity, keep)
    else:
        maxima = similarity[:, : STRIPS * width].reshape(b, STRIPS, width).max(axis=1)
        threshold = np.partition(maxima, width - keep, axis=1)[:, width - keep]
    rows, columns = np.divmod(np.flatnonzero(similarity >= threshold[:, None]), n)
    counts = np.bincount(rows, minlength=b)
    heavy = counts > 4 * keep + 16
    if not heavy.any():
        return _padded(similarity, rows, columns, counts)
    heavy_rows = np.flatnonzero(heavy)
    if floor is None:
        heavy_values, heavy_columns = _top_of_rows(similarity[heavy_rows], keep)
    else:
        heavy_values, heavy_columns = _candidates(similarity[heavy_rows], keep)
    values_out, columns_out = _padded(similarity, rows, columns, np.where(heavy, 0, counts))
    if heavy_values.shape[1] > values_out.shape[1]:
        pad = heavy_values.shape[1] - values_out.shape[1]
        values_out = np.pad(values_out, ((0, 0), (0, pad)), constant_values=-np.inf)
        columns_out = np.pad(columns_out, ((0, 0), (0, pad)))
    values_out[heavy_rows, : heavy_values.shape[1]] = heavy_values
    columns_out[heavy_rows, : heavy_values.shape[1]] = heavy_columns
    return values_out, columns_out


def _padded(
    similarity: np.ndarray, rows: np.ndarray, columns: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The entries (rows sorted, ``counts[i]`` of them taken for row i, the others dropped) as [b, C]
    values and columns, padded with -inf and column 0."""
    keep = np.repeat(counts > 0, np.bincount(rows, minlength=len(counts)))
    rows, columns = rows[keep], columns[keep]
    starts = np.cumsum(counts) - counts
    positions = np.arange(rows.size) - np.repeat(starts, counts)
    values_out = np.full((len(counts), int(counts.max(initial=0))), -np.inf, dtype=np.float32)
    columns_out = np.zeros(values_out.shape, dtype=np.int64)
    values_out[rows, positions] = similarity[rows, columns]
    columns_out[rows, positions] = columns
    return values_out, columns_out


def _top_of_rows(similarity: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` largest values of each row and their columns (unordered), by a partial sort."""
    n = similarity.shape[1]
    if keep >= n:
        columns = np.broadcast_to(np.arange(n), similarity.shape).copy()
    else:
        columns = np.argpartition(similarity, n - keep, axis=1)[:, n - keep :]
    return np.take_along_axis(similarity, columns, axis=1), columns


def _best(values: np.ndarray, columns: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` largest candidates of each row (unordered), of [b, C] values and columns."""
    n = values.shape[1]
    if n <= keep:
        return values, columns
    best = np.argpartition(values, n - keep, axis=1)[:, n - keep :]
    return np.take_along_axis(values, best, axis=1), np.take_along_axis(columns, best, axis=1)


def _ranked(values: np.ndarray, columns: np.ndarray, lowest: int, highest: int) -> np.ndarray:
    """Columns ranked ``lowest..highest`` (1-based, largest value first) in each row of the candidates."""
    values, columns = _best(values, columns, highest)
    order = np.argsort(-values, axis=1, kind="stable")[:, lowest - 1 : highest]
    return np.take_along_axis(columns, order, axis=1)


def _remeasure(q64: np.ndarray, refs: np.ndarray, window: np.ndarray, position: int) -> np.ndarray:
    """The ``position``-th smallest float64 distance from each query to its ``window`` of references
    (index -1: no reference, an infinite distance)."""
    b, width = window.shape
    out = np.empty(b, dtype=np.float64)
    missing = window < 0
    indices = np.where(missing, 0, window)
    diff = np.empty((REMEASURE_ROWS * width, q64.shape[1]), dtype=np.float64)
    for block in _blocks(b, REMEASURE_ROWS):
        rows = block.stop - block.start
        part = diff[: rows * width]
        part[...] = refs[indices[block].reshape(-1)]
        part.reshape(rows, width, -1)[...] -= q64[block, None, :]
        squared = np.einsum("ij,ij->i", part, part).reshape(rows, width)
        squared[missing[block]] = np.inf
        squared.sort(axis=1)
        out[block] = np.sqrt(squared[:, position])
    return out


# --- the approximate search: a faiss inverted-file index ---------------------------------------------------
#
# faiss keeps the inverted lists and scans the probed ones; the k-means training and the assignment of
# vectors to their nearest clusters (at fit and at search) are matrix products, done here with numpy's BLAS,
# which on some machines is an order of magnitude faster than the BLAS bundled with faiss-cpu.

#: k-means trains on at most this many points per cluster (a random subset of the vectors beyond that)
KMEANS_POINTS_PER_LIST = 64
#: Lloyd iterations of the k-means (faiss's default for IVF training too)
KMEANS_ITERATIONS = 10


def _faiss() -> Any:
    from .backends import require

    return require("faiss", "faiss")


def default_n_lists(n: int) -> int:
    """The number of IVF clusters for ``n`` vectors: round(4·√n), at most n // 39 (k-means wants about 39
    points per cluster), at least 1."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def default_n_probe(n_lists: int) -> int:
    """The number of clusters an IVF search scans by default: round(2·√n_lists), at least 32 (at most
    n_lists). On the benchmark's sets its recall is 0.998 or more (see KNN's docstring)."""
    return min(n_lists, max(32, round(2 * math.sqrt(n_lists))))


def _nearest_centroids(x: np.ndarray, centroids: np.ndarray, n_probe: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_probe`` nearest centroids of each row of ``x`` (float32), nearest first: squared L2 distances
    [M, n_probe] (float32) and indices [M, n_probe] (int64)."""
    half = 0.5 * np.einsum("ij,ij->i", centroids, centroids, dtype=np.float64)
    n_lists = centroids.shape[0]
    distances = np.empty((x.shape[0], n_probe), dtype=np.float32)
    lists = np.empty((x.shape[0], n_probe), dtype=np.int64)
    squared = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    for block in _blocks(x.shape[0], max(1, SIMILARITY_BLOCK_BYTES // (4 * n_lists))):
        similarity = x[block] @ centroids.T
        similarity -= half.astype(np.float32)  # q.c - |c|^2 / 2 ranks centroids like -|q - c|
        if n_probe == 1:
            best = similarity.argmax(axis=1)[:, None]
        elif n_probe < n_lists:
            best = np.argpartition(similarity, n_lists - n_probe, axis=1)[:, n_lists - n_probe :]
        else:
            best = np.broadcast_to(np.arange(n_lists), similarity.shape)
        values = np.take_along_axis(similarity, best, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        lists[block] = np.take_along_axis(best, order, axis=1)
        distances[block] = squared[block, None] - 2.0 * np.take_along_axis(values, order, axis=1)
    return distances, lists


def _kmeans(x: np.ndarray, n_lists: int, seed: int = 0) -> np.ndarray:
    """Lloyd's k-means on (a random subset of) the float32 rows of ``x``: [n_lists, D] float32 centroids.
    Starts from random rows; a cluster that empties restarts at a random row."""
    from scipy.sparse import csr_matrix  # a dependency of scikit-learn and of oodscope

    rng = np.random.default_rng(seed)
    if x.shape[0] > KMEANS_POINTS_PER_LIST * n_lists:
        x = x[np.sort(rng.choice(x.shape[0], KMEANS_POINTS_PER_LIST * n_lists, replace=False))]
    n = x.shape[0]
    centroids = x[rng.choice(n, n_lists, replace=False)].copy()
    for _ in range(KMEANS_ITERATIONS):
        assigned = _nearest_centroids(x, centroids, 1)[1][:, 0]
        counts = np.bincount(assigned, minlength=n_lists)
        sums = csr_matrix((np.ones(n, dtype=np.float32), (assigned, np.arange(n))), shape=(n_lists, n)) @ x
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        centroids[~filled] = x[rng.choice(n, int((~filled).sum()), replace=False)]
    return centroids


def build_ivf_index(vectors: np.ndarray, n_lists: int) -> np.ndarray:
    """A faiss ``IndexIVFFlat`` (L2 metric) of ``vectors`` [N, D] with ``n_lists`` k-means clusters (fixed
    seed), serialised as a uint8 array (:func:`load_ivf_index` rebuilds it)."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not 1 <= n_lists <= vectors.shape[0]:
        raise ValueError(f"n_lists={n_lists} clusters need 1 <= n_lists <= {vectors.shape[0]} (the vectors).")
    centroids = _kmeans(vectors, n_lists)
    quantizer = faiss.IndexFlatL2(vectors.shape[1])
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], n_lists)  # trained: its quantizer is filled
    assigned = np.ascontiguousarray(_nearest_centroids(vectors, centroids, 1)[1][:, 0])
    index.add_core(vectors.shape[0], faiss.swig_ptr(vectors), None, faiss.swig_ptr(assigned))
    return np.asarray(faiss.serialize_index(index), dtype=np.uint8)


def load_ivf_index(serialized: np.ndarray) -> Any:
    """The faiss index of :func:`build_ivf_index`'s array."""
    return _faiss().deserialize_index(np.ascontiguousarray(serialized, dtype=np.uint8))


def ivf_kth_neighbor_distance(
    queries: Any,
    references: Any,
    index: Any,
    k: int = 50,
    n_probe: int | None = None,
    normalize_queries: bool = False,
) -> np.ndarray:
    """Approximate distance from each query to its k-th nearest reference, float64 [M], by a faiss IVF
    search of ``index`` (built on ``references`` by :func:`build_ivf_index`) that scans the ``n_probe``
    clusters nearest to the query (``None``: :func:`default_n_probe`).

    The neighbours found at ranks k − 2 .. k + 2 are re-measured in float64 against ``references``, so each
    score is the true distance to the k-th neighbour found: never below the exact one, equal when the
    search found the true neighbours. A query whose scanned clusters hold fewer than k references is
    searched exactly.
    """
    queries, refs, lowest, highest = _check_inputs(queries, references, k)
    if index.ntotal != refs.shape[0] or index.d != refs.shape[1]:
        raise ValueError(
            f"The IVF index holds {index.ntotal} vectors of dimension {index.d}; the references are "
            f"{refs.shape}. Build it from the same references."
        )
    n_probe = default_n_probe(index.nlist) if n_probe is None else n_probe
    if not 1 <= n_probe <= index.nlist:
        raise ValueError(f"n_probe={n_probe} must be in [1, {index.nlist}] (the index's clusters).")
    centroids = index.quantizer.reconstruct_n(0, index.nlist)
    index.nprobe = n_probe
    out = np.empty(queries.shape[0], dtype=np.float64)
    rows = max(64, min(4096, (1 << 24) // (8 * refs.shape[1])))
    for block in _blocks(queries.shape[0], rows):
        q64 = _as_float64(queries[block], normalize_queries)
        q32 = q64.astype(np.float32)
        list_distances, lists = _nearest_centroids(q32, centroids, n_probe)
        _, neighbours = index.search_preassigned(q32, highest, lists, list_distances)
        out[block] = _remeasure(q64, refs, neighbours[:, lowest - 1 :], k - lowest)
        short = np.flatnonzero(neighbours[:, k - 1] < 0)
        if short.size:
            out[block.start + short] = kth_neighbor_distance(q64[short], refs, k)
    return out
