"""Giving freed memory back to the OS after a large decode, so a worker's resident size follows its current work.

glibc keeps freed heap memory in each thread's malloc arena for reuse, and raises its mmap threshold after each
large free, so Pillow's big picture blocks (up to 16 MB) soon come from the arenas and stay there (measured: idle
worker 182 MB -> 422 MB after three 50-megapixel uploads). Two remedies:
- ``malloc_trim(0)`` after a large decode returns the free pages its work left in the arenas; it costs a few
  milliseconds, so it runs only after large decodes;
- a fixed mmap threshold maps blocks of 4 MB and more on their own and unmaps them when freed, whichever thread
  frees them, so pictures too small for a trim do not settle either (two clients sending 8 x 2500x2500 PNGs twice:
  +138 MB with the trim alone, +25 MB with both); photos decoded at their draft size stay below it and keep
  reusing arena pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# A decode this large (pixels actually decoded) is heavy: it is trimmed after, and takes a restricted decode thread
# (serve/engine.py). Smaller ones reuse what the arenas hold anyway (a 12 MP photo at reduced JPEG scale: ~3 MP).
LARGE_DECODE_PIXELS = 8_000_000
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    # musl and macOS have no malloc_trim/mallopt: their allocators are left as they are.
    return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_GLIBC = _glibc()


def map_large_blocks() -> bool:
    """Fix glibc's mmap threshold for this process (once, in each worker); False where there is no glibc."""
    return _GLIBC is not None and _GLIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1


def release_after_decode(decoded_pixels: int) -> None:
    """Return free heap pages to the OS if the decode just finished was large enough to leave many behind."""
    if _GLIBC is not None and decoded_pixels >= LARGE_DECODE_PIXELS:
        _GLIBC.malloc_trim(0)
