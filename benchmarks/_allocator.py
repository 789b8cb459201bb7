"""Fix glibc's malloc thresholds for a benchmark process, so that timings measure code, not the allocator.

glibc hands the free memory at the top of its heap back to the kernel once it exceeds a trim threshold, and
serves requests above an mmap threshold with fresh mappings. It raises both by itself as the process frees
ever larger blocks (up to 32 MB, and 64 MB for the trim). A torch CPU forward pass allocates and frees tens of
megabytes per batch, so whether a pass stays under the threshold depends on what the process happened to free
before. Measured here on the toy convnet, 10,000 inputs in batches of 128: in some processes every batch
faults its activations in anew (about 630,000 page faults, half the time of a pass), in others no batch does,
and in some processes oodscope's pass faults while the bare loop does not (``GEN.score`` then took 1.34 times
the loop). A ratio of two such passes measures the allocator's state more than the code.

:func:`fix_thresholds` sets both thresholds once (what ``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_MMAP_THRESHOLD_`` do from the environment): no pass faults, the bare loop runs at its fastest, and a
ratio to it is the strictest. The same setting is a speed tip for users (see the README); oodscope itself
never changes the allocator.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def fix_thresholds() -> str:
    """Keep freed memory in the process (trim threshold 1 GiB, mmap threshold 32 MiB); says what was done."""
    if not sys.platform.startswith("linux"):
        return "allocator: as it is (not Linux)"
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return "allocator: as it is (no mallopt)"
    if mallopt(_M_TRIM_THRESHOLD, 1 << 30) != 1 or mallopt(_M_MMAP_THRESHOLD, 32 << 20) != 1:
        return "allocator: as it is (mallopt refused the thresholds: not glibc?)"
    return "allocator: glibc thresholds fixed (trim 1 GiB, mmap 32 MiB); --default-allocator to leave them"
