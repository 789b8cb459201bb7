"""What every shaping method shares: the shaped-logits pipeline over blocks of rows, the sharing memo,
and the numeric helpers of ReAct, ASH and SCALE."""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._params import InstanceOf, Interval
from .._sharing import shared as _shared
from ..detectors.base import Detector, clone
from ..detectors.energy import Energy
from ..features import Features, all_finite
from ..needs import PassKind

PENULTIMATE = "penultimate"


class _Scratch:
    """Work arrays reused from one block of rows to the next, one set per thread.

    Allocating and freeing megabyte-sized temporaries per block can make glibc return the memory to the
    kernel and fault it in again at every block: a loop of ASH's steps over the blocks of 10,000 x 1,600
    activations took 29,000 page faults and twice the time. A shaping's ``_parts`` takes its temporaries
    from here; ``scratch(name, shape, dtype)`` returns the same memory for the same name until a larger
    array is asked for. What it returns is overwritten by the next block, so it must not outlive the block;
    a fresh ``_Scratch()`` makes one-off calls allocate as usual.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        size, dtype = math.prod(shape), np.dtype(dtype)
        array = self._arrays.get(name)
        if array is None or array.size < size or array.dtype != dtype:
            array = self._arrays[name] = np.empty(size, dtype)
        return array[:size].reshape(shape)


def percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) without copying or sorting all the values.

    For large arrays, a random sample brackets the two order statistics the percentile interpolates; one
    blocked pass counts the values below the bracket and keeps those inside it, and only those are
    partially sorted. The order statistics are exact; when the bracket misses (it should not), it falls
    back to ``np.percentile``.
    """
    flat = np.ravel(values)
    n = flat.size
    if n < 4_000_000:
        return float(np.percentile(flat, q))
    position = (q / 100.0) * (n - 1)  # the order of operations numpy uses, for identical rounding
    low = int(np.floor(position))
    high = min(low + 1, n - 1)
    sample = np.sort(flat[np.random.default_rng(0).integers(0, n, 100_000)])
    m = sample.size
    rank, spread = low / (n - 1) * (m - 1), 8.0 * np.sqrt(m * 0.25) + 64
    lower = sample[max(0, int(rank - spread))]
    upper = sample[min(m - 1, int(np.ceil(rank + spread)))]
    counts, inside = [], []

    def run(start: int, stop: int, scratch: _Scratch) -> None:
        block = flat[start:stop]
        at_least = np.greater_equal(block, lower, out=scratch("at_least", block.shape, bool))
        counts.append(block.size - int(np.count_nonzero(at_least)))
        at_least &= np.less_equal(block, upper, out=scratch("at_most", block.shape, bool))
        inside.append(np.compress(at_least, block))  # np.compress: 3x faster than boolean indexing here

    _over_row_blocks(run, n, 1)  # rows of one value
    below, kept = sum(counts), np.concatenate(inside)
    if not (below <= low and high < below + kept.size):
        return float(np.percentile(flat, q))
    kept.partition([low - below, high - below])
    a, b = float(kept[low - below]), float(kept[high - below])
    t = position - low
    # numpy's interpolation formula, so that results agree to the last bit in float64
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def _as_float(features: np.ndarray) -> np.ndarray:
    # Shaping keeps the features' precision (float32 stays float32: half the memory traffic); the
    # per-sample sums and scale factors are computed in float64. float16 becomes float32: its range
    # (65504) is too narrow for recomputed logits, which would overflow to inf.
    h = np.asarray(features)
    if h.dtype.kind == "f":
        return h if h.dtype.itemsize >= 4 else h.astype(np.float32)
    return h.astype(np.float64)


def _activations(features: Any, method: str) -> np.ndarray:
    """The activations given to a shaping function, checked: real numbers [n_samples, n_features], finite."""
    h = np.asarray(features)
    if h.dtype.kind not in "biuf":
        raise TypeError(f"{method} expects real-valued activations; got dtype {h.dtype}.")
    if h.ndim != 2 or h.shape[1] == 0:
        raise ValueError(
            f"{method} expects activations of shape [n_samples, n_features] with at least one feature; got "
            f"shape {h.shape}. For one sample, pass features[None, :]."
        )
    h = _as_float(h)
    if not all_finite(h):
        raise ValueError(f"{method}'s activations hold NaN or inf; check the model's outputs.")
    return h


