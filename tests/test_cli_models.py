"""`smallnets models`: the whole registry, with recomputed params/MACs, as a table and as JSON."""

from __future__ import annotations

import json

import pytest

from smallnets.cli import main
from smallnets.export.profile import profile
from smallnets.export.registry import list_specs


def test_models_json_lists_every_spec_with_its_numbers(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    specs = list_specs()
    assert [row["name"] for row in rows] == [spec.name for spec in specs]
    for spec, row in zip(specs, rows, strict=True):
        assert (row["family"], row["resolution"], row["variant"]) == (
            spec.family,
            spec.defaults["resolution"],
            dict(spec.defaults),
        )
        assert (row["params"], row["macs"]) == profile(spec)
        assert (row["weights"] is not None) == (spec.weights is not None)
        assert row["preprocessing"]["crop"] == spec.defaults["resolution"]


def test_models_table_has_a_line_per_model(capsys: pytest.CaptureFixture) -> None:
    assert main(["models"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:5] == ["name", "family", "input", "params", "MACs"]
    by_name = {line.split()[0]: line.split() for line in lines}
    for spec in list_specs():
        resolution = spec.defaults["resolution"]
        assert by_name[spec.name][1:3] == [spec.family, f"{resolution}x{resolution}"]
