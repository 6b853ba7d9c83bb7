"""Keep the proxy's resident memory proportional to the data it holds right now.

Each call carries an image of up to several MiB through gRPC, protobuf and byte buffers.
glibc's malloc raises its mmap threshold after large buffers are freed, so later ones come
from the heap, which fragments and is rarely returned to the system: RSS then ratchets up
with traffic although nothing leaks. A fixed threshold bounds that: buffers from 1 MiB up
get their own mappings, released as soon as they are freed, and the heap keeps glibc's
default trim threshold.

The mmap threshold is a CPU trade-off too. A fresh mapping costs page faults on every use:
at 128 KiB, every copy of a typical 500 KB photo went through one, and the proxy spent about
a quarter more CPU per call (measured with loadtest/bench.py). Below 1 MiB, buffers are
recycled from the heap instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 1 << 20


def fix_malloc_mmap_threshold(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set the mmap threshold, unless the operator chose one (glibc's MALLOC_MMAP_THRESHOLD_)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):  # not glibc
        log.debug("mallopt unavailable; keeping the allocator's defaults")
        return False
