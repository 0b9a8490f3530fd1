"""lint-imports over the `smallnets` namespace as Python imports it: the floors of pyproject's [tool.importlinter].

import-linter walks one folder per top-level package, but pyproject's package-dir maps the stage folders at the top
of the checkout (export/, optimize/, serve/, benchmarks/) into smallnets.*. So this lays the namespace out with
symlinks in a temporary folder, as the wheel holds it, and runs lint-imports there.

    python tools/lint_imports.py [--root CHECKOUT] [lint-imports options, e.g. --contract floors]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lay_out(root: Path, into: Path) -> None:
    """``into/smallnets`` holding the package as installed: the root folder's entries plus each mapped stage."""
    mapping: dict[str, str] = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    package = into / "smallnets"
    package.mkdir()
    for entry in (root / mapping["smallnets"]).iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in mapping.items():
        if name != "smallnets":
            into.joinpath(*name.split(".")).symlink_to(root / folder, target_is_directory=True)


def lint_imports(root: Path, options: list[str]) -> int:
    """Exit code of lint-imports (0: every contract kept) over ROOT's checkout, with ROOT's pyproject."""
    with tempfile.TemporaryDirectory(prefix="smallnets-house-") as scratch:
        lay_out(root, Path(scratch))
        env = {**os.environ, "PYTHONPATH": scratch}
        command = [sys.executable, "-c", LINT_IMPORTS, str(root / "pyproject.toml"), "--no-cache", "--no-logo"]
        return subprocess.run([*command, *options], cwd=scratch, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=CHECKOUT, help="the checkout (default: this one)")
    args, options = parser.parse_known_args()
    return lint_imports(args.root.resolve(), options)


if __name__ == "__main__":
    raise SystemExit(main())
