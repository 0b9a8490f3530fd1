"""benchmarks/machine.py: every results file names the commit it measured, the CPU kind and peer versions."""

from __future__ import annotations

import subprocess
from pathlib import Path

from smallnets.benchmarks.machine import LIBRARIES, machine_block, source_commit


def git(folder: Path, *args: str) -> str:
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    return subprocess.run(["git", *identity, *args], cwd=folder, check=True, capture_output=True, text=True).stdout


def test_commit_is_read_from_git_and_marks_uncommitted_changes(tmp_path: Path) -> None:
    assert source_commit(tmp_path) is None  # not a checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "--short", "HEAD").strip()
    assert source_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == f"{head}+dirty"


def test_machine_block_names_cpu_kind_commit_and_peer_libraries() -> None:
    block = machine_block()
    assert block["cpu_kind"] and "commit" in block
    assert {"openvino", "nncf"} <= set(LIBRARIES) <= set(block["libraries"])
