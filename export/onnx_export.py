"""Registry model -> one self-describing, validated ONNX file (dynamic batch, input "input", output "logits").

Exporter: ``torch.onnx.export(dynamo=True)``. torch.export specialises every dimension except the batch, so
TF-"same" padding folds into Conv pads and channel splits/shuffles become static Split/Reshape/Transpose; the
TorchScript exporter instead leaves Shape/Gather/Slice arithmetic that even onnxsim cannot fold with a dynamic
batch (ShuffleNet V2: 44 Shape + 87 Slice nodes after simplification), which hurts quantization and speed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from PIL import Image

from smallnets.core.artifacts import export_report_path
from smallnets.core.metadata import AccuracyStatus, ModelCard, write_card
from smallnets.core.runtime import OnnxClassifier, Prediction, softmax, top_k
from smallnets.core.version import __version__
from smallnets.export.labels import imagenet_classes
from smallnets.export.profile import count_macs, count_params
from smallnets.export.registry import ModelSpec, get_spec
from smallnets.export.weights import ModelWithWeights, WeightsMismatchError, WeightsUnavailableError, load_weights

__all__ = [
    "ExportConfig",
    "ExportResult",
    "ExportValidationError",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "export_model",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 18  # the dynamo exporter's own opset; lower versions need a lossy down-conversion
VALIDATION_BATCHES = (1, 7)  # 1 and an odd size > 1 prove the batch axis really is dynamic
VALIDATION_PHOTO = "chelsea"
EXPORTER = "torch.onnx.export(dynamo=True)"


class ExportValidationError(RuntimeError):
    """ONNX Runtime disagrees with PyTorch on the exported model beyond the tolerance."""


@dataclass(frozen=True)
class ExportConfig:
    """What to export. ``weights``: "random" (seeded), "imagenet" (registered checkpoint) or a state-dict path.

    ``rtol`` guards against a vacuous pass: randomly initialised networks can emit logits of 1e-14, where any
    absolute tolerance accepts garbage, so the difference must also be small relative to the output scale.
    """

    model: str
    variant: Mapping[str, Any] = field(default_factory=dict)
    weights: str = "random"
    seed: int = 0
    opset: int = MIN_OPSET
    atol: float = 1e-4
    rtol: float = 1e-3


@dataclass(frozen=True)
class ExportResult:
    path: Path
    card: ModelCard
    max_abs_diff_random: float
    max_abs_diff_photo: float
    photo: str  # "chelsea", or "synthetic" when scikit-image is missing
    photo_top5: tuple[Prediction, ...]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The numbers worth keeping beside the artifact (``OUT.export.json``)."""
        return {
            "path": str(self.path),
            "name": self.card.name,
            "variant": self.card.variant,
            "params": self.card.params,
            "macs": self.card.macs,
            "weights": self.card.weights,
            "max_abs_diff_random": self.max_abs_diff_random,
            "max_abs_diff_photo": self.max_abs_diff_photo,
            "photo": self.photo,
            "photo_top5": [p.to_dict() for p in self.photo_top5],
            "seconds": round(self.seconds, 2),
            "provenance": self.card.provenance,
        }


def export_model(config: ExportConfig, output: str | Path) -> ExportResult:
    """Build, load weights, export, attach the model card, validate against PyTorch, then publish atomically.

    Writes ``output`` and its ``export_report_path`` (MODEL.export.json); on any error neither is left behind.
    """
    started = time.perf_counter()
    output = Path(output)
    spec = get_spec(config.model)
    variant = spec.variant(**dict(config.variant))
    if config.opset < MIN_OPSET:
        raise ValueError(f"opset {config.opset} is not supported: the exporter emits opset >= {MIN_OPSET}")
    with _staged(output) as (onnx_tmp, json_tmp):
        loaded = load_weights(spec, variant, config.weights, config.seed)
        model = loaded.model.eval()
        card = _model_card(spec, variant, model, loaded, config)
        proto = _to_onnx(model, variant["resolution"], config.opset)
        card = card.with_updates(provenance={**card.provenance, "opset": _opset_of(proto)})
        _attach_card(proto, card)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, onnx_tmp)  # < 2 GB for every family member: one self-contained file, no external data
        diff_random, diff_photo, photo, top5 = _validate(model, onnx_tmp, config)
        result = ExportResult(output, card, diff_random, diff_photo, photo, top5, time.perf_counter() - started)
        json_tmp.write_text(json.dumps({"config": _jsonable(asdict(config)), "result": result.summary()}, indent=2))
    return result


@contextlib.contextmanager
def _staged(output: Path) -> Iterator[tuple[Path, Path]]:
    """Temp files beside the outputs (same file system, so ``os.replace`` is atomic), published only on success.

    Creating them up front is also the writability check, done before any expensive work.
    """
    if output.is_dir():
        raise IsADirectoryError(f"output {output} is a directory; pass a file name such as {output / 'model.onnx'}")
    report = export_report_path(output)
    staged: list[Path] = []
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        for target in (output, report):
            temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            temporary.open("xb").close()  # unlike mkstemp, honours the umask (0644 files, not 0600)
            staged.append(temporary)
    except OSError as error:
        for path in staged:
            path.unlink(missing_ok=True)
        raise OSError(f"cannot write {output}: {error.strerror or error}; pass -o with a writable path") from error
    try:
        yield staged[0], staged[1]
        os.replace(staged[1], report)
        os.replace(staged[0], output)
    finally:
        for path in staged:
            path.unlink(missing_ok=True)


