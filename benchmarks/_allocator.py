"""Fix glibc's malloc thresholds for a benchmark process, so that timings measure code, not the allocator.

glibc serves requests above an mmap threshold with fresh mappings, and hands the free memory at the top of its
heap back to the kernel once it exceeds a trim threshold. Both start low and rise by themselves: freeing a
mapped block of size S (up to 32 MB) sets the mmap threshold to S and the trim threshold to 2S. A torch CPU
forward pass allocates and frees tens of megabytes per batch. Traced with ``strace`` on the toy convnet in
batches of 128 (two 11 MB activations, then 2.8 MB and 4 MB ones): in fresh processes the heap grew by 22-33
MB and shrank by as much at every batch or every few, and those batches faulted their activations in anew
(250,000-630,000 page faults per 10,000 inputs, up to half the time of a pass). Which state a process is in
follows from its history in ways that are not monotonic: after freeing one block of 11, 18 or 22 MiB at start-
up almost no batch faulted, after one of 12 MiB every batch did. Small differences in where the activations
land decide too, so two passes in one process can differ: in some processes oodscope's pass faulted while the
bare loop did not (``GEN.score`` then took 1.34 times the loop), in others the other way round. A ratio of two
such passes measures the allocator's state more than the code.

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
