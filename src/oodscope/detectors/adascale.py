"""AdaSCALE: SCALE with a per-sample percentile, set by how far a small input perturbation moves the largest
activations."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np

from .._params import Constraint, Interval, Options, validate_params
from ..features import Features
from ..losses import MaxLogit, Negated
from ..needs import Needs, Perturbation, Unperturbed
from ._layerwise import iter_row_blocks
from .base import Detector
from .energy import energy_score

__all__ = [
    "AdaSCALE",
    "SmallestGradientElements",
    "adascale_direction",
    "adascale_percentiles",
    "adascale_ratio",
    "adascale_score",
    "adascale_shift",
]

PENULTIMATE = "penultimate"


class _PercentileRange(Constraint):
    """A pair ``(p_min, p_max)`` of real numbers with 0 <= p_min < p_max < 100."""

    def is_satisfied_by(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            return False
        if not all(isinstance(p, numbers.Real) and not isinstance(p, bool) for p in value):
            return False
        low, high = (float(p) for p in value)
        return math.isfinite(low) and math.isfinite(high) and 0.0 <= low < high < 100.0

    def describe(self) -> str:
        return "a pair (p_min, p_max) of floats with 0 <= p_min < p_max < 100"

    def invalid_examples(self) -> list[Any]:
        return [(85.0, 60.0), (60.0, 60.0), (-1.0, 85.0), (60.0, 100.0), (60.0,), 85.0, "60,85", None,
                (60.0, float("nan")), (True, 85.0)]  # fmt: skip


_K = Interval(float, 0, 100, closed="right")
_CONSTRAINTS = {
    "variant": Options(("a", "l")),
    "percentile": _PercentileRange(),
    "k1": _K,
    "k2": _K,
    "lam": Interval(float, 0, None, closed="left"),
    "o": Interval(float, 0, 1, closed="right"),
    "eps": Interval(float, 0, None, closed="left"),
}


def _extreme_mask(values: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Boolean [N, n]: True at the k largest (or smallest) entries of each row; on a tie at the k-th value,
    the entries of lowest index first (what a stable sort would pick), so the choice is deterministic."""
    v = -values if largest else values
    n = v.shape[1]
    if k >= n:
        return np.ones(v.shape, dtype=bool)
    kth = np.partition(v, k - 1, axis=1)[:, k - 1 : k]
    mask = v < kth
    at = v == kth
    need = k - mask.sum(axis=1)
    tied = np.flatnonzero(at.sum(axis=1) > need)
    if tied.size:  # only rows with surplus ties need the cumulative count
        at[tied] &= np.cumsum(at[tied], axis=1) <= need[tied, None]
    return mask | at


def adascale_direction(gradient: Any, fraction: float = 0.05) -> np.ndarray:
    """AdaSCALE's step direction, of the gradient's shape [B, ...]: ``sign(g) ⊙ M``, where ``M`` is 1 on the
    ``max(1, int(n · fraction))`` elements of smallest ``|g|`` of each sample (over all its n elements; on
    a tie, those of lowest index first) and 0 elsewhere.

    >>> adascale_direction(np.array([[0.5, -0.1, 2.0, 0.2]]), fraction=0.5).tolist()
    [[0.0, -1.0, 0.0, 1.0]]
    """
    validate_params("adascale_direction", {"o": fraction}, {"o": _CONSTRAINTS["o"]})
    gradient = np.asarray(gradient)
    if gradient.ndim < 2:
        raise ValueError(
            f"adascale_direction expects a batch of gradients [B, ...]; got shape {gradient.shape}."
        )
    flat = gradient.reshape(len(gradient), -1)
    n = flat.shape[1]
    if n == 0:
        return np.zeros(gradient.shape, dtype=np.result_type(gradient.dtype, np.float32))
    count = max(1, int(n * fraction))  # the official count, int(C·H·W·o), at least one element
    mask = _extreme_mask(np.abs(flat), count, largest=False)
    direction = np.sign(flat).astype(np.result_type(gradient.dtype, np.float32)) * mask
    return direction.reshape(gradient.shape)


