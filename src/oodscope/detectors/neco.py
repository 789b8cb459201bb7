"""NECO: the share of the standardised features' norm in their principal subspace (neural collapse)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._params import AnyOf, Interval, Options
from ..features import Features
from ._layerwise import iter_row_blocks, map_row_blocks
from ._logits import as_logits
from .base import Detector

__all__ = ["NECO", "neco_principal_dim", "neco_score"]

PENULTIMATE = "penultimate"


def neco_principal_dim(eigenvalues: Any, dim: int | float) -> int:
    """d for NECO: ``dim`` itself for an int (1 ≤ d < D), or for a float in (0, 1) the fewest principal
    components whose eigenvalues (in any order) explain at least that share of the total, at most D − 1.

    >>> neco_principal_dim([1.0, 6.0, 3.0], 0.9), neco_principal_dim([1.0, 6.0, 3.0], 2)
    (2, 2)
    """
    values = np.sort(np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None))[::-1]
    n_features = values.size
    if isinstance(dim, (int, np.integer)):
        chosen = int(dim)
    else:
        shares = np.cumsum(values) / max(values.sum(), np.finfo(np.float64).tiny)
        chosen = min(int(np.searchsorted(shares, dim - 1e-12)) + 1, n_features - 1)
    if not 1 <= chosen < n_features:
        raise ValueError(
            f"NECO's principal subspace must have between 1 and D - 1 = {n_features - 1} dimensions (with "
            f"d = D every standardised feature lies in it and the score is constant); got dim={chosen} for "
            f"D={n_features} features. Pass a smaller dim, or a float share of variance such as 0.9."
        )
    return chosen


def neco_score(features: Any, mean: Any, scale: Any, components: Any, logits: Any = None) -> np.ndarray:
    """NECO score, higher = more OOD: ``−‖P_dᵀ h̃‖ / ‖h̃‖`` with ``h̃ = (h − m) / s``, float64 [N].

    ``mean`` m [D] and ``scale`` s [D] standardise the features; ``components`` P_d [D, d] are the
    orthonormal principal directions of the standardised fit features (whose mean is 0). With ``logits``,
    the ratio is multiplied by the max logit (the paper's ViT variant). A sample with h̃ = 0 (exactly the
    fit mean) has the ratio 1: nothing of it lies outside the principal subspace.

    >>> neco_score([[3.0, 4.0]], mean=[0.0, 0.0], scale=[1.0, 1.0], components=[[1.0], [0.0]])
    array([-0.6])
    """
    h = np.asarray(features)
    mean = np.asarray(mean, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    components = np.asarray(components, dtype=np.float64)
    if (
        h.ndim != 2
        or components.ndim != 2
        or mean.shape != (h.shape[1],)
        or scale.shape != mean.shape
        or len(components) != h.shape[1]
    ):
        raise ValueError(
            "neco_score expects features [N, D], a mean [D], a scale [D] and components [D, d]; got shapes "
            f"{h.shape}, {mean.shape}, {scale.shape} and {components.shape}."
        )

    def ratio(block: np.ndarray) -> np.ndarray:
        standardised = (block - mean) / scale
        total = np.linalg.norm(standardised, axis=1)
        principal = np.linalg.norm(standardised @ components, axis=1)
        return np.divide(principal, total, out=np.ones_like(total), where=total > 0)

    confidence = map_row_blocks(h, ratio)
    if logits is not None:
        z = as_logits(logits)
        if len(z) != len(h):
            raise ValueError(f"neco_score got {len(z)} rows of logits for {len(h)} rows of features.")
        confidence = confidence * z.max(axis=1)
    return -confidence


def _standardiser(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (ddof=0) in float64, in one blocked pass; constant features
    (std within rounding of 0) get the scale 1, as in scikit-learn's ``StandardScaler``."""
    n, width = h.shape
    mean = np.zeros(width)
    for rows in iter_row_blocks(n, width):
        mean += h[rows].astype(np.float64).sum(axis=0)
    mean /= n
    squares = np.zeros(width)
    for rows in iter_row_blocks(n, width):
        squares += ((h[rows].astype(np.float64) - mean) ** 2).sum(axis=0)
    scale = np.sqrt(squares / n)
    constant = scale <= 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)
    scale[constant] = 1.0
    return mean, scale


