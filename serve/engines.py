"""Which container engine builds and runs the image here: Docker where an engine answers, else podman.

BentoML's containerize backends name the same two (``docker``, ``podman``). Only the standard library: the CLI
imports this to fail fast, before BentoML loads.

Podman as root starts containers with RLIMIT_NOFILE 1048576 and RLIMIT_NPROC 4194304; where the host's hard
limits are lower (a VM, a CI runner), runc may not raise them and every RUN and `podman run` fails ("error setting
rlimits"), so the limits are passed down to the host's hard limits, for the build and in the printed run line.
NPROC also stays at kernel.pid_max: on a 6.18 Firecracker VM (hard limit 96367, pid_max 32768) runc refused every
value above pid_max.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ENGINES = ("docker", "podman")
INSTALL_HINT = "install podman (Debian/Ubuntu: apt-get install podman runc) or Docker Engine"
PODMAN_ROOT_ULIMITS = {"nofile": (resource.RLIMIT_NOFILE, 1048576), "nproc": (resource.RLIMIT_NPROC, 4194304)}
PROBE_TIMEOUT_S = 20


class EngineMissingError(RuntimeError):
    """No container engine answers on this machine."""


@dataclass(frozen=True)
class Engine:
    name: str  # "docker" | "podman": BentoML's backend of the same name
    binary: str

    def command(self, *args: str) -> list[str]:
        return [self.binary, *args]

    def run(self, *args: str, timeout: float | None = None, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout, check=check)

    def ulimits(self) -> dict[str, tuple[int, int]]:
        """Per-container limits to pass (podman only): podman's root defaults lowered to the host's hard limits."""
        if self.name != "podman":
            return {}
        limits = {}
        for name, (kind, podman_default) in PODMAN_ROOT_ULIMITS.items():
            hard = resource.getrlimit(kind)[1]
            hard = podman_default if hard == resource.RLIM_INFINITY else hard
            if kind == resource.RLIMIT_NPROC:
                hard = min(hard, pid_max())
            if hard < podman_default:
                limits[name] = (hard, hard)
        return limits

    def ulimit_flags(self) -> list[str]:
        return [flag for name, (soft, hard) in self.ulimits().items() for flag in ("--ulimit", f"{name}={soft}:{hard}")]

    def image_exists(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, timeout=PROBE_TIMEOUT_S).returncode == 0

    def image_id(self, tag: str) -> str | None:
        result = self.run("image", "inspect", "--format", "{{.Id}}", tag, timeout=PROBE_TIMEOUT_S)
        return result.stdout.strip() if result.returncode == 0 else None

    def image_size(self, tag: str) -> int:
        """Bytes of the image's layers, as `docker images` / `podman images` count them."""
        result = self.run("image", "inspect", "--format", "{{.Size}}", tag, timeout=PROBE_TIMEOUT_S, check=True)
        return int(result.stdout.strip())

    def image_labels(self, tag: str) -> dict[str, str]:
        result = self.run("image", "inspect", "--format", "{{json .Config.Labels}}", tag, timeout=PROBE_TIMEOUT_S)
        if result.returncode != 0:
            return {}
        return json.loads(result.stdout) or {}

    def image_architecture(self, tag: str) -> str:
        result = self.run("image", "inspect", "--format", "{{.Architecture}}", tag, timeout=PROBE_TIMEOUT_S, check=True)
        return result.stdout.strip()

    def remove_image(self, tag: str) -> None:
        self.run("image", "rm", "--force", tag, timeout=120)


def pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return PODMAN_ROOT_ULIMITS["nproc"][1]


def docker_answers(binary: str) -> bool:
    """`docker info` reaches an engine (a docker client alone, or a podman-docker shim without podman, does not)."""
    try:
        probe = subprocess.run(
            [binary, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and bool(probe.stdout.strip())


def detect_engine(preferred: str | None = None) -> Engine:
    """``preferred`` if given, else Docker when an engine answers, else podman; one that cannot work is refused."""
    if preferred not in (None, *ENGINES):
        raise ValueError(f"unknown container engine {preferred!r}: choose one of {', '.join(ENGINES)}")
    docker, podman = shutil.which("docker"), shutil.which("podman")
    if preferred in (None, "docker") and docker and docker_answers(docker):
        return Engine("docker", docker)
    if preferred in (None, "podman") and podman:
        engine = Engine("podman", podman)
        check_podman(engine)
        return engine
    if preferred == "docker":
        problem = "`docker info` reaches no Docker engine" if docker else "docker is not installed"
        raise EngineMissingError(f"{problem}: start the Docker daemon, or use --engine podman; {INSTALL_HINT}")
    if preferred == "podman":
        raise EngineMissingError(f"podman is not installed: {INSTALL_HINT}")
    problem = "`docker info` reaches no Docker engine and podman is not installed" if docker else "no docker or podman"
    raise EngineMissingError(f"no container engine here ({problem}): {INSTALL_HINT}")


def check_podman(engine: Engine) -> None:
    """`podman info` works (its storage and runtime are usable), else one line with podman's own reason."""
    try:
        probe = engine.run("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise EngineMissingError(f"`podman info` did not answer in {PROBE_TIMEOUT_S} s: check podman") from None
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        raise EngineMissingError(f"podman does not work here ({reason}): fix podman (`podman info`) or {INSTALL_HINT}")
