"""optimize/: simplify, fuse, quantize, presets, validation and the optimize pipeline, on real exports and photos.

Per family the cheapest registered variant (fewest MACs, from the registry) keeps this file to a few minutes on
two cores; the recipe search runs in its quick mode here (one candidate, few images), the CLI default is full.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from registry_choices import FAMILIES, FAMILY_IDS

import smallnets.optimize.pipeline
from smallnets.cli import main
from smallnets.core.artifacts import FP32_NAME, INT8_NAME
from smallnets.core.files import MANIFEST_NAME, OutputExistsError
from smallnets.core.labelled import EVAL_DIR_ENV, eval_dir_setting
from smallnets.core.metadata import MissingMetadataError, card_of
from smallnets.core.runtime import OnnxClassifier
from smallnets.core.targets import TARGETS, runs_here
from smallnets.export.registry import list_specs
from smallnets.optimize.calibration import (
    CALIBRATION_PHOTOS,
    REPORT_PHOTOS,
    SELECTION_PHOTOS,
    CalibrationDataError,
    ImageCalibrationReader,
    demo_evaluation_set,
    folder_set,
)
from smallnets.optimize.card import PreprocessingFlags, resolve_card
from smallnets.optimize.fuse import fuse, op_counts
from smallnets.optimize.groups import find_groups
from smallnets.optimize.modelio import InvalidModelError, load_model
from smallnets.optimize.pipeline import OptimizeConfig, optimize_model
from smallnets.optimize.quantize import prepare_for_quantization, quantize_model
from smallnets.optimize.report import Reason, Status
from smallnets.optimize.simplify import simplify
from smallnets.optimize.validate import (
    LABELLED_AGREEMENT_FLOOR,
    MIN_LABELLED_IMAGES,
    UNLABELLED_AGREEMENT_FLOOR,
    compare,
)

# Quick search for tests: one candidate, no repair loop, few images, short timing. Not the CLI default.
QUICK = {
    "calib_images": 8,
    "eval_per_photo": 2,
    "max_candidates": 1,
    "max_formats": 1,
    "max_repair_steps": 0,
    "latency_runs": 6,
}
# The labelled test's bounded search: all-int8 plus at most one repair step, 32 calibration photos.
LABELLED_SEARCH = {"calib_images": 32, "max_candidates": 1, "max_repair_steps": 1, "latency_runs": 10}
# The shipping budget (the CLI default). About 250 report photos cannot show a drop within 1 point (zero flips
# leave an upper end near 1.5), and a faithful int8 is not significantly over it: one outcome, "unvalidated".
LABELLED_TEST_MAX_DROP = OptimizeConfig().max_drop


def cheapest(exported: Callable[..., Path], family: str) -> Path:
    name, variant = FAMILIES[family]
    return exported(name, **variant)


@pytest.fixture(scope="module")
def fused_models(exported: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    """family -> (export path, simplified, fused, prepared path), built once per module."""
    cache: dict[str, Any] = {}
    root = tmp_path_factory.mktemp("fused")

    def make(family: str) -> Any:
        if family not in cache:
            path = cheapest(exported, family)
            simplified = simplify(path)
            fused, diff = fuse(simplified)
            prepared = root / f"{family}.prepared.onnx"
            prepare_for_quantization(fused, prepared)
            fused_path = root / f"{family}.fp32.onnx"
            onnx.save(fused, str(fused_path))
            cache[family] = (path, simplified, fused, fused_path, prepared, diff)
        return cache[family]

    return make


def run_onnx(model: onnx.ModelProto | Path, batch: np.ndarray) -> np.ndarray:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def test_every_family_has_a_cheapest_variant() -> None:
    assert {spec.family for spec in list_specs()} == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_simplify_keeps_numerics_and_dynamic_batch(family: str, fused_models: Callable[[str], Any]) -> None:
    path, simplified, *_ = fused_models(family)
    onnx.checker.check_model(simplified)
    assert simplified.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch axis must stay symbolic"
    assert card_of(simplified) == card_of(onnx.load(str(path)))
    size = card_of(simplified).preprocessing.crop
    for batch in (1, 7):
        data = np.random.default_rng(batch).standard_normal((batch, 3, size, size), dtype=np.float32)
        expected, actual = run_onnx(path, data), run_onnx(simplified, data)
        assert actual.shape == (batch, 1000)
        np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_fuse_keeps_card_and_never_adds_kernels(family: str, fused_models: Callable[[str], Any]) -> None:
    """Exports are already BN-folded by the exporter; fuse must not grow them, except ORT's documented
    inlining of HardSwish (no CPU kernel) into HardSigmoid * x, one extra node per HardSwish."""
    path, _, fused, _, _, diff = fused_models(family)
    before = onnx.load(str(path))
    hardswish = op_counts(before).get("HardSwish", 0)
    assert len(fused.graph.node) <= len(before.graph.node) + hardswish, diff
    assert "BatchNormalization" not in op_counts(fused)
    assert card_of(fused) == card_of(before), "fuse must carry the model card over"
    assert sum(row["after"] for row in diff.values()) == len(fused.graph.node)


def test_fusion_folds_batchnorm_and_reduces_node_count() -> None:
    """A hand-built unfused graph (Conv -> BatchNormalization -> Relu, Identity): fewer nodes, same numbers."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    arrays = {
        "w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "bias": rng.standard_normal(8).astype(np.float32),
        "mean": rng.standard_normal(8).astype(np.float32),
        "var": rng.uniform(0.5, 1.5, 8).astype(np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["conv", "scale", "bias", "mean", "var"], ["bn"]),
            helper.make_node("Relu", ["bn"], ["relu"]),
            helper.make_node("Identity", ["relu"], ["logits"]),
        ],
        "unfused",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8, 8, 8])],
        [numpy_helper.from_array(value, name) for name, value in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fused, diff = fuse(model)
    assert diff["BatchNormalization"] == {"before": 1, "after": 0, "change": -1}
    assert len(fused.graph.node) < len(model.graph.node)
    data = rng.standard_normal((7, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(fused, data), run_onnx(model, data), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_quantized_model_runs_and_stays_close_on_random_weights(
    family: str, fused_models: Callable[[str], Any], photos: dict, tmp_path: Path
) -> None:
    """'Close' for random weights: mean logit cosine vs fp32 above the target's random-weights floor on the sample
    photos (tests/test_fidelity.py shows a zeroed weight falls below it)."""
    _, _, _, fused_path, prepared, _ = fused_models(family)
    card = card_of(onnx.load(str(prepared)))
    from smallnets.optimize.calibration import demo_calibration_set

    reader = ImageCalibrationReader(demo_calibration_set(8).images, card.preprocessing, "input")
    output = tmp_path / "int8.onnx"
    quantize_model(prepared, output, TARGETS["x86-vnni"].quant, "minmax", tmp_path / "cache.json", reader)
    ops = op_counts(onnx.load(str(output)))
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    report = compare(fused_path, output, list(photos.values()))
    assert report.cosine_mean > TARGETS["x86-vnni"].random_weights_min_cosine, report
    size = card.preprocessing.crop
    assert OnnxClassifier(output).run(np.zeros((7, 3, size, size), np.float32)).shape == (7, 1000)


def test_groups_find_the_known_trouble_spots(fused_models: Callable[[str], Any]) -> None:
    groups = find_groups(onnx.load(str(fused_models("mobilenet_v3")[4])))
    assert {"stem", "classifier", "depthwise", "squeeze_excite", "activations"} <= set(groups)
    assert len(groups["stem"].nodes) >= 1 and groups["classifier"].op_types


@pytest.fixture(scope="module")
def lite0_run(exported: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """Real Lite0 weights, no labelled folder: the demo photos stand in and nothing is called validated."""
    outdir = tmp_path_factory.mktemp("lite0") / "out"
    model = exported("efficientnet_lite0", weights="imagenet")
    return outdir, optimize_model(model, outdir, OptimizeConfig(**QUICK))


def test_lite0_without_labels_is_unvalidated_but_faithful(lite0_run: tuple[Path, Any], photos: dict) -> None:
    outdir, report = lite0_run
    assert (report.status, report.reason) == (Status.UNVALIDATED, Reason.NO_LABELS), report.detail
    assert "not validated" in report.accuracy_status and report.labelled is None
    assert (
        report.agreement_top1 >= UNLABELLED_AGREEMENT_FLOOR and report.cosine_mean >= report.preset["int8_min_cosine"]
    )
    int8 = OnnxClassifier(outdir / INT8_NAME)
    # The int8 file says what is known of its own accuracy (not the fp32 checkpoint's published figure).
    accuracy = int8.describe()["accuracy"]
    assert accuracy["status"] == "unvalidated" and accuracy["top1"] is None and "not validated" in accuracy["source"]
    top3 = [p.class_id for p in int8.classify([photos["chelsea"]], k=3)[0]]
    assert set(top3) & set(range(281, 286)), top3
    assert int8.classify([photos["coffee"]], k=1)[0][0].class_id == 967
    assert OnnxClassifier(outdir / INT8_NAME).card.quantization["accuracy_status"] == "unvalidated"


def test_report_and_artifacts(lite0_run: tuple[Path, Any]) -> None:
    import json

    outdir, report = lite0_run
    assert sorted(p.name for p in outdir.iterdir()) == sorted(
        [FP32_NAME, INT8_NAME, "report.json", "report.md", MANIFEST_NAME]
    )
    data = json.loads((outdir / "report.json").read_text())
    for key in ("target", "preset", "fp32", "int8", "speedup", "agreement_top1", "top5_overlap", "cosine_mean"):
        assert key in data
    assert (data["status"], data["reason"]) == ("unvalidated", "no_labels") and data["detail"]
    counts = data["split"]["counts"]
    assert counts["calibration"] == data["calibration_images"] == QUICK["calib_images"]
    assert counts["report"] == data["eval_images"] == data["evaluation"]["agreement"]["images"] > 0
    assert data["preset"]["name"] == data["target"] and data["fp32"]["size_bytes"] > data["int8"]["size_bytes"]
    assert data["speedup"] == pytest.approx(data["fp32"]["latency_ms_p50"] / data["int8"]["latency_ms_p50"])
    assert all(entry["reason"] for entry in data["kept_float"])
    card = OnnxClassifier(outdir / INT8_NAME).card
    assert card.precision == "int8" and card.quantization["name"] == data["target"]
    assert data["search"]["formats"] == [] and data["search"]["quant"] == data["preset"]["quant_name"]  # max_formats 1
    assert card.quantization["quant_name"] == data["preset"]["quant_name"]
    assert card.labels == OnnxClassifier(outdir / FP32_NAME).card.labels
    markdown = (outdir / "report.md").read_text()
    assert "## Kept in float" in markdown
    # Every float op named, as onnxruntime runs the int8 file: report.json, report.md and the card (/metadata).
    listing = data["int8"]["float_ops"]
    assert 0.0 < listing["int8_mac_share"] <= 1.0 and listing["macs"]["int8"] > 0 and not listing["uncounted_kernels"]
    assert "## Ops left in float" in markdown and f"{listing['int8_mac_share']:.1%}" in markdown
    described = OnnxClassifier(outdir / INT8_NAME).describe()["quantization"]
    assert described["int8_mac_share"] == listing["int8_mac_share"] and described["float_ops"] == listing["float_ops"]
    # One story per report: the old page said "110 decisive" and "no decisive image" side by side.
    assert "decisive" not in markdown
    assert f"over all {data['eval_images']} images" in markdown and report.detail in markdown


@pytest.fixture(scope="module")
def lite0_labelled(exported: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """Real Lite0 weights judged on labelled photos ($SMALLNETS_EVAL_DIR), with a bounded search."""
    folder = eval_dir_setting()
    if folder is None or not folder.is_dir():
        pytest.skip(
            f"needs labelled ImageNet photos: set {EVAL_DIR_ENV} to an ImageFolder (CI: ../shared/imagenet-dev)"
        )
    outdir = tmp_path_factory.mktemp("lite0-labelled") / "out"
    model = exported("efficientnet_lite0", weights="imagenet")
    config = OptimizeConfig(eval_dir=folder, max_drop=LABELLED_TEST_MAX_DROP, **LABELLED_SEARCH)
    return outdir, optimize_model(model, outdir, config)


def test_lite0_imagenet_int8_at_the_shipping_budget(lite0_labelled: tuple[Path, Any]) -> None:
    """On every CPU kind, one outcome: int8 written and labelled unvalidated, saying what would validate it.

    Calibration, selection and the reported figures come from disjoint photos, and the report part is big enough
    for a verdict. The quality bars hold on both x86 kinds with margin (report part, 248 imagenet-dev photos,
    all-int8, measured): x86-vnni drop -0.4 to +0.0 points (95% CI upper end 1.5 to 2.2), agreement 97.6%;
    x86-avx2 (7-bit weights) on the AVX2-only path (qemu -cpu Haswell, same top-1 as VNNI kernels running that
    model) drop +1.2 (CI -1.1 to +3.9; 5 broken, 2 fixed), agreement 96.8%. The naive AVX2 int8 of
    issue 11 (-10.4 points) fails them. At the 1-point budget neither kind is significantly over (lower end
    below 1) and neither can be shown within it (upper end above 1.5), so the verdict is "unvalidated", never a
    refusal; the speed gate passes Lite0 int8 by about 2x at 1 thread on both.
    """
    outdir, report = lite0_labelled
    split = report.split
    assert split["disjoint"] and not any(split["overlap"].values())
    assert split["counts"]["report"] >= MIN_LABELLED_IMAGES and split["counts"]["selection"] > 0
    labelled = report.labelled
    assert labelled is not None and labelled["images"] == split["counts"]["report"] == report.eval_images
    assert labelled["reference"]["top1"] > 0.8, "real weights on ImageNet photos"
    low, high = labelled["drop_interval_points"]
    assert low <= labelled["drop_points"] <= high and high - low > 0.5, "an interval, not a point"
    assert low <= 0.0, f"int8 is significantly worse than fp32: {labelled}"
    assert labelled["drop_points"] <= 2.0 and labelled["agreement_top1"] >= LABELLED_AGREEMENT_FLOOR, labelled
    assert low < LABELLED_TEST_MAX_DROP < high
    assert (report.status, report.reason) == (Status.UNVALIDATED, Reason.INTERVAL_TOO_WIDE), report.detail
    assert (outdir / INT8_NAME).is_file() and "labelled report photos" in report.detail, "what would validate it"
    where = f"labelled report part of {Path(report.split['evaluation_source']).name}, {labelled['images']} photos"
    assert where in report.accuracy_status, "every figure names its folder and count"
    # Step 0 tried every quantization option of the target (QDQ and QOperator) and the rest used the winner's.
    tried = [trial["quant"] for trial in report.search["formats"]]
    assert tried == [options.name for options in TARGETS[report.target].candidates_for("efficientnet_lite")]
    assert len(tried) > 1 and report.search["quant"] in tried and report.preset["quant_name"] == report.search["quant"]
    card = OnnxClassifier(outdir / INT8_NAME).card
    assert card.quantization["quant_name"] == report.search["quant"]
    accuracy = card.accuracy
    assert accuracy.status == "measured" and accuracy.top1 == pytest.approx(100 * labelled["candidate"]["top1"])


def poisoned_copy(folder: Path, root: Path, synsets: Sequence[str]) -> Path:
    """``folder`` as symlinks, with the labels of its report-part photos shuffled (each moved to another report
    photo's class folder); calibration and selection photos keep theirs, and every photo stays in its part."""
    from smallnets.core.labelled import read_labelled_folder
    from smallnets.core.split import split_folders

    report = split_folders(read_labelled_folder(folder, synsets), None, calibration_limit=10**6).report
    moved = {image.path: report[(index + 1) % len(report)].path.parent.name for index, image in enumerate(report)}
    for source in folder.rglob("*"):
        if source.is_file() and source.parent != folder:
            target = root / moved.get(source, source.parent.name) / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve())
    return root


def test_a_poisoned_report_part_does_not_change_the_choice(exported: Callable[..., Path], tmp_path: Path) -> None:
    """The search never reads the report part: with its labels shuffled, every candidate's selection figures and
    the chosen candidate are the same, while the report figures change. The speed gate is off (a foreign target)
    so that the choice depends on the photos alone, not on timing noise."""
    folder = eval_dir_setting()
    if folder is None or not folder.is_dir():
        pytest.skip(f"needs labelled ImageNet photos: set {EVAL_DIR_ENV} (CI: ../shared/imagenet-dev)")
    model = exported("efficientnet_lite0", weights="imagenet")
    foreign = next(name for name, preset in TARGETS.items() if not runs_here(preset))
    search = {"calib_images": 16, "max_candidates": 2, "max_formats": 1, "max_repair_steps": 0, "latency_runs": 4}
    poisoned = poisoned_copy(folder, tmp_path / "poisoned-photos", OnnxClassifier(model).card.synsets)
    reports = [
        optimize_model(model, tmp_path / f"{name}-out", OptimizeConfig(target=foreign, eval_dir=source, **search))
        for name, source in (("clean", folder), ("poisoned", poisoned))
    ]

    def choice(report: Any) -> list[Any]:
        return [report.evaluation["candidate"]] + [
            (trial["name"], trial["passed_selection"], trial["check"]) for trial in report.search["trials"]
        ]

    clean, bad = reports
    assert len(clean.search["trials"]) == 2 and choice(clean) == choice(bad)
    assert clean.labelled["reference"]["top1"] > 0.8 > bad.labelled["reference"]["top1"], "the poison took"


def test_bench_reads_the_labelled_drop_from_report_json(lite0_labelled: tuple[Path, Any]) -> None:
    """The bench's int8 quality column comes from optimize's report.json as written (it once read a key that
    report.json does not have, and every labelled drop showed as missing)."""
    import json

    from smallnets.benchmarks.suite import quality_fields

    outdir, report = lite0_labelled
    fields = quality_fields("onnx-int8", json.loads((outdir / "report.json").read_text()))
    assert fields["int8_drop_points"] == report.labelled["drop_points"]
    assert fields["int8_drop_interval"] == report.labelled["drop_interval_points"]
    assert fields["int8_verdict"] == report.status.value and fields["eval_images"] == report.eval_images


def test_presets_differ_as_documented(fused_models: Callable[[str], Any], tmp_path: Path) -> None:
    avx2, vnni, arm = TARGETS["x86-avx2"], TARGETS["x86-vnni"], TARGETS["arm64"]
    assert (avx2.signature, avx2.reduce_range) == ("U8S8", True)
    assert (vnni.signature, vnni.reduce_range) == ("U8S8", False)
    assert (arm.signature, arm.reduce_range) == ("S8S8", False)
    assert all(p.per_channel and p.quant_format == "qdq" and p.rationale for p in TARGETS.values())

    prepared = fused_models("squeezenet")[4]
    card = card_of(onnx.load(str(prepared)))
    from smallnets.optimize.calibration import demo_calibration_set

    images = demo_calibration_set(4).images
    for preset in (avx2, vnni, arm):
        output = tmp_path / f"{preset.name}.onnx"
        reader = ImageCalibrationReader(images, card.preprocessing, "input")
        model = quantize_model(prepared, output, preset.quant, "minmax", tmp_path / f"{preset.name}.json", reader)
        inits = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
        activation_zero_points = {
            inits[node.input[2]].dtype for node in model.graph.node if node.op_type == "QuantizeLinear"
        }
        weights = [
            inits[node.input[0]]
            for node in model.graph.node
            if node.op_type == "DequantizeLinear" and node.input[0] in inits
        ]
        peak = max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.dtype == np.int8)
        assert activation_zero_points == {np.dtype(np.uint8 if preset.activation_type == "uint8" else np.int8)}
        assert (peak <= 64) == preset.reduce_range, (preset.name, peak)  # 7-bit weights with reduce_range


def test_cross_target_int8_is_not_rejected_for_host_speed(exported: Callable[..., Path], tmp_path: Path) -> None:
    """Building for another CPU architecture (arm64 on x86): host timings are reported, not gated on."""
    foreign = next(name for name, preset in TARGETS.items() if not runs_here(preset))
    config = OptimizeConfig(target=foreign, max_drop=100.0, **QUICK)
    report = optimize_model(cheapest(exported, "squeezenet"), tmp_path / "out", config)
    assert report.status is not Status.REJECTED and (tmp_path / "out" / INT8_NAME).exists(), report.detail
    # report.json once said gate_on_speed: true here (it printed the default settings, not the ones used).
    assert not report.speed_gated and report.search["settings"]["gate_on_speed"] is False
    assert report.search["speed_gate"] is None
    assert any("not device ones" in note for note in report.notes)


def test_cli_refuses_an_unknown_target() -> None:
    """The targets themselves are tested in tests/test_targets.py; here, that the CLI offers only them."""
    with pytest.raises(SystemExit) as exit_info:
        main(["optimize", "m.onnx", "--target", "gpu"])
    assert exit_info.value.code == 2


def test_non_onnx_and_corrupt_files_are_refused(tmp_path: Path, exported: Callable[..., Path]) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model")
    with pytest.raises(InvalidModelError, match=r"notes\.onnx"):
        load_model(text)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(cheapest(exported, "squeezenet").read_bytes()[:5000])
    with pytest.raises(InvalidModelError, match=r"truncated\.onnx"):
        load_model(truncated)
    with pytest.raises(InvalidModelError, match="no such"):
        load_model(tmp_path / "missing.onnx")
    assert main(["optimize", str(text), "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.fixture
def cardless(exported: Callable[..., Path], tmp_path: Path) -> Path:
    model = onnx.load(str(cheapest(exported, "shufflenet_v2")))
    del model.metadata_props[:]
    path = tmp_path / "foreign.onnx"
    onnx.save(model, str(path))
    return path


def test_model_without_card_needs_flags(cardless: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingMetadataError, match="--resolution"):
        optimize_model(cardless, tmp_path / "out", OptimizeConfig(**QUICK))
    assert not (tmp_path / "out").exists()
    flags = PreprocessingFlags(resolution=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    report = optimize_model(cardless, tmp_path / "out", OptimizeConfig(preprocessing=flags, max_drop=100.0, **QUICK))
    card = OnnxClassifier(tmp_path / "out" / report.output).card
    assert card.resolution == 224 and card.num_classes == 1000 and report.notes


def test_empty_or_unreadable_calibration_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationDataError, match=r"no \.jpg"):
        folder_set(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    (broken / "b.png").write_bytes(b"")
    with pytest.raises(CalibrationDataError, match="could be read"):
        folder_set(broken)
    with pytest.raises(CalibrationDataError, match="not a folder"):
        folder_set(tmp_path / "missing")


def test_interpolation_flag_overrides_the_card(exported: Callable[..., Path]) -> None:
    """--interpolation alone used to be ignored for a model with a card (it was not counted as a given flag)."""
    model = onnx.load(str(cheapest(exported, "squeezenet")))
    card, notes = resolve_card(model, PreprocessingFlags(interpolation="bicubic"), "model.onnx")
    assert card.preprocessing.interpolation == "bicubic" and notes
    assert card_of(model).preprocessing.interpolation != "bicubic", "the test must change something"


def test_demo_sets_are_disjoint_and_deduplicated() -> None:
    """cat is chelsea again; calibration, selection and report photos never overlap; identical crops count once."""
    assert "cat" not in CALIBRATION_PHOTOS + SELECTION_PHOTOS + REPORT_PHOTOS
    assert not set(CALIBRATION_PHOTOS) & set(SELECTION_PHOTOS + REPORT_PHOTOS)
    assert not set(SELECTION_PHOTOS) & set(REPORT_PHOTOS)
    crops = demo_evaluation_set(REPORT_PHOTOS).images
    digests = {crop.tobytes() + str(crop.size).encode() for crop in crops}
    assert len(digests) == len(crops) < 32 * len(REPORT_PHOTOS), "astronaut is square: its anchors coincide"


def test_outdir_with_other_content_needs_force(tmp_path: Path, exported: Callable[..., Path]) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "keep.txt").write_text("mine")
    model = cheapest(exported, "squeezenet")
    with pytest.raises(OutputExistsError, match="did not write"):
        optimize_model(model, outdir, OptimizeConfig(**QUICK))
    assert main(["optimize", str(model), "-o", str(outdir), "--force"]) == 4
    assert (outdir / "keep.txt").read_text() == "mine"


def test_interrupted_run_leaves_no_artifact(
    tmp_path: Path, exported: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the search is interrupted after fp32 was written to the staging folder."""

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(smallnets.optimize.pipeline, "search_recipe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        optimize_model(cheapest(exported, "squeezenet"), tmp_path / "out", OptimizeConfig(**QUICK))
    assert list(tmp_path.iterdir()) == []


def test_pipeline_cli_exports_and_optimizes(tmp_path: Path) -> None:
    import json

    outdir = tmp_path / "artifacts" / "squeezenet1_1"
    command = ["pipeline", "squeezenet1_1", "-o", str(outdir), "--search", "quick", "--max-drop", "100"]
    assert main([*command, "--no-speed-gate"]) == 0
    report = json.loads((outdir / "report.json").read_text())
    names = {p.name for p in outdir.iterdir()}
    assert {"model.export.onnx", FP32_NAME, "report.json", "report.md"} <= names
    assert any(name.endswith(".json") and name != "report.json" for name in names), "export config kept"
    assert report["config"]["max_candidates"] == 2 and (outdir / report["output"]).is_file()
    assert report["config"]["gate_on_speed"] is False is report["search"]["settings"]["gate_on_speed"]
    assert report["output"] == INT8_NAME, "judged on accuracy alone, with a budget of 100 points"
    assert [p.name for p in outdir.parent.iterdir()] == ["squeezenet1_1"], "no staging folders left behind"


def test_the_openvino_target_builds_for_openvino_and_the_file_says_so(
    exported: Callable[..., Path], tmp_path: Path
) -> None:
    """x86-openvino: no onnxruntime fusions (HardSwish stays whole for OpenVINO to fuse into its convs), QDQ in
    standard ops only; the int8 card names the runtime, and loading the folder runs it there without being told.
    Speed is not gated (a behaviour test on a shared CI host: the gate once found this small random-weight net
    1.12x faster at 2 threads, within the noise, and wrote no int8)."""
    from smallnets.core.loading import load_classifier

    name, variant = FAMILIES["mobilenet_v3"]
    outdir = tmp_path / "out"
    config = OptimizeConfig(target="x86-openvino", gate_on_speed=False, **QUICK)
    report = optimize_model(exported(name, **variant), outdir, config)
    assert report.preset["runtime"] == "openvino" and report.preset["offline_fusion"] is False
    assert not report.speed_gated and any("speed gate off by request" in note for note in report.notes)
    fp32_ops = op_counts(onnx.load(str(outdir / FP32_NAME)))
    assert fp32_ops.get("HardSwish", 0) > 0, "onnxruntime's basic fusions would have inlined every HardSwish"
    assert report.status != Status.REJECTED, report.detail  # random weights: unvalidated, but written
    int8 = onnx.load(str(outdir / INT8_NAME))
    assert {node.domain for node in int8.graph.node} <= {"", "ai.onnx"}, "OpenVINO reads standard ops only"
    producers = {output: node.op_type for node in int8.graph.node for output in node.output}
    after = Counter(producers[node.input[0]] for node in int8.graph.node if node.op_type == "HardSwish")
    assert after and set(after) <= {"Conv", "Gemm"}, f"OpenVINO fuses a HardSwish into the conv before it: {after}"
    served = load_classifier(outdir, threads=1)
    assert served.card.runtime == served.runtime == "openvino" and served.card.precision == "int8"
    assert load_classifier(outdir, threads=1, runtime="onnxruntime").runtime == "onnxruntime"
