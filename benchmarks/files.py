"""Output files that are either complete or absent, and output folders checked before any time is spent."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write to a temporary name in the same folder, then rename: an interrupted run leaves no half file."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes 0600; results are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


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
