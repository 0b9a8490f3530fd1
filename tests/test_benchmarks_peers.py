"""OpenVINO peers in the suite, the labelled split and labelled top-1: real exports, real runtimes, real photos."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smallnets.benchmarks.accuracy import UNVALIDATED, accuracy_fields, top1
from smallnets.benchmarks.labelled import CALIBRATION_SHARE, calibration_folder, report_batch, split_labelled
from smallnets.benchmarks.selection import ModelChoice
from smallnets.benchmarks.suite import BenchConfig, run_suite
from smallnets.core.runtime import OnnxClassifier

TINY = "mobilenet_v1:width=0.25:resolution=128"


@pytest.fixture(scope="module")
def tiny(exported: Callable[..., Path]) -> Path:
    return exported("mobilenet_v1", width=0.25, resolution=128)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, Image.Image], tiny: Path) -> Path:
    """An ImageFolder of real photos under the model's first synsets: 4 crops of each photo per synset."""
    root = tmp_path_factory.mktemp("labelled")
    synsets = OnnxClassifier(tiny).card.synsets
    for index, (name, photo) in enumerate(photos.items()):
        folder = root / synsets[index]
        folder.mkdir()
        for crop in range(4):
            box = (crop * 8, crop * 4, photo.width - crop * 8, photo.height - crop * 4)
            photo.crop(box).save(folder / f"{name}-{crop}.jpg")
    return root


def test_split_is_disjoint_complete_and_stable(image_folder: Path) -> None:
    split = split_labelled(image_folder)
    everything = sorted(path for path in image_folder.rglob("*.jpg"))
    assert sorted(split.calibration + split.report) == everything
    assert not set(split.calibration) & set(split.report) and split.report
    assert split_labelled(image_folder) == split  # content hashes, not order or chance
    assert 0 < len(split.calibration) < len(everything) / CALIBRATION_SHARE * 3


def test_calibration_folder_links_only_calibration_photos(image_folder: Path, tmp_path: Path) -> None:
    split = split_labelled(image_folder)
    folder = calibration_folder(split, tmp_path)
    linked = sorted(path.resolve() for path in folder.rglob("*.jpg"))
    assert linked == sorted(path.resolve() for path in split.calibration)
    assert all(path.is_symlink() for path in folder.rglob("*.jpg"))  # never copies of the photos


def test_missing_or_empty_labelled_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="SMALLNETS_EVAL_DIR"):
        split_labelled(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no images"):
        split_labelled(tmp_path)


def test_top1_counts_argmax_against_labels(image_folder: Path, tiny: Path) -> None:
    """Labels taken from the model's own answers score 1.0; shifted by one they score 0.0."""
    classifier = OnnxClassifier(tiny)
    photos, labels = report_batch(split_labelled(image_folder), classifier.card)
    own = np.argmax(classifier.run(photos), axis=1)
    assert labels.min() >= 0 and len(labels) == len(photos)
    assert top1(classifier.run, lambda batch: batch, photos, own) == 1.0
    assert top1(classifier.run, lambda batch: batch, photos, (own + 1) % 1000) == 0.0


def test_random_weights_get_no_accuracy_figure(image_folder: Path) -> None:
    split = split_labelled(image_folder)
    assert accuracy_fields(split, "random", 0.9) == {
        "labelled_top1": None,
        "labelled_images": None,
        "accuracy_note": UNVALIDATED,
    }
    assert accuracy_fields(split, "imagenet", 0.5)["labelled_images"] == len(split.report)
    assert "--eval-dir" in accuracy_fields(None, "imagenet", None)["accuracy_note"]


def test_openvino_peers_are_measured_beside_onnx(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="needs the peers extra: pip install 'smallnets[peers]'")
    pytest.importorskip("nncf", reason="needs the peers extra: pip install 'smallnets[peers]'")
    config = BenchConfig(
        models=(ModelChoice.parse(TINY),),
        variants=("onnx-fp32", "openvino-fp32", "openvino-nncf-int8"),
        batches=(2,),
        threads=(1,),
        iterations=3,
        warmup=0,
        repeats=1,
        cache_dir=tmp_path / "cache",
    )
    result = run_suite(config, tmp_path / "out")
    rows = {row["variant"]: row for row in result.rows}
    assert set(rows) == set(config.variants)
    assert rows["openvino-fp32"]["provider"] == rows["openvino-nncf-int8"]["provider"] == "openvino-cpu"
    assert rows["openvino-nncf-int8"]["model_size_mb"] < rows["openvino-fp32"]["model_size_mb"] / 2  # int8 weights
    assert all(row["accuracy_note"] == UNVALIDATED for row in rows.values())
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Side by side" in report and "openvino-nncf-int8" in report


@pytest.mark.skipif(not os.environ.get("SMALLNETS_EVAL_DIR"), reason="set SMALLNETS_EVAL_DIR to labelled photos")
def test_real_weights_get_labelled_top1_on_the_report_photos(tmp_path: Path) -> None:
    config = BenchConfig(
        models=(ModelChoice.parse("efficientnet_lite0"),),
        variants=("onnx-fp32",),
        batches=(1,),
        threads=(1,),
        iterations=3,
        warmup=0,
        repeats=1,
        weights="imagenet",
        cache_dir=tmp_path / "cache",
        eval_dir=Path(os.environ["SMALLNETS_EVAL_DIR"]),
    )
    row = run_suite(config, tmp_path / "out").rows[0]
    split = split_labelled(config.eval_dir)
    assert row["labelled_images"] == len(split.report) and 0.6 < row["labelled_top1"] <= 1.0
