"""Run the project's Python code on aarch64 under QEMU user-mode emulation (built by benchmarks/arm64/setup.sh).

Host side only, standard library only: tests and scripts call ``Arm64Environment.load()`` and ``.run([...])``;
``benchmarks/arm64/python`` is the same thing as a command. Everything that runs inside gets
``SMALLNETS_EMULATED=1`` so benchmark figures are marked as emulated, not device numbers.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUP_COMMAND = "bash benchmarks/arm64/setup.sh"
ROOT_PYTHON = "usr/bin/python3.11"


def package_view(cache: Path) -> Path:
    """A folder from which ``import smallnets.<stage>`` works without installing the project.

    The stage folders sit at the top of the checkout and pyproject's package-dir maps them into ``smallnets``; the
    guest interpreter cannot use the host's editable install, so it gets a tree of links laid out the same way.
    """
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    view = cache / "src"
    package = view / "smallnets"
    package.mkdir(parents=True, exist_ok=True)
    links = {entry.name: entry for entry in (REPO / mapping["smallnets"]).iterdir() if entry.name != "__pycache__"}
    links |= {name.removeprefix("smallnets."): REPO / folder for name, folder in mapping.items() if "." in name}
    for name, target in links.items():
        link = package / name
        if link.is_symlink() and link.readlink() == target:
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    return view


class Arm64EnvironmentMissing(RuntimeError):
    """The emulated aarch64 environment has not been built on this machine."""


def cache_dir() -> Path:
    """Where setup.sh keeps the root, wheels and qemu (same default and override as the script)."""
    if "SMALLNETS_ARM64_ROOT" in os.environ:
        return Path(os.environ["SMALLNETS_ARM64_ROOT"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "smallnets" / "arm64"


@dataclass(frozen=True)
class Arm64Environment:
    """qemu-aarch64 + an arm64 Debian root with python3.11 + a site dir with aarch64 wheels."""

    qemu: Path
    root: Path
    site: Path
    cpu: str

    @classmethod
    def load(cls, cache: Path | None = None) -> Arm64Environment:
        cache = cache or cache_dir()
        try:
            config = json.loads((cache / "env.json").read_text())
            environment = cls(Path(config["qemu"]), Path(config["root"]), Path(config["site"]), config["cpu"])
        except (OSError, ValueError, KeyError) as error:
            raise Arm64EnvironmentMissing(
                f"no emulated aarch64 environment in {cache}: build it with `{SETUP_COMMAND}`"
            ) from error
        if not (environment.qemu.is_file() and (environment.root / ROOT_PYTHON).is_file()):
            raise Arm64EnvironmentMissing(f"{cache} is incomplete; rebuild it with `{SETUP_COMMAND}`")
        return environment

    def command(self, args: Sequence[str]) -> list[str]:
        """The argv that runs the aarch64 python3.11 with ``args``."""
        return [str(self.qemu), "-cpu", self.cpu, "-L", str(self.root), str(self.root / ROOT_PYTHON), *args]

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A clean environment: the host's PYTHONPATH, user site and venv hold x86 packages."""
        keep = ("PATH", "HOME", "TMPDIR", "TERM", "SMALLNETS_ARM64_ROOT")
        environment = {name: os.environ[name] for name in keep if name in os.environ}
        environment.update(
            {
                "LANG": "C.UTF-8",
                "PYTHONPATH": f"{self.site}{os.pathsep}{package_view(cache_dir())}",
                "PYTHONNOUSERSITE": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                "SMALLNETS_EMULATED": "1",
                # Without binfmt the guest cannot exec aarch64 binaries itself: the benchmark's fresh measuring
                # processes are started through the emulator too.
                "SMALLNETS_MEASURE_PYTHON": shlex.join(self.command([])),
            }
        )
        environment.update(extra or {})
        return environment

    def run(
        self, args: Sequence[str], extra_env: Mapping[str, str] | None = None, **kwargs: object
    ) -> subprocess.CompletedProcess:
        """Run the aarch64 interpreter (``subprocess.run`` keyword arguments pass through).

        The default working folder is the package view: ``-m`` puts the working folder first on sys.path, and
        from the checkout that would import the bare ``smallnets/`` folder, which has no stage packages.
        """
        kwargs.setdefault("cwd", package_view(cache_dir()))
        return subprocess.run(self.command(args), env=self.environ(extra_env), **kwargs)  # type: ignore[call-overload]


_CHECK = """
import platform, sys
import numpy, onnxruntime, PIL
from smallnets.core.hardware import detect_cpu
print(f"python {platform.python_version()} on {platform.machine()}; onnxruntime {onnxruntime.__version__}, "
      f"numpy {numpy.__version__}, pillow {PIL.__version__}")
print("providers:", ", ".join(onnxruntime.get_available_providers()))
print("cpu:", detect_cpu())
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``env.py ARGS...`` runs the aarch64 python with ARGS; ``--check`` checks it."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        environment = Arm64Environment.load()
    except Arm64EnvironmentMissing as error:
        print(f"arm64: error: {error}", file=sys.stderr)
        return 2
    if args == ["--check"]:
        return environment.run(["-c", _CHECK]).returncode
    os.execve(environment.qemu, environment.command(args), environment.environ())


if __name__ == "__main__":
    sys.exit(main())
