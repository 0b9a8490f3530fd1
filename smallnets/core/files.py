"""Output files that are either complete or absent, folders checked before any time is spent, file digests.

Every stage writes through these, so an interrupted run never leaves half an artifact behind, and `--force`
replaces only folders smallnets wrote itself (listed in their manifest), never a file it did not write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` only if the block succeeds."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes 0600; artifacts are meant to be shared
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text or bytes so that ``path`` holds either the old content or all of the new."""
    with atomic_output(path) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` if needed and prove it is writable now, so a long run cannot fail at its very end."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check."):
            pass
    except OSError as error:
        raise OSError(
            f"{what} {path} is not writable ({error.strerror or error}); choose another with -o DIR"
        ) from None
    return path


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (checkpoints and models are tens of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Every output folder a command writes gets this manifest: the list of files smallnets put there. `--force` may
# replace a folder only when everything in it is listed, so a user's own file is never deleted.
MANIFEST_NAME = ".smallnets-manifest.json"
SOURCE_TREE_MARKERS = ("pyproject.toml", "setup.py", ".git", "__init__.py")


class OutputExistsError(FileExistsError):
    """An output folder may not be replaced (not ours, protected, or --force not given); the message says why."""


def write_manifest(
    folder: str | Path, command: str, files: Sequence[str] | None = None, inputs_key: str | None = None
) -> Path:
    """Record ``files`` (default: every file now in ``folder``) as written by ``smallnets COMMAND``.

    ``inputs_key`` fingerprints what the folder was made from, so a rerun with the same inputs can skip the work.
    """
    folder = Path(folder)
    listed = sorted(set(files if files is not None else _relative_files(folder)) - {MANIFEST_NAME})
    manifest = {"producer": f"smallnets {command}", "inputs_key": inputs_key, "files": listed}
    return atomic_write(folder / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def add_to_manifest(folder: str | Path, names: Sequence[str], inputs_key: str | None = None) -> Path:
    """List more files of ``folder`` as ours (the pipeline adds the export beside optimize's files)."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise OutputExistsError(f"{folder} has no {MANIFEST_NAME}: it was not written by smallnets")
    command = str(manifest.get("producer", "smallnets")).removeprefix("smallnets ")
    return write_manifest(folder, command, [*manifest["files"], *names], inputs_key or manifest.get("inputs_key"))


def is_up_to_date(folder: str | Path, inputs_key: str) -> bool:
    """``folder`` was made from ``inputs_key`` and still holds every file it listed, and nothing else."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    return (
        manifest is not None
        and manifest.get("inputs_key") == inputs_key
        and all((folder / name).exists() for name in manifest["files"])
        and not foreign_files(folder)
    )


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of ``folder``, or None when there is none (or it is unreadable, which counts as none)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), list) else None


def check_output_dir(folder: str | Path, force: bool) -> None:
    """Refuse, before any work, an output folder that may not be (re)written; one-line reason in the error."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} exists and is not a folder: choose another -o DIR")
    protected = protected_reason(folder)
    if protected:
        raise OutputExistsError(f"refusing to write into {folder}: it is {protected}; choose a new folder with -o DIR")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    foreign = foreign_files(folder)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputExistsError(
            f"refusing to replace {folder}: it holds files smallnets did not write ({shown}); "
            "move them away or choose another -o DIR"
        )
    if not force:
        raise OutputExistsError(f"{folder} holds an earlier smallnets output: pass --force to replace it")


def protected_reason(folder: Path) -> str | None:
    """Why ``folder`` must never be replaced whatever it holds: '.', '..', home, root, a source tree."""
    resolved = folder.expanduser().resolve()
    if resolved == Path.cwd().resolve():
        return "the current folder"
    if Path.cwd().resolve().is_relative_to(resolved):
        return "a parent of the current folder"
    if resolved == Path.home().resolve():
        return "your home folder"
    if resolved.is_dir():
        marker = next((name for name in SOURCE_TREE_MARKERS if (resolved / name).exists()), None)
        if marker:
            return f"a source tree (it has {marker})"
    return None


def foreign_files(folder: Path) -> list[str]:
    """Files in ``folder`` that no manifest lists (its own, or a sub-folder's: bench-http writes into bench's)."""
    manifest = read_manifest(folder)
    ours = set(manifest["files"]) if manifest else set()
    foreign = []
    for name in _relative_files(folder):
        if name == MANIFEST_NAME or name in ours or Path(name).name == MANIFEST_NAME:
            continue
        owner = next((parent for parent in Path(name).parents if (folder / parent / MANIFEST_NAME).is_file()), None)
        inner = read_manifest(folder / owner) if owner not in (None, Path(".")) else None
        if not (inner and Path(name).relative_to(owner).as_posix() in inner["files"]):
            foreign.append(name)
    return foreign


def _relative_files(folder: Path) -> list[str]:
    """Every file below ``folder`` as a POSIX relative path (empty folders and symlinks count as files)."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_dir() or not any(path.iterdir()):
            found.append(path.relative_to(folder).as_posix())
    return found


def replace_folder(new: Path, folder: Path) -> None:
    """Swap the finished folder ``new`` into ``folder``; the old content is removed only after the swap.

    ``folder`` is checked again first: a file someone put there during a long run is never deleted.
    """
    check_output_dir(folder, force=True)
    trash = new.with_name(f"{new.name}.previous")
    if folder.exists():
        os.replace(folder, trash)
    os.replace(new, folder)
    shutil.rmtree(trash, ignore_errors=True)
