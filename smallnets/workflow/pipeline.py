"""`pipeline`: a registry model exported and optimized into one folder, skipped when nothing it is made from changed.

The inputs key fingerprints the model, variant, weights, optimize settings, CPU target, the source of the stages
the folder comes from and the versions of the libraries that shape it; the folder's manifest keeps it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smallnets.core.artifacts import EXPORT_NAME
from smallnets.core.files import check_output_dir, is_up_to_date, sha256_file
from smallnets.core.targets import resolve_target
from smallnets.core.version import code_digest

if TYPE_CHECKING:
    from smallnets.export.onnx_export import ExportResult
    from smallnets.optimize.pipeline import OptimizeConfig
    from smallnets.optimize.report import OptimizeReport

# Libraries whose version changes what a pipeline folder holds.
KEY_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxsim")


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline run: registry NAME, its variant overrides and weights, then optimize's settings."""

    name: str
    optimize: OptimizeConfig
    variant: dict[str, Any] = field(default_factory=dict)
    weights: str = "random"
    rebuild: bool = False


@dataclass(frozen=True)
class PipelineResult:
    """What a run did: nothing (``report`` None, the folder was up to date) or an export and an optimize report."""

    output: Path
    inputs_key: str
    report: OptimizeReport | None = None

    @property
    def up_to_date(self) -> bool:
        return self.report is None


def run_pipeline(
    config: PipelineConfig, output: Path, on_exported: Callable[[ExportResult], None] | None = None
) -> PipelineResult:
    """Export then optimize into ``output``, unless it was made from the same inputs (and ``rebuild`` is off)."""
    from smallnets.export.onnx_export import ExportConfig, export_model
    from smallnets.optimize.folder import export_staging, optimize_staged_export

    key = inputs_key(config)
    if not config.rebuild and is_up_to_date(output, key):
        return PipelineResult(output, key)
    check_output_dir(output, config.optimize.force)  # refuse before spending time on the export
    staging = export_staging(output)
    try:
        export = ExportConfig(model=config.name, variant=config.variant, weights=config.weights)
        exported = export_model(export, staging / EXPORT_NAME)
        if on_exported:
            on_exported(exported)
        return PipelineResult(output, key, optimize_staged_export(staging, output, config.optimize, key))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def inputs_key(config: PipelineConfig) -> str:
    """Fingerprint of everything a pipeline folder is made from: rerunning with the same key changes nothing."""
    weights = config.weights
    inputs = {
        "name": config.name,
        "variant": config.variant,
        "weights": sha256_file(weights) if Path(weights).is_file() else weights,
        "config": {key: value for key, value in config.optimize.to_dict().items() if key != "force"},
        "target": resolve_target(config.optimize.target)[0].name,
        "code": code_digest(),
        "versions": {package: metadata.version(package) for package in KEY_PACKAGES},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
