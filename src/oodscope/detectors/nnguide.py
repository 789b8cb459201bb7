"""Nearest-neighbour guidance (NNGuide): the energy score scaled by its agreement with an ID bank."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from .. import neighbors
from .._params import Interval
from ..features import Features, all_finite
from ._layerwise import iter_row_blocks
from ._logits import as_logits, logsumexp
from .base import Detector

__all__ = ["NNGuide", "content_sample", "nnguide_bank", "nnguide_score", "top_k_mean_inner_product"]

PENULTIMATE = "penultimate"


def nnguide_bank(features: Any, logits: Any) -> np.ndarray:
    """The guidance bank of NNGuide: each row's unit vector times its energy, ``ĥ_i · log Σ_c exp z_ic``,
    as float32 [N, D] (zero rows stay zero).

    >>> nnguide_bank([[3.0, 4.0]], [[0.0, 0.0]]).round(4)
    array([[0.4159, 0.5545]], dtype=float32)
    """
    h = np.asarray(features)
    z = as_logits(logits)
    if h.ndim != 2 or len(h) != len(z):
        raise ValueError(
            f"nnguide_bank expects features [N, D] and logits [N, C] of the same samples; got shapes "
            f"{h.shape} and {z.shape}."
        )
    energy = logsumexp(z)
    out = np.empty(h.shape, dtype=np.float32)
    for rows in iter_row_blocks(len(h), h.shape[1]):  # in float64, rounded once
        out[rows] = neighbors._as_float64(h[rows], normalize=True) * energy[rows, None]
    return out


def nnguide_score(features: Any, logits: Any, bank: Any, k: int = 10) -> np.ndarray:
    """NNGuide score, higher = more OOD: ``−log Σ_c exp z_c · (1/k) Σ_{top k i} ⟨ĥ, B_i⟩``, float64 [N].

    ``ĥ = h / ‖h‖`` and ``B`` [B, D] is the bank of :func:`nnguide_bank`; the guidance is the mean of the k
    largest inner products of ĥ with the bank rows (:func:`top_k_mean_inner_product`), 1 ≤ k ≤ B.

    >>> bank = nnguide_bank([[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]])
    >>> nnguide_score([[2.0, 0.0], [1.0, 1.0]], [[2.0, 0.0], [1.0, 1.0]], bank, k=1).round(4)
    array([-4.5238, -2.5464])
    """
    z = as_logits(logits)
    h = np.asarray(features)
    if h.ndim != 2 or len(h) != len(z):
        raise ValueError(
            f"nnguide_score expects features [N, D] and logits [N, C] of the same samples; got shapes "
            f"{h.shape} and {z.shape}."
        )
    return -logsumexp(z) * top_k_mean_inner_product(h, bank, k)


def top_k_mean_inner_product(queries: Any, bank: Any, k: int) -> np.ndarray:
    """Mean of the k largest inner products ``⟨q / ‖q‖, b_i⟩`` of each L2-normalised query with the rows of
    ``bank``, float64 [M] (a zero query gives 0).

    The exact search of :mod:`oodscope.neighbors`, on inner products instead of distances: float32 matrix
    products of query blocks with tiles of the bank (numpy's BLAS, one lane per BLAS thread), a partial
    selection of each tile's candidates, then the k + 2 best re-measured in float64 and the k largest of
    those averaged, so float32 rounding, which can only reorder near-ties, does not change the result.
    Memory: one similarity tile of ``neighbors.SIMILARITY_BLOCK_BYTES`` per thread.

    >>> top_k_mean_inner_product([[2.0, 0.0]], [[1.0, 0.0], [0.5, 0.5], [-1.0, 0.0]], k=2)
    array([0.75])
    """
    queries = np.asarray(queries)
    refs = np.ascontiguousarray(bank, dtype=np.float32)
    if queries.ndim != 2 or refs.ndim != 2 or queries.shape[1] != refs.shape[1]:
        raise ValueError(
            f"queries [M, D] and bank [B, D] must share D; got shapes {queries.shape} and {refs.shape}."
        )
    for name, array in (("queries", queries), ("bank", refs)):
        if not all_finite(array):
            raise ValueError(f"The {name} hold NaN or inf; nearest neighbours need finite values.")
    n_refs = refs.shape[0]
    if not 1 <= k <= n_refs:
        raise ValueError(f"k={k} nearest neighbours need 1 <= k <= {n_refs} (the rows of the bank).")
    keep = min(k + neighbors.WINDOW, n_refs)
    search = neighbors._ExactSearch(refs, keep, queries.shape[0], shifted=False)
    # rows of candidates re-measured at once: their gathered bank rows stay within about 16 MB
    remeasure_rows = max(1, min(neighbors.REMEASURE_ROWS, (1 << 24) // (8 * keep * refs.shape[1])))

    def mean_top_k(block: np.ndarray) -> np.ndarray:
        q64 = neighbors._as_float64(block, normalize=True)
        _, columns = search.best(q64.astype(np.float32))
        out = np.empty(len(block))
        for part in neighbors._blocks(len(block), remeasure_rows):
            candidates = refs[columns[part]].astype(np.float64)  # [rows, keep, D]
            exact = np.einsum("ijd,id->ij", candidates, q64[part])
            exact.sort(axis=1)
            out[part] = exact[:, keep - k :].mean(axis=1)
        return out

    return search.map(queries, mean_top_k)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (wrapping arithmetic; arrays, so numpy does not warn)."""
    values = values + _GOLDEN
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def content_sample(x: Any, size: int, seed: int = 0) -> np.ndarray:
    """Indices of ``size`` rows of ``x`` [N, D] drawn like a uniform sample without replacement, but decided
    by the rows' values: the rows with the smallest seeded 64-bit hashes of their float64 bytes, in hash
    order.

    The same set of rows gives the same sample whatever their order or batching (a random generator would
    pick other rows from the same data shuffled); equal rows hash alike.

    >>> x = np.arange(12.0).reshape(6, 2)
    >>> sorted(x[content_sample(x, 3)].tolist()) == sorted(x[::-1][content_sample(x[::-1], 3)].tolist())
    True
    """
    x = np.asarray(x)
    n, dim = x.shape
    if not 1 <= size <= n:
        raise ValueError(f"content_sample draws 1 <= size <= {n} rows; got size={size}.")
    salt = _mix(np.arange(dim + 1, dtype=np.uint64) + _mix(np.array([seed % 2**64], dtype=np.uint64)))
    # odd multipliers: every bit of a value reaches the high bits of its product
    multipliers = _mix(salt[1:]) | np.uint64(1)
    hashes = np.empty(n, dtype=np.uint64)
    for rows in iter_row_blocks(n, dim):
        words = (x[rows].astype(np.float64) + 0.0).view(np.uint64)  # + 0.0 makes −0.0 hash like 0.0
        hashes[rows] = np.sum(words * multipliers, axis=1, dtype=np.uint64)
    hashes = _mix(hashes ^ salt[0])
    chosen = np.argpartition(hashes, size - 1)[:size] if size < n else np.arange(n)
    return chosen[np.argsort(hashes[chosen], kind="stable")]


class NNGuide(Detector):
    """Nearest-neighbour guidance: the energy score scaled by how well the features match an ID bank.

    Park, Jung & Teoh, "Nearest Neighbor Guidance for Out-of-Distribution Detection", ICCV 2023.
    https://arxiv.org/abs/2309.14888

    With ĥ = h / ‖h‖ the normalised penultimate features and E(x) = log Σ_c exp z_c(x) the energy
    confidence, the bank holds B_i = ĥ_i · E_i for a subset of the fit samples. The guidance G(x) is the
    mean of the k largest inner products ⟨ĥ(x), B_i⟩ (a confidence-weighted cosine similarity to the bank),
    and the paper's ID score is G(x) · E(x); negated, so higher = more OOD:

        S(x) = −E(x) · (1/k) Σ_{i ∈ top-k} ⟨ĥ(x), B_i⟩.

    The method assumes positive energies (a positive logsumexp, as for any usual classifier); with a
    negative one the bank vector points away from its sample.

    **The bank.** The paper (and its code, ``roomo7time/nnguide``) draws a random 1 % of the training set
    and uses k = 10; these are the defaults. The bank is ⌊bank_fraction · N⌋ of the N fit samples (as in
    the paper's code), and at least k of them (so k = 10 on a small fit set still averages 10
    neighbours); when N < k, k is reduced to N with a warning. The rows are drawn by
    :func:`content_sample`: a seeded hash of each row's values ranks them, which is a uniform sample that
    does not depend on the order of the fit data (a refit on the same samples shuffled gives the same
    bank). Fit on the whole training set, or on a subset with ``bank_fraction=1.0`` to choose the bank
    yourself.

    Differences from the reference implementations:

    - OpenOOD (``nnguide_postprocessor.py``) uses K = 100 and takes its 1 % bank as the first batches of the
      training loader; its sweep is K ∈ {100} with APS off, so OpenOOD tunes nothing on OOD data and
      ``search_space`` is ``{}``. Pass ``k=100`` for OpenOOD's setting (on the same 1 % bank, a wider
      neighbourhood than the paper's).
    - OpenOOD calls the bank fraction ``alpha``; its normaliser adds 1e-10 after the division (no effect
      on the ranking).
    - pytorch-ood's source versions deviated from the paper: ``nnguide.py@1d46b57`` searches a bank
      ``ĥ · E / mean(E)`` with a cosine metric, which divides the energy weighting out of the guidance;
      ``@4fbcaec`` neither normalises the features nor subsamples. Its release 0.4.0 scores by the paper's
      formula. This class follows the paper and its code.

    Parameters
    ----------
    k : int, default=10
        The number of bank neighbours averaged, k ≥ 1 (the paper's code: 10; OpenOOD: 100).
    bank_fraction : float, default=0.01
        The share of the fit samples kept in the bank, in (0, 1] (the paper and OpenOOD: 1 %).
    seed : int, default=0
        Seeds the hash that draws the bank; another seed draws another bank.

    Attributes
    ----------
    bank_ : ndarray of shape [B, D], float32
        The bank ĥ_i · E_i of the drawn fit samples.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[4.0, 0.0], [3.0, 0.5], [0.0, 4.0], [0.5, 3.0]])  # the head is the identity
    >>> fit = Features(logits=h, layers={"penultimate": h})
    >>> x = np.array([[3.0, 0.0], [0.8, 0.7]])  # like the first class; between the classes, unsure
    >>> det = NNGuide(k=2, bank_fraction=1.0).fit(fit)
    >>> det.bank_.shape, det.score(Features(logits=x, layers={"penultimate": x})).scores.round(3)
    ((4, 2), array([-10.754,  -4.095]))
    """

    requires = frozenset({"features", "logits"})
    default_layers = (PENULTIMATE,)
    _state_shapes = {"bank_": ("B", "D")}
    _parameter_constraints = {
        "k": Interval(int, 1, None),
        "bank_fraction": Interval(float, 0, 1, closed="right"),
        "seed": Interval(int, 0, None),
    }
    search_space: dict[str, list[Any]] = {}

    def __init__(self, k: int = 10, bank_fraction: float = 0.01, seed: int = 0) -> None:
        self.k = k
        self.bank_fraction = bank_fraction
        self.seed = seed

    def _state_layer(self) -> str:
        return PENULTIMATE

    def _fit(self, features: Features) -> None:
        h = features.layer(PENULTIMATE)
        n = len(h)
        if self.k > n:
            warnings.warn(
                f"NNGuide: k={self.k} is more than the {n} fit samples; the guidance averages all {n} of "
                "them. Fit on more samples (the paper's bank is 1 % of the training set).",
                stacklevel=4,
            )
        # the paper's code keeps int(α N); rounded first, as 0.29 * 100 is 28.999999999999996
        size = max(math.floor(round(self.bank_fraction * n, 9)), min(self.k, n))
        rows = content_sample(h, size, self.seed)
        self.bank_ = nnguide_bank(h[rows], features.logits[rows])

    def _score(self, features: Features) -> np.ndarray:
        return nnguide_score(
            features.layer(PENULTIMATE), features.logits, self.bank_, min(self.k, len(self.bank_))
        )
