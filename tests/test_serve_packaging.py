"""Serving without a server: the local classify CLI, the Bento build, the import hygiene of serve/, the settings."""

from __future__ import annotations

import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

import smallnets.core as core
import smallnets.serve as serve
from smallnets.cli import EXIT_NOT_FOUND, EXIT_PARTIAL, EXIT_USAGE
from smallnets.core.artifacts import resolve_model_file
from smallnets.core.hardware import detect_cpu
from smallnets.serve.settings import ServeSettings, SettingsError

FORBIDDEN_IN_SERVING = ("torch", "onnxsim", "onnx")
ROW = re.compile(r"^(?P<image>\S*)\s+(?P<rank>\d+)\s+(?P<class_id>\d+)\s+(?P<score>[\d.]+)\s+(?P<label>.+)$")


@pytest.fixture(scope="module")
def model(exported) -> Path:
    return exported("efficientnet_lite0", weights="imagenet")


@pytest.fixture(scope="module")
def photo_files(photos: dict[str, Image.Image], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("chelsea", "coffee"):
        paths[name] = folder / f"{name}.jpg"
        photos[name].save(paths[name], quality=92)
    return paths


def smallnets(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smallnets", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_serve_modules_import_no_torch_onnx_or_onnxsim() -> None:
    """`smallnets` and every core and serve module, imported afresh, leave torch, onnx and onnxsim unloaded."""
    submodules = (f"{pkg.__name__}.{info.name}" for pkg in (core, serve) for info in pkgutil.iter_modules(pkg.__path__))
    modules = ["smallnets", *sorted(submodules)]
    assert {"smallnets.serve.service", "smallnets.core.runtime", "smallnets.serve.cli", "smallnets.serve.bento"} <= set(
        modules
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in {FORBIDDEN_IN_SERVING!r} if m in sys.modules))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("SMALLNETS_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_classify_cli_prints_the_table(model: Path, photo_files: dict[str, Path]) -> None:
    result = smallnets("classify", str(model), str(photo_files["chelsea"]), str(photo_files["coffee"]), "--top-k", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "efficientnet_lite0" in lines[0]
    assert re.match(r"image\s+rank\s+class_id\s+score\s+label", lines[1])
    rows = [ROW.match(line) for line in lines[2:]]
    assert len(rows) == 6 and all(rows), lines
    assert [row["image"] for row in rows] == ["chelsea.jpg", "", "", "coffee.jpg", "", ""]
    assert [int(row["rank"]) for row in rows] == [1, 2, 3, 1, 2, 3]
    assert {int(row["class_id"]) for row in rows[:3]} & set(range(281, 286))
    assert int(rows[3]["class_id"]) == 967 and rows[3]["label"] == "espresso"
    scores = [float(row["score"]) for row in rows[3:]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top-k", "0"], "--top-k must be from 1 to 20"),
        (["--providers", "tpu"], "unknown execution provider"),
    ],
)
def test_classify_cli_bad_options(model: Path, photo_files: dict[str, Path], args: list[str], message: str) -> None:
    result = smallnets("classify", str(model), str(photo_files["coffee"]), *args)
    assert result.returncode == 2
    assert result.stderr.startswith("smallnets classify: error:") and message in result.stderr


def test_classify_cli_reports_bad_files_and_classifies_the_others(
    model: Path, photo_files: dict[str, Path], tmp_path: Path
) -> None:
    """A folder is expanded; a bad or missing file is one stderr line each; the good ones are still answered."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    shutil.copy(photo_files["coffee"], folder / "coffee.jpg")
    result = smallnets("classify", str(model), str(folder), str(tmp_path / "missing.jpg"), "--top-k", "1", "--json")
    assert result.returncode == EXIT_PARTIAL
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and "broken.jpg" in errors[0] and "missing.jpg" in errors[1], errors
    assert "Traceback" not in result.stderr
    results = {Path(entry["image"]).name: entry for entry in json.loads(result.stdout)["results"]}
    assert results["coffee.jpg"]["predictions"][0]["label"] == "espresso"
    assert "not a decodable image" in results["broken.jpg"]["error"] and "error" in results["missing.jpg"]


def test_classify_cli_model_errors_are_one_line(model: Path, photo_files: dict[str, Path], tmp_path: Path) -> None:
    """Missing file, a folder without models, a JPEG renamed .onnx, the README's int8 path after int8 was rejected."""
    fake = tmp_path / "photo.onnx"
    shutil.copy(photo_files["coffee"], fake)
    rejected = tmp_path / "rejected"
    rejected.mkdir()
    shutil.copy(model, rejected / "model.fp32.onnx")
    cases = [
        (tmp_path / "missing.onnx", EXIT_NOT_FOUND, "does not exist"),
        (tmp_path, EXIT_NOT_FOUND, "holds none of model.int8.onnx, model.fp32.onnx"),
        (fake, EXIT_USAGE, "is not a loadable ONNX model"),
        (rejected / "model.int8.onnx", EXIT_NOT_FOUND, f"no model.int8.onnx in {rejected}: int8 was rejected"),
    ]
    for path, code, message in cases:
        result = smallnets("classify", str(path), str(photo_files["coffee"]))
        assert result.returncode == code, result.stderr
        assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    served = smallnets("classify", str(rejected), str(photo_files["coffee"]), "--top-k", "1")
    assert served.returncode == 0 and "espresso" in served.stdout, "the folder serves its fp32 model"


def test_debug_shows_the_traceback(photo_files: dict[str, Path], tmp_path: Path) -> None:
    result = smallnets("--debug", "classify", str(tmp_path / "missing.onnx"), str(photo_files["coffee"]))
    assert result.returncode != 0 and "Traceback" in result.stderr and "FileNotFoundError" in result.stderr


@pytest.mark.parametrize("command", ["serve", "build"])
def test_serve_and_build_refuse_a_missing_or_foreign_model(command: str, tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    missing = smallnets(command, str(tmp_path / "missing.onnx"), env=env)
    assert missing.returncode == EXIT_NOT_FOUND
    assert "does not exist" in missing.stderr and "smallnets export" in missing.stderr
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    foreign = smallnets(command, str(garbage), env=env)
    assert foreign.returncode == 2 and "not a loadable ONNX model" in foreign.stderr


def test_serve_refuses_bad_worker_options(model: Path) -> None:
    result = smallnets("serve", str(model), "--workers", "0")
    assert result.returncode == 2 and "--workers" in result.stderr


@pytest.mark.parametrize("platform", ["linux/arm64"])
def test_build_makes_a_torch_free_bento(model: Path, tmp_path: Path, platform: str) -> None:
    """`smallnets build` imports the model, builds the Bento and locks its wheels for the target platform."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    result = smallnets("build", str(model), "--platform", platform, env=env)
    assert result.returncode == 0, result.stderr
    printed = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    model_tag, bento_tag = printed["model"], printed["bento"]
    assert model_tag.startswith("efficientnet_lite0_fp32:") and bento_tag.startswith("smallnets-classifier:")
    dockerfile = Path(printed["dockerfile"])
    assert dockerfile.name == "Dockerfile" and dockerfile.parent.name == "docker"
    bento = dockerfile.parents[2]

    requirements = Path(printed["requirements"]).read_text()
    names = {re.split(r"[=<>\[ ;@]", line, maxsplit=1)[0].lower() for line in requirements.splitlines()}
    assert {"onnxruntime", "numpy", "pillow", "bentoml"} <= names
    assert not names & set(FORBIDDEN_IN_SERVING), names & set(FORBIDDEN_IN_SERVING)

    docker = dockerfile.read_text()
    assert "ARG SMALLNETS_BASE=python:3.11-slim" in docker and "FROM ${SMALLNETS_BASE} AS base-container" in docker
    assert "torch" not in docker

    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert manifest["labels"]["platform"] == platform
    assert manifest["args"] == {"model_tag": model_tag}
    assert model_tag in [entry["tag"] for service in manifest["services"] for entry in service["models"]]
    sources = sorted(path.relative_to(bento / "src").as_posix() for path in (bento / "src").rglob("*.py"))
    assert "smallnets/serve/service.py" in sources and "smallnets/core/runtime.py" in sources, sources
    assert not {path.split("/")[1] for path in sources} & {"export", "optimize", "benchmarks"}, sources


def test_settings_defaults_share_cores_between_workers() -> None:
    cores = detect_cpu().usable_cores
    defaults = ServeSettings.from_env({})
    assert defaults.max_upload_bytes == 20 * 1024 * 1024 and defaults.threads == cores and defaults.workers == 1
    two = ServeSettings.from_env({"SMALLNETS_WORKERS": "2"})
    assert two.threads == max(1, cores // 2)
    explicit = ServeSettings.from_env({"SMALLNETS_THREADS": "3", "SMALLNETS_PROVIDERS": "xnnpack, cpu"})
    assert explicit.threads == 3 and explicit.providers == ("xnnpack", "cpu")


@pytest.mark.parametrize(
    "variable", ["SMALLNETS_THREADS", "SMALLNETS_WORKERS", "SMALLNETS_MAX_UPLOAD_MB", "SMALLNETS_RUNTIME"]
)
@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_settings_reject_bad_values(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        ServeSettings.from_env({variable: value})


def test_an_optimize_folder_serves_its_best_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="smallnets optimize"):
        resolve_model_file(tmp_path)
    (tmp_path / "model.fp32.onnx").write_bytes(b"fp32")
    assert resolve_model_file(tmp_path) == tmp_path / "model.fp32.onnx"  # int8 was rejected by optimize
    (tmp_path / "model.int8.onnx").write_bytes(b"int8")
    assert resolve_model_file(tmp_path) == tmp_path / "model.int8.onnx"
    assert resolve_model_file(tmp_path / "model.fp32.onnx") == tmp_path / "model.fp32.onnx"


def with_card(source: Path, target: Path, **changes: object) -> Path:
    """A copy of ``source`` whose model card (and nothing else) differs."""
    import onnx

    from smallnets.core.metadata import CARD_KEY, ModelCard

    proto = onnx.load(str(source))
    card = ModelCard.from_json(next(p.value for p in proto.metadata_props if p.key == CARD_KEY))
    for prop in proto.metadata_props:
        if prop.key == CARD_KEY:
            prop.value = card.with_updates(**changes).to_json()
    onnx.save(proto, str(target))
    return target


def test_the_store_tag_follows_content_not_the_export_time(model: Path, tmp_path: Path) -> None:
    """A re-export differs only in exported_at: same tag, so the BentoML store keeps one copy; other content differs."""
    from smallnets.core.files import sha256_file
    from smallnets.serve.store import content_digest, read_card

    card = read_card(model)
    later = with_card(model, tmp_path / "later.onnx", provenance={**card.provenance, "exported_at": "2030-01-01"})
    other = with_card(model, tmp_path / "other.onnx", weights="random seed 1")
    assert sha256_file(later) != sha256_file(model)
    assert content_digest(later, read_card(later)) == content_digest(model, card)
    assert content_digest(other, read_card(other)) != content_digest(model, card)

    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    code = "import sys\nfrom smallnets.serve.store import import_model\nprint(import_model(sys.argv[1]))"
    tags = [
        subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()
        for path in (model, later)
    ]
    assert tags[0] == tags[1]
    stored = tmp_path / "bentoml" / "models" / tags[0].split(":")[0]
    assert len([path for path in stored.iterdir() if path.is_dir()]) == 1, "one stored copy"


@pytest.mark.parametrize(("arch", "warned"), [("x86_64", True), ("aarch64", False)])
def test_build_warns_when_int8_is_for_another_architecture(
    model: Path, arch: str, warned: bool, capsys: pytest.CaptureFixture
) -> None:
    platform = "linux/arm64"
    from smallnets.serve.cli import warn_if_other_arch
    from smallnets.serve.store import read_card

    card = read_card(model).with_updates(precision="int8", quantization={"name": "x86-avx2", "arch": arch})
    warn_if_other_arch(card, platform)
    error = capsys.readouterr().err
    assert ("warning:" in error and platform in error and "unvalidated" in error) == warned, error
