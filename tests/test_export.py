"""torch -> ONNX export: round-trip numerics per family, dynamic batch, model card, weights, and every bad input."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image
from torch import nn

from smallnets.cli import main
from smallnets.core.metadata import ModelCard
from smallnets.core.runtime import OnnxClassifier
from smallnets.export import registry
from smallnets.export.labels import imagenet_classes
from smallnets.export.onnx_export import ExportConfig, ExportValidationError, export_model
from smallnets.export.profile import profile
from smallnets.export.registry import ModelSpec, UnknownModelError, UnsupportedVariantError, get_spec, list_specs
from smallnets.export.weights import WeightsMismatchError, WeightsUnavailableError, load_weights

FAMILIES = sorted({spec.family for spec in list_specs()})
ATOL = 1e-4
RTOL = 1e-3  # random-init logits can be ~1e-14, where an absolute tolerance alone proves nothing
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@functools.cache
def cheapest(family: str) -> tuple[ModelSpec, dict[str, Any], int]:
    """The registered variant of ``family`` with the fewest MACs (spec, full variant, MACs)."""
    candidates = [
        (spec, variant, profile(spec, variant)[1])
        for spec in list_specs()
        if spec.family == family
        for variant in (dict(spec.defaults), *spec.variants())
    ]
    return min(candidates, key=lambda candidate: candidate[2])


@functools.cache
def smallest() -> tuple[ModelSpec, dict[str, Any]]:
    spec, variant, _ = min((cheapest(family) for family in FAMILIES), key=lambda candidate: candidate[2])
    return spec, variant


def overrides(spec: ModelSpec, variant: dict[str, Any]) -> dict[str, Any]:
    """Only what differs from the defaults, so the session export cache is shared with other stages' tests."""
    return {key: value for key, value in variant.items() if spec.defaults[key] != value}


def export_family(family: str, exported: Callable[..., Path]) -> tuple[ModelSpec, dict[str, Any], Path]:
    spec, variant, _ = cheapest(family)
    return spec, variant, exported(spec.name, **overrides(spec, variant))


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    diff = float(np.abs(actual - expected).max())
    scale = float(np.abs(expected).max())
    assert diff <= ATOL and diff <= RTOL * scale, f"max |diff| {diff:.3g} for logits up to {scale:.3g}"


def test_imagenet_class_list_is_complete_and_in_class_index_order() -> None:
    classes = imagenet_classes()
    assert len(classes.synsets) == len(set(classes.synsets)) == len(classes.labels) == 1000
    assert list(classes.synsets) == sorted(classes.synsets)  # ImageNet class index = sorted synset order
    assert (classes.synsets[0], classes.labels[0]) == ("n01440764", "tench, Tinca tinca")
    assert (classes.synsets[281], classes.labels[281]) == ("n02123045", "tabby, tabby cat")
    assert (classes.synsets[ESPRESSO], classes.labels[ESPRESSO]) == ("n07920052", "espresso")


@pytest.mark.parametrize("family", FAMILIES)
def test_export_round_trip_with_dynamic_batch(family: str, exported: Callable[..., Path]) -> None:
    spec, variant, path = export_family(family, exported)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")) >= 17
    assert not any(tensor.external_data for tensor in proto.graph.initializer), "weights must live in the file"
    (graph_input,) = proto.graph.input
    (graph_output,) = proto.graph.output
    dims = graph_input.type.tensor_type.shape.dim
    resolution = variant["resolution"]
    assert graph_input.name == "input" and graph_output.name == "logits"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, resolution, resolution]

    reference = load_weights(spec, variant, "random", seed=0).model.eval()
    classifier = OnnxClassifier(path)
    inputs = np.random.default_rng(2024).standard_normal((7, 3, resolution, resolution)).astype(np.float32)
    for batch in (1, 7):
        logits = classifier.run(inputs[:batch])
        assert logits.shape == (batch, 1000)
        with torch.no_grad():
            assert_close(logits, reference(torch.from_numpy(inputs[:batch])).numpy())

    report = json.loads(path.with_suffix(".export.json").read_text())
    assert report["config"]["model"] == spec.name and report["result"]["variant"] == variant
    assert report["result"]["max_abs_diff_random"] <= ATOL and report["result"]["max_abs_diff_photo"] <= ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_export_carries_a_complete_model_card(family: str, exported: Callable[..., Path]) -> None:
    spec, variant, path = export_family(family, exported)
    proto = onnx.load(path)
    card = ModelCard.from_metadata_props({prop.key: prop.value for prop in proto.metadata_props}, str(path))
    classes = imagenet_classes()
    assert (card.name, card.family, card.variant, card.resolution) == (
        spec.name,
        spec.family,
        variant,
        variant["resolution"],
    )
    assert card.preprocessing == spec.preprocessing_for(variant)
    assert card.labels == classes.labels and card.synsets == classes.synsets
    assert (card.params, card.macs) == profile(spec, variant)
    assert card.weights == "random seed 0"
    assert (card.input_name, card.output_name, card.precision) == ("input", "logits", "fp32")
    opset = max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    assert card.provenance["opset"] == opset
    for key in ("exporter", "torch", "onnx", "onnxruntime", "smallnets", "exported_at"):
        assert card.provenance[key], key
    assert proto.producer_name == "smallnets" and spec.name in proto.doc_string
    assert OnnxClassifier(path).card == card  # what ONNX Runtime readers (serve, benchmarks) get