class NECO(Detector):
    """NECO: how little of the standardised features lies in their principal subspace (neural collapse).

    Ammar, Belkhir, Popescu, Manzanera & Franchi, "NECO: NEural Collapse Based Out-of-distribution
    Detection", ICLR 2024. https://arxiv.org/abs/2310.06823

    Under neural collapse, ID features concentrate in the low-dimensional subspace spanned by the class
    means, while OOD features are close to orthogonal to it. From the fit features h (penultimate): the
    per-feature mean m and standard deviation s (the reference code's ``StandardScaler``), h̃ = (h − m) / s,
    and P_d [D, d], the d leading principal directions of the standardised fit features (whose mean μ̃ is
    0, so the PCA's centring is a no-op). The paper's confidence is the share of the norm in that subspace;
    negated, so that higher means more OOD:

        S(x) = −‖P_dᵀ (h̃(x) − μ̃)‖ / ‖h̃(x)‖,    h̃(x) = (h(x) − m) / s.

    With ``max_logit=True`` the ratio is multiplied by the max logit, ``S(x) = −max_c z_c(x) · ratio``, the
    paper's variant for vision transformers (ViT, Swin, DeiT); the paper uses the plain ratio for ResNets.

    Differences from the reference implementations:

    - d: the paper chooses the number of components that explain about 90 % of the ID variance (the default
      ``dim=0.9``); pytorch-ood's ``NECO`` fixes d = 100. The official code is on GitLab
      (``gitlab.com/drti/neco``).
    - The printed formula has no centring; the reference PCA subtracts the mean of the standardised fit
      features, which is 0 (so both agree).
    - The official DeiT and Swin paths take the denominator from the raw (unstandardised) features; here
      it is always ‖h̃‖.
    - A constant fit feature (s = 0) is scaled by 1, as ``StandardScaler`` does.

    Tuning: NECO is not in OpenOOD, so ``search_space = {}`` (no OOD data used). pytorch-ood tunes d over
    {16, 32, 64, 100, 128, 256, 512, 768}.

    Parameters
    ----------
    dim : int or float, default=0.9
        d. An int 1 ≤ d < D, or a float in (0, 1): the fewest principal components of the standardised fit
        features that explain that share of their variance (at most D − 1).
    max_logit : bool, default=False
        Multiply the ratio by the max logit (the paper's transformer variant; then the logits are needed).

    Attributes
    ----------
    mean_ : ndarray [D]
        m, the fit features' mean.
    scale_ : ndarray [D]
        s, their standard deviation (1 for constant features).
    components_ : ndarray [D, d]
        P_d, orthonormal columns.
    explained_variance_ : ndarray [D]
        The eigenvalues of the standardised fit features' covariance, in decreasing order.
    dim_ : int
        The d used.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> rng = np.random.default_rng(0)
    >>> h = rng.normal(size=(500, 3)) @ [[1.0, 1.0, 1.0], [0.1, -0.1, 0.0], [0.0, 0.1, -0.1]]
    >>> h -= h.mean(axis=0)  # features spread along (1, 1, 1) about the origin
    >>> neco = NECO(dim=1).fit(Features(layers={"penultimate": h}))
    >>> test = Features(layers={"penultimate": np.array([[1.0, 1.0, 1.0], [1.0, -1.0, 1.0]])})
    >>> neco.score(test).scores.round(2)
    array([-1.  , -0.34])
    """

    requires = frozenset({"features"})
    _state_shapes = {
        "mean_": ("D",),
        "scale_": ("D",),
        "components_": ("D", "d"),
        "explained_variance_": ("D",),
        "dim_": (),
    }
    default_layers = (PENULTIMATE,)
    search_space = {}  # not in OpenOOD (see the docstring)
    _parameter_constraints = {
        "dim": AnyOf(Interval(int, 1, None), Interval(float, 0, 1, closed="neither")),
        "max_logit": Options([False, True]),
    }

    def __init__(self, dim: int | float = 0.9, max_logit: bool = False) -> None:
        self.dim = dim
        self.max_logit = max_logit

    def _state_layer(self) -> str:
        return PENULTIMATE

    def _check_logits(self, features: Features, stage: str) -> None:
        if self.max_logit and features.logits is None:
            raise ValueError(
                f"NECO(max_logit=True) needs the classifier's logits, but the Features given to {stage}() "
                "have none. Pass logits, or use max_logit=False."
            )

    def _fit(self, features: Features) -> None:
        from scipy.linalg import eigh

        self._check_logits(features, "fit")
        h = features.layer(PENULTIMATE)
        n, width = h.shape
        mean, scale = _standardiser(h)
        covariance = np.zeros((width, width))
        for rows in iter_row_blocks(n, width):
            block = (h[rows].astype(np.float64) - mean) / scale
            covariance += block.T @ block
        covariance /= n
        eigenvalues, eigenvectors = eigh(covariance, check_finite=False)  # ascending
        dim = neco_principal_dim(eigenvalues, self.dim)
        self.mean_, self.scale_ = mean, scale
        self.components_ = np.ascontiguousarray(eigenvectors[:, ::-1][:, :dim])
        self.explained_variance_ = np.clip(eigenvalues[::-1], 0.0, None)
        self.dim_ = dim

    def _score(self, features: Features) -> np.ndarray:
        self._check_logits(features, "score")
        logits = features.logits if self.max_logit else None
        return neco_score(features.layer(PENULTIMATE), self.mean_, self.scale_, self.components_, logits)