@dataclasses.dataclass(frozen=True)
class SmallestGradientElements:
    """The direction of AdaSCALE's step (:func:`adascale_direction`), a :class:`~oodscope.needs.Perturbation`
    ``direction``: hashable, so that AdaSCALEs of equal eps and ``fraction`` (o) share one gradient pass."""

    fraction: float = 0.05

    def __call__(self, gradient: np.ndarray) -> np.ndarray:
        return adascale_direction(gradient, self.fraction)


def _count(dim: int, k: float) -> int:
    # the official count of "the top k %": int(D · k / 100), truncated; at least one unit here
    return max(1, int(dim * k / 100))


def _pair(features: Any, perturbed: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, moved = np.asarray(features), np.asarray(perturbed)
    for array in (a, moved):
        if array.dtype.kind not in "biuf" or array.ndim != 2 or array.shape[1] == 0:
            raise ValueError(
                f"{name} expects real-valued features [n_samples, n_features] with at least one feature; got "
                f"shape {array.shape} and dtype {array.dtype}."
            )
    if a.shape != moved.shape:
        raise ValueError(
            f"{name}: the features before ({a.shape}) and after ({moved.shape}) the perturbation must have "
            "the same shape."
        )
    return a, moved


def adascale_shift(
    features: Any, perturbed: Any, k1: float = 1.0, k2: float = 5.0, lam: float = 10.0
) -> np.ndarray:
    """AdaSCALE's OODness estimate Q, float64 [N]: over the top-k1 % units of a (the features, by value),
    the sum of relu(ã) (the features of the perturbed input); plus λ times, over the top-k2 % units of a,
    the sum of the shifts |a − ã|. A "top-k %" is int(D·k/100) units, at least one; on a tie, the units of
    lowest index first.

    >>> adascale_shift([[3.0, 1.0, 0.0, 2.0]], [[2.5, 1.0, 0.0, 2.5]], k1=25, k2=50, lam=10.0)  # 2.5 + 10·1
    array([12.5])
    """
    validate_params(
        "adascale_shift",
        {"k1": k1, "k2": k2, "lam": lam},
        {name: _CONSTRAINTS[name] for name in ("k1", "k2", "lam")},
    )
    a, moved = _pair(features, perturbed, "adascale_shift")
    n, dim = a.shape
    top1, top2 = _count(dim, k1), _count(dim, k2)
    shift = np.empty(n)
    for rows in iter_row_blocks(n, dim):
        block, after = a[rows].astype(np.float64), moved[rows].astype(np.float64)
        correction = np.where(_extreme_mask(block, top1, largest=True), np.maximum(after, 0.0), 0.0)
        moved_by = np.where(_extreme_mask(block, top2, largest=True), np.abs(block - after), 0.0)
        shift[rows] = correction.sum(axis=1) + lam * moved_by.sum(axis=1)
    return shift


def adascale_percentiles(shift: Any, fit_shifts: Any, percentile: Any = (60.0, 85.0)) -> np.ndarray:
    """The per-sample percentile p, float64 [N]: ``p_min + (1 − F(Q)) · (p_max − p_min)``, with F the
    empirical CDF of the fit samples' Q (``F(q)`` = the share of fit values <= q, as statsmodels' ``ECDF``).

    >>> adascale_percentiles([0.5, 2.0, 9.0], fit_shifts=[1.0, 2.0, 3.0, 4.0], percentile=(60, 80))
    array([80., 70., 60.])
    """
    validate_params(
        "adascale_percentiles", {"percentile": percentile}, {"percentile": _CONSTRAINTS["percentile"]}
    )
    support = np.sort(np.asarray(fit_shifts, dtype=np.float64).ravel())
    if support.size == 0:
        raise ValueError("adascale_percentiles needs the Q of at least one fit sample; fit_shifts is empty.")
    low, high = (float(p) for p in percentile)
    cdf = np.searchsorted(support, np.asarray(shift, dtype=np.float64), side="right") / support.size
    return low + (1.0 - cdf) * (high - low)


def adascale_ratio(features: Any, percentiles: Any) -> np.ndarray:
    """SCALE's ratio with one percentile per sample, float64 [N]: r = s1 / s2, with s1 the sum of relu(a)
    and s2 the sum of its k = D − round(D·p/100) largest entries (at least one; rounded half to even, as
    ``torch.round`` in the official code). A row without a positive activation gets r = 0.

    >>> adascale_ratio([[4.0, 0.0, 1.0, -1.0], [1.0, 1.0, 1.0, 1.0]], [75.0, 50.0])  # 5/4, 4/2
    array([1.25, 2.  ])
    """
    h = np.asarray(features)
    if h.dtype.kind not in "biuf" or h.ndim != 2 or h.shape[1] == 0:
        raise ValueError(
            f"adascale_ratio expects real-valued features [n_samples, n_features] with at least one feature; "
            f"got shape {h.shape} and dtype {h.dtype}."
        )
    p = np.asarray(percentiles, dtype=np.float64)
    n, dim = h.shape
    if p.shape != (n,) or not (np.all(p >= 0) and np.all(p < 100)):
        raise ValueError(
            f"adascale_ratio expects one percentile in [0, 100) per sample ({n}); got shape {p.shape}."
        )
    kept = np.maximum(1, dim - np.round(dim * p / 100.0).astype(np.int64))
    ratio = np.empty(n)
    for rows in iter_row_blocks(n, dim):
        block = np.maximum(h[rows].astype(np.float64), 0.0)
        descending = -np.sort(-block, axis=1)
        top = np.cumsum(descending, axis=1)[np.arange(len(block)), kept[rows] - 1]
        total = block.sum(axis=1)
        ratio[rows] = np.divide(total, top, out=np.zeros_like(total), where=top > 0)
    return ratio


def adascale_score(
    features: Any,
    perturbed: Any,
    head_weight: Any,
    head_bias: Any,
    fit_shifts: Any,
    variant: str = "a",
    percentile: Any = (60.0, 85.0),
    k1: float = 1.0,
    k2: float = 5.0,
    lam: float = 10.0,
) -> np.ndarray:
    """AdaSCALE's score, higher = more OOD: ``−log Σ_c exp(z'_c)``, float64 [N].

    With a the features and ã those of the perturbed inputs, Q from :func:`adascale_shift`, p from
    :func:`adascale_percentiles` (against ``fit_shifts``, the fit samples' Q) and r from
    :func:`adascale_ratio`: ``z' = W (a · e^r) + b`` (variant "a") or ``z' = r² · (W a + b)`` (variant "l").

    Q = 3 is the largest fit value: F = 1, p = p_min = 60, the top 2 units hold 4 of 5, r = 1.25:

    >>> a, moved = [[3.0, 1.0, 0.0, 1.0]], [[3.0, 1.0, 0.0, 1.0]]
    >>> weight, bias = np.eye(4), np.zeros(4)
    >>> adascale_score(a, moved, weight, bias, fit_shifts=[3.0], variant="l", k1=25, k2=25).round(4)
    array([-4.7802])
    """
    validate_params("adascale_score", {"variant": variant}, {"variant": _CONSTRAINTS["variant"]})
    a, moved = _pair(features, perturbed, "adascale_score")
    weight = np.asarray(head_weight, dtype=np.float64)
    bias = np.asarray(head_bias, dtype=np.float64)
    if weight.ndim != 2 or weight.shape[1] != a.shape[1] or bias.shape != (weight.shape[0],):
        raise ValueError(
            "adascale_score expects the head's weight [C, D] and bias [C] for features of width "
            f"{a.shape[1]}; got shapes {weight.shape} and {bias.shape}."
        )
    p = adascale_percentiles(adascale_shift(a, moved, k1, k2, lam), fit_shifts, percentile)
    ratio = adascale_ratio(a, p)
    product = a.astype(np.float64) @ weight.T
    with np.errstate(over="ignore", invalid="ignore"):
        if variant == "a":
            logits = np.exp(ratio)[:, None] * product + bias
        else:
            logits = (ratio**2)[:, None] * (product + bias)
    if not np.isfinite(logits).all():
        raise ValueError(
            "AdaSCALE's rescaled logits overflow float64 for some samples (their activations are spread over "
            "many units, so r is large); lower the percentile range."
        )
    return energy_score(logits)


class AdaSCALE(Detector):
    """AdaSCALE: SCALE whose percentile adapts to each sample, from how far a small input perturbation moves
    its largest activations (variants A, on the activations, and L, on the logits).

    Regmi, "AdaSCALE: Adaptive Scaling for OOD Detection", arXiv 2503.08023, 2025.
    https://arxiv.org/abs/2503.08023 (code: https://github.com/sudarshanregmi/AdaSCALE)

    With a the penultimate features of x, g = ∇ₓ max_c z_c(x) and M the mask of the fraction o of the input's
    elements of smallest |g| (over all of a sample's elements), the input is moved where the model is least
    sensitive, and ã are the features of the moved input:

        x̃ = x + ε · sign(g) ⊙ M,   ã = a(x̃),
        Q(x) = Σ_{i ∈ top-k1 %(a)} relu(ã_i) + λ · Σ_{i ∈ top-k2 %(a)} |a_i − ã_i|,
        p(x) = p_min + (1 − F(Q(x))) · (p_max − p_min),   F the ECDF of Q over the fit data,
        r(x) = Σ_i relu(a_i) / Σ_{top (100 − p(x)) % of relu(a)},
        A: z' = W (a · e^{r(x)}) + b,   L: z' = r(x)² · (W a + b),
        S(x) = −log Σ_c exp(z'_c).

    A likely-ID sample (small Q) gets a high percentile, so r and the scaling are large; a likely-OOD one
    gets a low percentile and little scaling. The "top k %" of Q is ``int(D·k/100)`` units (the official
    truncation), at least one; the top (100 − p) % of r is ``D − round(D·p/100)`` units (rounded half to
    even, as ``torch.round`` in the official ``ada_scale``), at least one; ties go to the lowest index. A row
    without a positive activation gets r = 0 (the official code divides 0 by 0).

    Where the official code and OpenOOD disagree, one rule is used throughout:

    - k1 selects the units of the relu(ã) term and k2 those of the shift term, at fit and at score time
      alike, with the post-erratum defaults k1 = 1, k2 = 5 (the official README's "k1 <=> k2" erratum).
      That is the official repository's test-time formula; its fit-time ECDF swaps the two k's, which makes
      F the distribution of another statistic than the one it is read at. OpenOOD's configs still carry the
      pre-erratum k1 = 5, k2 = 1: pass those to reproduce OpenOOD.
    - r is computed from relu(a), and variant A multiplies the raw a (as the official ``AdaScaleANet``);
      for post-ReLU features the two are the same.
    - The ECDF is fitted on all the fit data given (OpenOOD draws 5 000 random ID-val samples; pass such a
      subset to reproduce it). L scales the logits W a + b of the original input, bias included.
    - ε is in the model's input units (the official 0.5, applied to normalised inputs), and the step moves
      ``max(1, int(n·o))`` elements of each input of n elements (the official ``int(C·H·W·o)``, at least
      one). A model with several inputs has each moved along its own gradient.

    Cost: with ``eps > 0`` this needs the model: per batch one forward and one backward pass for g and a
    second forward pass over the moved inputs (``fit(model, fit_data)`` then ``score(data)``, on any
    backend that provides gradients). That pass gives a (``Unperturbed("penultimate")``, from the forward the
    gradient is taken in) and ã (``"penultimate"``); ``info["logits"]`` holds the logits of the moved inputs.
    ``evaluate`` shares the pass between all AdaSCALEs of equal eps and o, A and L and every setting of the
    search space alike. With ``eps=0`` nothing is moved and it scores precomputed
    :class:`~oodscope.Features`: ã is the ``"penultimate"`` layer and a is ``Unperturbed("penultimate")``
    when the Features hold it, else the same layer (then Q is the top-k1 % sum of relu(a)).

    Parameters
    ----------
    variant : {"a", "l"}, default="a"
        "a": AdaSCALE-A (scale the activations by e^r); "l": AdaSCALE-L (scale the logits by r²).
    percentile : pair of floats, default=(60, 85)
        (p_min, p_max), 0 <= p_min < p_max < 100. p_min = 60 is the official README's; p_max = 85 is
        OpenOOD's default (the official README tunes only p_max; its ResNet-50 best is (80, 85)).
    k1 : float, default=1
        The relu(ã) term sums over the top k1 % units of a, k1 in (0, 100].
    k2 : float, default=5
        The shift term sums over the top k2 % units of a, k2 in (0, 100].
    lam : float, default=10
        λ >= 0, the weight of the shift term (``lmbda`` in the official code; ``lambda_`` would read as
        learned state, which oodscope names with a trailing underscore).
    o : float, default=0.05
        The fraction of the input's elements moved, in (0, 1].
    eps : float, default=0.5
        The step ε >= 0, in the model's input units.

    Attributes
    ----------
    fit_shifts_ : ndarray of shape [n_fit], float64
        Q of the fit samples, sorted: F(q) is ``searchsorted(fit_shifts_, q, "right") / n_fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> h = np.array([[3.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    >>> features = Features(layers={"penultimate": h}, head_weight=np.eye(4))
    >>> AdaSCALE(eps=0.0, k1=25).fit(features).score(features).scores.round(3)
    array([ -8.16 , -55.984])
    """

    requires = frozenset({"features", "head"})
    default_layers = (PENULTIMATE,)
    _parameter_constraints = _CONSTRAINTS
    _state_shapes = {"fit_shifts_": ("F",)}
    #: OpenOOD's sweep (``adascale_a.yml`` / ``adascale_l.yml``, APS mode: tuned on OOD validation data): 36
    #: (p_min, p_max) pairs; it holds the official README's p_max-only sweep (p_min = 60). Only the array
    #: math after the pass changes, so all 36 share one gradient pass per dataset.
    search_space = {
        "percentile": [
            (float(low), float(high))
            for low in (60, 65, 70, 75, 80, 85, 90, 95)
            for high in (65, 70, 75, 80, 85, 90, 95, 99)
            if high > low
        ]
    }
    _features_only_params = {"eps": 0.0}

    def __init__(
        self,
        variant: str = "a",
        percentile: Any = (60.0, 85.0),
        k1: float = 1.0,
        k2: float = 5.0,
        lam: float = 10.0,
        o: float = 0.05,
        eps: float = 0.5,
    ) -> None:
        self.variant = variant
        self.percentile = percentile
        self.k1 = k1
        self.k2 = k2
        self.lam = lam
        self.o = o
        self.eps = eps

    def needs(self, layers: Any = None) -> Needs:
        """With ``eps > 0``, the penultimate features before (``Unperturbed``) and after the inputs are moved
        up the max logit on their least sensitive elements: a gradient pass, shared by AdaSCALEs (A and L)
        of equal eps and o."""
        needs = super().needs(layers)
        if self.eps == 0:
            return needs
        move = Perturbation(
            loss=Negated(MaxLogit()),
            step=float(self.eps),
            direction=SmallestGradientElements(fraction=float(self.o)),
        )
        before = tuple(Unperturbed(layer) for layer in needs.layers)
        return dataclasses.replace(needs, layers=needs.layers + before, perturbation=move)

    def _before_and_after(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        """(a, ã): with eps > 0 both come from the perturbed pass; with eps = 0, a is ``Unperturbed`` when
        the Features hold it, else ã itself (nothing was moved)."""
        moved = features.layer(PENULTIMATE)
        if self.eps > 0:
            return features.layer(Unperturbed(PENULTIMATE)), moved
        return features.layers.get(Unperturbed(PENULTIMATE), moved), moved

    def _fit(self, features: Features) -> None:
        shift = adascale_shift(*self._before_and_after(features), self.k1, self.k2, self.lam)
        self.fit_shifts_ = np.sort(shift)

    def _score(self, features: Features) -> np.ndarray:
        a, moved = self._before_and_after(features)
        return adascale_score(
            a,
            moved,
            features.head_weight,
            features.head_bias,
            self.fit_shifts_,
            self.variant,
            self.percentile,
            self.k1,
            self.k2,
            self.lam,
        )
