"""An export optimized into an output folder, the export's own files kept beside the result.

`smallnets optimize DIR` (a pipeline folder again) and the pipeline workflow both stage the export in a hidden
folder beside OUTDIR, optimize it into OUTDIR and move the export files in: one way, written once.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from smallnets.core.artifacts import EXPORT_NAME
from smallnets.core.files import add_to_manifest

if TYPE_CHECKING:
    from smallnets.optimize.pipeline import OptimizeConfig
    from smallnets.optimize.report import OptimizeReport


def export_staging(outdir: Path) -> Path:
    """A fresh hidden folder beside OUTDIR for the export (removed afterwards: never one that existed before)."""
    outdir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{outdir.name}.export-", dir=outdir.parent))


def optimize_staged_export(
    staging: Path, outdir: Path, config: OptimizeConfig, inputs_key: str | None = None
) -> OptimizeReport:
    """Optimize STAGING/model.export.onnx into OUTDIR, then move the export files beside the result."""
    from smallnets.optimize.pipeline import optimize_model

    report = optimize_model(staging / EXPORT_NAME, outdir, config)
    names = []
    for path in staging.iterdir():
        path.replace(outdir / path.name)
        names.append(path.name)
    add_to_manifest(outdir, names, inputs_key)
    return report


def reoptimize_folder(folder: Path, outdir: Path, config: OptimizeConfig) -> OptimizeReport:
    """Optimize a pipeline folder's model.export.onnx again; the export files move into OUTDIR with the result."""
    staging = export_staging(outdir)
    try:
        for path in folder.glob(f"{Path(EXPORT_NAME).stem}.*"):  # the export and the JSON written beside it
            shutil.copy2(path, staging / path.name)
        return optimize_staged_export(staging, outdir, config)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
