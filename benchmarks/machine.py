"""The machine block recorded with every result: CPU and ISA features, library versions, thread settings.

Under QEMU user-mode emulation (the arm64 harness sets ``SMALLNETS_EMULATED=1``) every latency figure is an
emulator figure, so the block and every row say so.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from smallnets.core.hardware import detect_cpu

LIBRARIES = ("smallnets", "onnxruntime", "numpy", "torch", "onnx", "onnxsim", "pillow", "openvino", "nncf")
EMULATED_WARNING = (
    "EMULATED: measured under QEMU user-mode emulation; latencies are emulator figures, not comparable with "
    "native hardware."
)


def is_emulated() -> bool:
    return os.environ.get("SMALLNETS_EMULATED", "").strip().lower() not in ("", "0", "false", "no")


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions read from package metadata (importing torch just to ask would cost seconds)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


SOURCE_FOLDER = Path(__file__).resolve().parent


def source_commit(folder: Path = SOURCE_FOLDER) -> str | None:
    """The git commit the measured code came from (short hash, "+dirty" with uncommitted changes); None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True
        )
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_block(
    threads: Sequence[int] = (), target: str | None = None, target_reason: str | None = None
) -> dict[str, Any]:
    cpu = detect_cpu()
    return {
        "cpu": cpu.to_dict(),
        "cpu_kind": cpu_kind(cpu.features, cpu.arch),
        "commit": source_commit(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "threads": {"intra_op": list(threads), "inter_op": 1, "execution_mode": "sequential"} if threads else None,
        "target": target,
        "target_reason": target_reason,
        "emulated": is_emulated(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def cpu_kind(features: Sequence[str] | None = None, arch: str | None = None) -> str:
    """The CPU kind as the project names it (avx512_vnni, avx2, arm64_dotprod, ...), for folder and file names."""
    if features is None or arch is None:
        cpu = detect_cpu()
        features, arch = cpu.features, cpu.arch
    for flag in ("amx_int8", "avx512_vnni", "avx_vnni", "avx2", "i8mm", "asimddp"):
        if flag in features:
            return {"i8mm": "arm64_i8mm", "asimddp": "arm64_dotprod"}.get(flag, flag)
    return arch
