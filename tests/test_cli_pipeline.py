"""`smallnets pipeline` twice does the work once; `optimize DIR` re-optimizes a pipeline folder in place; random
weights are never silent; bench refuses to overwrite results it did not write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import smallnets.workflow.pipeline
from smallnets.cli import EXIT_NOT_FOUND, EXIT_OUTPUT_REFUSED, main
from smallnets.core.artifacts import EXPORT_NAME, FP32_NAME
from smallnets.core.files import MANIFEST_NAME, read_manifest, write_manifest

QUICK = ["--effort", "quick", "--max-drop", "100"]


def stamps(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}


def test_pipeline_warns_lists_its_files_and_skips_an_unchanged_rerun(
    tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The code digest is taken once: an edit to the working tree during the test (a shared checkout) is not what
    # this test is about; test_the_code_digest_follows_the_source checks the digest itself.
    digest = smallnets.workflow.pipeline.code_digest()
    monkeypatch.setattr(smallnets.workflow.pipeline, "code_digest", lambda: digest)
    outdir = tmp_path / "squeezenet1_1"
    assert main(["pipeline", "squeezenet1_1", "-o", str(outdir), *QUICK]) == 0
    first = capfd.readouterr()
    warnings = [line for line in first.err.splitlines() if "unvalidated (random weights)" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:"), first.err
    manifest = read_manifest(outdir)
    assert manifest and manifest["inputs_key"]
    assert {EXPORT_NAME, FP32_NAME, "report.json", "report.md"} <= set(manifest["files"])
    assert set(manifest["files"]) == {path.name for path in outdir.iterdir()} - {MANIFEST_NAME}

    before = stamps(outdir)
    assert main(["pipeline", "squeezenet1_1", "-o", str(outdir), "--force", *QUICK]) == 0
    assert "up to date" in capfd.readouterr().out
    assert stamps(outdir) == before, "nothing rebuilt"

    # another setting is another key: refused without --force, never silently replaced
    assert main(["pipeline", "squeezenet1_1", "-o", str(outdir), "--effort", "quick", "--max-drop", "50"]) == (
        EXIT_OUTPUT_REFUSED
    )
    assert "--force" in capfd.readouterr().err and stamps(outdir) == before

    # optimize DIR: the folder's own export, optimized again in place; the export stays beside the result
    assert main(["optimize", str(outdir), "--force", *QUICK]) == 0
    after = read_manifest(outdir)
    assert after and EXPORT_NAME in after["files"] and (outdir / EXPORT_NAME).is_file()
    assert stamps(outdir)[FP32_NAME] != before[FP32_NAME]
    assert json.loads((outdir / "report.json").read_text())["output"] in after["files"]


def test_the_code_digest_follows_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    digest = smallnets.workflow.pipeline.code_digest()
    assert smallnets.workflow.pipeline.code_digest() == digest, "deterministic"
    real_find_spec = importlib.util.find_spec
    copy = tmp_path / "core"
    source = Path(real_find_spec("smallnets.core").submodule_search_locations[0])
    copy.mkdir()
    for path in source.glob("*.py"):
        (copy / path.name).write_bytes(path.read_bytes())

    def find_spec(name: str) -> object:
        spec = real_find_spec(name)
        if name == "smallnets.core":
            spec = importlib.util.spec_from_file_location(
                name, copy / "__init__.py", submodule_search_locations=[str(copy)]
            )
        return spec

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert smallnets.workflow.pipeline.code_digest() == digest, "same source, same digest"
    (copy / "files.py").write_text((copy / "files.py").read_text() + "\n# changed\n")
    assert smallnets.workflow.pipeline.code_digest() != digest, "a changed stage source is a changed input"


def test_optimize_on_a_folder_without_export_says_what_to_pass(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["optimize", str(tmp_path)]) == EXIT_NOT_FOUND
    error = capfd.readouterr().err
    assert EXPORT_NAME in error and "smallnets export" in error and len(error.splitlines()) == 1


def test_bench_refuses_an_output_it_did_not_write_before_any_work(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "report.md").write_text("committed results")
    assert main(["bench", "--models", "squeezenet1_1", "-o", str(results), "--force"]) == EXIT_OUTPUT_REFUSED
    assert "did not write" in capfd.readouterr().err
    assert (results / "report.md").read_text() == "committed results"
    write_manifest(results, "bench")
    assert main(["bench", "--models", "squeezenet1_1", "-o", str(results)]) == EXIT_OUTPUT_REFUSED
    assert "--force" in capfd.readouterr().err
