"""Virtual-logit matching (ViM): the feature residual off the principal subspace, as an extra logit."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._params import AnyOf, Interval, Options
from ..features import Features
from ._layerwise import map_row_blocks
from ._logits import as_logits, logsumexp
from ._statistics import class_statistics, rank_update, shared
from .base import Detector

__all__ = ["ViM", "vim_principal_dim", "vim_score"]

PENULTIMATE = "penultimate"


def vim_principal_dim(
    n_features: int, eigenvalues: Any = None, dim: int | float | None = None, owner: str = "ViM"
) -> int:
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
            f"{owner}'s principal subspace must have between 1 and D - 1 = {n_features - 1} dimensions so "
            f"that a residual is left; got dim={chosen} for D={n_features} features."
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
    residual = residual_norms(features, origin, null_space, principal=False)
    return alpha * residual - logsumexp(as_logits(logits))


def residual_norms(features: Any, origin: Any, basis: Any, principal: bool) -> np.ndarray:
    """‖(h − u) R‖ per row [N] (R an orthonormal basis of the residual space), from an orthonormal ``basis``
    [D, k] of the residual space itself (``principal=False``) or of the principal subspace P
    (``principal=True``), whichever is smaller: the cost is one [N, D] x [D, k] product.

    Through P it is ``sqrt(‖h − u‖² − ‖(h − u) P‖²)``, which loses about log10(‖h − u‖² / residual²) digits
    to cancellation; in a block of rows where some would lose more than 4, those rows are projected
    explicitly instead, ``‖(h − u) − (h − u) P Pᵀ‖``. Fixed-size blocks of rows (:func:`map_row_blocks`), so
    a row's result does not depend on the batch it comes in. The products are scipy's, like the
    eigendecomposition of the fit.
    """
    from scipy.linalg import blas

    origin = np.asarray(origin, dtype=np.float64)
    basis = np.asfortranarray(basis, dtype=np.float64)

    def norms(block: np.ndarray) -> np.ndarray:
        centred = block - origin
        # (centred @ basis)ᵀ = basisᵀ centredᵀ: Fortran-ordered operands, so BLAS reads them without a copy
        projected = blas.dgemm(1.0, basis, centred.T, trans_a=1).T
        squared = np.einsum("ij,ij->i", projected, projected)
        if principal:
            total = np.einsum("ij,ij->i", centred, centred)
            squared = total - squared
            close = squared < 1e-4 * total
            if close.any():  # the whole block, so that a row's result does not depend on its neighbours
                explicit = centred - blas.dgemm(1.0, basis, projected.T).T
                squared[close] = np.einsum("ij,ij->i", explicit[close], explicit[close])
        return np.sqrt(np.maximum(squared, 0.0))

    return map_row_blocks(np.asarray(features), norms)


class _PrincipalSubspace(Detector):
    """What ViM and Residual share: the origin u = −W⁺b, the principal subspace of the fit features' second
    moment about u (its dimension d by the paper's rule or ``dim``), and the residual norm ‖(h − u) R‖
    through the smaller of the two bases. Inside :func:`~oodscope._sharing.sharing` the eigendecomposition
    is computed once for both (and from the statistics of Mahalanobis and RMDS)."""

    requires = frozenset({"features", "head"})
    _state_shapes = {
        "origin_": ("D",),
        "null_space_": ("D", "R"),
        "principal_space_": ("D", "d"),
        "dim_": (),
    }
    default_layers = (PENULTIMATE,)
    _parameter_constraints = {
        "dim": AnyOf(Interval(int, 1, None), Interval(float, 0, 1, closed="neither"), Options([None]))
    }

    def __init__(self, dim: int | float | None = None) -> None:
        self.dim = dim

    def _state_layer(self) -> str:
        return PENULTIMATE

    def _known_sizes(self) -> dict[str, int]:
        """Besides C and D: the principal dimension d = ``dim_`` and the residual's, R = D − d."""
        sizes = super()._known_sizes()
        dim = getattr(self, "dim_", None)
        if isinstance(dim, (int, np.integer)):
            sizes["d"] = int(dim)
            if "D" in sizes:
                sizes["R"] = sizes["D"] - int(dim)
        return sizes

    def _fit_subspace(self, features: Features) -> np.ndarray:
        """Learn u, d, R and P; returns the eigenvalues (ascending)."""
        h = features.layer(PENULTIMATE)
        n_features = h.shape[1]
        # the same inputs (objects) for every detector, so that they share the eigendecomposition
        inputs = (h, features.labels, features.head_weight, features.head_bias)
        origin, eigenvalues, eigenvectors = shared("vim_spectrum", inputs, lambda: _spectrum(*inputs))
        dim = vim_principal_dim(n_features, eigenvalues, self.dim, owner=type(self).__name__)
        self.origin_ = origin
        self.dim_ = dim
        self.null_space_ = np.ascontiguousarray(eigenvectors[:, : n_features - dim])
        self.principal_space_ = np.ascontiguousarray(eigenvectors[:, n_features - dim :])
        return eigenvalues

    def _residual(self, h: np.ndarray) -> np.ndarray:
        """‖(h − u) R‖, through the smaller of the two bases (files saved before ``principal_space_``
        existed have only R)."""
        principal = getattr(self, "principal_space_", None)
        if principal is not None and principal.shape[1] < self.null_space_.shape[1]:
            return residual_norms(h, self.origin_, principal, principal=True)
        return residual_norms(h, self.origin_, self.null_space_, principal=False)


class ViM(_PrincipalSubspace):
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
    principal_space_ : ndarray [D, d]
        P, orthonormal: the d leading eigenvectors. Scoring projects on the smaller of P and R (one
        [N, D] x [D, min(d, D − d)] product), since ‖(h − u) R‖² = ‖h − u‖² − ‖(h − u) P‖².
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
    _state_shapes = {"alpha_": ()}

    def _fit(self, features: Features) -> None:
        eigenvalues = self._fit_subspace(features)
        h, dim = features.layer(PENULTIMATE), self.dim_
        residual = self._residual(h)
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
        return self.alpha_ * self._residual(features.layer(PENULTIMATE)) - logsumexp(
            as_logits(features.logits)
        )
