"""WeiPer+KLD: perturbed class projections, and the divergence of per-sample activation histograms."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .._params import Interval, validate_params
from ..features import Features
from .base import Detector

__all__ = ["WeiPer", "weiper_densities", "weiper_head", "weiper_score"]

PENULTIMATE = "penultimate"
#: added to both densities before the divergence of the features' / the perturbed logits' histograms
#: (the paper's code)
EPS_FEATURES, EPS_PERTURBED = 0.01, 0.025
#: bytes of float64 working memory per block of rows
BLOCK_BYTES = 1 << 23


def weiper_head(
    head_weight: Any, n_repeats: int = 100, delta: float = 1.8, random_state: int = 0
) -> np.ndarray:
    """The perturbed class projections [R, C, D]: ``W̃_r = W + δ ‖w_c‖ ε_{r,c} / ‖ε_{r,c}‖`` row by row.

    ``ε_r`` [C, D] are standard normal draws of ``np.random.default_rng(random_state)``, taken for
    r = 1 .. R in order (the same numbers as one draw of shape [R, C, D]).

    >>> tilde = weiper_head([[3.0, 4.0]], n_repeats=2, delta=0.5)
    >>> tilde.shape, np.linalg.norm(tilde - [[3.0, 4.0]], axis=-1).round(6).tolist()
    ((2, 1, 2), [[2.5], [2.5]])
    """
    validate_params(
        "weiper_head",
        {"n_repeats": n_repeats, "delta": delta, "random_state": random_state},
        {"n_repeats": _REPEATS, "delta": _DELTA, "random_state": _SEED},
    )
    weight = np.asarray(head_weight, dtype=np.float64)
    if weight.ndim != 2:
        raise ValueError(f"weiper_head expects the head weight [C, D]; got shape {weight.shape}.")
    return _perturb(weight, n_repeats, delta, random_state)[0]


def _perturb(weight: np.ndarray, n_repeats: int, delta: float, random_state: int) -> tuple[np.ndarray, float]:
    """:func:`weiper_head` of a float64 [C, D] weight, and the sum of the normal draws it used."""
    rng = np.random.default_rng(random_state)
    scale = delta * np.linalg.norm(weight, axis=1, keepdims=True)
    out = np.empty((n_repeats, *weight.shape))
    total = 0.0
    for r in range(n_repeats):  # one [C, D] draw at a time: no [R, C, D] array of noise beside the result
        noise = rng.standard_normal(weight.shape)
        total += float(noise.sum())
        noise *= scale / np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), np.finfo(float).tiny)
        np.add(weight, noise, out=out[r])
    return out, total


def weiper_densities(values: Any, low: float, high: float, n_bins: int) -> np.ndarray:
    """Per-row histograms [N, n_bins] of the K values of each row over ``n_bins`` equal bins of
    [low, high] (the last bin closed), as shares of all K values: values outside the range count in the
    denominator but in no bin.

    >>> weiper_densities([[0.0, 0.5, 1.0, 2.0]], low=0.0, high=1.0, n_bins=2)
    array([[0.25, 0.5 ]])
    """
    values = np.asarray(values, dtype=np.float64)
    n, k = values.shape
    if not high > low:  # one point: the values equal to it fill the first bin
        counts = np.zeros((n, n_bins))
        counts[:, 0] = np.count_nonzero(values == low, axis=1)
        return counts / k
    # bin of each value, shifted by one: 0 below the range, n_bins + 1 and up above it (clipped first, so
    # that far outliers stay small integers); one bincount over all rows, then the outer bins are dropped
    position = np.subtract(values, low)
    position *= n_bins / (high - low)
    np.clip(position, -1.0, n_bins + 1.0, out=position)
    np.floor(position, out=position)
    index = position.astype(np.intp)
    top = np.flatnonzero(index == n_bins)  # at most high: the closed last bin (high itself, or rounding)
    index.ravel()[top[values.ravel()[top] <= high]] = n_bins - 1
    index += 1 + (np.arange(n) * (n_bins + 3))[:, None]
    counts = np.bincount(index.ravel(), minlength=n * (n_bins + 3)).reshape(n, n_bins + 3)
    return counts[:, 1 : n_bins + 1] / k


def _smooth(densities: np.ndarray, size: int) -> np.ndarray:
    """Moving average of width ``size`` along each row, edges repeated (the paper's ``same``-padded uniform
    kernel: the window of bin i is [i − (size−1)//2, i + size//2])."""
    left = (size - 1) // 2
    padded = np.concatenate(
        [
            np.repeat(densities[:, :1], left, axis=1),
            densities,
            np.repeat(densities[:, -1:], size - 1 - left, 1),
        ],
        axis=1,
    )
    sums = np.concatenate([np.zeros((len(densities), 1)), np.cumsum(padded, axis=1)], axis=1)
    return (sums[:, size:] - sums[:, :-size]) / size


def _symmetric_kl(reference: np.ndarray, densities: np.ndarray, size: int, eps: float) -> np.ndarray:
    """KL(p ‖ q) + KL(q ‖ p) per row, with p the reference density and q each row's density smoothed;
    ``eps`` is added to both before they are normalised."""
    p = reference + eps
    p /= p.sum()
    q = _smooth(densities, size) + eps
    q /= q.sum(axis=1, keepdims=True)
    return ((q - p) * (np.log(q) - np.log(p))).sum(axis=1)


def _mean_max_softmax(logits: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean over the R perturbed heads of the maximum softmax probability of each head's C logits."""
    z = logits.reshape(len(logits), -1, n_classes)
    shifted = np.exp(z - z.max(axis=2, keepdims=True))
    return (1.0 / shifted.sum(axis=2)).mean(axis=1)


def _padded_blocks(h: np.ndarray, width: int) -> Iterator[tuple[np.ndarray, int]]:
    """``(block, m)``: float64 blocks of a fixed number of rows of ``h``, the first m of them real (the rest
    zeros), so that every product has one shape and a row's result does not depend on the batch it came
    in. The block is reused: use it before asking for the next."""
    rows = int(max(16, min(1024, BLOCK_BYTES // (8 * max(width, h.shape[1], 1)))))
    block = np.zeros((rows, h.shape[1]))
    for start in range(0, len(h), rows):
        stop = min(start + rows, len(h))
        block[: stop - start] = h[start:stop]
        block[stop - start :] = 0.0
        yield block, stop - start


def _map_padded_blocks(h: np.ndarray, width: int, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn`` (one float64 result per row) over :func:`_padded_blocks`, concatenated [N]."""
    parts = [np.array(fn(block)[:m], dtype=np.float64) for block, m in _padded_blocks(h, width)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _perturbed_logits(block: np.ndarray, tilde: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The R·C perturbed logits of each row of ``block``, ordered head by head."""
    n_repeats, n_classes, dim = tilde.shape
    return block @ tilde.reshape(n_repeats * n_classes, dim).T + np.tile(bias, n_repeats)


def weiper_score(
    features: Any,
    perturbed_weight: Any,
    head_bias: Any,
    density: Any,
    perturbed_density: Any,
    feature_range: Any,
    perturbed_range: Any,
    smoothing: int = 4,
    smoothing_perturbed: int = 15,
    lambda_1: float = 2.5,
    lambda_2: float = 0.1,
) -> np.ndarray:
    """WeiPer+KLD score, higher = more OOD, float64 [N]:

    ``KL_sym(p̄_h ‖ p_h) + λ1 · KL_sym(p̄_z̃ ‖ p_z̃) − λ2 · mean_r max softmax(z̃_r)``,

    where ``z̃ = W̃h + b`` are the perturbed logits (``perturbed_weight`` W̃ [R, C, D], ``head_bias`` b [C]);
    ``p_h`` and ``p_z̃`` are a sample's histograms of its D features and of its R·C perturbed logits over
    the fit ranges (:func:`weiper_densities`), smoothed by a moving average of width ``smoothing`` /
    ``smoothing_perturbed``; ``p̄_h``, ``p̄_z̃`` (``density``, ``perturbed_density``) the fit data's mean
    histograms; ``KL_sym(p ‖ q) = KL(p ‖ q) + KL(q ‖ p)`` after adding 0.01 (features) or 0.025 (perturbed
    logits) to both and renormalising.

    >>> h = [[0.0, 1.0]]
    >>> weiper_score(h, [[[1.0, 0.0]]], [0.0], [0.5, 0.5], [0.0, 1.0], (0.0, 1.0), (0.0, 1.0),
    ...              smoothing=1, smoothing_perturbed=1, lambda_1=0.0, lambda_2=1.0)
    array([-1.])
    """
    tilde = np.asarray(perturbed_weight, dtype=np.float64)
    bias = np.asarray(head_bias, dtype=np.float64)
    density = np.asarray(density, dtype=np.float64)
    perturbed_density = np.asarray(perturbed_density, dtype=np.float64)
    h = np.asarray(features)
    if h.ndim != 2 or tilde.ndim != 3 or tilde.shape[2] != h.shape[1] or bias.shape != (tilde.shape[1],):
        raise ValueError(
            "weiper_score expects features [N, D], perturbed weights [R, C, D] and a bias [C]; got shapes "
            f"{h.shape}, {tilde.shape} and {bias.shape}."
        )
    if density.ndim != 1 or perturbed_density.ndim != 1:
        raise ValueError("weiper_score: density and perturbed_density must be 1-D (one share per bin).")
    (low, high), (low_z, high_z) = feature_range, perturbed_range

    def scores(block: np.ndarray) -> np.ndarray:
        z = _perturbed_logits(block, tilde, bias)
        kl_h = _symmetric_kl(
            density, weiper_densities(block, low, high, density.size), smoothing, EPS_FEATURES
        )
        kl_z = _symmetric_kl(
            perturbed_density,
            weiper_densities(z, low_z, high_z, perturbed_density.size),
            smoothing_perturbed,
            EPS_PERTURBED,
        )
        return kl_h + lambda_1 * kl_z - lambda_2 * _mean_max_softmax(z, tilde.shape[1])

    return _map_padded_blocks(h, tilde.shape[0] * tilde.shape[1], scores)


_REPEATS = Interval(int, 1, None)
_DELTA = Interval(float, 0, None)
_SEED = Interval(int, 0, None)
_SMOOTHING = Interval(int, 1, None)


class WeiPer(Detector):
    """WeiPer+KLD: how far a sample's activation histograms, also over randomly perturbed class
    projections, are from the fit data's.

    Granz, Heurich & Landgraf, "WeiPer: OOD Detection using Weight Perturbations of Class Projections",
    NeurIPS 2024. https://arxiv.org/abs/2405.17164

    The head's class projections are perturbed R times: W̃_r = W + δ‖w_c‖ ε_{r,c}/‖ε_{r,c}‖ (row c, ε
    standard normal), giving R·C perturbed logits z̃ = W̃h + b. For each sample, p_h is the histogram of its
    D penultimate activations over B equal bins spanning the fit activations' [min, max], and p_z̃ that of
    its R·C perturbed logits over their fit [min, max]; each is smoothed by a moving average (width s1, s2).
    p̄_h and p̄_z̃ are the mean (unsmoothed) histograms of the fit data. With KL_sym(p ‖ q) = KL(p ‖ q) +
    KL(q ‖ p) (0.01, resp. 0.025, added to both densities, then renormalised) and MSP_W the maximum softmax
    probability of each perturbed head averaged over the R heads, the score is the negation of the paper's
    confidence, higher = more OOD:

        S(x) = KL_sym(p̄_h ‖ p_h(x)) + λ1 · KL_sym(p̄_z̃ ‖ p_z̃(x)) − λ2 · MSP_W(x).

    Fitting runs two passes over the fit features (the ranges of h and z̃, then the mean histograms), each a
    product with the R·C perturbed projections, as does scoring: about R times the cost of the head.
    Memory: the perturbed head, R·C·D float64 (4 MB for CIFAR-10 on a ResNet-18, 1.6 GB for ImageNet on a
    ResNet-50 with R = 100), built from ``random_state`` at ``fit`` and rebuilt (not saved) after ``load``,
    and blocks of 16 to 1,024 rows. The perturbations are seeded: the same ``random_state`` gives the same
    scores.

    Defaults are the paper's for CIFAR-10 on ResNet-18; for ImageNet on ResNet-50 the paper uses δ = 2.4,
    λ2 = 0.25, s1 = 40 (the rest as here). Not in OpenOOD's main branch, pytorch-ood or oodeel; the authors'
    OpenOOD integration tunes on OOD validation data (APS mode) over ``search_space``: λ1 ∈ {0.1, 1, 2.5, 4},
    λ2 ∈ {0.1, 0.25, 1, 2.5, 5}, B ∈ {60, 80, 100}, δ ∈ {1.8, 2.0, 2.2, 2.4}, s1 ∈ {4, 8, 12, 20, 40},
    s2 ∈ {15, 25, 40}. Two details differ from that code without changing the method: the histogram's top
    bin is closed at the fit maximum (the code widens the range by 1e-8 instead), and the mean histograms
    are exact means over the fit samples (the code averages per-batch means).

    Parameters
    ----------
    lambda_1 : float, default=2.5
        λ1 ≥ 0, the weight of the perturbed logits' divergence.
    lambda_2 : float, default=0.1
        λ2 ≥ 0, the weight of MSP_W.
    n_repeats : int, default=100
        R ≥ 1, the number of perturbed heads.
    delta : float, default=1.8
        δ ≥ 0, the perturbation's length relative to each class projection's.
    n_bins : int, default=100
        B ≥ 1, the number of histogram bins.
    smoothing : int, default=4
        s1 ≥ 1, the moving-average width for the features' histogram.
    smoothing_perturbed : int, default=15
        s2 ≥ 1, the moving-average width for the perturbed logits' histogram.
    random_state : int, default=0
        Seed of the perturbations (numpy's ``default_rng``).

    Attributes
    ----------
    feature_range_, perturbed_range_ : ndarray of shape [2]
        [min, max] of the fit activations and of the fit perturbed logits.
    density_, perturbed_density_ : ndarray of shape [B]
        p̄_h and p̄_z̃, the fit data's mean histograms.
    n_repeats_, delta_, random_state_ : int, float, int
        The perturbation's parameters at ``fit``: scoring rebuilds the perturbed head from them (from the
        head of the scored Features), so changing ``n_repeats``, ``delta`` or ``random_state`` takes effect
        at the next ``fit``, while λ1, λ2, s1 and s2 apply at once.
    noise_checksum_ : float
        The sum of the normal draws: perturbations drawn again (after ``load``) that do not reproduce it are
        refused rather than scored against histograms of other perturbations.

    Examples
    --------
    >>> import numpy as np
    >>> from oodscope import Features
    >>> rng = np.random.default_rng(0)
    >>> w = np.repeat(np.eye(3), 8, axis=1)  # 3 classes, each reading 8 of 24 units
    >>> h = np.abs(rng.normal(size=(300, 24))) + 3.0 * np.repeat(w, 100, axis=0)
    >>> fit = Features(logits=h @ w.T, layers={"penultimate": h}, head_weight=w)
    >>> det = WeiPer(n_repeats=10).fit(fit)
    >>> ood = np.abs(rng.normal(size=(1, 24)))  # no unit stands out
    >>> test = Features(logits=ood @ w.T, layers={"penultimate": ood}, head_weight=w)
    >>> bool(det.score(test).scores[0] > det.score(fit).scores.max())
    True
    """

    requires = frozenset({"features", "head"})
    default_layers = (PENULTIMATE,)
    search_space = {
        "lambda_1": [0.1, 1, 2.5, 4],
        "lambda_2": [0.1, 0.25, 1, 2.5, 5],
        "n_bins": [60, 80, 100],
        "delta": [1.8, 2.0, 2.2, 2.4],
        "smoothing": [4, 8, 12, 20, 40],
        "smoothing_perturbed": [15, 25, 40],
    }
    _parameter_constraints = {
        "lambda_1": Interval(float, 0, None),
        "lambda_2": Interval(float, 0, None),
        "n_repeats": _REPEATS,
        "delta": _DELTA,
        "n_bins": Interval(int, 1, None),
        "smoothing": _SMOOTHING,
        "smoothing_perturbed": _SMOOTHING,
        "random_state": _SEED,
    }
    _state_shapes = {
        "feature_range_": (2,),
        "perturbed_range_": (2,),
        "density_": ("B",),
        "perturbed_density_": ("B",),
        "n_repeats_": (),
        "delta_": (),
        "random_state_": (),
        "noise_checksum_": (),
    }

    def __init__(
        self,
        lambda_1: float = 2.5,
        lambda_2: float = 0.1,
        n_repeats: int = 100,
        delta: float = 1.8,
        n_bins: int = 100,
        smoothing: int = 4,
        smoothing_perturbed: int = 15,
        random_state: int = 0,
    ) -> None:
        self.lambda_1 = lambda_1
        self.lambda_2 = lambda_2
        self.n_repeats = n_repeats
        self.delta = delta
        self.n_bins = n_bins
        self.smoothing = smoothing
        self.smoothing_perturbed = smoothing_perturbed
        self.random_state = random_state

    def _state_layer(self) -> str:
        return PENULTIMATE

    def _perturbed_head(self, weight: np.ndarray, key: tuple[int, float, int]) -> tuple[np.ndarray, float]:
        """W̃ for this head and (n_repeats, delta, random_state), with the sum of the normal draws it used;
        built once and kept (not saved) while they stay the same."""
        cached = getattr(self, "_head_cache", None)
        if cached is None or cached[0] != key or not np.array_equal(cached[1], weight):
            weight = np.array(weight, dtype=np.float64)
            cached = self._head_cache = (key, weight, *_perturb(weight, *key))
        return cached[2], cached[3]

    def _fit(self, features: Features) -> None:
        h = features.layer(PENULTIMATE)
        key = (int(self.n_repeats), float(self.delta), int(self.random_state))
        tilde, checksum = self._perturbed_head(features.head_weight, key)
        bias = np.asarray(features.head_bias, dtype=np.float64)
        width = tilde.shape[0] * tilde.shape[1]
        # two passes, as the histograms' ranges are those of all fit values: first the extremes ...
        low = low_z = np.inf
        high = high_z = -np.inf
        for block, m in _padded_blocks(h, width):
            z = _perturbed_logits(block, tilde, bias)[:m]
            low, high = min(low, block[:m].min()), max(high, block[:m].max())
            low_z, high_z = min(low_z, z.min()), max(high_z, z.max())
        # ... then the mean histograms
        n_bins = self.n_bins
        sums = np.zeros(2 * n_bins)
        for block, m in _padded_blocks(h, width):
            z = _perturbed_logits(block, tilde, bias)[:m]
            sums[:n_bins] += weiper_densities(block[:m], low, high, n_bins).sum(axis=0)
            sums[n_bins:] += weiper_densities(z, low_z, high_z, n_bins).sum(axis=0)
        mean = sums / len(h)
        self.feature_range_ = np.array([low, high], dtype=np.float64)
        self.perturbed_range_ = np.array([low_z, high_z], dtype=np.float64)
        self.density_, self.perturbed_density_ = mean[:n_bins], mean[n_bins:]
        self.n_repeats_, self.delta_, self.random_state_ = key
        self.noise_checksum_ = checksum

    def _score(self, features: Features) -> np.ndarray:
        key = (int(self.n_repeats_), float(self.delta_), int(self.random_state_))
        tilde, checksum = self._perturbed_head(features.head_weight, key)
        if checksum != self.noise_checksum_:
            raise ValueError(
                f"WeiPer: the perturbations drawn again from random_state={key[2]} differ from those this "
                "detector was fitted with (numpy's random stream differs from the one that fitted it); fit "
                "it again with this numpy."
            )
        return weiper_score(
            features.layer(PENULTIMATE),
            tilde,
            features.head_bias,
            self.density_,
            self.perturbed_density_,
            self.feature_range_,
            self.perturbed_range_,
            self.smoothing,
            self.smoothing_perturbed,
            self.lambda_1,
            self.lambda_2,
        )
