"""Shared fixtures: real photos, and ONNX exports made once per test session and reused by every stage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from smallnets.core.images import sample_photos


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """scikit-image's bundled photos (chelsea, coffee, astronaut, rocket, ...) as RGB pictures."""
    return sample_photos()


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``exported(name, weights="random", **variant)`` -> path of a validated ONNX export, cached per session."""
    from smallnets.export.onnx_export import ExportConfig, export_model

    cache: dict[tuple[Any, ...], Path] = {}
    root = tmp_path_factory.mktemp("exports")

    def make(name: str, weights: str = "random", **variant: Any) -> Path:
        key = (name, weights, tuple(sorted(variant.items())))
        if key not in cache:
            stem = "-".join([name, weights, *(f"{k}{v}" for k, v in sorted(variant.items()))])
            output = root / f"{stem}.onnx"
            export_model(ExportConfig(model=name, variant=variant, weights=weights), output)
            cache[key] = output
        return cache[key]

    return make
