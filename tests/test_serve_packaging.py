"""Serving without a server: the local classify CLI, the Bento build, the import hygiene of serve/, the settings."""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

import smallnets.core as core
import smallnets.serve as serve
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


def test_classify_cli_names_the_bad_file(model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = smallnets("classify", str(model), str(broken))
    assert result.returncode == 2 and "broken.jpg" in result.stderr


@pytest.mark.parametrize("command", ["serve", "build"])
def test_serve_and_build_refuse_a_missing_or_foreign_model(command: str, tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    missing = smallnets(command, str(tmp_path / "missing.onnx"), env=env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "smallnets export" in missing.stderr
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
    assert "FROM python:3.11-slim" in docker
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


@pytest.mark.parametrize("variable", ["SMALLNETS_THREADS", "SMALLNETS_WORKERS", "SMALLNETS_MAX_UPLOAD_MB"])
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
