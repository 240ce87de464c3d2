"""Large request bodies without page-fault churn: glibc's allocator tuned once per process.

A 1 MB request body is copied about ten times on its way through a worker
(frames, the gRPC message, the protobuf, the spliced body, the answer). glibc
serves each allocation over 128 KiB with a fresh ``mmap`` and returns it with
``munmap`` when freed, so every copy also faulted in and zeroed 256 new pages:
half of a worker's CPU at 1 MB bodies was the kernel's (``perf``; see
docs/performance.md). Raising the mmap and trim thresholds above the largest
body keeps those buffers in the heap, reused from one request to the next.
"""

from __future__ import annotations

import ctypes
import logging
import sys

__all__ = ["give_back_free_memory", "keep_large_buffers"]

log = logging.getLogger("archway.server")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
"""glibc's ceiling for the mmap threshold on 64-bit systems; ``mallopt`` refuses more."""


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
    except (OSError, AttributeError):
        return None
    return libc


def give_back_free_memory() -> bool:
    """Return the heap's free pages to the system (``malloc_trim``), which the
    thresholds below otherwise keep: after thousands of connections closed, the
    worker's memory goes back to what it was. Whether it ran (glibc only)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    libc.malloc_trim.restype = ctypes.c_int
    libc.malloc_trim(0)
    return True


def keep_large_buffers(largest_bytes: int) -> bool:
    """Serve allocations up to ``largest_bytes`` (capped at 32 MiB) from the heap,
    and keep up to twice that of freed heap for reuse. Whether it applied: only
    glibc has these settings (musl and other platforms keep their defaults)."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    threshold = min(max(largest_bytes, 1 << 20), _MMAP_THRESHOLD_MAX)
    ok = mallopt(_M_MMAP_THRESHOLD, threshold) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 2 * threshold) == 1 and ok
    if not ok:
        log.debug("mallopt refused the thresholds; large bodies keep glibc's defaults")
    return ok
