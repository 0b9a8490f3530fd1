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

UNVALIDATED = "unvalidated (random weights)"


def top1(
    run: Callable[[Any], Any], prepare: Callable[[np.ndarray], Any], photos: np.ndarray, labels: np.ndarray
) -> float:
    """Fraction of photos whose highest logit is their label, one photo per call."""
    correct = 0
    for photo, label in zip(photos, labels, strict=True):
        logits = np.asarray(run(prepare(photo[None])))
        correct += int(np.argmax(logits.reshape(-1)) == label)
    return correct / len(labels)


def variant_top1(spec: MeasureSpec, photos: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 of the model a timing spec describes, loaded at batch 1 on the spec's thread count."""
    model = load_model(replace(spec, batch=1), (1, *photos.shape[1:]))
    return top1(model.run, model.prepare, photos, labels)


def accuracy_fields(split: LabelledSplit | None, weights: str, score: float | None) -> dict[str, Any]:
    """The row's accuracy columns: a figure with its photo count, or why there is none."""
    if weights == "random":
        return {"labelled_top1": None, "labelled_images": None, "accuracy_note": UNVALIDATED}
    if split is None or score is None:
        return {"labelled_top1": None, "labelled_images": None, "accuracy_note": "no labelled photos (set --eval-dir)"}
    return {"labelled_top1": score, "labelled_images": len(split.report), "accuracy_note": None}


def score_variants(split: LabelledSplit, card: Any, specs: Sequence[tuple[str, MeasureSpec]]) -> dict[str, float]:
    """Variant -> labelled top-1 for one model's variants (photos preprocessed once by the model's card)."""
    photos, labels = report_batch(split, card)
    return {variant: variant_top1(spec, photos, labels) for variant, spec in specs}