def test_efficientnet_lite0_imagenet_weights_classify_real_photos(
    exported: Callable[..., Path], photos: dict[str, Image.Image]
) -> None:
    classifier = OnnxClassifier(exported("efficientnet_lite0", weights="imagenet"))
    assert classifier.card.weights.startswith("imagenet:") and "sha256:" in classifier.card.weights
    chelsea, coffee = classifier.classify([photos["chelsea"], photos["coffee"]], k=3)
    assert any(p.class_id in CAT_CLASSES for p in chelsea), chelsea
    assert coffee[0].class_id == ESPRESSO, coffee


def test_cli_export_and_random_weights_are_reproducible(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec, variant = smallest()
    argv = ["export", spec.name, "--seed", "3", "-o", str(tmp_path / "cli.onnx")]
    for key, value in overrides(spec, variant).items():
        argv += [f"--{key}", str(value)] if key in ("width", "resolution") else ["--variant", f"{key}={value}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "cli.onnx") in printed and "max |ONNX - PyTorch|" in printed

    export_model(ExportConfig(model=spec.name, variant=variant, seed=3), tmp_path / "api.onnx")
    first, second = (onnx.load(tmp_path / name) for name in ("cli.onnx", "api.onnx"))
    first_weights = {t.name: numpy_helper.to_array(t) for t in first.graph.initializer}
    second_weights = {t.name: numpy_helper.to_array(t) for t in second.graph.initializer}
    assert first_weights.keys() == second_weights.keys()
    assert all(np.array_equal(first_weights[name], second_weights[name]) for name in first_weights)
    batch = np.random.default_rng(0).standard_normal((2, 3, variant["resolution"], variant["resolution"]))
    batch = batch.astype(np.float32)
    first_logits, second_logits = (OnnxClassifier(tmp_path / name).run(batch) for name in ("cli.onnx", "api.onnx"))
    assert np.array_equal(first_logits, second_logits)

    other_seed = load_weights(spec, variant, "random", seed=4).model.state_dict()
    same_seed = load_weights(spec, variant, "random", seed=3).model.state_dict()
    assert any(not torch.equal(same_seed[key], other_seed[key]) for key in same_seed)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_weights_file_loads_plain_and_wrapped_checkpoints(tmp_path: Path, wrapper: str | None) -> None:
    spec, variant = smallest()
    state = load_weights(spec, variant, "random", seed=5).model.state_dict()
    path = tmp_path / "weights.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 90}, path)
    loaded = load_weights(spec, variant, path)
    assert all(torch.equal(tensor, state[key]) for key, tensor in loaded.model.state_dict().items())
    assert loaded.weights.startswith("file: ") and "sha256:" in loaded.weights


def test_weights_file_in_the_registered_checkpoint_layout_is_key_mapped() -> None:
    """A hand-downloaded copy of a registered checkpoint works as --weights PATH, even when its keys need mapping."""
    spec = next(s for s in list_specs() if s.weights and s.weights.package and s.weights.key_map)
    from_registry = load_weights(spec, None, "imagenet").model.state_dict()
    checkpoint = spec.weights.package_file
    distribution = importlib.metadata.distribution(spec.weights.package)
    path = Path(distribution.locate_file(next(f for f in distribution.files if f.as_posix().endswith(checkpoint))))
    from_file = load_weights(spec, None, path).model.state_dict()
    assert all(torch.equal(tensor, from_registry[key]) for key, tensor in from_file.items())


def test_weights_file_that_does_not_match_names_the_keys(tmp_path: Path) -> None:
    spec, variant = smallest()
    state = load_weights(spec, variant, "random").model.state_dict()
    missing = next(iter(state))
    reshaped = next(key for key, tensor in reversed(state.items()) if tensor.ndim == 2)
    del state[missing]
    state["head.bogus.weight"] = torch.zeros(3)
    state[reshaped] = torch.zeros(state[reshaped].shape[0] + 1, state[reshaped].shape[1])
    weights = tmp_path / "weights" / "other.pth"
    weights.parent.mkdir()
    torch.save({"state_dict": state}, weights)
    output = tmp_path / "out" / "model.onnx"
    with pytest.raises(WeightsMismatchError) as error:
        export_model(ExportConfig(model=spec.name, variant=variant, weights=str(weights)), output)
    for key in (missing, "head.bogus.weight", reshaped):
        assert key in str(error.value)
    assert list(output.parent.iterdir()) == []


def test_unknown_model_name_suggests_close_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    name = list_specs()[0].name
    with pytest.raises(UnknownModelError, match=f"did you mean.*{name}"):
        get_spec(f"{name}x")
    assert main(["export", f"{name}x", "-o", str(tmp_path / "m.onnx")]) == 3  # 3: not found
    assert f"did you mean {name}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("knob", ["width", "resolution"])
def test_unsupported_width_or_resolution_is_refused(knob: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = next(spec for spec in list_specs() if len(spec.choices.get(knob, ())) > 1)
    supported = spec.choices[knob]
    unsupported = max(supported) + (0.125 if knob == "width" else 7)
    with pytest.raises(UnsupportedVariantError) as error:
        export_model(ExportConfig(model=spec.name, variant={knob: unsupported}), tmp_path / "m.onnx")
    assert all(str(value) in str(error.value) for value in supported)
    assert main(["export", spec.name, f"--{knob}", str(unsupported), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "supported" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    spec, variant = smallest()
    occupied = tmp_path / "occupied"
    occupied.write_text("a file where a directory is needed")
    with pytest.raises(OSError, match=r"cannot write.*-o"):
        export_model(ExportConfig(model=spec.name, variant=variant), occupied / "model.onnx")
    with pytest.raises(IsADirectoryError):
        export_model(ExportConfig(model=spec.name, variant=variant), tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["occupied"]


class _ExportDivergent(nn.Module):
    """A network whose exported graph disagrees with eager PyTorch, as a broken export would."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.conv(x).mean((2, 3)))
        return logits + 1.0 if torch.compiler.is_exporting() else logits


def test_failed_validation_raises_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ModelSpec(name="test_divergent", family="test", builder=_ExportDivergent, defaults={"resolution": 32})
    registry.list_specs()  # load the real families first, so only this test's entry is removed afterwards
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    with pytest.raises(ExportValidationError, match="differs from PyTorch"):
        export_model(ExportConfig(model=spec.name), tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_imagenet_weights_offline_fail_fast_naming_weights_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = next(spec for spec in list_specs() if spec.weights and spec.weights.url and not spec.weights.package)

    def offline(*args: Any, **kwargs: Any) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached checkpoint to fall back on
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    timeout = socket.getdefaulttimeout()
    output = tmp_path / "out" / "model.onnx"
    with pytest.raises(WeightsUnavailableError) as error:
        export_model(ExportConfig(model=spec.name, weights="imagenet"), output)
    assert "--weights PATH" in str(error.value) and spec.weights.url in str(error.value)
    assert socket.getdefaulttimeout() == timeout
    assert list(output.parent.iterdir()) == []


def test_imagenet_weights_need_the_default_variant_and_a_registered_checkpoint() -> None:
    spec = next(s for s in list_specs() if s.weights and any(len(values) > 1 for values in s.choices.values()))
    key, values = next((key, values) for key, values in spec.choices.items() if len(values) > 1)
    other = next(value for value in values if value != spec.defaults[key])
    with pytest.raises(WeightsUnavailableError, match="default variant"):
        load_weights(spec, {key: other}, "imagenet")
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        load_weights(dataclasses.replace(spec, weights=None), None, "imagenet")
    with pytest.raises(WeightsUnavailableError, match=r"random.*imagenet"):
        load_weights(spec, None, "best-weights")
