"""What the code is: the package version (read by the CLI, the export's model card, the server and pyproject) and
a digest of the source of the stages that build models (so a reused build can tell it was made by other code)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

__version__ = "0.1.0"

# The stages whose source an exported and optimized model comes from.
BUILD_SOURCES = ("smallnets.core", "smallnets.export", "smallnets.optimize")


def code_digest() -> str:
    """SHA-256 over the source of :data:`BUILD_SOURCES`, found by package name (this module imports no stage)."""
    digest = hashlib.sha256()
    for package in BUILD_SOURCES:
        spec = importlib.util.find_spec(package)
        for folder in spec.submodule_search_locations or () if spec else ():
            for path in sorted(Path(folder).rglob("*.py")):
                digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
