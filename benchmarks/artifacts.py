"""Build, cache and reuse the ONNX artifacts each benchmark variant needs, through export and optimize.

Cache layout (one folder per model + variant + weights, one sub-folder per optimize target)::

    CACHE/<model-label>--<weights>/model.onnx            onnx-fp32 (export's output, + model.export.json)
    CACHE/<model-label>--<weights>/input.npy             the sample photos preprocessed by the model's card
    CACHE/<model-label>--<weights>/<target>[-bounded][-labelled]/model.fp32.onnx, model.int8.onnx, report.json
    CACHE/<model-label>--<weights>/openvino/model.fp32.xml                openvino-fp32 (+ .bin)
    CACHE/<model-label>--<weights>/openvino/model.default.xml             openvino-default (same IR, default precision)
    CACHE/<model-label>--<weights>/openvino/model.nncf-int8-cN[-labelled].xml  openvino-nncf-int8, same calibration

openvino-smallnets-int8 has no file of its own: it runs onnx-int8's file on OpenVINO, as `--runtime openvino` serves it.

A second run finds everything and builds nothing; building needs the export stage (torch), measuring does not,
so a cache built on x86 can be copied to an ARM box and measured there.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smallnets.benchmarks.selection import OPTIMIZED_VARIANTS, PEER_VARIANTS, SMALLNETS_INT8_ON_OPENVINO, ModelChoice
from smallnets.core.artifacts import FP32_NAME, INT8_NAME, REPORT_JSON
from smallnets.core.files import atomic_write
from smallnets.core.metadata import ModelCard
from smallnets.core.version import code_digest
from smallnets.optimize.efforts import MEASURABLE_EFFORTS, SEARCH_EFFORTS

# Recipe-search bounds handed to optimize (optimize/efforts.py): "bounded" by default, so `--models all-default`
# fits its time budget.
OPTIMIZE_EFFORTS = {name: SEARCH_EFFORTS[name] for name in MEASURABLE_EFFORTS}
DEFAULT_EFFORT = "bounded"
OPTIMIZED_FILES = dict(zip(OPTIMIZED_VARIANTS, (FP32_NAME, INT8_NAME), strict=True))


def default_cache_dir() -> Path:
    """``$SMALLNETS_CACHE`` or ``$XDG_CACHE_HOME/smallnets`` (``~/.cache/smallnets``), then ``bench-artifacts``."""
    root = os.environ.get("SMALLNETS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / (
        "smallnets"
    )
    return Path(root) / "bench-artifacts"


def weights_tag(weights: str) -> str:
    """Cache-key part for the weights: the name for random/imagenet, a content hash for a state-dict file."""
    if weights in ("random", "imagenet"):
        return weights
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist; pass --weights random|imagenet|PATH")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"file-{digest}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text)


@functools.cache
def openvino_refusal(path: Path, mtime_ns: int, size: int) -> str | None:
    """Why OpenVINO cannot read this version of the file (None when it can), read once: the bench asks for every
    measurement it plans. ``mtime_ns`` and ``size`` tell a rebuilt file from the one read."""
    from smallnets.core.openvino_runtime import UnreadableModelError, check_readable

    try:
        check_readable(path)
    except UnreadableModelError as error:
        return str(error)
    return None


@dataclass(frozen=True)
class ModelArtifacts:
    """Everything measured for one model: the files per variant, the shared input, the card and optimize report."""

    choice: ModelChoice
    weights: str
    folder: Path
    card: ModelCard
    target: str | None = None
    effort: str = DEFAULT_EFFORT
    eval_dir: Path | None = None  # labelled photos optimize splits (benchmarks.labelled); None: its demo set
    max_drop: float | None = None  # optimize's accuracy budget in top-1 points; None: optimize's default

    @property
    def calib_tag(self) -> str:
        return "-labelled" if self.eval_dir else ""

    @property
    def budget_tag(self) -> str:
        return "" if self.max_drop is None else f"-maxdrop{self.max_drop:g}"

    @property
    def exported(self) -> Path:
        return self.folder / "model.onnx"

    @property
    def input_path(self) -> Path:
        return self.folder / "input.npy"

    @property
    def optimized_dir(self) -> Path | None:
        if not self.target:
            return None
        effort = "" if self.effort == "full" else f"-{self.effort}"
        return self.folder / f"{self.target}{effort}{self.calib_tag}{self.budget_tag}"

    def peer_path(self, variant: str) -> Path:
        """OpenVINO IR of a peer variant; NNCF's int8 is named after the calibration images it shares with ours."""
        if variant == "openvino-fp32":
            return self.folder / "openvino" / "model.fp32.xml"
        if variant == "openvino-default":
            return self.folder / "openvino" / "model.default.xml"
        return self.folder / "openvino" / f"model.nncf-int8-c{self.calib_images()}{self.calib_tag}.xml"

    def calib_images(self) -> int:
        """How many calibration images optimize takes at this effort (NNCF gets the same ones)."""
        from smallnets.optimize.pipeline import OptimizeConfig

        return int(OPTIMIZE_EFFORTS[self.effort].get("calib_images", OptimizeConfig().calib_images))

    def unavailable(self, variant: str) -> str | None:
        """Why a variant cannot be measured (optimize rejected int8 for this model), or None when it can."""
        path = self.path(variant)
        if variant == SMALLNETS_INT8_ON_OPENVINO and path is not None and path.is_file():
            stat = path.stat()
            if refusal := openvino_refusal(path, stat.st_mtime_ns, stat.st_size):
                return f"{self.choice.label} {variant}: {refusal}"
        if path is None or path.is_file():
            return None
        report = self.optimize_report() or {}
        why = report.get("detail") or report.get("reason")  # detail: optimize's words for its Reason value
        return f"{self.choice.label} {variant}: not built ({why or f'{path} is missing'})"

    def path(self, variant: str) -> Path | None:
        """The ONNX file of a variant (None for ``torch``, which is built from the registry)."""
        if variant == "onnx-fp32":
            return self.exported
        if variant == SMALLNETS_INT8_ON_OPENVINO:
            return self.path("onnx-int8")
        if variant in OPTIMIZED_FILES:
            if self.optimized_dir is None:
                raise ValueError(f"variant {variant} needs an optimize target; pass --target auto|x86-vnni|...")
            return self.optimized_dir / OPTIMIZED_FILES[variant]
        if variant in PEER_VARIANTS:
            return self.peer_path(variant)
        return None

    def optimized_complete(self) -> bool:
        """optimize finished here, with the settings a build would use now.

        report.json is written last; int8 may be absent only when optimize rejected it; a build made with other
        settings (optimize's defaults or this effort changed since) or by other code does not count.
        """
        outdir, report = self.optimized_dir, self.optimize_report()
        if outdir is None or report is None or not (outdir / OPTIMIZED_FILES["onnx-opt"]).is_file():
            return False
        expected = self.optimize_config()
        used = report.get("config") or {}
        if expected is not None and any(used.get(key) != value for key, value in expected.items() if key != "force"):
            return False
        if expected is not None and (report.get("versions") or {}).get("code") != code_digest():
            return False  # built by other code: a benchmark must time what the code builds now
        return report.get("status") == "rejected" or (outdir / OPTIMIZED_FILES["onnx-int8"]).is_file()

    def optimize_config(self) -> dict[str, Any] | None:
        """The OptimizeConfig a build would use (as report.json records it); None without the optimize stage."""
        try:
            return json.loads(json.dumps(self.build_config().to_dict()))
        except ImportError:
            return None

    def build_config(self) -> Any:
        """optimize's OptimizeConfig for this model's artifacts (its target, effort and calibration photos)."""
        from smallnets.optimize.pipeline import OptimizeConfig

        bounds = OPTIMIZE_EFFORTS[self.effort]
        budget = {} if self.max_drop is None else {"max_drop": self.max_drop}
        return OptimizeConfig(target=self.target or "auto", force=True, eval_dir=self.eval_dir, **bounds, **budget)

    def optimize_report(self) -> dict[str, Any] | None:
        """optimize's report.json (agreement/accuracy of int8 vs fp32), when the int8 variant was built."""
        if self.optimized_dir is None or not (self.optimized_dir / REPORT_JSON).is_file():
            return None
        return json.loads((self.optimized_dir / REPORT_JSON).read_text())


