"""Residual: the norm of the features' residual off the principal subspace (ViM without the logits)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..features import Features
from .vim import PENULTIMATE, _PrincipalSubspace, residual_norms

__all__ = ["Residual", "residual_score"]


def residual_score(features: Any, origin: Any, null_space: Any) -> np.ndarray:
    """Residual score, higher = more OOD: ``‖(h − u) R‖``, float64 [N].

    ``R`` [D, D − d] is an orthonormal basis of the residual space (the complement of the principal
    subspace), ``u`` [D] the origin. Rows are processed in fixed-size blocks (one block of memory).

    >>> residual_score([[1.0, 2.0], [3.0, 0.0]], origin=[0.0, 0.0], null_space=[[0.0], [1.0]])
    array([2., 0.])
    """
    h = np.asarray(features)
    origin = np.asarray(origin, dtype=np.float64)
    null_space = np.asarray(null_space, dtype=np.float64)
    if h.ndim != 2 or null_space.ndim != 2 or origin.shape != (h.shape[1],) or len(null_space) != h.shape[1]:
        raise ValueError(
            "residual_score expects features [N, D], an origin [D] and a null space [D, D - d]; got shapes "
            f"{h.shape}, {origin.shape} and {null_space.shape}."
        )
    return residual_norms(h, origin, null_space, principal=False)


class Residual(_PrincipalSubspace):
    """Residual: the norm of the features' component outside the principal subspace of the fit features.

    Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022 (the
    "Residual" baseline of its ablations). https://arxiv.org/abs/2203.10807

    As in :class:`~oodscope.ViM`: from the head (W [C, D], b) the origin u = −W⁺b, where the logits vanish;
    the principal subspace is spanned by the d leading eigenvectors of the fit features' second moment about
    u, (1/N) Σ (h − u)(h − u)ᵀ (uncentred, scikit-learn's ``EmpiricalCovariance(assume_centered=True)``);
    R is an orthonormal basis of its complement, the eigenvectors of the D − d smallest eigenvalues. The
    paper's confidence is the negated residual norm, so with higher meaning more OOD the score is the norm
    itself (ViM's virtual logit without its scale α and without the energy of the logits):

        S(x) = ‖(h(x) − u) R‖.

    Reads the penultimate features and the head only (no logits). The eigendecomposition is ViM's own
    (the tied covariance plus a rank-K term from the class means, the class statistics of Mahalanobis and
    RMDS when the fit data have labels): inside :func:`~oodscope._sharing.sharing` (``evaluate``,
    ``tune``) ViM and Residual fitted on the same Features share one.

    Differences from the reference implementations, following the paper's official code
    (``haoqiwang/vim``):

    - The default d is the official rule (1000 if D ≥ 2048, 512 if D ≥ 768, else D // 2). OpenOOD's
      ``residual.yml`` fixes ``dim: 512``, which with D = 512 (ResNet-18) leaves an empty residual space
      and a constant score.
    - OpenOOD fits on the ID validation split, the official code on ID training features; here the fit
      data is whatever is given to ``fit``. pytorch-ood's ``Residual`` is this score.

    Tuning: OpenOOD sweeps nothing (``search_space = {}``) and has no APS key, so no OOD data is used.

    Parameters
    ----------
    dim : int, float or None, default=None
        d, the principal subspace's dimension. ``None`` follows the paper (see above); an int 1 ≤ d < D; a
        float in (0, 1): the fewest components explaining that share of the second moment (capped at
        D − 1).

    Attributes
    ----------
    origin_ : ndarray [D]
        u = −W⁺b.
    dim_ : int
        The d used.
    null_space_ : ndarray [D, D − d]
        R, orthonormal.
    principal_space_ : ndarray [D, d]
        P, orthonormal; scoring projects on the smaller of P and R, as :class:`~oodscope.ViM` does.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> rng = np.random.default_rng(0)
    >>> h = rng.normal(size=(200, 4)) * [3.0, 3.0, 0.1, 0.1]  # little variance off the first two axes
    >>> w, b = np.eye(2, 4), np.zeros(2)
    >>> fit = Features(layers={"penultimate": h}, head_weight=w, head_bias=b)
    >>> test = Features(layers={"penultimate": np.array([[3.0, 3.0, 0.0, 0.0], [0.0, 0.0, 3.0, 4.0]])},
    ...                 head_weight=w, head_bias=b)
    >>> Residual(dim=2).fit(fit).score(test).scores.round(2)
    array([0.01, 5.  ])
    """

    search_space = {}  # OpenOOD sweeps nothing (see the docstring)

    def _fit(self, features: Features) -> None:
        self._fit_subspace(features)

    def _score(self, features: Features) -> np.ndarray:
        return self._residual(features.layer(PENULTIMATE))
