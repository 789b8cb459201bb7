"""Numerically careful softmax helpers shared by the logit detectors (float64, warning-free)."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_logits(logits: Any) -> np.ndarray:
    """Return ``logits`` as a float64 array of shape [N, C], with a clear error otherwise."""
    array = np.asarray(logits)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"logits must hold real numbers; got dtype {array.dtype}.")
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(
            f"logits must be 2-D [n_samples, n_classes] with at least one class; got shape {array.shape}."
        )
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise ValueError("logits hold NaN or inf; check the model's outputs and the input preprocessing.")
    return array


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
    """``(log_softmax(z), log_one_minus_softmax(z))``, sharing their work."""
    n, c = z.shape
    m, rest = _max_and_log1p_rest(z)
    lse = np.where(np.isfinite(m), m + rest, m)
    log_p = (z - m[:, None]) - rest[:, None]
    with np.errstate(divide="ignore"):
        out = np.log1p(-np.exp(log_p))
    # Only the largest class can hold p > 1/2, where log1p(-p) loses precision: recompute it exactly.
    top = np.argmax(z, axis=1)
    rows = np.arange(n)
    others = z.copy()
    others[rows, top] = -np.inf
    out[rows, top] = logsumexp(others) - lse if c > 1 else -np.inf
    return log_p, out
