"""Numerically careful softmax helpers shared by the logit detectors (float64, warning-free)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..features import all_finite


def as_logits(logits: Any) -> np.ndarray:
    """Return ``logits`` as a float64 array of shape [N, C], with a clear error otherwise."""
    array = np.asarray(logits)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"logits must hold real numbers; got dtype {array.dtype}.")
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(
            f"logits must be 2-D [n_samples, n_classes] with at least one class; got shape {array.shape}."
        )
    # checked in the input's own precision (half the bytes of float64 for float32 logits), before converting
    if not all_finite(array):
        raise ValueError("logits hold NaN or inf; check the model's outputs and the input preprocessing.")
    return array.astype(np.float64, copy=False)


def _max_and_log1p_rest(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row max m and log1p(Σ_{j≠argmax} exp(z_j − m)), so that logsumexp(z) = m + that.

    Keeping the two parts apart lets callers subtract m first, which keeps the tiny gap between a
    dominant logit and the logsumexp that ``m + log(...)`` would round away.
    """
    top = np.argmax(z, axis=1)
    rows = np.arange(z.shape[0])
    m = z[rows, top]
    finite_m = np.where(np.isfinite(m), m, 0.0)
    shifted = np.exp(z - finite_m[:, None])
    shifted[rows, top] = 0.0
    return m, np.log1p(shifted.sum(axis=1))


def logsumexp(z: np.ndarray) -> np.ndarray:
    """Row-wise log Σ exp(z), shape [N]; rows of -inf give -inf."""
    m, rest = _max_and_log1p_rest(z)
    return np.where(np.isfinite(m), m + rest, m)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities z − logsumexp(z), accurate for confident rows."""
    m, rest = _max_and_log1p_rest(z)
    return (z - m[:, None]) - rest[:, None]


def log_one_minus_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log(1 − p_j), computed as logsumexp of the other classes minus logsumexp of all.

    Exact where ``p_j`` is close to 1 (where ``log1p(-p)`` would return -inf); -inf for a single class.
    """
    return log_softmax_pair(z)[1]


def log_softmax_pair(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(log_softmax(z), log_one_minus_softmax(z))``, sharing their work; two new arrays the caller may
    overwrite.

    With m the row max (at column t) and r = Σ_{j≠t} exp(z_j − m): log p_j = z_j − m − log1p(r); for j ≠ t,
    p_j = exp(z_j − m) / (1 + r) ≤ 1/2, so log1p(−p_j) is accurate; for the top class, log(1 − p_t) =
    log(r) − log1p(r) exactly, with log(r) recomputed around the second largest logit in rows where r
    underflows (a gap of more than ~708 between the two largest logits).
    """
    n, c = z.shape
    rows = np.arange(n)
    top = np.argmax(z, axis=1)
    m = z[rows, top]
    log_p = z - m[:, None]
    probability = np.exp(log_p)  # exp(z_j − m), 1 at the top until zeroed
    probability[rows, top] = 0.0
    rest = probability.sum(axis=1)
    log_norm = np.log1p(rest)
    log_p -= log_norm[:, None]
    probability /= -(1.0 + rest)[:, None]  # −p_j for the other classes
    log_1mp = np.log1p(probability, out=probability)
    with np.errstate(divide="ignore"):  # r = 0 for a single class: log(1 − p) = −inf
        log_rest = np.log(rest)
    if c > 1:
        lost = np.flatnonzero(rest < np.finfo(np.float64).tiny)
        if lost.size:
            shifted = z[lost] - m[lost, None]
            shifted[np.arange(lost.size), top[lost]] = -np.inf
            log_rest[lost] = logsumexp(shifted)
    log_1mp[rows, top] = log_rest - log_norm
    return log_p, log_1mp
