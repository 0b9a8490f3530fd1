"""The package layout the design asks for: one `smallnets` namespace, a core that imports no stage, a light root."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import smallnets.core as core

STAGES = ("export", "optimize", "serve", "benchmarks")
REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_no_stage() -> None:
    files = sorted(Path(core.__file__).parent.glob("*.py"))
    assert len(files) >= 7, files
    stages = {f"smallnets.{stage}" for stage in STAGES}
    offenders = {
        path.name: found
        for path in files
        if (found := sorted(name for name in imported_modules(path) if ".".join(name.split(".")[:2]) in stages))
    }
    assert not offenders


def test_the_wheel_holds_only_the_smallnets_namespace(tmp_path: Path) -> None:
    """Installing the wheel must not put generic top-level `export`/`serve`/... packages into site-packages."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("smallnets-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {entry for entry in top_level if not entry.endswith(".dist-info")} == {"smallnets"}
    for stage in STAGES:
        assert f"smallnets/{stage}/__init__.py" in names, stage
    assert "smallnets/export/data/imagenet_synsets.txt" in names
    assert "smallnets/core/runtime.py" in names


def test_importing_smallnets_loads_no_torch_and_no_stage() -> None:
    code = (
        "import sys, smallnets\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxsim') if m in sys.modules]\n"
        f"stages = [s for s in {STAGES!r} if 'smallnets.' + s in sys.modules]\n"
        "print(heavy, stages, callable(smallnets.load), callable(smallnets.export_model))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[] [] True True"