def _kept_count(n_features: int, percentile: float) -> int:
    # The papers keep the top k = n - round(n * p / 100) activations of each sample (at least one here).
    return max(1, n_features - int(np.round(n_features * percentile / 100.0)))


def _row_sums(h: np.ndarray) -> np.ndarray:
    """Per-row sums [N] through BLAS (a matrix-vector product), in the features' precision."""
    return h @ np.ones(h.shape[1], dtype=h.dtype)


def _top_k(h: np.ndarray, k: int, scratch: _Scratch) -> np.ndarray:
    """Each row's k largest values [N, k], in no order except that column 0 holds the k-th largest.

    ``h`` must be non-negative: such floats order like their bit patterns read as integers, and numpy's
    partial sort of integers is vectorised (2.5x faster than that of floats here). A -0.0 reads as the
    smallest integer, so it sorts below +0.0; both are zero, which is all the callers need.
    """
    n_features = h.shape[1]
    bits = h.view(f"i{h.itemsize}")
    top = scratch("top", bits.shape, bits.dtype)
    np.copyto(top, bits)
    top.partition(n_features - k, axis=1)
    return top.view(h.dtype)[:, n_features - k :]


def _prune(h: np.ndarray, kth: np.ndarray, scratch: _Scratch) -> np.ndarray:
    """``h`` where ``h >= kth`` (per row), else 0, for non-negative ``h``.

    Worked on the bit patterns as integers, which order like the floats: ``(bits - kth_bits) >> (width-1)``
    is all ones exactly below the threshold, and its complement masks ``bits``. About 1.3x faster than a
    float comparison followed by a multiplication.
    """
    int_type = np.dtype(f"i{h.itemsize}")
    bits = h.view(int_type)
    # clearing the sign bit reads a -0.0 threshold as +0.0, so the subtraction cannot overflow for the
    # non-negative patterns; a -0.0 in h may overflow it, but either way the entry stays a zero
    threshold = kth.view(int_type) & np.iinfo(int_type).max
    below = np.subtract(bits, threshold[:, None], out=scratch("pruned", bits.shape, int_type))
    below >>= 8 * h.itemsize - 1
    np.invert(below, out=below)
    below &= bits
    return below.view(h.dtype)


def _check_non_negative(features: np.ndarray, method: str) -> None:
    lowest = float(np.min(features, initial=0))
    if lowest < 0:
        raise ValueError(
            f"{method} assumes non-negative (post-ReLU) penultimate activations, but they go down to "
            f"{lowest:.4g}. Use a layer that follows a ReLU, or ReAct, which has no such assumption."
        )


def _scale_factor(s1: np.ndarray, s2: np.ndarray, eps: float, dtype: np.dtype, method: str) -> np.ndarray:
    """exp(s1 / s2) per sample, with a clear error where it overflows the features' precision."""
    with np.errstate(over="ignore"):
        factor = np.exp(np.asarray(s1, np.float64) / np.maximum(s2, eps)).astype(dtype)
    if not np.isfinite(factor).all():
        raise ValueError(
            f"{method}'s scale factor exp(s1 / s2) overflows {np.dtype(dtype).name} for some samples (their "
            "activations are spread over many units); lower the percentile."
        )
    return factor


