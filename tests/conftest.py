"""Shared fixtures (real photos; ONNX exports made once per test session and reused by every stage) and the markers
that let `make test-fast` leave the heavy tests out: set here by fixture use and by module, so a new test is
marked without anyone remembering to.

- ``server``: starts a real server (tests/servers.py's smallnets_server, in the test or any fixture it uses);
- ``browser``: drives a real browser (selenium);
- ``slow``: exports a model with torch (the ``exported`` fixture), calls a stage's entry point (STAGE_NAMES), runs
  on the emulated arm64 environment, or sits in a module whose tests run whole stages (SLOW_MODULES).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="session")
def fused_family(exported: Callable[..., Path]) -> Callable[[str], tuple[Any, Any]]:
    """``fused_family(family)`` -> (a registry family's export simplified and fused as optimize does, a random input
    batch of its shape): what the graph rewrites are checked on, family by family."""
    import numpy as np
    from registry_choices import FAMILIES

    from smallnets.optimize.fuse import fuse
    from smallnets.optimize.simplify import simplify

    def make(family: str) -> tuple[Any, Any]:
        name, variant = FAMILIES[family]
        model, _ = fuse(simplify(exported(name, **variant)))
        shape = [dim.dim_value or 1 for dim in model.graph.input[0].type.tensor_type.shape.dim]
        return model, np.random.default_rng(0).normal(size=shape).astype(np.float32)

    return make


# Modules whose tests run whole stages (export, optimize, pipeline, bench suites, Bento and image builds), some
# through the CLI where no name gives them away.
SLOW_MODULES = frozenset(
    {
        "test_benchmarks",
        "test_benchmarks_peers",
        "test_cli_pipeline",
        "test_container",
        "test_export",
        "test_fidelity",
        "test_openvino_peer",
        "test_optimize",
        "test_serve_packaging",
        "test_zoo",
    }
)
# Stage entry points: a test calling one (or a fixture it uses) is slow wherever it sits.
STAGE_NAMES = frozenset({"export_model", "optimize_model", "run_pipeline", "run_suite", "model_rows"})
SERVER_NAMES = frozenset({"smallnets_server"})
BROWSER_NAMES = frozenset({"selenium", "webdriver"})


def _code_names(code: types.CodeType) -> Iterator[str]:
    """Every global, attribute and imported name a function's code uses, nested functions included."""
    yield from code.co_names
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _code_names(constant)


def _names_used(item: pytest.Item) -> set[str]:
    """Names used by the test function and by every fixture it requests, directly or through other fixtures."""
    functions = [getattr(item, "function", None)]
    for definitions in item._fixtureinfo.name2fixturedefs.values():
        functions += [definition.func for definition in definitions]
    names: set[str] = set()
    for function in functions:
        code = getattr(function, "__code__", None)
        if code is not None:
            names.update(part for name in _code_names(code) for part in name.split("."))
    return names


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = _names_used(item)
        if names & SERVER_NAMES:
            item.add_marker(pytest.mark.server)
        if names & BROWSER_NAMES:
            item.add_marker(pytest.mark.browser)
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        heavy = "exported" in item.fixturenames or bool(names & STAGE_NAMES) or item.get_closest_marker("arm64")
        if heavy or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
