"""The shared runtime pieces: model card round-trip, CPU feature parsing, softmax/top-k, provider selection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smallnets.core.hardware import detect_cpu, parse_cpuinfo
from smallnets.core.metadata import CARD_KEY, MissingMetadataError, ModelCard, Preprocessing
from smallnets.core.preprocess import preprocess
from smallnets.core.runtime import OnnxClassifier, ProviderError, resolve_providers, softmax, top_k

X86_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx2 fma avx512f avx512bw avx512_vnni amx_int8 amx_tile
"""
ARM_CPUINFO = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp i8mm bf16
CPU implementer\t: 0x41
"""


def _card() -> ModelCard:
    return ModelCard(
        name="tiny",
        family="test",
        variant={"width": 0.5, "resolution": 32},
        resolution=32,
        preprocessing=Preprocessing.for_resolution(32, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3),
        labels=("a", "b", "c"),
        synsets=("n1", "n2", "n3"),
        params=10,
        macs=20,
    )


def test_card_round_trips_through_metadata_props() -> None:
    card = _card()
    assert ModelCard.from_metadata_props(card.to_metadata_props()) == card


def test_missing_card_names_the_file_and_the_fix() -> None:
    with pytest.raises(MissingMetadataError, match=r"other\.onnx.*smallnets export"):
        ModelCard.from_metadata_props({}, source="other.onnx")
    with pytest.raises(MissingMetadataError, match="unreadable"):
        ModelCard.from_metadata_props({CARD_KEY: "{not json"}, source="x.onnx")


def test_preprocessing_follows_the_crop_pct_convention() -> None:
    assert Preprocessing.for_resolution(224).resize == 256
    batch = preprocess([Image.new("RGB", (640, 480), (255, 0, 127))], _card().preprocessing)
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == np.float32
    # mean/std 0.5 maps [0, 255] onto [-1, 1]
    np.testing.assert_allclose(batch[0, :, 0, 0], [1.0, -1.0, 127 / 255 * 2 - 1], atol=1e-6)


def test_cpu_features_are_parsed_for_both_architectures() -> None:
    model, features = parse_cpuinfo(X86_CPUINFO, "x86_64")
    assert model.startswith("Intel") and {"avx512_vnni", "amx_int8", "avx2"} <= set(features)
    _, arm_features = parse_cpuinfo(ARM_CPUINFO, "aarch64")
    assert {"asimd", "asimddp", "i8mm", "bf16"} <= set(arm_features) and "sve" not in arm_features
    assert detect_cpu().usable_cores >= 1


def test_softmax_and_top_k_are_sorted_probabilities() -> None:
    probabilities = softmax(np.array([[1.0, 3.0, 2.0]], dtype=np.float32))
    assert probabilities.sum() == pytest.approx(1.0)
    predictions = top_k(probabilities[0], 5, ("a", "b", "c"))
    assert [p.label for p in predictions] == ["b", "c", "a"]
    assert predictions[0].score > predictions[1].score > predictions[2].score


def test_providers_default_to_cpu_and_fall_back_with_a_note() -> None:
    assert resolve_providers(None)[0][-1] == "CPUExecutionProvider"
    providers, notes = resolve_providers(["acl"])
    assert providers == ["CPUExecutionProvider"] and "ACLExecutionProvider is not available" in notes[0]
    with pytest.raises(ProviderError, match="unknown execution provider"):
        resolve_providers(["warp-drive"])


def test_the_serving_session_neither_spins_nor_keeps_an_arena(exported: Callable[..., Path]) -> None:
    """The server, the speed gate and the bench's in-process floor share this session: a default session (ORT's
    spinning pool threads, an arena that keeps the largest batch) must not pass for it."""
    model = exported("mobilenet_v1", width=0.25, resolution=128)
    served, default = OnnxClassifier.for_serving(model, threads=2), OnnxClassifier(model, threads=2)
    for classifier, spins, arena in ((served, "0", False), (default, "1", True)):
        options = classifier.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == spins
        assert options.enable_cpu_mem_arena is arena and options.intra_op_num_threads == 2
