"""The package layout the design asks for: one `smallnets` namespace, the floors of pyproject's import contracts
(each shown to break on a bad import), a light root."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

STAGES = ("export", "optimize", "serve", "benchmarks")
REPO = Path(__file__).resolve().parents[1]


# One deliberate bad import per contract of pyproject's [tool.importlinter]: (file, line appended to it).
BAD_IMPORTS = {
    "core": ("smallnets/core/files.py", "import smallnets.optimize.modelio"),
    "side-by-side": ("optimize/latency.py", "import smallnets.export.registry"),
    "floors": ("export/profile.py", "import smallnets.benchmarks.machine"),
    "serve-leaf": ("benchmarks/machine.py", "import smallnets.serve.settings"),
    "no-circle": ("optimize/modelio.py", "import smallnets.optimize.fuse"),
}


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    options = [option for contract in contracts for option in ("--contract", contract)]
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "lint_imports.py"), "--root", str(root), *options],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package sources and pyproject.toml, copied: a bad import is written into the copy, never the tree."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copy2(REPO / "pyproject.toml", root)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "data", "static", "results")
    for folder in ("smallnets", *STAGES):
        shutil.copytree(REPO / folder, root / folder, ignore=ignore)
    return root


def test_the_tree_keeps_every_contract(checkout: Path) -> None:
    result = lint_imports(checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_contract_has_a_bad_import() -> None:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert {contract["id"] for contract in contracts} == set(BAD_IMPORTS)


@pytest.mark.parametrize("contract", sorted(BAD_IMPORTS))
def test_a_bad_import_breaks_the_contract(contract: str, checkout: Path) -> None:
    name, line = BAD_IMPORTS[contract]
    path = checkout / name
    source = path.read_text()
    path.write_text(f"{source}\n{line}\n")
    try:
        result = lint_imports(checkout, contract)
    finally:
        path.write_text(source)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 broken" in result.stdout and line.rpartition(".")[2] in result.stdout, result.stdout


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


def test_the_bento_pins_are_the_constraints_pins() -> None:
    """bentofile.yaml lists the serving packages again (a Bento installs no constraints file): the same versions."""
    import yaml

    def normalized(name: str) -> str:
        return name.strip().lower().replace("_", "-")

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==")
            pins[normalized(name)] = version.strip()
    packages = yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    assert packages
    for requirement in packages:
        name, separator, version = requirement.partition("==")
        assert separator, f"bentofile.yaml: {requirement!r} is not pinned with =="
        assert pins.get(normalized(name)) == version.strip(), f"bentofile.yaml {requirement} vs constraints.txt"


def test_links_to_the_decisions_page_name_its_sections() -> None:
    """Code links its measurements' story as docs/decisions.md#section: every such section must exist."""
    import re

    page = (REPO / "docs" / "decisions.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in page.splitlines()
        if line.startswith("#")
    }
    code = (path for folder in ("smallnets", *STAGES) for path in (REPO / folder).rglob("*.py"))
    sources = [REPO / "Makefile", *code]
    links = {link for path in sources for link in re.findall(r"docs/decisions\.md#([a-z0-9-]+)", path.read_text())}
    assert links, "the code links no section"
    assert not links - anchors, sorted(links - anchors)
