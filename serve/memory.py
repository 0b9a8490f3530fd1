"""Giving freed memory back to the OS after a large decode, so a worker's resident size follows its current work.

glibc keeps freed heap memory in each thread's malloc arena for reuse; Pillow allocates a big picture as 16 MB
blocks, below glibc's mmap threshold once it has adapted, so after one 50-megapixel upload a decode thread would
keep ~150 MB resident for good (measured: idle worker 182 MB -> 422 MB after three such uploads).
``malloc_trim(0)`` returns those free pages; it costs a few milliseconds, so it runs only after large decodes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

# Decodes below this many pixels reuse what the arenas hold anyway (a 12 MP photo at reduced JPEG scale: ~3 MP).
TRIM_AFTER_PIXELS = 8_000_000


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_TRIM = _malloc_trim()


def release_after_decode(decoded_pixels: int) -> None:
    """Return free heap pages to the OS if the decode just finished was large enough to leave many behind."""
    if _TRIM is not None and decoded_pixels >= TRIM_AFTER_PIXELS:
        _TRIM(0)