def resolve_target_name(target: str) -> tuple[str, str]:
    """(preset name, why) for ``auto`` or a named preset, as optimize decides it."""
    from smallnets.core.targets import resolve_target as resolve_named_target

    chosen, reason = resolve_named_target(target)
    return chosen.name, reason


def check_choice(choice: ModelChoice) -> None:
    """Fail before any work on an unknown model or variant, listing what exists.

    Without the export stage (no torch, e.g. an ARM box measuring a copied cache) names are checked later,
    against the cache.
    """
    try:
        from smallnets.export.registry import get_spec, list_specs
    except ImportError:
        return
    try:
        spec = get_spec(choice.name)
    except LookupError as error:
        names = ", ".join(spec.name for spec in list_specs())
        raise LookupError(f"{error}; registered models: {names}") from None
    spec.variant(**dict(choice.overrides))


class ArtifactCache:
    """Builds missing artifacts on demand and reuses existing ones (``rebuild=True`` forces a fresh build)."""

    def __init__(
        self,
        root: str | Path,
        weights: str | None = "random",
        rebuild: bool = False,
        effort: str = DEFAULT_EFFORT,
        eval_dir: Path | None = None,
        max_drop: float | None = None,
    ) -> None:
        if effort not in OPTIMIZE_EFFORTS:
            raise ValueError(f"unknown optimize effort {effort!r}; choose from {', '.join(OPTIMIZE_EFFORTS)}")
        self.root = Path(root)
        self.weights = weights
        self.rebuild = rebuild
        self.effort = effort
        self.eval_dir = eval_dir
        self.max_drop = max_drop

    def folder(self, choice: ModelChoice, weights: str) -> Path:
        return self.root / f"{_slug(choice.label)}--{weights_tag(weights)}"

    def prepare(self, choice: ModelChoice, variants: Iterable[str], target: str | None) -> ModelArtifacts:
        """Make sure every file ``variants`` need exists (building what is missing) and return where they are."""
        variants = set(variants)
        weights, folder = self._export(choice)
        card = self._write_input(folder)
        target = target if variants & {*OPTIMIZED_FILES, SMALLNETS_INT8_ON_OPENVINO} else None
        eval_dir = self.eval_dir if weights != "random" else None  # labelled photos mean nothing to random weights
        artifacts = ModelArtifacts(choice, weights, folder, card, target, self.effort, eval_dir, self.max_drop)
        if artifacts.optimized_dir is not None:
            self._optimize(artifacts)
        for variant in sorted(variants & set(PEER_VARIANTS) - {SMALLNETS_INT8_ON_OPENVINO}):
            self._build_peer(artifacts, variant)
        return artifacts

    def _export(self, choice: ModelChoice) -> tuple[str, Path]:
        """Export (or reuse) the model; missing ImageNet weights fail as in `smallnets export` (no silent random)."""
        from smallnets.export.cli import default_weights  # standard library only; None: imagenet where it ships

        weights = default_weights(choice.name, choice.overrides, self.weights)
        folder = self.folder(choice, weights)
        if (folder / "model.onnx").is_file() and not self.rebuild:
            return weights, folder
        try:
            from smallnets.export.onnx_export import ExportConfig, export_model
        except ImportError as error:
            raise RuntimeError(
                f"{choice.label} is not in the artifact cache {self.root} and building it needs the export stage "
                f"({error}); build the cache where torch is installed and copy it here, or pass --cache-dir"
            ) from error
        folder.mkdir(parents=True, exist_ok=True)
        config = ExportConfig(model=choice.name, variant=dict(choice.overrides), weights=weights)
        try:
            export_model(config, folder / "model.onnx")
        except Exception:
            with contextlib.suppress(OSError):
                folder.rmdir()  # nothing was written; leave no empty cache entry
            raise
        return weights, folder

    def _write_input(self, folder: Path) -> ModelCard:
        """The sample photos preprocessed by the model's own card: the one input every variant is timed on."""
        from smallnets.core.images import sample_photos
        from smallnets.core.runtime import OnnxClassifier

        classifier = OnnxClassifier(folder / "model.onnx", threads=1)
        input_path = folder / "input.npy"
        if not input_path.is_file() or self.rebuild:
            buffer = io.BytesIO()
            np.save(buffer, classifier.preprocess(list(sample_photos().values())))
            atomic_write(input_path, buffer.getvalue())
        return classifier.card

    def _optimize(self, artifacts: ModelArtifacts) -> None:
        """Run optimize once per target; its report.json is written last, so it marks a complete build."""
        outdir = artifacts.optimized_dir
        assert outdir is not None
        if artifacts.optimized_complete() and not self.rebuild:
            return
        try:
            from smallnets.optimize.pipeline import optimize_model
        except ImportError as error:
            raise RuntimeError(
                f"{artifacts.choice.label} has no optimized artifacts in {outdir} and building them needs the "
                f"optimize stage ({error}); build the cache where it is installed and copy it here"
            ) from error
        optimize_model(artifacts.exported, outdir, artifacts.build_config())

    def _build_peer(self, artifacts: ModelArtifacts, variant: str) -> None:
        """OpenVINO IR from the export; NNCF calibrates on the images optimize calibrated onnx-int8 on."""
        from smallnets.benchmarks.openvino_peer import build_nncf_int8, build_openvino_fp32

        output = artifacts.peer_path(variant)
        if output.is_file() and not self.rebuild:
            return
        if variant in ("openvino-fp32", "openvino-default"):
            build_openvino_fp32(artifacts.exported, output, "f32" if variant == "openvino-fp32" else "default")
            return
        build_nncf_int8(artifacts.exported, output, calibration_batches(artifacts))


def calibration_batches(artifacts: ModelArtifacts) -> list[np.ndarray]:
    """optimize's calibration images for these artifacts (labelled part or demo set), one preprocessed array each."""
    from smallnets.benchmarks.labelled import split_labelled
    from smallnets.core.preprocess import preprocess
    from smallnets.optimize.calibration import demo_calibration_set, images_from

    count = artifacts.calib_images()
    if artifacts.eval_dir:
        split = split_labelled(artifacts.eval_dir, artifacts.card, count)
        images = images_from(split.calibration, f"{split.root} (calibration part)")
    else:
        images = demo_calibration_set(count)
    return [preprocess([image], artifacts.card.preprocessing) for image in images.images]
