"""A newcomer's first hour, as they meet it: the README's clone is named `smallnets` and their script sits next to
it, so the CLI and the API run in a subprocess from the folder above such a clone. Random weights say so wherever
predictions are shown; real weights are the default where they ship."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from smallnets.cli import EXIT_NOT_FOUND
from smallnets.export.cli import default_weights, shipped_weights

CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.fixture
def beside_clone(tmp_path: Path) -> Path:
    """A folder holding a clone of this checkout named `smallnets` (a link: the same files)."""
    (tmp_path / "smallnets").symlink_to(CHECKOUT, target_is_directory=True)
    return tmp_path


def run(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The venv's python started in ``folder``, as a newcomer would (no PYTHONPATH of ours)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_a_script_beside_the_clone_imports_the_real_package(beside_clone: Path) -> None:
    (beside_clone / "script.py").write_text(
        "import smallnets, smallnets.serve.settings\n"
        "print(smallnets.__version__, callable(smallnets.load), smallnets.serve.settings.__name__)\n"
    )
    result = run(beside_clone, "script.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1:] == ["True", "smallnets.serve.settings"]
    module = run(beside_clone, "-m", "smallnets", "--version")
    assert module.returncode == 0 and module.stdout.startswith("smallnets "), module.stderr


def test_cli_classify_warns_about_random_weights_and_missing_inputs_are_not_found(
    beside_clone: Path, exported: Callable[..., Path], photos: dict[str, Image.Image]
) -> None:
    model = exported("squeezenet1_1")
    photos["chelsea"].save(beside_clone / "cat.jpg")
    shown = run(beside_clone, "-m", "smallnets", "classify", str(model), "cat.jpg", "--top-k", "1")
    assert shown.returncode == 0, shown.stderr
    (warning,) = [line for line in shown.stderr.splitlines() if line.startswith("warning:")]
    assert "random weights" in warning and "--weights imagenet" in warning
    assert "RandomWeightsWarning" not in shown.stderr  # the CLI's own line, not Python's too
    missing = run(beside_clone, "-m", "smallnets", "classify", str(model), "nope.jpg", "gone.png")
    assert missing.returncode == EXIT_NOT_FOUND, missing.stderr
    assert "nope.jpg: no such file" in missing.stderr


def test_the_api_takes_pictures_and_paths_warns_and_prints_short(
    beside_clone: Path, exported: Callable[..., Path], photos: dict[str, Image.Image]
) -> None:
    model = exported("squeezenet1_1")
    photos["chelsea"].save(beside_clone / "cat.jpg")
    script = textwrap.dedent(
        f"""
        import warnings
        from PIL import Image
        import smallnets
        from smallnets.core.evaluation import Accuracy, Evaluation

        with warnings.catch_warnings(record=True) as exporting:
            warnings.simplefilter("always")
            result = smallnets.export_model("squeezenet1_1", "mine.onnx")  # no checkpoint ships: random
        print([type(w.message).__name__ for w in exporting], result.card.weights_kind, "goldfish" in repr(result))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            classifier = smallnets.load({str(model)!r})
            one = classifier.classify(Image.open("cat.jpg"), k=1)
            paths = classifier.classify(["cat.jpg", "cat.jpg"], k=1)
        print([type(w.message).__name__ for w in caught])
        print(len(one), len(paths), one[0][0] == paths[1][0])
        print(repr(classifier))
        print(repr(Evaluation("m", "imagenet", "dev photos", Accuracy(500, 441, 480), None, ())))
        """
    )
    (beside_clone / "api.py").write_text(script)
    result = run(beside_clone, "api.py")
    assert result.returncode == 0, result.stderr
    exporting, caught, counts, shown, evaluation = result.stdout.splitlines()
    warned, weights, labels_shown = exporting.rsplit(" ", 2)
    assert warned == str(["RandomWeightsWarning"]) and weights == "random"
    assert labels_shown == "False"  # printing the result shows the card without its 1000 labels
    assert caught == str(["RandomWeightsWarning"] * 3)  # load, and each classify
    assert counts == "1 2 True"
    assert str(model) in shown and "fp32" in shown and "weights=random" in shown
    assert "top-1 88.2%" in evaluation and "441" not in evaluation


def test_real_weights_are_the_default_where_they_ship() -> None:
    assert shipped_weights() == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert default_weights("efficientnet_lite0") == "imagenet"
    assert default_weights("efficientnet_lite0", {"resolution": 224}) == "imagenet"
    assert default_weights("efficientnet_lite0", {"resolution": 192}) == "random"  # no checkpoint at that size
    assert default_weights("mobilenet_v2") == "random"  # its checkpoint is a download, not shipped
    assert default_weights("efficientnet_lite0", weights="random") == "random"


def test_the_help_says_which_models_default_to_real_weights() -> None:
    for command in ("export", "pipeline", "bench"):
        result = run(CHECKOUT, "-m", "smallnets", command, "--help")
        assert "efficientnet_lite0" in " ".join(result.stdout.split()), command


def test_a_busy_port_names_the_fix_in_the_words_of_the_command_used(
    exported: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    model = exported("squeezenet1_1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = ["-m", "smallnets", "serve", str(model), "--port", str(port)]
        direct = run(CHECKOUT, *serve)
        monkeypatch.setenv("SMALLNETS_MAKE_RUN", "1")  # what the Makefile's `run` sets
        from_make = run(CHECKOUT, *serve)
    assert direct.returncode == from_make.returncode == 5
    assert direct.stderr.strip().endswith(f"--port {port + 1}")
    assert from_make.stderr.strip().endswith(f"make run PORT={port + 1}")
    recipe = subprocess.run(["make", "-n", "run"], cwd=CHECKOUT, capture_output=True, text=True, check=False).stdout
    assert "SMALLNETS_MAKE_RUN=1" in next(line for line in recipe.splitlines() if " serve " in line)


def test_the_export_report_is_named_once() -> None:
    from smallnets.core.artifacts import EXPORT_NAME, export_report_path

    assert export_report_path(Path("out") / EXPORT_NAME) == Path("out/model.export.json")
    assert export_report_path("lite0.onnx") == Path("lite0.export.json")


def test_the_quick_starts_leftovers_are_ignored() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "cat.jpg", "lite0.export.json", "lite0.onnx"],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ignored.stdout.split() == ["cat.jpg", "lite0.export.json", "lite0.onnx"]


def test_every_shipped_data_folder_is_a_listed_package() -> None:
    """setuptools warns on every install about a data folder reached into from its parent package
    ("smallnets.export" = ["data/*"]): each folder of package data is a listed package of its own."""
    import tomllib

    setuptools = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, patterns in setuptools["package-data"].items():
        assert package in setuptools["packages"], package
        assert not [pattern for pattern in patterns if "/" in pattern], f"{package} reaches into a sub-folder"
    assert {"smallnets.export.data", "smallnets.serve.ui.static"} <= set(setuptools["package-data"])


def test_make_run_installs_serving_and_the_pipeline_only(tmp_path: Path) -> None:
    """In a fresh venv `make run` installs the demo extra (photos, shipped weights), not the dev extras."""

    def recipe(target: str) -> str:
        return subprocess.run(
            ["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=CHECKOUT, capture_output=True, text=True
        ).stdout

    run_installs = [line for line in recipe("run").splitlines() if "pip install" in line and "-e" in line]
    assert len(run_installs) == 1 and "'.[demo]'" in run_installs[0], run_installs
    assert "'.[dev]'" in recipe("test")


def test_the_readme_starts_with_the_two_commands_and_its_links_resolve() -> None:
    readme = (CHECKOUT / "README.md").read_text()
    top = "\n".join(readme.splitlines()[:20])
    assert "make run" in top and "make test" in top
    for document in (CHECKOUT / "README.md", *sorted((CHECKOUT / "docs").glob("*.md"))):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name} links to a missing {target}"
