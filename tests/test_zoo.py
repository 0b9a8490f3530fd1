"""Every registered variant reproduces its published params / MACs (recomputed here, timm-style)."""

from __future__ import annotations

import pytest

from smallnets.export.profile import profile
from smallnets.export.registry import ModelSpec, PublishedFigures, list_specs

CASES = [
    pytest.param(spec, reference, id=f"{spec.name}-" + "-".join(f"{k}{v}" for k, v in reference.variant.items()))
    for spec in list_specs()
    for reference in spec.references
]


def _within(actual: int, expected: int, rel_tol: float) -> bool:
    return actual == expected if rel_tol == 0 else abs(actual - expected) <= rel_tol * expected


@pytest.mark.parametrize(("spec", "reference"), CASES)
def test_params_and_macs_match_reference(spec: ModelSpec, reference: PublishedFigures) -> None:
    params, macs = profile(spec, reference.variant)
    if reference.params is not None:
        assert _within(params, reference.params, reference.params_rel_tol), (
            f"{spec.name} {dict(reference.variant)}: {params:,} params, {reference.source} says {reference.params:,}"
        )
    if reference.macs is not None:
        assert _within(macs, reference.macs, reference.macs_rel_tol), (
            f"{spec.name} {dict(reference.variant)}: {macs:,} MACs, {reference.source} says {reference.macs:,}"
        )


def test_every_spec_declares_a_reference_for_its_default_variant() -> None:
    for spec in list_specs():
        assert any(spec.variant(**dict(r.variant)) == dict(spec.defaults) for r in spec.references), spec.name
