"""The one way to run a smallnets ONNX model on images: a runtime's session + card-driven pre/post-processing.

The runtime is ONNX Runtime, or OpenVINO where chosen (core/openvino_runtime.py); the rest is the same for both.

Every stage reuses this: export validation, optimize calibration/validation, the BentoML service, benchmarks.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from smallnets.core.hardware import detect_cpu
from smallnets.core.images import load_image, to_rgb
from smallnets.core.metadata import ModelCard, RandomWeightsWarning, read_card
from smallnets.core.openvino_runtime import OpenVinoSession
from smallnets.core.preprocess import preprocess
from smallnets.core.targets import (
    CPU_PROVIDER,
    EXECUTION_PROVIDERS,
    ONNXRUNTIME,
    OPENVINO,
    check_runtime,
    execution_provider,
    int8_fit_note,
)

# What classify takes: one picture or file path, or a sequence of them.
ImageInput = Image.Image | str | Path
Images = ImageInput | Sequence[ImageInput]


class ProviderError(ValueError):
    """A requested execution provider is unknown or not built into this onnxruntime."""


@dataclass(frozen=True)
class Prediction:
    class_id: int
    label: str
    score: float

    def to_dict(self) -> dict[str, object]:
        return {"class_id": self.class_id, "label": self.label, "score": self.score}


def resolve_providers(requested: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Map user names (aliases of core.targets.EXECUTION_PROVIDERS, or full names) to available providers.

    Returns (providers, notes): unavailable accelerated providers fall back to the CPU provider with a note,
    so a Bento built for ARM still starts on a wheel without XNNPACK/ACL. Without a request, the registry's
    ``by_default`` providers this build has, in its order.
    """
    available = ort.get_available_providers()
    if not requested:
        defaults = [p.name for p in EXECUTION_PROVIDERS.values() if p.by_default and p.name in available]
        return defaults or [CPU_PROVIDER.name], []
    chosen: list[str] = []
    notes: list[str] = []
    for name in requested:
        provider = execution_provider(name)
        full = provider.name if provider else name
        if not full.endswith("ExecutionProvider"):
            raise ProviderError(f"unknown execution provider {name!r}; choose from {sorted(EXECUTION_PROVIDERS)}")
        if full in available:
            chosen.append(full)
        else:
            hint = f" (for OpenVINO: --runtime {OPENVINO})" if full == EXECUTION_PROVIDERS[OPENVINO].name else ""
            notes.append(f"{full} is not available in this onnxruntime build ({available}); using CPU{hint}")
    if CPU_PROVIDER.name not in chosen:
        chosen.append(CPU_PROVIDER.name)
    return chosen, notes


def provider_options(providers: Sequence[str]) -> list[dict[str, str]]:
    """The session options each provider needs (core.targets.ExecutionProvider.options), in the same order."""
    return [dict(provider.options) if (provider := execution_provider(name)) else {} for name in providers]


def resolve_runtime(path: str | Path, requested: str | None = None) -> str:
    """``requested``, else the runtime the file was built for: its int8 card's target says (x86-openvino:
    OpenVINO), every other file runs on onnxruntime. What serving, the CLI and ``smallnets.load`` run."""
    return check_runtime(requested) if requested else read_card(path).runtime


def ort_session(
    path: Path, providers: list[str], threads: int, memory_arena: bool, spinning: bool
) -> ort.InferenceSession:
    """An onnxruntime session on ``threads`` intra-op threads, one model run at a time."""
    options = ort.SessionOptions()
    # Set explicitly: ORT ignores OMP_NUM_THREADS, and N workers x all cores oversubscribes.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The arena keeps the peak of the largest batch ever run; idle pool threads spin-wait for the next run and
    # steal the CPU of work beside them: the server turns both off (docs/decisions.md#serving-sessions).
    options.enable_cpu_mem_arena = memory_arena
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(
        str(path), sess_options=options, providers=providers, provider_options=provider_options(providers)
    )


def _as_image(item: ImageInput) -> Image.Image:
    """A PIL image as given, or the file at a path read the way the CLI reads it (EXIF rotation, RGB)."""
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, str | Path):
        return load_image(Path(item))
    raise TypeError(f"classify takes PIL images or image file paths, got {type(item).__name__}")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(probabilities: np.ndarray, k: int, labels: Sequence[str]) -> list[Prediction]:
    """The k most probable classes of one probability vector, best first."""
    k = min(k, probabilities.shape[-1])
    indices = np.argpartition(-probabilities, k - 1)[:k]
    indices = indices[np.argsort(-probabilities[indices], kind="stable")]
    return [Prediction(int(i), labels[i] if i < len(labels) else str(i), float(probabilities[i])) for i in indices]


