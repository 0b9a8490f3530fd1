"""Labelled top-1 of every measured variant, on the report part of the labelled photos (benchmarks.labelled).

Each variant is loaded by the same loader its timing used (torch, onnxruntime or OpenVINO) and run one photo at
a time, so the figure belongs to exactly what was timed. Random weights get no figure: they have no accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from smallnets.benchmarks.labelled import LabelledSplit, report_batch
from smallnets.benchmarks.measure import MeasureSpec, load_model
from smallnets.core.evaluation import accuracy

UNVALIDATED = "unvalidated (random weights)"


def logits_of(run: Callable[[Any], Any], prepare: Callable[[np.ndarray], Any], photos: np.ndarray) -> np.ndarray:
    """Logits of every photo, one photo per call (batch 1, as timed)."""
    return np.stack([np.asarray(run(prepare(photo[None]))).reshape(-1) for photo in photos])


def top1(
    run: Callable[[Any], Any], prepare: Callable[[np.ndarray], Any], photos: np.ndarray, labels: np.ndarray
) -> float:
    """Top-1 as core.evaluation counts it (ties go to the first class, as argmax)."""
    return accuracy(logits_of(run, prepare, photos), labels.tolist()).top1


def variant_top1(spec: MeasureSpec, photos: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 of the model a timing spec describes, loaded at batch 1 on the spec's thread count."""
    model = load_model(replace(spec, batch=1), (1, *photos.shape[1:]))
    return top1(model.run, model.prepare, photos, labels)


def accuracy_fields(weights: str, score: float | None, images: int | None) -> dict[str, Any]:
    """The row's accuracy columns: a figure with its photo count, or why there is none."""
    if weights.startswith("random"):
        return {"labelled_top1": None, "labelled_images": None, "accuracy_note": UNVALIDATED}
    if score is None or not images:
        return {"labelled_top1": None, "labelled_images": None, "accuracy_note": "no labelled photos (set --eval-dir)"}
    return {"labelled_top1": score, "labelled_images": images, "accuracy_note": None}


def score_variants(split: LabelledSplit, card: Any, specs: Sequence[tuple[str, MeasureSpec]]) -> dict[str, float]:
    """Variant -> labelled top-1 for one model's variants (photos preprocessed once by the model's card)."""
    photos, labels = report_batch(split, card)
    return {variant: variant_top1(spec, photos, labels) for variant, spec in specs}
