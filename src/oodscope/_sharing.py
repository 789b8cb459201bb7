"""One memo for the work that detectors run together can share: :func:`sharing` and :func:`shared`.

Detectors fitted or scored on the same arrays often compute the same thing: equal shapings recompute the
same logits, ReAct's clip value is one percentile per fit array, Mahalanobis, RMDS and ViM start from one
scatter of the fit features. Inside ``with sharing():`` such a result is computed at the first request and
returned as it is (the same object) to every later request with the same key and the same input objects;
outside it nothing is kept, so an array modified in place between two calls never gives a stale result.
:func:`oodscope.bench.evaluate` and :func:`oodscope.bench.tune` run their detectors inside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from typing import Any

__all__ = ["shared", "sharing"]

#: {(key, *ids of the sources): (sources, value)} while a `sharing()` block runs, else None
_MEMO: ContextVar[dict[Hashable, tuple[tuple[Any, ...], Any]] | None] = ContextVar("oodscope_sharing")


@contextlib.contextmanager
def sharing() -> Iterator[None]:
    """Inside this block, detectors share their work on the same arrays.

    Equal shapings (ReAct() and ReAct(GEN()) with the same clip value, ASH(MSP()) and ASH(Energy()), ...)
    recompute the logits once; ReAct's clip value is computed once per fit array and percentile; Mahalanobis,
    RMDS and ViM fitted on the same arrays share the class statistics, the whitening of the covariance and
    ViM's spectrum (their learned arrays are then the same objects), and RMDS's class distances are
    Mahalanobis'. Inputs are recognised by identity, not by value, and kept alive until the block ends: do
    not modify them (nor learned arrays) in place inside it. What is kept is freed when the block ends. The
    memo belongs to the current context (:mod:`contextvars`): other threads see their own; a nested block
    shares the enclosing one.

    >>> import numpy as np
    >>> from oodscope import GEN, Features, Mahalanobis, ReAct, RMDS
    >>> rng = np.random.default_rng(0)
    >>> feats = Features(layers={"penultimate": rng.random((100, 8))}, head_weight=np.eye(8),
    ...                  labels=rng.integers(0, 2, 100))
    >>> with sharing():
    ...     energy = ReAct().fit(feats).score(feats).scores
    ...     gen = ReAct(GEN()).fit(feats).score(feats).scores  # same clip, same logits: computed once
    ...     mds, rmds = Mahalanobis().fit(feats), RMDS().fit(feats)
    >>> bool(np.allclose(gen, ReAct(GEN()).fit(feats).score(feats).scores))
    True
    >>> mds.covariance_ is rmds.covariance_
    True
    """
    if _MEMO.get(None) is not None:
        yield
        return
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def shared(key: Hashable, sources: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    """``compute()``, or, inside :func:`sharing`, its earlier result for the same ``key`` computed from these
    very ``sources`` (by identity)."""
    memo = _MEMO.get(None)
    if memo is None:
        return compute()
    entry_key = (key, *map(id, sources))
    hit = memo.get(entry_key)
    if hit is not None and all(a is b for a, b in zip(hit[0], sources, strict=True)):
        return hit[1]
    value = compute()
    memo[entry_key] = (sources, value)  # the sources are kept alive, so their ids stay theirs
    return value
