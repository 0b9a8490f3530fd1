"""The public Python API: the pipeline's stages as plain functions, the same ones the CLI calls.

Every stage is imported inside its function, so ``import smallnets`` stays light (no torch, no onnx) and a
serving-only install can use :func:`load` without the export or optimize dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smallnets.core.evaluation import Evaluation
    from smallnets.core.metadata import ModelCard
    from smallnets.core.runtime import OnnxClassifier
    from smallnets.export.onnx_export import ExportResult
    from smallnets.optimize.report import OptimizeReport


def export_model(
    name: str,
    output: str | Path,
    weights: str | None = None,
    variant: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> ExportResult:
    """Build registry model ``name`` with ``weights`` ("imagenet", "random" or a state-dict path) and export it.

    ``weights`` defaults to "imagenet" where the checkpoint ships with smallnets (EfficientNet-Lite0/1/2), else
    "random", which warns (RandomWeightsWarning): the model's predictions then mean nothing.
    """
    from smallnets.export.cli import default_weights
    from smallnets.export.onnx_export import ExportConfig
    from smallnets.export.onnx_export import export_model as export

    weights = default_weights(name, variant, weights)
    result = export(ExportConfig(model=name, variant=dict(variant or {}), weights=weights, seed=seed), output)
    _warn_if_random(result.card)
    return result


def optimize_model(model: str | Path, output: str | Path, **config: Any) -> OptimizeReport:
    """Simplify, fuse and quantize ``model`` into the folder ``output``; ``config`` holds OptimizeConfig fields.

    For example ``optimize_model("m.onnx", "out", target="x86-avx2", eval_dir="imagenet-val")``; without
    ``eval_dir`` the labelled folder named by ``$SMALLNETS_EVAL_DIR`` is used, when set.
    """
    from smallnets.core.labelled import eval_dir_setting
    from smallnets.optimize.pipeline import OptimizeConfig
    from smallnets.optimize.pipeline import optimize_model as optimize

    config["eval_dir"] = eval_dir_setting(config.get("eval_dir"))
    paths = {key: Path(value) for key, value in config.items() if key.endswith("_dir") and value is not None}
    return optimize(model, output, OptimizeConfig(**{**config, **paths}))


def load(
    model: str | Path, providers: list[str] | None = None, threads: int | None = None, runtime: str | None = None
) -> OnnxClassifier:
    """An ONNX classifier from an .onnx file or an optimize output folder (its int8 model when there is one).

    ``runtime``: "onnxruntime", or "openvino" (the ``openvino`` extra) to run the same file on OpenVINO; by default
    the one the file was built for (``--target x86-openvino``: OpenVINO; every other file: onnxruntime).

    ``load(path).classify(images, k=5)`` gives the top-k predictions per image (PIL images or file paths, one or
    a list). A model with random weights warns (RandomWeightsWarning): its predictions mean nothing.
    """
    from smallnets.core.loading import load_classifier

    classifier = load_classifier(model, providers=providers, threads=threads, runtime=runtime)
    _warn_if_random(classifier.card)
    return classifier


def _warn_if_random(card: ModelCard) -> None:
    """A Python warning at the caller's line: the CLI prints its own, scripts and notebooks get this one."""
    if card.weights_note:
        import warnings

        from smallnets.core.metadata import RandomWeightsWarning

        warnings.warn(card.weights_note, RandomWeightsWarning, stacklevel=3)


def evaluate(
    model: str | Path | OnnxClassifier, eval_dir: str | Path | None = None, limit: int | None = None
) -> Evaluation:
    """Top-1/top-5 (95% intervals) of a model on a labelled ImageFolder (``DIR/SYNSET/photo.JPEG``).

    ``eval_dir`` defaults to ``$SMALLNETS_EVAL_DIR``; ``model`` is an .onnx file, an optimize output folder or a
    classifier from :func:`load`. The same function optimize's gate and the benchmarks use.
    """
    from smallnets.core.evaluation import evaluate as run
    from smallnets.core.labelled import EVAL_DIR_ENV, eval_dir_setting

    folder = eval_dir_setting(eval_dir)
    if folder is None:
        raise ValueError(f"no labelled photos: pass eval_dir or set {EVAL_DIR_ENV} (DIR/SYNSET/photo.JPEG)")
    return run(model if not isinstance(model, str | Path) else load(model), folder, limit=limit)
