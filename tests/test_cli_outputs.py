"""`--force` replaces only folders smallnets wrote (listed in their manifest); everything else survives.

The refusals are checked through the real CLI (`smallnets optimize` refuses before loading anything) and through
the core functions every stage uses; every case checks that the user's own file is still there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smallnets.cli import EXIT_OUTPUT_REFUSED, main
from smallnets.core.files import (
    MANIFEST_NAME,
    OutputExistsError,
    add_to_manifest,
    check_output_dir,
    is_up_to_date,
    replace_folder,
    write_manifest,
)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """Never loaded: every refusal happens before the model is read."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not read")
    return path


def refused(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(list(argv)) == EXIT_OUTPUT_REFUSED
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1, error
    return error


def our_output(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.fp32.onnx").write_bytes(b"old")
    write_manifest(folder, "optimize")
    return folder


def test_a_foreign_file_is_never_replaced_even_with_force(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = our_output(tmp_path / "out")
    (folder / "notes.txt").write_text("mine")
    error = refused(capsys, "optimize", str(model), "-o", str(folder), "--force")
    assert "notes.txt" in error and "did not write" in error
    assert (folder / "notes.txt").read_text() == "mine"
    with pytest.raises(OutputExistsError):
        replace_folder(our_output(tmp_path / "new"), folder)
    assert (folder / "notes.txt").read_text() == "mine"


def test_a_folder_without_manifest_is_not_ours(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "data.csv").write_text("mine")
    assert "sub/data.csv" in refused(capsys, "optimize", str(model), "-o", str(folder), "--force")
    assert (folder / "sub" / "data.csv").read_text() == "mine"


@pytest.mark.parametrize("target", [".", ".."])
def test_current_and_parent_folder_are_refused(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert "current folder" in refused(capsys, "optimize", str(model), "-o", target, "--force")
    assert (work / "keep.txt").read_text() == "mine" and model.read_bytes() == b"not read"


def test_home_is_refused(
    tmp_path: Path, model: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    assert "home folder" in refused(capsys, "optimize", str(model), "-o", str(home), "--force")
    assert (home / ".bashrc").read_text() == "mine"


@pytest.mark.parametrize("marker", ["pyproject.toml", ".git", "__init__.py"])
def test_a_source_tree_is_refused(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture, marker: str) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / marker).write_text("mine")
    # even a manifest listing everything does not make a source tree replaceable
    write_manifest(tree, "optimize")
    assert "source tree" in refused(capsys, "optimize", str(model), "-o", str(tree), "--force")
    assert (tree / marker).read_text() == "mine"


def test_the_project_package_folders_are_refused(model: Path, capsys: pytest.CaptureFixture) -> None:
    import smallnets.export

    package = Path(smallnets.export.__file__).parent
    assert "source tree" in refused(capsys, "optimize", str(model), "-o", str(package), "--force")
    assert (package / "__init__.py").is_file()


def test_our_own_output_needs_force_and_is_then_replaced_whole(tmp_path: Path, model: Path, capsys) -> None:
    folder = our_output(tmp_path / "out")
    assert "--force" in refused(capsys, "optimize", str(model), "-o", str(folder))
    check_output_dir(folder, force=True)
    new = tmp_path / "staging"
    new.mkdir()
    (new / "model.int8.onnx").write_bytes(b"new")
    write_manifest(new, "optimize")
    replace_folder(new, folder)
    assert sorted(path.name for path in folder.iterdir()) == [MANIFEST_NAME, "model.int8.onnx"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx", "out"], "no trash left behind"


def test_a_file_in_place_of_the_folder_is_refused(tmp_path: Path, model: Path, capsys) -> None:
    target = tmp_path / "out"
    target.write_text("mine")
    assert "not a folder" in refused(capsys, "optimize", str(model), "-o", str(target), "--force")
    assert target.read_text() == "mine"


def test_manifest_inputs_key_and_additions(tmp_path: Path) -> None:
    folder = our_output(tmp_path / "out")
    (folder / "model.export.onnx").write_bytes(b"export")
    assert not is_up_to_date(folder, "k1"), "the export is not listed yet"
    add_to_manifest(folder, ["model.export.onnx"], "k1")
    assert is_up_to_date(folder, "k1") and not is_up_to_date(folder, "k2")
    (folder / "model.export.onnx").unlink()
    assert not is_up_to_date(folder, "k1"), "a listed file went missing"


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_export_never_overwrites_a_file_it_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture, kind: str
) -> None:
    target = tmp_path / "notes.onnx"
    if kind == "folder":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    else:
        target.write_text("mine")
    error = refused(capsys, "export", "squeezenet1_1", "-o", str(target))
    assert ("is a folder" if kind == "folder" else "not a model smallnets exported") in error
    assert (target / "keep.txt" if kind == "folder" else target).read_text() == "mine"


def test_a_nested_smallnets_output_is_ours_but_a_stray_file_in_it_is_not(tmp_path: Path) -> None:
    """bench-http writes results/http inside bench's results/: both manifests together cover everything."""
    results = our_output(tmp_path / "results")
    http = results / "http"
    http.mkdir()
    (http / "http_report.md").write_text("load")
    write_manifest(http, "bench-http")
    check_output_dir(results, force=True)
    (http / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"http/notes\.txt"):
        check_output_dir(results, force=True)