class OnnxClassifier:
    """One smallnets ONNX model in a runtime's session, with its card's preprocessing and labels.

    ``memory_arena`` and ``spinning`` are onnxruntime's; OpenVINO's session has neither an arena nor spinning
    pool threads to turn off.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        card: ModelCard | None = None,
        memory_arena: bool = True,
        spinning: bool = True,
        runtime: str = ONNXRUNTIME,
    ) -> None:
        self.path = Path(path)
        self.runtime = check_runtime(runtime)
        cpu = detect_cpu()
        self.threads = threads or cpu.usable_cores
        started = time.perf_counter()
        if self.runtime == OPENVINO:
            self.session: ort.InferenceSession | OpenVinoSession = OpenVinoSession(self.path, self.threads)
            self.providers = [self.session.name]
            ignored = f"execution providers are onnxruntime's: the {OPENVINO} runtime ignores {list(providers or [])}"
            self.provider_notes = [ignored] if providers else []
            metadata = self.session.metadata
        else:
            self.providers, self.provider_notes = resolve_providers(providers)
            self.session = ort_session(self.path, self.providers, self.threads, memory_arena, spinning)
            self._input_name = self.session.get_inputs()[0].name
            metadata = self.session.get_modelmeta().custom_metadata_map
        self.load_ms = (time.perf_counter() - started) * 1000.0
        self.card = card or ModelCard.from_metadata_props(metadata, source=str(self.path))
        # Not None when this CPU computes the int8 differently from the one it was validated on (core/targets.py).
        self.cpu_note = int8_fit_note(self.card.quantization, cpu)

    @classmethod
    def for_serving(
        cls,
        path: str | Path,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        runtime: str = ONNXRUNTIME,
    ) -> OnnxClassifier:
        """The session the server runs: no memory arena (memory follows the current batch) and no spinning (idle
        pool threads neither steal the CPU that decoding needs nor slow another session on the same cores).

        optimize's speed gate and the bench's in-process floor time this same session, so their figures are the
        server's (docs/decisions.md#serving-sessions).
        """
        return cls(path, providers=providers, threads=threads, memory_arena=False, spinning=False, runtime=runtime)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for an already preprocessed (N, 3, H, W) float32 batch."""
        if isinstance(self.session, OpenVinoSession):
            return self.session.run(batch)
        return self.session.run(None, {self._input_name: batch})[0]

    def __repr__(self) -> str:
        card = self.card
        return (
            f"OnnxClassifier({card.display_name}, {card.precision}, file={str(self.path)!r}, "
            f"weights={card.weights_kind}, accuracy={card.accuracy.status!r}, runtime={self.runtime}, "
            f"threads={self.threads})"
        )

    @property
    def input_name(self) -> str:
        return self.card.input_name

    @property
    def output_name(self) -> str:
        return self.card.output_name

    @property
    def weights_note(self) -> str | None:
        """Not None when the model has random weights: every path showing its predictions says so."""
        return self.card.weights_note

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        return preprocess(images, self.card.preprocessing)

    def logits(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.run(self.preprocess(images))

    def classify(self, images: Images, k: int = 5) -> list[list[Prediction]]:
        """Top-k predictions (softmax probabilities) per image, in input order.

        ``images``: PIL images or image file paths, one or a list; one list of predictions per image either way.
        """
        if self.weights_note:
            warnings.warn(self.weights_note, RandomWeightsWarning, stacklevel=2)
        single = isinstance(images, Image.Image | str | Path)
        pictures = [_as_image(item) for item in ([images] if single else images)]
        probabilities = softmax(self.logits(pictures))
        return [top_k(row, k, self.card.labels) for row in probabilities]

    def warm_up(self) -> None:
        """One inference on a blank picture, so the first real request does not pay allocation costs."""
        size = self.card.preprocessing.crop
        self.run(np.zeros((1, 3, size, size), dtype=np.float32))

    def describe(self) -> dict[str, object]:
        """What the metadata endpoint and benchmark rows report about this session."""
        card = self.card
        return {
            "name": card.name,
            "family": card.family,
            "variant": card.variant,
            "precision": card.precision,
            "resolution": card.resolution,
            "input_size": [3, card.preprocessing.crop, card.preprocessing.crop],
            "params": card.params,
            "macs": card.macs,
            "weights": card.weights,
            "num_classes": card.num_classes,
            "runtime": self.runtime,
            "providers": self.providers,
            "threads": self.threads,
            "quantization": card.quantization,
            "accuracy": {**asdict(card.accuracy), "summary": card.accuracy.summary},
        }