def _materialise(g: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
    return g if factor is None else g * factor[:, None]


@functools.cache
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # finds numpy's BLAS once (milliseconds); limiting it is then cheap


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """BLAS threads on block-sized products contend with the blocks' own threads and with each other: on 2
    cores the shapings ran 1.5-2x slower with them. Limits numpy's BLAS to one thread for the block."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _over_row_blocks(run: Callable[[int, int, _Scratch], None], n_rows: int, n_features: int) -> None:
    """Call ``run(start, stop, scratch)`` over blocks of about 256k values (they stay in the CPU cache
    between the steps of a shaping), on all cores when the input is large enough to pay for the threads
    (numpy's partition, element-wise and matmul kernels release the GIL). Each thread takes a contiguous
    share of the blocks, in order, with its own :class:`_Scratch`."""
    block = max(1, (1 << 18) // max(n_features, 1))
    starts = range(0, n_rows, block)
    large = n_rows * n_features >= (1 << 22)
    n_threads = min(os.cpu_count() or 1, 8, len(starts)) if large else 1

    def share(index: int) -> None:
        scratch = _Scratch()
        for start in starts[index * len(starts) // n_threads : (index + 1) * len(starts) // n_threads]:
            run(start, min(start + block, n_rows), scratch)

    if n_threads <= 1:
        share(0)
        return
    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(share, range(n_threads)))


class _Shaping(Detector):
    """Shared machinery: shape the penultimate features, recompute logits with the head, score with
    the wrapped detector."""

    requires = frozenset({"features", "head"})
    default_layers = (PENULTIMATE,)
    _non_negative = False  # whether the method needs non-negative (post-ReLU) activations

    def _inner(self) -> Detector:
        detector = Energy() if self.detector is None else self.detector
        kind = detector.needs(layers=()).kind()
        if kind != PassKind():
            raise ValueError(
                f"{type(self).__name__} cannot wrap {detector!r}, which reads {kind}; shaping acts on the "
                "penultimate features of a plain forward pass."
            )
        return detector

    def _needs_fit(self) -> bool:
        return type(self).needs_fit or self._inner()._needs_fit()

    def _parts(self, h: np.ndarray, scratch: _Scratch) -> tuple[np.ndarray, np.ndarray | None]:
        """The shaping of rows ``h`` as ``(g, factor)``: shaped rows are ``g * factor[:, None]``, or ``g``
        when factor is None. Keeping the per-sample factor apart gives the logits as
        ``factor · (g @ W.T) + b``, without materialising the shaped rows. ``h`` is one block of rows;
        temporaries the size of ``h`` (``g`` too) should come from ``scratch``."""
        raise NotImplementedError

    def _shaping_key(self) -> tuple[Hashable, ...]:
        """What decides the shaping (not the wrapped detector): equal keys shape alike. By default the
        instance itself, which shares nothing with other instances."""
        return (self,)

    def _fit_shape(self, h: np.ndarray) -> None:  # noqa: B027 - most learn nothing
        """Learn what the shaping needs from the fit data's penultimate features."""

    def _shaped_features(self, features: Features) -> Features:
        """Logits recomputed from the shaped penultimate features (and those features, when the wrapped
        detector reads them), in blocks of rows so that memory stays bounded by a block."""
        h = features.layer(PENULTIMATE)
        keep = "features" in self._inner().requires
        if self._non_negative:
            _check_non_negative(_shared(("min",), (h,), lambda: np.min(h, initial=0)), type(self).__name__)
        sources = (h, features.head_weight, features.head_bias)
        logits, shaped = _shared(
            ("shaped", type(self), *self._shaping_key(), keep),
            sources,
            lambda: self._shape_logits(h, features.head_weight, features.head_bias, keep),
        )
        return Features._unchecked(
            logits=logits,
            layers={} if shaped is None else {PENULTIMATE: shaped},
            labels=features.labels,
            head_weight=features.head_weight,
            head_bias=features.head_bias,
        )

    def _shape_logits(
        self, h: np.ndarray, weight: np.ndarray, bias: np.ndarray, keep: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        dtype = _as_float(h[:0]).dtype
        weight_t, bias = weight.T.astype(dtype), bias.astype(dtype)
        logits = np.empty((len(h), weight_t.shape[1]), dtype=dtype)
        shaped = np.empty(h.shape, dtype=dtype) if keep else None

        def run(start: int, stop: int, scratch: _Scratch) -> None:
            g, factor = self._parts(_as_float(h[start:stop]), scratch)
            product = np.matmul(g, weight_t, out=logits[start:stop])
            if factor is not None:
                product *= factor[:, None]
            product += bias
            if shaped is not None:
                np.multiply(g, 1 if factor is None else factor[:, None], out=shaped[start:stop])

        with _single_threaded_blas():
            _over_row_blocks(run, len(h), h.shape[1])
        return logits, shaped

    def _fit(self, features: Features) -> None:
        self._fit_shape(features.layer(PENULTIMATE))
        inner = clone(self._inner())
        if inner._needs_fit():  # a stateless inner detector has nothing to learn from the shaped data
            inner._fit_features(self._shaped_features(features))
        else:
            inner._validate_params()
        self.detector_ = inner

    def _score(self, features: Features) -> np.ndarray:
        inner = getattr(self, "detector_", None) or self._inner()
        return inner._score_features(self._shaped_features(features)).scores


_DETECTOR = InstanceOf(Detector, allow_none=True)
_PERCENTILE = Interval(float, 0, 100, closed="left")
_EPS = Interval(float, 0, None, closed="neither")
