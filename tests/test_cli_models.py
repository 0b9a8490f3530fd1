"""`smallnets models`: the shipped table matches the registry recomputed now, and reading it needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from smallnets.cli import main
from smallnets.export.cli import MODELS_TABLE, model_rows
from smallnets.export.registry import list_specs


def test_the_shipped_table_is_the_registry_recomputed() -> None:
    """Params/MACs of every model profiled now; a registry change without `smallnets models --refresh` fails."""
    shipped = json.loads(MODELS_TABLE.read_text())
    recomputed = json.loads(json.dumps(model_rows()))
    assert [row["name"] for row in shipped] == [row["name"] for row in recomputed], "run smallnets models --refresh"
    for old, new in zip(shipped, recomputed, strict=True):
        assert old == new, f"{new['name']} changed: run `smallnets models --refresh`"


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


def test_models_imports_no_torch() -> None:
    """What keeps `smallnets models` well under a second: no torch import, no profiling."""
    code = (
        "import sys\nfrom smallnets.cli import main\nmain(['models'])\nprint('torch' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr.strip() == "False", result.stderr
    assert "efficientnet_b7" in result.stdout
