"""KL matching (KLM): KL divergence of the posterior to the nearest class-template posterior."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..features import Features
from ._layerwise import iter_row_blocks, map_row_blocks
from ._logits import as_logits, log_softmax
from .base import Detector

__all__ = ["KLM", "klm_score", "klm_templates"]

#: added to both distributions inside the logs, so that zeros (one-hot templates) give finite divergences
EPS = 1e-6


def klm_templates(logits: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per class k, the mean softmax posterior of the samples predicted as k (argmax of the logits),
    float64 [C, C] (row k is d_k), and how many samples each averages [C]. A class never predicted gets the
    one-hot template e_k.

    >>> templates, counts = klm_templates([[2.0, 0.0], [0.0, 0.0], [1.0, 3.0]])
    >>> templates.round(4), counts
    (array([[0.6904, 0.3096],
           [0.1192, 0.8808]]), array([2, 1]))
    """
    z = as_logits(logits)
    n, n_classes = z.shape
    sums = np.zeros((n_classes, n_classes))
    counts = np.zeros(n_classes, dtype=np.int64)
    for rows in iter_row_blocks(n, n_classes):
        block = z[rows]
        predicted = np.argmax(block, axis=1)
        order = np.argsort(predicted, kind="stable")
        predicted = predicted[order]
        probabilities = np.exp(log_softmax(block[order]))
        starts = np.flatnonzero(np.r_[True, predicted[1:] != predicted[:-1]])
        sums[predicted[starts]] += np.add.reduceat(probabilities, starts, axis=0)
        counts += np.bincount(predicted, minlength=n_classes)
    templates = np.eye(n_classes)
    seen = counts > 0
    templates[seen] = sums[seen] / counts[seen, None]
    return templates, counts


def klm_score(logits: Any, templates: Any) -> np.ndarray:
    """KLM score, higher = more OOD: ``min_k KL(p ‖ d_k)`` with p = softmax(z) and d_k the rows of
    ``templates`` [K, C], float64 [N].

    The divergence is ``Σ_c p_c (log(p_c + ε) − log(d_kc + ε))`` with ε = 1e-6 (:data:`EPS`), so that
    templates with zeros give finite values; the minimum over k is one matrix product per block of rows.

    >>> klm_score([[2.0, 0.0], [0.0, 2.0]], templates=[[0.88, 0.12], [0.5, 0.5]]).round(4)
    array([0.    , 0.3278])
    """
    z = as_logits(logits)
    templates = np.asarray(templates, dtype=np.float64)
    if templates.ndim != 2 or templates.shape[1] != z.shape[1]:
        raise ValueError(
            f"klm_score: the templates have shape {templates.shape}, but the logits have {z.shape[1]} "
            "classes; use templates [K, C] fitted on the logits of the same model."
        )
    log_templates = np.log(templates + EPS)

    def divergences(block: np.ndarray) -> np.ndarray:
        p = np.exp(log_softmax(block))
        own = np.einsum("ij,ij->i", p, np.log(p + EPS))
        return own - (p @ log_templates.T).max(axis=1)

    return map_row_blocks(z, divergences)


class KLM(Detector):
    """KL matching: the KL divergence of the posterior to the nearest class template, higher = more OOD.

    Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt & Song, "Scaling Out-of-Distribution
    Detection for Real-World Settings", ICML 2022. https://arxiv.org/abs/1911.11132

    With p = softmax(z), the template of class k is the mean posterior of the fit samples that the model
    predicts as k, d_k = mean{p(x') : argmax p(x') = k} (true labels are not used). The paper's confidence
    is −min_k KL(p ‖ d_k), so the score is

        S(x) = min_k Σ_c p_c(x) (log(p_c(x) + ε) − log(d_kc + ε)),   ε = 1e-6.

    A class never predicted on the fit data gets the one-hot template e_k. The ε (as in the Neural Relation
    Graph code's KLM baseline, snu-mllab/Neural-Relation-Graph) keeps the divergence to such templates
    finite; OpenOOD's ``scipy.stats.entropy`` gives ``inf`` there instead, which the minimum then skips: the
    same ranking up to the ε. pytorch-ood (before 0.4.0) compares with the predicted class's template only,
    KL(p ‖ d_ŷ), instead of the minimum over all k that the paper defines.

    No hyperparameters; OpenOOD fits on the ID validation split and sweeps nothing (``search_space = {}``,
    no APS).

    Attributes
    ----------
    templates_ : ndarray [C, C]
        Row k is d_k.
    counts_ : ndarray [C]
        How many fit samples were predicted as each class (0: one-hot template).

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> fit = Features(logits=np.array([[3.0, 0.0], [4.0, 0.0], [0.0, 3.0]]))
    >>> det = KLM().fit(fit)
    >>> det.counts_
    array([2, 1])
    >>> det.score(Features(logits=np.array([[3.5, 0.0], [0.0, 0.0]]))).scores.round(3)
    array([0.   , 0.855])
    """

    requires = frozenset({"logits"})
    search_space: dict[str, list[Any]] = {}
    _state_shapes = {"templates_": ("C", "C"), "counts_": ("C",)}

    def __init__(self) -> None:
        pass

    def _fit(self, features: Features) -> None:
        self.templates_, self.counts_ = klm_templates(features.logits)

    def _score(self, features: Features) -> np.ndarray:
        return klm_score(features.logits, self.templates_)
