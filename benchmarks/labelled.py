"""Labelled photos in the suite: the parts of core.split's split that calibrate, and that top-1 is reported on.

The suite hands the labelled folder to optimize, which splits it by content hash into calibration, selection and
report parts (core.split.split_folders); the same deterministic split gives NNCF the calibration part that
calibrated our int8, and gives every variant's top-1 on the report part: no reported photo calibrated or chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smallnets.core.evaluation import prepare
from smallnets.core.labelled import eval_dir_setting, read_labelled_folder
from smallnets.core.metadata import ModelCard
from smallnets.core.split import DataSplit, split_folders


@dataclass(frozen=True)
class LabelledSplit:
    """A labelled folder's split as optimize draws it for ``calib_images`` calibration photos."""

    root: Path
    parts: DataSplit

    @property
    def calibration(self) -> tuple[Path, ...]:
        return self.parts.calibration

    @property
    def report(self) -> tuple[Any, ...]:
        return self.parts.report

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.root), **self.parts.to_dict()["counts"]}


def eval_dir_from_env() -> Path | None:
    return eval_dir_setting(None)


def split_labelled(root: str | Path, card: ModelCard, calib_images: int) -> LabelledSplit:
    """The calibration / selection / report parts of ``root`` for a model with ``card``'s classes."""
    folder = read_labelled_folder(root, card.synsets)
    return LabelledSplit(Path(root), split_folders(folder, None, calib_images))


def report_batch(split: LabelledSplit, card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """The report photos preprocessed by the model's card (one array), and their class ids."""
    prepared = prepare(list(split.report), card.preprocessing, f"{split.root} (report part)")
    return np.concatenate(prepared.batches), np.asarray(prepared.labels)
