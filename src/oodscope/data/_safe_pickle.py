"""Read third-party pickles that should hold numpy arrays, without running code from them.

A pickle can name any importable callable and have it called while loading (``os.system`` included). The
unpickler here resolves only the handful of globals that numpy arrays are made of, so anything else stops
the load with :class:`pickle.UnpicklingError` before it is called. Plain containers (tuples, lists, dicts)
and scalars (int, float, str, bytes) need no global and load as usual, so the array pickles of MNIST,
CIFAR and similar data sets load unchanged.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from typing import Any, BinaryIO

import numpy as np

__all__ = ["RestrictedUnpickler", "safe_load"]


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 pickles (protocol < 3) call, as ``_codecs.encode(text, "latin1")``, to rebuild bytes."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(
            f"Refusing _codecs.encode with encoding {encoding!r}: only latin1 bytes."
        )
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # The callables numpy's own pickles use, taken from numpy itself: their module is numpy.core.multiarray
    # before numpy 2 and numpy._core.multiarray since; files written by either name them by module path.
    reconstruct = np.empty(0).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[module, "_reconstruct"] = reconstruct
        allowed[module, "scalar"] = scalar
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits numpy arrays (and dtypes and numpy scalars) and nothing else.

    Besides numpy's own callables, only ``_codecs.encode(text, "latin1")`` is resolved (to a function that
    does just that): Python 3 writes bytes that way in protocols 0-2, numpy arrays' data included. Any other
    global (a function or class named in the pickle) is refused with
    :class:`pickle.UnpicklingError` without being imported or called.
    """

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"Refusing to load {module}.{name} from a pickle: only numpy arrays are admitted."
            ) from None


def safe_load(source: str | os.PathLike[str] | bytes | BinaryIO, encoding: str = "latin1") -> Any:
    """Unpickle ``source`` (a path, gzip-compressed or not, the pickle's bytes, or a binary file).

    ``encoding="latin1"`` reads the Python 2 pickles that many data sets are published as (their arrays
    hold their bytes as ``str``) as well as Python 3 ones.

    >>> import pickle
    >>> safe_load(pickle.dumps({"x": np.arange(3)}))["x"]
    array([0, 1, 2])
    >>> safe_load(pickle.dumps(print))
    Traceback (most recent call last):
    ...
    _pickle.UnpicklingError: Refusing to load builtins.print from a pickle: only numpy arrays are admitted.
    """
    if isinstance(source, bytes):
        return RestrictedUnpickler(io.BytesIO(source), encoding=encoding).load()
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
        opener = gzip.open if compressed else open
        with opener(source, "rb") as file:
            return RestrictedUnpickler(file, encoding=encoding).load()
    return RestrictedUnpickler(source, encoding=encoding).load()
