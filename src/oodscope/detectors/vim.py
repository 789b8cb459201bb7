"""Virtual-logit matching (ViM): the feature residual off the principal subspace, as an extra logit."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._params import AnyOf, Interval, Options
from ..features import Features
from ._layerwise import map_row_blocks
from ._logits import as_logits, logsumexp
from ._statistics import SCATTER_BLOCK_BYTES, class_statistics, rank_update, shared
from .base import Detector

__all__ = ["ViM", "vim_principal_dim", "vim_score"]

PENULTIMATE = "penultimate"


def vim_principal_dim(n_features: int, eigenvalues: Any = None, dim: int | float | None = None) -> int:
    """The principal subspace's dimension: the paper's rule for ``dim=None`` (1000 if D ≥ 2048, 512 if
    D ≥ 768, else D // 2), ``dim`` itself for an int, or for a float in (0, 1) the fewest components whose
    eigenvalues (descending) explain at least that share of the total (at most D − 1).

    >>> vim_principal_dim(512), vim_principal_dim(1600), vim_principal_dim(2048)
    (256, 512, 1000)
    >>> vim_principal_dim(3, eigenvalues=[5.0, 3.0, 2.0], dim=0.75)
    2
    """
    if dim is None:
        chosen = 1000 if n_features >= 2048 else 512 if n_features >= 768 else n_features // 2
    elif isinstance(dim, (int, np.integer)):
        chosen = int(dim)
    else:
        values = np.sort(np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None))[::-1]
        shares = np.cumsum(values) / max(values.sum(), np.finfo(np.float64).tiny)
        chosen = min(int(np.searchsorted(shares, dim - 1e-12)) + 1, n_features - 1)
    if not 1 <= chosen < n_features:
        raise ValueError(
            f"ViM's principal subspace must have between 1 and D - 1 = {n_features - 1} dimensions so that a "
            f"residual is left; got dim={chosen} for D={n_features} features."
        )
    return chosen


def _spectrum(
    features: np.ndarray, labels: Any, head_weight: np.ndarray, head_bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The origin u = −W⁺b and the eigendecomposition (ascending) of the features' second moment about it.

    ``(1/N) Σ_i (h_i − u)(h_i − u)ᵀ = Σ + Σ_k (n_k / N)(μ_k − u)(μ_k − u)ᵀ`` with the class statistics
    (:func:`~oodscope.detectors._statistics.class_statistics`; one class when ``labels`` is None): a sum of
    positive semi-definite terms, exact without a pass of its own, and shared with Mahalanobis and RMDS
    inside :func:`~oodscope._sharing.sharing`. scipy's LAPACK throughout, like the
    statistics: switching to numpy's (another OpenBLAS, whose threads keep spinning a while after each
    call) slows the next products down.
    """
    from scipy.linalg import eigh, pinv

    weight = np.asarray(head_weight, dtype=np.float64)
    # numpy.linalg.pinv's cut-off: singular values below 1e-15 of the largest are dropped
    origin = -pinv(weight, atol=0.0, rtol=1e-15) @ np.asarray(head_bias, dtype=np.float64)
    statistics = class_statistics(features, labels)
    weights = statistics.counts / statistics.counts.sum()
    moment = rank_update(statistics.covariance, (statistics.means - origin).T * np.sqrt(weights))
    eigenvalues, eigenvectors = eigh(moment, driver="evd", check_finite=False)
    return origin, eigenvalues, eigenvectors


def vim_score(features: Any, logits: Any, origin: Any, null_space: Any, alpha: float) -> np.ndarray:
    """ViM score, higher = more OOD: ``α ‖(h − u) R‖ − logsumexp(z)``, float64 [N].

    ``R`` [D, D − d] is an orthonormal basis of the residual space (the complement of the principal
    subspace), ``u`` [D] the origin.

    >>> h, z = [[1.0, 2.0]], [[0.0, 0.0]]
    >>> vim_score(h, z, origin=[0.0, 0.0], null_space=[[0.0], [1.0]], alpha=0.5).round(4)
    array([0.3069])
    """
    origin = np.asarray(origin, dtype=np.float64)
    null_space = np.asarray(null_space, dtype=np.float64)
    residual = map_row_blocks(
        np.asarray(features), lambda block: np.linalg.norm((block - origin) @ null_space, axis=1)
    )
    return alpha * residual - logsumexp(as_logits(logits))


def _residual_norms(
    features: np.ndarray, origin: np.ndarray, eigenvectors: np.ndarray, dim: int
) -> np.ndarray:
    """‖(h − u) R‖ per row, from whichever of the two bases is smaller (the principal P [D, d] or the null
    space R [D, D − d], the columns of ``eigenvectors`` in ascending order).

    Through P it is ``sqrt(‖h − u‖² − ‖(h − u) P‖²)``, which loses about log10(‖h − u‖² / residual²) digits
    to cancellation; rows where that would exceed 4 digits are projected explicitly instead,
    ``‖(h − u) − (h − u) P Pᵀ‖``. The products are scipy's, like the eigendecomposition before them.
    """
    from scipy.linalg import blas

    n_features = eigenvectors.shape[0]
    low = dim >= n_features - dim
    basis = np.asfortranarray(
        eigenvectors[:, : n_features - dim] if low else eigenvectors[:, n_features - dim :]
    )

    n = features.shape[0]
    rows = max(1, min(n, SCATTER_BLOCK_BYTES // (8 * n_features)))
    buffer = np.empty((rows, n_features))
    norms = np.empty(n)
    for start in range(0, n, rows):  # fit rows only: no need for map_row_blocks' fixed-shape blocks
        stop = min(start + rows, n)
        centred = np.subtract(features[start:stop], origin, out=buffer[: stop - start])
        # (centred @ basis)ᵀ = basisᵀ centredᵀ: Fortran-ordered operands, so BLAS reads them without a copy
        projected = blas.dgemm(1.0, basis, centred.T, trans_a=1).T
        squared = np.einsum("ij,ij->i", projected, projected)
        if not low:
            total = np.einsum("ij,ij->i", centred, centred)
            squared = total - squared
            close = squared < 1e-4 * total
            if close.any():
                explicit = centred - blas.dgemm(1.0, basis, projected.T).T
                squared[close] = np.einsum("ij,ij->i", explicit[close], explicit[close])
        norms[start:stop] = np.sqrt(np.maximum(squared, 0.0))
    return norms


class ViM(Detector):
    """Virtual-logit matching: the norm of the features' residual off the principal subspace, as a logit.

    Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022.
    https://arxiv.org/abs/2203.10807

    From the head (W [C, D], b): the origin u = −W⁺b, where the logits vanish. The principal subspace is
    spanned by the d leading eigenvectors of the fit features' second-moment matrix about u,
    (1/N) Σ (h − u)(h − u)ᵀ; R is an orthonormal basis of its complement. The virtual logit is
    α‖(h − u)R‖, with α = mean max-logit / mean residual norm on the fit data. The score is the virtual
    logit minus the energy of the real logits (the paper's confidence is its negative; the virtual class's
    softmax probability is sigmoid(S), a monotone map of it), higher = more OOD:

        S(x) = α ‖(h(x) − u) R‖ − log Σ_c exp z_c(x).

    Features (penultimate) and logits come from the same pass; nothing else is run. The second moment is
    not a pass of its own: it is the tied covariance plus a rank-K term from the class means (one class when
    the fit data have no labels), whose statistics cost about one float64 product of the centred features
    with themselves and are those of Mahalanobis and RMDS inside
    :func:`~oodscope._sharing.sharing`. Then an eigendecomposition of the [D, D]
    moment (the principal subspace), and one product of the fit features with the smaller of the principal
    and residual bases for α.

    Parameters
    ----------
    dim : int, float or None, default=None
        d, the principal subspace's dimension. ``None`` follows the paper (1000 if D ≥ 2048, 512 if D ≥ 768,
        else D // 2); an int 1 ≤ d < D; a float in (0, 1): the fewest components explaining that share of
        the variance about u (capped at D − 1).

    Attributes
    ----------
    origin_ : ndarray [D]
        u = −W⁺b.
    dim_ : int
        The d used.
    null_space_ : ndarray [D, D − d]
        R, orthonormal.
    alpha_ : float
        α.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> rng = np.random.default_rng(0)
    >>> h = rng.normal(size=(200, 4)) * [3.0, 3.0, 0.1, 0.1]  # little variance off the first two axes
    >>> w, b = np.eye(2, 4), np.zeros(2)
    >>> fit = Features(logits=h @ w.T + b, layers={"penultimate": h}, head_weight=w, head_bias=b)
    >>> off = np.array([[0.0, 0.0, 3.0, 3.0]])
    >>> test = Features(logits=off @ w.T + b, layers={"penultimate": off}, head_weight=w, head_bias=b)
    >>> vim = ViM(dim=2).fit(fit)
    >>> vim.null_space_.shape, bool(vim.score(test).scores[0] > vim.score(fit).scores.max())
    ((4, 2), True)
    """

    requires = frozenset({"features", "logits", "head"})
    _state_shapes = {"origin_": ("D",), "null_space_": ("D", "R"), "dim_": (), "alpha_": ()}
    default_layers = (PENULTIMATE,)
    _parameter_constraints = {
        "dim": AnyOf(Interval(int, 1, None), Interval(float, 0, 1, closed="neither"), Options([None]))
    }

    def __init__(self, dim: int | float | None = None) -> None:
        self.dim = dim

    def _state_layer(self) -> str:
        return PENULTIMATE

    def _fit(self, features: Features) -> None:
        h = features.layer(PENULTIMATE)
        n_features = h.shape[1]
        inputs = (h, features.labels, features.head_weight, features.head_bias)
        origin, eigenvalues, eigenvectors = shared("vim_spectrum", inputs, lambda: _spectrum(*inputs))
        dim = vim_principal_dim(n_features, eigenvalues, self.dim)
        self.origin_ = origin
        self.dim_ = dim
        self.null_space_ = np.ascontiguousarray(eigenvectors[:, : n_features - dim])
        residual = _residual_norms(h, origin, eigenvectors, dim)
        spread = float(np.sqrt(np.maximum(eigenvalues, 0.0).sum()))  # RMS distance of the features from u
        if residual.mean() <= 1e-8 * spread:  # rounding noise, not a residual: alpha would be meaningless
            raise ValueError(
                f"ViM: the {len(h)} fit features have (almost) no component outside the {dim}-dimensional "
                "principal subspace, so the virtual logit cannot be scaled. Fit on more samples than the "
                f"subspace has dimensions (at least {dim + 1}; in practice thousands), or use a smaller dim."
            )
        # the max in the logits' own precision (exact), then float64: no float64 copy of all the logits
        top = np.asarray(features.logits).max(axis=1).astype(np.float64)
        self.alpha_ = float(top.mean() / residual.mean())
        if self.alpha_ <= 0:
            warnings.warn(
                f"ViM's alpha is {self.alpha_:.4g} <= 0 (the mean max-logit of the fit data is not "
                "positive), so a larger residual lowers the score; check that the head and the logits "
                "belong together.",
                stacklevel=4,
            )

    def _score(self, features: Features) -> np.ndarray:
        return vim_score(
            features.layer(PENULTIMATE), features.logits, self.origin_, self.null_space_, self.alpha_
        )
