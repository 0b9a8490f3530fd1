"""What a loader hands the timed loop: its own module, so measure.py and the torch loader need not import each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


def _unchanged(batch: np.ndarray) -> np.ndarray:
    return batch


@dataclass(frozen=True)
class TimedModel:
    """A model ready to run: ``prepare`` converts the input once (outside the clock), ``run`` is what is timed.

    ``load_ms`` is measured by the loader after its library is imported: session/model creation, not imports.
    """

    run: Callable[[Any], Any]
    prepare: Callable[[np.ndarray], Any] = _unchanged
    provider: str = ""
    size_bytes: int = 0
    load_ms: float = 0.0
