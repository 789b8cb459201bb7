"""fDBD: fast decision-boundary distance, regularised by the distance to the mean of the fit features."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._params import Options
from ..features import Features
from ._layerwise import column_mean, iter_row_blocks
from ._logits import as_logits
from .base import Detector

__all__ = ["FDBD", "fdbd_boundary_norms", "fdbd_score"]

PENULTIMATE = "penultimate"
#: the smallest feature-space normaliser ‖h − μ‖ (or ‖h‖), so that a sample at the centre scores finitely
MIN_NORM = 1e-8


def fdbd_boundary_norms(head_weight: Any) -> np.ndarray:
    """‖w_p − w_c‖ for every pair of rows of the head's weight W [C, D], float64 [C, C], diagonal 1.

    The distance of h to the decision boundary between classes p and c is |z_p − z_c| / ‖w_p − w_c‖. The
    norms come from one Gram product; pairs whose squared distance is small against the rows' squared
    norms (where that would lose digits) are recomputed from the differences. Two identical rows have no
    boundary: their entry is ``inf``, which drops the pair from the score.

    >>> fdbd_boundary_norms([[3.0, 0.0], [0.0, 4.0], [3.0, 0.0]])
    array([[ 1.,  5., inf],
           [ 5.,  1.,  5.],
           [inf,  5.,  1.]])
    """
    w = np.asarray(head_weight, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"fdbd_boundary_norms expects the head's weight [C, D]; got shape {w.shape}.")
    squared = np.einsum("ij,ij->i", w, w)
    total = squared[:, None] + squared[None, :]
    distances = np.maximum(total - 2.0 * (w @ w.T), 0.0)
    close_rows, close_cols = np.nonzero(distances < 1e-4 * total)
    if close_rows.size:
        differences = w[close_rows] - w[close_cols]
        distances[close_rows, close_cols] = np.einsum("ij,ij->i", differences, differences)
    norms = np.sqrt(distances)
    norms[norms == 0.0] = np.inf
    np.fill_diagonal(norms, 1.0)
    return norms


def fdbd_score(features: Any, logits: Any, boundary_norms: Any, mean: Any = None) -> np.ndarray:
    """fDBD score, higher = more OOD: ``−Σ_{c≠ŷ} (|z_ŷ − z_c| / ‖w_ŷ − w_c‖) / ‖h − μ‖``, float64 [N].

    ŷ = argmax z; ``boundary_norms`` [C, C] from :func:`fdbd_boundary_norms`; ``mean`` μ [D] the mean of
    the fit features, or None to divide by ‖h‖ instead. The normaliser is at least 1e-8 (:data:`MIN_NORM`).

    >>> fdbd_score([[3.0, 4.0]], [[2.0, 0.0]], boundary_norms=[[1.0, 2.0], [2.0, 1.0]])  # (2 / 2) / 5
    array([-0.2])
    """
    z = as_logits(logits)
    h = np.asarray(features)
    norms = np.asarray(boundary_norms, dtype=np.float64)
    n, n_classes = z.shape
    if h.ndim != 2 or len(h) != n or norms.shape != (n_classes, n_classes):
        raise ValueError(
            "fdbd_score expects features [N, D], logits [N, C] and boundary norms [C, C]; got shapes "
            f"{h.shape}, {z.shape} and {norms.shape}."
        )
    centre = None if mean is None else np.asarray(mean, dtype=np.float64)
    if centre is not None and centre.shape != (h.shape[1],):
        raise ValueError(
            f"fdbd_score: the mean has shape {centre.shape}, but the features have {h.shape[1]} dimensions; "
            "use the mean of the fit features of the same layer."
        )
    out = np.empty(n)
    for rows in iter_row_blocks(n, max(n_classes, h.shape[1])):
        block = z[rows]
        predicted = np.argmax(block, axis=1)
        top = block[np.arange(len(block)), predicted]
        distances = ((top[:, None] - block) / norms[predicted]).sum(axis=1)
        centred = h[rows].astype(np.float64)
        if centre is not None:
            centred -= centre
        normaliser = np.maximum(np.sqrt(np.einsum("ij,ij->i", centred, centred)), MIN_NORM)
        out[rows] = -distances / normaliser
    return out


class FDBD(Detector):
    """fDBD: the summed distance to the decision boundaries, over the distance from the fit features' mean.

    Liu & Qin, "Fast Decision Boundary based Out-of-Distribution Detector", ICML 2024.
    https://arxiv.org/abs/2312.11536

    With h the penultimate features (the head's input), z = Wh + b, ŷ = argmax z, the feature-space distance
    from h to the decision boundary between ŷ and class c is |z_ŷ − z_c| / ‖w_ŷ − w_c‖. Summed over the
    other classes and divided by the distance of h from μ, the mean of the fit features, it is the paper's
    confidence (large for ID); with higher meaning more OOD:

        S(x) = −Σ_{c≠ŷ} (|z_ŷ(x) − z_c(x)| / ‖w_ŷ − w_c‖) / ‖h(x) − μ‖.

    The C x C boundary norms are computed once at fit, from the head; scoring costs O(C) per sample. The
    official code sums over the classes, as here; pytorch-ood divides the sum by C − 1 (the same ranking).
    Two classes with identical weight rows have no boundary between them and are left out of the sum
    (with a warning at fit); the normaliser is at least 1e-8, as in pytorch-ood (the paper and OpenOOD
    have no epsilon).

    Parameters
    ----------
    distance_as_normalizer : bool, default=True
        True divides by ‖h − μ‖ (the paper); False by ‖h‖, the alternative OpenOOD's sweep adds (its
        docstring notes that this diverges slightly from the paper). OpenOOD tunes this choice on OOD
        validation data (APS mode): ``search_space = {"distance_as_normalizer": [True, False]}``. OpenOOD
        and the official code take μ over the ID training set.

    Attributes
    ----------
    mean_ : ndarray [D]
        μ, the mean of the fit features.
    boundary_norms_ : ndarray [C, C]
        ‖w_p − w_c‖, diagonal 1 (``inf`` for identical rows).

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> w, b = np.array([[1.0, 0.0], [0.0, 1.0]]), np.zeros(2)
    >>> h = np.array([[2.0, 0.0], [0.0, 2.0]])
    >>> det = FDBD().fit(Features(logits=h @ w.T + b, layers={"penultimate": h}, head_weight=w, head_bias=b))
    >>> det.mean_
    array([1., 1.])
    >>> test = np.array([[3.0, 0.0], [1.2, 1.0]])
    >>> det.score(Features(logits=test @ w.T, layers={"penultimate": test}, head_weight=w)).scores.round(4)
    array([-0.9487, -0.7071])
    """

    requires = frozenset({"features", "logits", "head"})
    default_layers = (PENULTIMATE,)
    search_space = {"distance_as_normalizer": [True, False]}
    _parameter_constraints = {"distance_as_normalizer": Options([True, False])}
    _state_shapes = {"mean_": ("D",), "boundary_norms_": ("C", "C")}

    def __init__(self, distance_as_normalizer: bool = True) -> None:
        self.distance_as_normalizer = distance_as_normalizer

    def _state_layer(self) -> str:
        return PENULTIMATE

    def _fit(self, features: Features) -> None:
        h = features.layer(PENULTIMATE)
        self.mean_ = column_mean(h)
        self.boundary_norms_ = fdbd_boundary_norms(features.head_weight)
        same = np.argwhere(np.triu(np.isinf(self.boundary_norms_)))
        if same.size:
            pairs = [tuple(pair) for pair in same[:5].tolist()]
            warnings.warn(
                f"FDBD: {len(same)} pair(s) of classes have identical weight rows in the head (e.g. "
                f"{pairs}), so no decision boundary between them; they are left out of the score.",
                stacklevel=4,
            )

    def _score(self, features: Features) -> np.ndarray:
        mean = self.mean_ if self.distance_as_normalizer else None
        return fdbd_score(features.layer(PENULTIMATE), features.logits, self.boundary_norms_, mean)
