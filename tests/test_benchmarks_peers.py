"""OpenVINO peers in the suite, the labelled split and labelled top-1: real exports, real runtimes, real photos."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smallnets.benchmarks.accuracy import UNVALIDATED, accuracy_fields, top1
from smallnets.benchmarks.labelled import report_batch, split_labelled
from smallnets.benchmarks.report import cell, side_by_side
from smallnets.benchmarks.selection import PEER_VARIANTS, ModelChoice
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


def test_split_is_optimize_s_disjoint_and_stable(image_folder: Path, tiny: Path) -> None:
    """The suite's parts are core.evaluation's: disjoint, complete, and the same on every call."""
    card = OnnxClassifier(tiny).card
    split = split_labelled(image_folder, card, calib_images=64)
    everything = set(image_folder.rglob("*.jpg"))
    distinct = {hashlib.sha256(path.read_bytes()).digest() for path in everything}  # skimage's cat is chelsea
    report = {image.path for image in split.report}
    selection = {image.path for image in split.parts.selection}
    used = set(split.calibration) | selection | report
    assert used <= everything and len(used) == len(distinct)
    assert not (set(split.calibration) & report) and not (selection & report) and report
    assert split_labelled(image_folder, card, calib_images=64) == split  # content hashes, not order or chance
    capped = split_labelled(image_folder, card, calib_images=1)
    assert len(capped.calibration) <= 1 and capped.report == split.report  # the cap never moves reported photos


def test_missing_labelled_folder_is_named(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(ValueError, match="not a folder"):
        split_labelled(tmp_path / "absent", OnnxClassifier(tiny).card, 8)


def test_top1_counts_argmax_against_labels(image_folder: Path, tiny: Path) -> None:
    """Labels taken from the model's own answers score 1.0; shifted by one they score 0.0."""
    classifier = OnnxClassifier(tiny)
    photos, labels = report_batch(split_labelled(image_folder, classifier.card, 8), classifier.card)
    own = np.argmax(classifier.run(photos), axis=1)
    assert labels.min() >= 0 and len(labels) == len(photos)
    assert top1(classifier.run, lambda batch: batch, photos, own) == 1.0
    assert top1(classifier.run, lambda batch: batch, photos, (own + 1) % 1000) == 0.0


def test_random_weights_get_no_accuracy_figure() -> None:
    assert accuracy_fields("random", 0.9, 100) == {
        "labelled_top1": None,
        "labelled_images": None,
        "accuracy_note": UNVALIDATED,
    }
    assert accuracy_fields("imagenet", 0.5, 100)["labelled_images"] == 100
    assert "--eval-dir" in accuracy_fields("imagenet", None, None)["accuracy_note"]


def test_openvino_peers_are_measured_beside_onnx(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="needs the peers extra: pip install 'smallnets[peers]'")
    pytest.importorskip("nncf", reason="needs the peers extra: pip install 'smallnets[peers]'")
    config = BenchConfig(
        models=(ModelChoice.parse(TINY),),
        variants=("onnx-fp32", "onnx-int8", *PEER_VARIANTS),
        batches=(2,),
        threads=(1,),
        iterations=3,
        warmup=0,
        repeats=1,
        cache_dir=tmp_path / "cache",
    )
    result = run_suite(config, tmp_path / "out")
    rows = {row["variant"]: row for row in result.rows}
    report = (tmp_path / "out" / "report.md").read_text()
    # Refused (and said so) when the search kept QOperator, whose contrib ops OpenVINO cannot read.
    refused = {"openvino-smallnets-int8"} if "openvino-smallnets-int8: OpenVINO" in report else set()
    assert refused or rows["openvino-smallnets-int8"]["provider"].startswith("openvino-"), "the OpenVINO runtime"
    assert set(rows) == set(config.variants) - refused
    assert rows["openvino-fp32"]["provider"] == rows["openvino-nncf-int8"]["provider"] == "openvino-cpu"
    assert rows["openvino-default"]["provider"].startswith("openvino-cpu-")  # names the precision OpenVINO chose
    assert rows["openvino-nncf-int8"]["model_size_mb"] < rows["openvino-fp32"]["model_size_mb"] / 2  # int8 weights
    assert refused or rows["openvino-smallnets-int8"]["model_size_mb"] < rows["openvino-fp32"]["model_size_mb"] / 2
    assert all(row["accuracy_note"] == UNVALIDATED for row in rows.values())
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
    result = run_suite(config, tmp_path / "out")
    row = result.rows[0]
    assert row["labelled_images"] == result.machine["labelled"]["report"] and 0.6 < row["labelled_top1"] <= 1.0
    assert result.machine["labelled"]["calibration"] > 0 and result.machine["labelled"]["selection"] > 0


def test_labelled_top1_is_shown_with_its_interval() -> None:
    """222 of 248 photos (Lite0 fp32 on imagenet-dev's report part): Wilson 95% 85.1%-92.7%, not a bare point."""
    row = {"model": "efficientnet_lite0", "variant": "onnx-fp32", "p50_ms": 9.0}
    row |= {"labelled_top1": 222 / 248, "labelled_images": 248}
    assert "9.00 (89.5% [85.1%-92.7%])" in side_by_side([row])
    assert cell(row, "labelled_top1") == "89.5% [85.1%-92.7%]"
    assert cell({**row, "labelled_top1": None, "accuracy_note": "unvalidated (random weights)"}, "labelled_top1") == (
        "unvalidated (random weights)"
    )
