"""glibc malloc settings for image work: per-image buffers reused instead of page-faulted in on every call.

glibc serves a large allocation (a decoded 640x480 frame is 0.9 MB) with a fresh mmap, or grows the heap and
trims it again once the block is freed; either way every decode pays for zero-filled pages again. Its dynamic
thresholds adapt only to some allocation patterns, so the cost depended on what ran before: decoding and
preprocessing a 640x480 JPEG measured 2.1-2.4 CPU-ms in a fresh process and 1.4-1.7 with these settings.
Fixed thresholds make it the fast case every time. Blocks above the mmap threshold are still mmapped and
returned to the system when freed; heap memory above the trim threshold is returned too (Pillow decodes a
huge upload in 16 MB blocks, which come from the heap either way).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 32 << 20  # blocks up to a 4K frame's decoded pixels come from the heap and are reused
TRIM_THRESHOLD = 64 << 20  # free heap top kept for reuse before it is returned to the system
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds for this process; True when set.

    A no-op (False) off Linux/glibc, when the user set MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ or a
    glibc.malloc tunable (GLIBC_TUNABLES) themselves, with EDGEFT_KEEP_MALLOC=1, or where glibc refuses the
    values (a 32-bit glibc caps the mmap threshold below 32 MB).
    """
    user = any(os.environ.get(k) for k in _ENV) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
    if not sys.platform.startswith("linux") or user or os.environ.get("EDGEFT_KEEP_MALLOC") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc; musl has none
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
