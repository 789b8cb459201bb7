"""Second-order statistics of fit features, shared by the covariance-based detectors (Mahalanobis, RMDS,
ViM): class counts and means, the within-class covariance, and whitening matrices.

Their cost is dominated by one float64 product of the centred [N, D] features with themselves; the rest
(class sums, a Cholesky factorisation and a triangular inverse) is a fraction of it. Inside
:func:`~oodscope._sharing.sharing` each of them is computed once per input and reused by every detector that
asks, so fitting Mahalanobis, RMDS and ViM on the same Features costs about one such product::

    with sharing():
        for detector in (Mahalanobis(), RMDS(), ViM()):
            detector.fit(features)

Outside the context nothing is kept: every fit computes afresh, so an array modified in place between two
fits never gives stale results.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .._sharing import shared

__all__ = [
    "ClassStatistics",
    "WhitenerForm",
    "class_statistics",
    "in_range",
    "normalized_rows",
    "rank_update",
    "whitener_form",
    "whitening",
    "whitening_update",
]

#: rows per block of the scatter pass: about 8 MB of float64, so that the converted block is still in the
#: cache when BLAS reads it (10k x 1,600: 8 MB blocks 1.11x the bare product, 32 MB 1.19x), but at least
#: 256 rows so that each block's symmetric rank-k update stays efficient
SCATTER_BLOCK_BYTES = 1 << 23

#: the Cholesky whitening is used when every pivot is this many times above the pseudo-inverse's cut-off
CHOLESKY_MARGIN = 1e3


class ClassStatistics(NamedTuple):
    """Per-class counts and means and the tied covariance of labelled features (means and covariance in
    float64)."""

    classes: np.ndarray  # [K], the sorted distinct labels
    counts: np.ndarray  # [K]
    means: np.ndarray  # [K, D]
    covariance: np.ndarray  # [D, D], (1 / N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ


# --- class statistics -----------------------------------------------------------------------------------


def class_statistics(features: Any, labels: Any) -> ClassStatistics:
    """Classes, class sizes, class means and the tied (within-class) covariance, in float64.

    ``covariance = (1 / N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ`` (the maximum-likelihood estimate, as
    scikit-learn's ``EmpiricalCovariance`` on the class-centred features). ``labels=None`` treats all rows
    as one class (``classes = [0]``): the mean and covariance of all the features.

    One pass over blocks of rows, each converted to float64 and centred about its class's approximate mean
    (from a strided sample of the rows): one symmetric rank-k update per block gives the scatter about those
    approximate means, and the class sums of the same centred blocks give the exact means and the (tiny)
    correction to the scatter, so the result is as accurate as centring about the exact means, with no
    cancellation, for about 1.1 times the cost of the bare float64 product of the centred features with
    themselves. Memory: one block (about 8 MB) beyond the output. Inside
    :func:`~oodscope._sharing.sharing` it is computed once per (features, labels) pair.

    Returns
    -------
    ClassStatistics
        ``(classes [K], counts [K], means [K, D], covariance [D, D])``, C-contiguous.
    """
    return shared("class_statistics", (features, labels), lambda: _class_scatter(features, labels))


def _class_scatter(features: Any, labels: Any) -> ClassStatistics:
    from scipy.linalg import blas

    h = np.asarray(features)
    if h.dtype not in (np.float32, np.float64):
        h = h.astype(np.float64)
    n, dim = h.shape
    if labels is None:
        classes, first, inverse = np.zeros(1, np.int64), np.zeros(1, np.intp), np.zeros(n, np.intp)
    else:
        classes, first, inverse = np.unique(np.asarray(labels), return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
    n_classes = classes.size
    counts = np.bincount(inverse, minlength=n_classes)
    # a point near each class's mean, so that the pass below has no cancellation: the class means over a
    # strided sample of about 8 rows per class, at least 256 (a class that the sample misses: its first
    # row); its error only enters the final rank-K correction, which stays tiny
    sample = slice(None, None, max(1, n // max(256, 8 * n_classes)))
    sample_counts = np.bincount(inverse[sample], minlength=n_classes)
    seen = sample_counts > 0
    shift = h[first].astype(np.float64)
    shift[seen] = _class_sums(inverse[sample], h[sample], n_classes)[seen] / sample_counts[seen, None]

    rows = max(256, SCATTER_BLOCK_BYTES // (8 * max(dim, 1)))
    if 32 * n_classes <= dim:  # the one-hot columns cost at most 1/16 of the update
        scatter, sums = _scatter_with_one_hot(h, inverse, shift, rows)
    else:
        scatter, sums = _scatter_gathered(h, inverse, shift, rows)
    offsets = sums / counts[:, None]  # exact class means minus the shift
    # the scatter about the exact means, over N: a rank-K correction, as small as the shift's error
    weighted = np.zeros((n_classes, scatter.shape[0]))
    weighted[:, :dim] = offsets * np.sqrt(counts)[:, None]
    scatter = blas.dsyrk(-1.0 / n, weighted.T, beta=1.0 / n, c=scatter, trans=0, lower=0, overwrite_c=1)
    covariance = _symmetric(scatter[:dim, :dim])
    return ClassStatistics(classes, counts, np.ascontiguousarray(shift + offsets), covariance)


def _symmetric(upper: np.ndarray) -> np.ndarray:
    """The symmetric matrix, C-ordered, whose upper triangle is that of ``upper`` (Fortran-ordered, strictly
    lower part 0); by tiles, so that each transposed copy stays in the cache (twice as fast as whole)."""
    dim, tile = upper.shape[0], 256
    out = np.empty((dim, dim))
    for i in range(0, dim, tile):
        for j in range(i, dim, tile):
            block = upper[i : i + tile, j : j + tile]
            if j > i:
                out[j : j + tile, i : i + tile] = block.T
                out[i : i + tile, j : j + tile] = block
            else:
                diagonal = np.add(block, block.T, out=out[i : i + tile, i : i + tile])
                diagonal[np.diag_indices(len(diagonal))] *= 0.5  # added twice
    return out


# Both passes fill the upper triangle of a Fortran-ordered scatter in place (the rest stays 0), one
# symmetric rank-k update (dsyrk) per block of rows converted to float64 and centred about the shift. The
# blocks are C-ordered: transposed, they are the Fortran-ordered [width, b] operands BLAS reads as they are.


def _scatter_with_one_hot(
    h: np.ndarray, inverse: np.ndarray, shift: np.ndarray, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """With few classes: each block is [h − shift | one-hot] ([b, D + K]), centred by one BLAS product
    (threaded, in place), and its rank-k update also gives the class sums of the centred rows, in the
    [D, K] upper-right corner, at a cost of about 2K / D of the scatter's."""
    from scipy.linalg import blas

    n, dim = h.shape
    n_classes = shift.shape[0]
    width = dim + n_classes
    block = np.empty((min(rows, n), width))
    lifted = np.zeros((n_classes, width))  # the shift, 0 on the one-hot columns
    lifted[:, :dim] = shift
    scatter = np.zeros((width, width), order="F")
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        augmented, one_hot = block[: stop - start], np.zeros((stop - start, n_classes))
        one_hot[np.arange(stop - start), inverse[start:stop]] = 1.0
        augmented[:, :dim] = h[start:stop]
        augmented[:, dim:] = one_hot
        blas.dgemm(-1.0, lifted.T, one_hot.T, beta=1.0, c=augmented.T, overwrite_c=1)
        scatter = blas.dsyrk(1.0, augmented.T, beta=1.0, c=scatter, trans=0, lower=0, overwrite_c=1)
    return scatter, np.ascontiguousarray(scatter[:dim, dim:].T)


def _scatter_gathered(
    h: np.ndarray, inverse: np.ndarray, shift: np.ndarray, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """With many classes: each row minus its class's shift, and the class sums by a sparse product."""
    from scipy.linalg import blas

    n, dim = h.shape
    block = np.empty((min(rows, n), dim))
    scatter = np.zeros((dim, dim), order="F")
    sums = np.zeros(shift.shape)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        centred, block_classes = block[: stop - start], inverse[start:stop]
        np.subtract(h[start:stop], shift[block_classes], out=centred)
        sums += _class_sums(block_classes, centred, shift.shape[0])
        scatter = blas.dsyrk(1.0, centred.T, beta=1.0, c=scatter, trans=0, lower=0, overwrite_c=1)
    return scatter, sums


def _class_sums(classes: np.ndarray, values: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class sums of the rows [K, D] by a sparse one-hot product: O(rows x D) whatever K."""
    from scipy.sparse import csc_matrix

    one_hot = csc_matrix(
        (np.ones(len(classes), dtype=values.dtype), classes, np.arange(len(classes) + 1)),
        shape=(n_classes, len(classes)),
    )
    return np.asarray(one_hot @ values)


def normalized_rows(features: Any) -> np.ndarray:
    """The rows of ``features`` [N, D] divided by their L2 norms (computed in float64; zero rows stay zero),
    in the features' float dtype (float64 for integer input): Mahalanobis++ and RMDS++ fit and score on
    these. Inside :func:`~oodscope._sharing.sharing` it is computed once per array, so that detectors
    normalising the same features also share their statistics.

    >>> normalized_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    array([[0.6, 0.8],
           [0. , 0. ]])
    """
    return shared("normalized_rows", (features,), lambda: _normalized_rows(features))


def _normalized_rows(features: Any) -> np.ndarray:
    h = np.asarray(features)
    out = np.empty(h.shape, dtype=h.dtype if h.dtype in (np.float32, np.float64) else np.float64)
    rows = max(1, SCATTER_BLOCK_BYTES // (8 * max(h.shape[1], 1)))
    for start in range(0, h.shape[0], rows):
        block = h[start : start + rows].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        out[start : start + rows] = block / np.where(norms > 0, norms, 1.0)[:, None]
    return out


# --- whitening ------------------------------------------------------------------------------------------


def whitening(covariance: Any) -> np.ndarray:
    """A factor W with W Wᵀ = Σ⁻¹ (or the pseudo-inverse Σ⁺ when Σ is singular), Fortran-ordered float64.

    Units without variance (dead units: Σ_ii = 0, so their row and column are 0) are set aside first: their
    rows of W are 0, and the rest is the whitening of the live units' covariance, found by

    - **Cholesky** (the rule when that covariance is well conditioned): Σ = UᵀU with U upper triangular,
      W = U⁻¹ (upper triangular). Used when the factorisation succeeds and every pivot U_ii² exceeds
      ``CHOLESKY_MARGIN`` (10³) times ``D · eps · max_i Σ_ii``, the pseudo-inverse's cut-off below;
    - **pseudo-inverse** otherwise (duplicated units, fewer samples than dimensions): the eigenvectors over
      the square roots of the eigenvalues above ``D · eps · λ_max`` (the cut-off of ``scipy.linalg.pinvh``);
      directions without variance in the fit data are ignored. When no eigenvalue is dropped, the factor is
      brought to upper-triangular form by an RQ decomposition (W = R Q, Q orthogonal, so R Rᵀ = W Wᵀ).

    So W is [D, r], r the rank of Σ, and its live rows form an upper-triangular [r, r] factor unless Σ is
    singular beyond its dead units: whitening then costs a triangular product (:func:`whitener_form`), half
    a full one. Both routes give the same distances ``‖(h − μ) W‖²`` up to rounding when Σ is invertible;
    the Cholesky route costs a small fraction of an eigendecomposition. Inside
    :func:`~oodscope._sharing.sharing` the whitening of a given covariance array is computed once.
    """
    return shared("whitening", (covariance,), lambda: _whitening(covariance))


def _whitening(covariance: Any) -> np.ndarray:
    sigma = np.asarray(covariance, dtype=np.float64)
    dim = sigma.shape[0]
    live = np.flatnonzero(np.diagonal(sigma) > 0)
    if live.size == dim:
        return np.asfortranarray(_live_whitening(sigma))
    factor = _live_whitening(sigma[np.ix_(live, live)])
    embedded = np.zeros((dim, factor.shape[1]), order="F")
    embedded[live] = factor
    return embedded


def _live_whitening(sigma: np.ndarray) -> np.ndarray:
    """The whitening of a covariance without dead units (see :func:`whitening`)."""
    from scipy.linalg import eigh, lapack, rq

    dim = sigma.shape[0]
    if dim == 0:
        return np.zeros((0, 0), order="F")
    cutoff = dim * np.finfo(np.float64).eps * max(float(np.diagonal(sigma).max()), 0.0)
    # Σ is symmetric, so its transpose (a Fortran-ordered view) is the same matrix
    upper, info = lapack.dpotrf(sigma.T, lower=0, clean=1)
    if info == 0 and np.diagonal(upper).min() ** 2 > CHOLESKY_MARGIN * cutoff:
        inverse, info = lapack.dtrtri(upper, lower=0, overwrite_c=1)
        if info == 0:
            return inverse
    eigenvalues, eigenvectors = eigh(sigma, driver="evd", check_finite=False)
    largest = max(float(eigenvalues[-1]), 0.0)
    keep = eigenvalues > largest * dim * np.finfo(np.float64).eps
    factor = eigenvectors[:, keep] / np.sqrt(eigenvalues[keep])
    if keep.all():  # square: the triangular form, as from the Cholesky route
        factor = rq(factor, mode="r", check_finite=False)
    return factor


class WhitenerForm(NamedTuple):
    """How to apply a whitening W [D, r] (see :func:`whitener_form`)."""

    live: np.ndarray | None  # indices of the rows of W that are not all 0 (None: every row)
    factor: np.ndarray  # W's live rows, Fortran-ordered float64
    triangular: bool  # the factor is square and upper triangular


def whitener_form(whitener: Any) -> WhitenerForm:
    """The live rows of a whitening W and whether they form an upper-triangular square: then ``(h − c) W``
    is ``(h − c)[:, live] W[live]``, a triangular product (BLAS ``trmm``, half the flops of a full one).
    One pass over W; detectors compute it once per fitted state, and inside
    :func:`~oodscope._sharing.sharing` it is computed once per array."""
    return shared("whitener_form", (whitener,), lambda: _whitener_form(whitener))


def _whitener_form(whitener: Any) -> WhitenerForm:
    whitener = np.asarray(whitener, dtype=np.float64)
    rows = whitener.any(axis=1)
    live = None if rows.all() else np.flatnonzero(rows)
    factor = np.asfortranarray(whitener if live is None else whitener[live])
    square = factor.shape[0] == factor.shape[1]
    return WhitenerForm(live, factor, bool(square and not np.tril(factor, -1).any()))


def whitening_update(whitener: Any, directions: Any) -> np.ndarray:
    """The whitening of Σ + B Bᵀ from a whitening W [D, r] of Σ (W Wᵀ = Σ⁺), for B [D, K] of low rank whose
    columns lie in the range of Σ (always so when Σ is invertible; see :func:`in_range`).

    With C = Wᵀ B, Σ + B Bᵀ = W⁺ᵀ (I + C Cᵀ) W⁺ on that range, so ``W (I + C Cᵀ)^(−1/2)`` whitens it; from
    the thin SVD C = Q S Vᵀ, ``(I + C Cᵀ)^(−1/2) = I − Q diag(1 − 1 / sqrt(1 + s²)) Qᵀ``: two [D, r] x
    [r, K] products instead of a new factorisation. Fortran-ordered float64 [D, r].
    """
    from scipy.linalg import blas, svd

    whitener = np.asfortranarray(whitener, dtype=np.float64)
    # scipy's BLAS throughout, like the factorisation before: switching to numpy's (another OpenBLAS, with
    # its own threads) costs more than these products
    projected = blas.dgemm(1.0, whitener, np.asarray(directions, dtype=np.float64), trans_a=1)  # Wᵀ B
    basis, singular, _ = svd(projected, full_matrices=False, check_finite=False)
    shrink = 1.0 - 1.0 / np.sqrt(1.0 + singular**2)
    # W − (W Q diag(shrink)) Qᵀ, into a copy of W
    return blas.dgemm(-1.0, blas.dgemm(1.0, whitener, basis) * shrink, basis, trans_b=1, beta=1.0, c=whitener)


def in_range(whitener: Any, directions: Any, tolerance: float = 1e-10) -> bool:
    """Whether the columns of ``directions`` [D, K] lie in the range of Σ, given its whitening W [D, r] from
    :func:`whitening` (W Wᵀ = Σ⁺): their part outside it is at most ``tolerance`` of their norm. Always so
    for an invertible Σ; with dead units, when the directions are 0 on them."""
    form = whitener_form(whitener)
    directions = np.asarray(directions, dtype=np.float64)
    if form.triangular:  # the live units' covariance is invertible: the range is the live units'
        if form.live is None:
            return True
        outside = np.delete(directions, form.live, axis=0)
    else:  # the eigen route: W's columns are orthogonal
        whitener = np.asarray(whitener, dtype=np.float64)
        basis = whitener / np.linalg.norm(whitener, axis=0)
        outside = directions - basis @ (basis.T @ directions)
    return bool(np.linalg.norm(outside) <= tolerance * max(np.linalg.norm(directions), np.finfo(float).tiny))


def rank_update(symmetric: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``symmetric + directions @ directions.T`` (B [D, K]) as a new C-ordered array, by scipy's BLAS."""
    from scipy.linalg import blas

    directions = np.asfortranarray(directions, dtype=np.float64)
    # a symmetric C-ordered matrix is its own Fortran-ordered transpose: no copy but the output
    return blas.dgemm(1.0, directions, directions, trans_b=1, beta=1.0, c=symmetric.T).T
