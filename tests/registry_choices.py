"""The registry's cheapest variant per family: one model per builder, so family-parametrized tests stay quick and
a whole-suite run shares the session's exports between test files."""

from __future__ import annotations

from typing import Any

from smallnets.export.registry import list_specs


def cheapest_per_family() -> dict[str, tuple[str, dict[str, Any]]]:
    """Family -> (name, variant overrides) with the fewest MACs among the registry's reference variants."""
    best: dict[str, tuple[str, dict[str, Any], int]] = {}
    for spec in list_specs():
        for reference in spec.references:
            if reference.macs is not None and (spec.family not in best or reference.macs < best[spec.family][2]):
                best[spec.family] = (spec.name, dict(reference.variant), reference.macs)
    return {family: (name, variant) for family, (name, variant, _) in best.items()}


FAMILIES = cheapest_per_family()
FAMILY_IDS = sorted(FAMILIES)
