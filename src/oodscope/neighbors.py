"""Exact k-th nearest-neighbour distances, the search behind KNN.

Candidates come from float32 matrix products, either faiss's exhaustive search or blocked BLAS with a
partial selection on all cores (numpy); the distances around rank k are then re-measured in float64, so both
backends return the same values. Memory is bounded by blocks of queries and tiles of references.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["BACKENDS", "kth_neighbor_distance", "l2_normalize", "use_faiss"]

#: the search backends; "auto" is faiss when it is installed, else numpy
BACKENDS = ("auto", "numpy", "faiss")
#: bytes of one float32 similarity tile of the numpy backend (two reused tiles: one computed, one selected)
SIMILARITY_BLOCK_BYTES = 1 << 25
#: queries per block of the numpy backend: tall enough for BLAS to run at full speed
QUERY_ROWS = 512
#: ranks k - WINDOW .. k + WINDOW are re-measured in float64, so float32 rounding cannot change the result
WINDOW = 2
#: the numpy backend's selection splits each row into this many interleaved strips (see _top_columns)
STRIPS = 16


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
        out[start : start + rows] = _normalized64(x[start : start + rows])
    return out


def _normalized64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt((x * x).sum(axis=1, keepdims=True))
    return x / np.where(norms > 0, norms, 1.0)


def _faiss() -> Any:
    from .backends import require

    return require("faiss", "faiss")


def use_faiss(backend: str) -> bool:
    """Whether ``backend`` searches with faiss: "faiss" always, "auto" when it is installed, "numpy" never."""
    if backend == "faiss":
        _faiss()  # ImportError naming the extra when faiss is missing
        return True
    if backend == "auto":
        try:
            _faiss()
        except ImportError:
            return False
        return True
    return False


def kth_neighbor_distance(
    queries: Any, references: Any, k: int = 50, backend: str = "auto", normalize_queries: bool = False
) -> np.ndarray:
    """Exact Euclidean distance from each query to its k-th nearest reference, float64 [M].

    Candidates are found with float32 matrix products (faiss's exhaustive search, or blocked BLAS with a
    partial selection in numpy); the distances to the references ranked k − 2 .. k + 2 are then re-measured in
    float64, so both backends return the same values (float32 rounding can only reorder near-ties, which the
    re-measurement resolves).

    Parameters
    ----------
    queries : array [M, D]
    references : array [N, D]
        Converted to C-contiguous float32 (no copy when it already is).
    k : int, default=50
        1 ≤ k ≤ N.
    backend : {"auto", "numpy", "faiss"}, default="auto"
        "auto" uses faiss when it is installed.
    normalize_queries : bool, default=False
        L2-normalise the queries (block by block, so no normalised copy of all queries is made).

    >>> refs = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> kth_neighbor_distance([[0.0, 0.0]], refs, k=2, backend="numpy")
    array([1.])
    """
    refs = np.ascontiguousarray(references, dtype=np.float32)
    queries = np.asarray(queries)
    if queries.ndim != 2 or refs.ndim != 2 or queries.shape[1] != refs.shape[1]:
        raise ValueError(
            f"queries [M, D] and references [N, D] must share D; got {queries.shape} and {refs.shape}."
        )
    n_refs = refs.shape[0]
    if not 1 <= k <= n_refs:
        raise ValueError(f"k={k} nearest neighbours need 1 <= k <= {n_refs} (the number of references).")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}.")
    lowest, highest = max(1, k - WINDOW), min(n_refs, k + WINDOW)  # 1-based ranks re-measured exactly
    if use_faiss(backend):
        faiss = _faiss()
        rows = max(64, min(4096, (1 << 24) // (8 * refs.shape[1])))

        def window_of(q32: np.ndarray) -> np.ndarray:
            _, neighbours = faiss.knn(q32, refs, highest, metric=faiss.METRIC_L2)
            return neighbours[:, lowest - 1 : highest]

        return _search(queries, refs, k, lowest, rows, normalize_queries, window_of)
    search = _BlasSearch(refs, highest, lowest, queries.shape[0])
    with search:
        return _search(queries, refs, k, lowest, search.rows, normalize_queries, search.window)


def _search(
    queries: np.ndarray,
    refs: np.ndarray,
    k: int,
    lowest: int,
    rows: int,
    normalize_queries: bool,
    window_of: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    out = np.empty(queries.shape[0], dtype=np.float64)
    for start in range(0, queries.shape[0], rows):
        block = slice(start, min(start + rows, queries.shape[0]))
        q64 = _normalized64(queries[block]) if normalize_queries else queries[block].astype(np.float64)
        window = window_of(np.ascontiguousarray(q64, dtype=np.float32))
        out[block] = _remeasure(q64, refs, window, k - lowest)
    return out


def _remeasure(q64: np.ndarray, refs: np.ndarray, window: np.ndarray, position: int) -> np.ndarray:
    """The ``position``-th smallest float64 distance from each query to its ``window`` of references."""
    out = np.empty(q64.shape[0], dtype=np.float64)
    rows = max(1, (1 << 21) // (window.shape[1] * q64.shape[1]))
    for start in range(0, q64.shape[0], rows):
        block = slice(start, start + rows)
        diff = q64[block, None, :] - refs[window[block]]  # [b, window, D], float64
        squared = np.sort((diff * diff).sum(axis=2), axis=1)
        out[block] = np.sqrt(squared[:, position])
    return out


class _BlasSearch:
    """The numpy backend: float32 similarity tiles from BLAS, partial selection on all cores.

    Queries come in blocks of ``rows``; references in tiles of ``tile``, so that each product is tall and
    wide enough for BLAS while each of the two reused [rows, tile] buffers stays at 32 MB. From each tile
    only the ``highest`` best columns per query are kept, and the union over tiles holds the overall best
    ``highest``. The selection of one tile runs in worker threads (numpy releases the GIL) while BLAS
    computes the next tile into the other buffer.
    """

    def __init__(self, refs: np.ndarray, highest: int, lowest: int, n_queries: int) -> None:
        self.refs, self.highest, self.lowest = refs, highest, lowest
        n_refs = refs.shape[0]
        tile = max(1, SIMILARITY_BLOCK_BYTES // (4 * QUERY_ROWS))
        rows = QUERY_ROWS if n_refs > tile else min(4 * QUERY_ROWS, SIMILARITY_BLOCK_BYTES // (4 * n_refs))
        self.rows, self.tile = max(1, min(rows, n_queries)), min(tile, n_refs)
        half = 0.5 * np.einsum("ij,ij->i", refs, refs, dtype=np.float64)
        # q.r - |r|^2 / 2 ranks references like -|q - r|; for unit vectors the shift is a constant
        self.half_sq_norms = (
            None if np.ptp(half) <= 1e-6 * max(half.max(), 1e-30) else half.astype(np.float32)
        )
        self.workers = max(1, min(os.cpu_count() or 1, 4, self.rows // 64))
        n_buffers = 2 if self.workers > 1 and n_refs > self.tile else 1
        self.buffers = [np.empty(self.rows * self.tile, dtype=np.float32) for _ in range(n_buffers)]
        self.pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> _BlasSearch:
        if self.workers > 1:
            self.pool = ThreadPoolExecutor(self.workers)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def window(self, q32: np.ndarray) -> np.ndarray:
        """Indices of the references ranked ``lowest..highest`` (1-based, nearest first) for each query."""
        b, n_refs = q32.shape[0], self.refs.shape[0]
        step = -(-b // self.workers)
        chunks = [slice(i, min(i + step, b)) for i in range(0, b, step)]
        values, columns, pending = [], [], []
        for index, start in enumerate(range(0, n_refs, self.tile)):
            stop = min(start + self.tile, n_refs)
            buffer = self.buffers[index % len(self.buffers)]
            similarity = buffer[: b * (stop - start)].reshape(b, stop - start)
            np.matmul(q32, self.refs[start:stop].T, out=similarity)  # meanwhile, the last tile is selected
            for future in pending:
                future.result()
            keep = min(self.highest, stop - start)
            values.append(np.empty((b, keep), dtype=np.float32))
            columns.append(np.empty((b, keep), dtype=np.int64))
            shift = None if self.half_sq_norms is None else self.half_sq_norms[start:stop]
            select = functools.partial(_select, similarity, shift, keep, values[-1], columns[-1], start)
            if self.pool is None or len(self.buffers) == 1:
                for chunk in chunks:
                    select(chunk)
                pending = []
            else:
                pending = [self.pool.submit(select, chunk) for chunk in chunks]
        for future in pending:
            future.result()
        all_values = np.concatenate(values, axis=1) if len(values) > 1 else values[0]
        all_columns = np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]
        if all_values.shape[1] > self.highest:
            best = np.argpartition(all_values, all_values.shape[1] - self.highest, axis=1)
            best = best[:, all_values.shape[1] - self.highest :]
            all_values = np.take_along_axis(all_values, best, axis=1)
            all_columns = np.take_along_axis(all_columns, best, axis=1)
        order = np.argsort(-all_values, axis=1, kind="stable")[:, self.lowest - 1 : self.highest]
        return np.take_along_axis(all_columns, order, axis=1)


def _select(
    similarity: np.ndarray,
    shift: np.ndarray | None,
    keep: int,
    values: np.ndarray,
    columns: np.ndarray,
    offset: int,
    chunk: slice,
) -> None:
    """Write the ``keep`` best columns (plus ``offset``) of the rows ``chunk`` of a tile into the outputs."""
    block = similarity[chunk]
    if shift is not None:
        block -= shift
    values[chunk], columns[chunk] = _top_columns(block, keep)
    columns[chunk] += offset


def _top_columns(similarity: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``keep`` largest values of ``similarity`` and their columns (unordered; exact, tie-safe).

    Each row is cut into STRIPS interleaved strips of width G (columns g, g + G, ...: strip position g). The
    ``keep`` positions with the largest maxima over the strips contain every value among the row's top
    ``keep`` (one not in them is at most the keep-th position maximum, and those maxima are ``keep``
    distinct values at least as large). Scanning the maxima is one vectorised pass, so only about
    STRIPS * keep values per row need a partial sort instead of all N.
    """
    b, n = similarity.shape
    width = n // STRIPS
    if width < 4 * keep:  # too few columns for the strips to pay off: select among all of them
        values, columns = similarity, np.broadcast_to(np.arange(n), (b, n))
    else:
        strips = similarity[:, : STRIPS * width].reshape(b, STRIPS, width)
        positions = np.argpartition(strips.max(axis=1), width - keep, axis=1)[:, width - keep :]
        columns = (positions[:, None, :] + (np.arange(STRIPS) * width)[None, :, None]).reshape(b, -1)
        if n > STRIPS * width:
            tail = np.broadcast_to(np.arange(STRIPS * width, n), (b, n - STRIPS * width))
            columns = np.concatenate([columns, tail], axis=1)
        rows = (np.arange(b) * n)[:, None]
        values = np.take(
            similarity.reshape(-1), rows + columns
        )  # a flat gather: faster than per-row indexing
    if values.shape[1] > keep:
        best = np.argpartition(values, values.shape[1] - keep, axis=1)[:, values.shape[1] - keep :]
        return np.take_along_axis(values, best, axis=1), np.take_along_axis(columns, best, axis=1)
    return np.array(values), np.array(columns)