def _model_card(
    spec: ModelSpec, variant: Mapping[str, Any], model: torch.nn.Module, loaded: ModelWithWeights, config: ExportConfig
) -> ModelCard:
    classes = imagenet_classes()
    random_init = {"random_init": loaded.random_init} if loaded.random_init else {}
    return ModelCard(
        name=spec.name,
        family=spec.family,
        variant=dict(variant),
        resolution=variant["resolution"],
        preprocessing=spec.preprocessing_for(variant),
        labels=classes.labels,
        synsets=classes.synsets,
        params=count_params(model),
        macs=count_macs(model, variant["resolution"]),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        weights=loaded.weights,
        accuracy=_accuracy_status(spec, config),
        provenance={
            **random_init,
            "exporter": EXPORTER,
            "smallnets": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
            "seed": config.seed,
            "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
    )


def _accuracy_status(spec: ModelSpec, config: ExportConfig) -> AccuracyStatus:
    """Random weights have no accuracy; registered ImageNet weights quote their published top-1 and its source."""
    if config.weights == "random":
        return AccuracyStatus()
    if config.weights == "imagenet" and spec.weights is not None and spec.weights.top1 is not None:
        return AccuracyStatus(
            "published",
            spec.weights.top1,
            f"ImageNet-1k val, {spec.weights.description}; not measured on this file",
        )
    return AccuracyStatus("unvalidated", source=f"weights {config.weights}: evaluate on labelled photos")


def _to_onnx(model: torch.nn.Module, resolution: int, opset: int) -> onnx.ModelProto:
    """Dynamo export with only the batch axis symbolic (example batch 2: torch.export specialises sizes 0/1).

    The example's values never matter (no data-dependent control flow), so zeros leave the global RNG alone.
    """
    example = torch.zeros(2, 3, resolution, resolution)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: "batch"},),
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except ImportError as error:
        raise RuntimeError(f"the ONNX exporter needs onnxscript: pip install onnxscript ({error})") from error
    finally:
        quiet.setLevel(level)
    return program.model_proto


def _opset_of(proto: onnx.ModelProto) -> int:
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


def _attach_card(proto: onnx.ModelProto, card: ModelCard) -> None:
    proto.producer_name = "smallnets"
    proto.producer_version = __version__
    proto.doc_string = f"{card.display_name} ({card.family}), ImageNet-1k classifier, weights {card.weights}"
    del proto.metadata_props[:]
    write_card(proto, card)


def _validate(
    model: torch.nn.Module, path: Path, config: ExportConfig
) -> tuple[float, float, str, tuple[Prediction, ...]]:
    """Run the written file through the project's one runtime and compare with PyTorch on the same arrays:
    seeded noise at every validation batch size, and a real photo preprocessed as the card says."""
    classifier = OnnxClassifier(path)
    resolution = classifier.card.preprocessing.crop
    noise = np.random.default_rng(config.seed).standard_normal((max(VALIDATION_BATCHES), 3, resolution, resolution))
    diff_random = max(
        _compare(model, classifier, noise[:batch].astype(np.float32), f"random input, batch {batch}", config)
        for batch in VALIDATION_BATCHES
    )
    photo_name, photo = _validation_photo()
    batch = classifier.preprocess([photo])
    diff_photo = _compare(model, classifier, batch, f"the {photo_name} photo", config)
    probabilities = softmax(classifier.run(batch))[0]
    return diff_random, diff_photo, photo_name, tuple(top_k(probabilities, 5, classifier.card.labels))


def _compare(
    model: torch.nn.Module, classifier: OnnxClassifier, batch: np.ndarray, what: str, config: ExportConfig
) -> float:
    onnx_logits = classifier.run(batch)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(batch)).numpy()
    if onnx_logits.shape != torch_logits.shape:
        raise ExportValidationError(
            f"ONNX output shape {onnx_logits.shape} != PyTorch {torch_logits.shape} on {what}: the batch axis is "
            "not dynamic in the exported graph"
        )
    diff = float(np.abs(onnx_logits - torch_logits).max())
    scale = float(np.abs(torch_logits).max())
    if diff > config.atol or diff > config.rtol * scale:
        raise ExportValidationError(
            f"ONNX Runtime output differs from PyTorch by {diff:.3g} (logits up to {scale:.3g}; allowed atol "
            f"{config.atol:g}, rtol {config.rtol:g}) on {what}: the exported graph is not faithful. Re-run with "
            "SMALLNETS_DEBUG=1 and report it, or loosen --atol only if the model is known to be numerically fragile"
        )
    return diff


def _validation_photo() -> tuple[str, Image.Image]:
    """skimage's chelsea; without scikit-image a deterministic synthetic picture (recorded in the result)."""
    from smallnets.core.images import sample_photos

    try:
        return VALIDATION_PHOTO, sample_photos((VALIDATION_PHOTO,))[VALIDATION_PHOTO]
    except RuntimeError:
        y, x = np.mgrid[0:300, 0:451]
        pixels = np.stack([x * 255 // 450, y * 255 // 299, (x // 25 + y // 25) % 2 * 255], axis=-1)
        return "synthetic", Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
