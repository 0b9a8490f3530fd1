"""The image's base without Docker Hub: Debian bookworm minbase + python3.11 from the configured apt mirror.

Where ``python:3.11-slim`` cannot be pulled (no Docker Hub, only package registries), `debootstrap` builds the
same Debian release from the apt mirror this machine already uses, and `podman import` / `docker import` turns the
tree into an image. It is built once per platform and reused while the tag exists (``--rebuild`` replaces it).

What the image carries: python3.11 (and its venv module, for the build stage), security updates of the day, the
public Debian sources list; no apt lists or caches, no docs, and nothing of the host (debootstrap copies the host's
resolv.conf and hostname in; they are removed). A foreign platform (arm64 on an x86 host) runs its second stage
under qemu user emulation (binfmt), like every RUN of the image build after it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from smallnets.serve.engines import Engine, EngineMissingError

SUITE = "bookworm"
PYTHON = "python3.11"
# debootstrap takes python3.11; apt adds the venv module after (debootstrap does not resolve its virtual dependency).
PACKAGES = (PYTHON, f"{PYTHON}-venv")
BASE_REPOSITORY = "smallnets-base"
DEBIAN_ARCH = {"linux/amd64": "amd64", "linux/arm64": "arm64"}
QEMU_BINFMT = {"arm64": "qemu-aarch64", "amd64": "qemu-x86_64"}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What the image's /etc/apt/sources.list says: the public archive, never the host's mirror.
PUBLIC_SOURCES = (
    f"deb http://deb.debian.org/debian {SUITE} main\n"
    f"deb http://deb.debian.org/debian {SUITE}-updates main\n"
    f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
)
# Host files debootstrap copies in, and what apt and dpkg leave behind that serving never reads.
REMOVED = (
    "etc/resolv.conf",
    "etc/hostname",
    "etc/machine-id",
    "var/lib/apt/lists/*",
    "var/cache/apt/*",
    "var/cache/debconf/*-old",
    "var/log/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/lintian/*",
)
STEP_TIMEOUT_S = 1800


@dataclass(frozen=True)
class BaseImage:
    tag: str
    platform: str
    built: bool  # False: an existing image was reused
    seconds: float


def base_image_tag(platform: str) -> str:
    return f"{BASE_REPOSITORY}:{SUITE}-{PYTHON}-{DEBIAN_ARCH[platform]}"


def configured_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian archive URL of this machine's apt sources (one-line or deb822), else deb.debian.org."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list"))]
    files += sorted((sources / "sources.list.d").glob("*.sources"))
    for path in files:
        if path.is_file():
            for url in re.findall(r"(?m)^(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(https?://\S+)", path.read_text()):
                if re.search(r"/debian/?$", url):
                    return url.rstrip("/")
    return DEFAULT_MIRROR


def ensure_base_image(engine: Engine, platform: str, rebuild: bool = False) -> BaseImage:
    """The base image for ``platform``: reused when present, else built (and tagged only once complete)."""
    if platform not in DEBIAN_ARCH:
        raise ValueError(f"unknown platform {platform!r}: choose one of {', '.join(DEBIAN_ARCH)}")
    tag = base_image_tag(platform)
    if not rebuild and engine.image_exists(tag):
        return BaseImage(tag, platform, built=False, seconds=0.0)
    started = time.monotonic()
    build_base_image(engine, platform, tag)
    return BaseImage(tag, platform, built=True, seconds=time.monotonic() - started)


def check_can_build(platform: str) -> None:
    """Root, debootstrap, and for a foreign architecture its qemu binfmt handler: else one line naming the fix."""
    alternative = "or pass --base python:3.11-slim where Docker Hub is reachable"
    if os.geteuid() != 0:
        raise PermissionError(
            f"building the base image needs root (debootstrap, chroot): run it as root, {alternative}"
        )
    if shutil.which("debootstrap") is None:
        raise EngineMissingError(f"debootstrap is not installed: apt-get install debootstrap, {alternative}")
    arch = DEBIAN_ARCH[platform]
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    if arch != host and not binfmt_enabled(QEMU_BINFMT[arch]):
        raise EngineMissingError(
            f"{platform} programs cannot run on this {host} host: apt-get install qemu-user-static binfmt-support "
            f"(registers {QEMU_BINFMT[arch]} with binfmt_misc; in a VM without it mounted: "
            "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc && update-binfmts --enable)"
        )


def binfmt_enabled(handler: str) -> bool:
    entry = Path("/proc/sys/fs/binfmt_misc") / handler
    return entry.is_file() and entry.read_text().startswith("enabled")


def build_base_image(engine: Engine, platform: str, tag: str) -> None:
    check_can_build(platform)
    arch = DEBIAN_ARCH[platform]
    mirror = configured_mirror()
    with tempfile.TemporaryDirectory(prefix="smallnets-base-", dir="/var/tmp") as scratch:
        root = Path(scratch) / "root"
        print(f"base image: debootstrap {SUITE} ({arch}, minbase + {', '.join(PACKAGES)}) from {mirror}", flush=True)
        command = ["debootstrap", "--variant=minbase", f"--arch={arch}", f"--include={PACKAGES[0]}"]
        step([*command, SUITE, str(root), mirror], "debootstrap")
        security = re.sub(r"/debian$", "/debian-security", mirror)
        (root / "etc/apt/sources.list").write_text(
            f"deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\ndeb {security} {SUITE}-security main\n"
        )
        print(f"base image: {' '.join(PACKAGES[1:])} and security updates", flush=True)
        apt = ["chroot", str(root), "apt-get", "-qq", "-y", "--no-install-recommends"]
        step([*apt, "update"], "apt-get update in the base")
        step([*apt, "install", *PACKAGES[1:]], "apt-get install in the base")
        step([*apt, "upgrade"], "apt-get upgrade in the base")
        step([*apt, "clean"], "apt-get clean in the base")
        (root / "etc/apt/sources.list").write_text(PUBLIC_SOURCES)
        for pattern in REMOVED:
            for path in root.glob(pattern):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        import_tree(engine, root, platform, tag)


def step(command: list[str], what: str) -> None:
    """Run one build step; on failure, its last output line in the one-line error."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
        raise RuntimeError(f"base image: {what} failed (exit {result.returncode}): {lines[-1]}")


def import_tree(engine: Engine, root: Path, platform: str, tag: str) -> None:
    """`tar | engine import`: the image is tagged only by a complete import."""
    arch = DEBIAN_ARCH[platform]
    changes = ["--change", 'CMD ["python3.11"]', "--change", "ENV LANG=C.UTF-8"]
    changes += ["--change", f"LABEL org.opencontainers.image.title={BASE_REPOSITORY}"]
    changes += ["--change", f"LABEL org.opencontainers.image.description=Debian {SUITE} minbase + {PYTHON}"]
    where = ["--arch", arch] if engine.name == "podman" else ["--platform", platform]
    tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-cf", "-", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        engine.command("import", *where, *changes, "-", tag), stdin=tar.stdout, capture_output=True, text=True
    )
    tar.stdout.close()
    if tar.wait() != 0 or imported.returncode != 0:
        lines = (imported.stderr.strip() or "tar failed").splitlines()
        raise RuntimeError(f"base image: {engine.name} import failed: {lines[-1]}")
