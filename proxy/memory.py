"""Keep the proxy's resident memory proportional to the data it holds right now.

Each call carries an image of up to several MiB through gRPC, protobuf and numpy buffers.
glibc's malloc raises its mmap threshold after such buffers are freed, so later ones come
from the heap, which fragments and is rarely returned to the system: RSS then ratchets up
with traffic although nothing leaks. A fixed threshold keeps large buffers in their own
mappings, released as soon as they are freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("proxy.memory")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def fix_malloc_mmap_threshold(threshold_bytes: int = 128 * 1024) -> bool:
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):  # not glibc
        log.debug("mallopt unavailable; keeping the allocator's defaults")
        return False
