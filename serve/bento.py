"""Building the Bento: the root bentofile.yaml, pointed at one stored model and one target platform.

The model tag travels as the Bento argument ``model_tag`` (`bentoml build --arg`): the service reads it at import
to declare its model, so the model is packed with the Bento, and the Bento records it for every later start
(`bentoml serve <bento>`, the container). `bentoml build` runs in a subprocess so that import happens fresh.

The build context is staged: only the top-level modules of ``smallnets``, ``smallnets/core`` and
``smallnets/serve`` are copied in, so the Bento holds the serving code and nothing of export/, optimize/ or
benchmarks/ (nor torch's imports).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

import smallnets.core
import smallnets.serve
from smallnets.core.openvino_runtime import INSTALL_HINT, RuntimeUnavailableError
from smallnets.core.targets import ONNXRUNTIME, OPENVINO
from smallnets.serve.settings import ENV_MODEL_PATH, ENV_RUNTIME

# uv's --python-platform names for the Docker platforms we target; glibc 2.36 is Debian bookworm, the
# python:3.11-slim base of the image.
LOCK_PLATFORMS = {"linux/amd64": "x86_64-manylinux_2_36", "linux/arm64": "aarch64-manylinux_2_36"}
TAG_PREFIX = "__tag__:"


@dataclass(frozen=True)
class BentoBuild:
    tag: str
    path: Path
    dockerfile: Path
    requirements: Path


def bentofile_for(model_tag: str, platform: str, bentofile: Path, runtime: str = ONNXRUNTIME) -> dict:
    """The build config of ``bentofile`` for one model, one platform and the runtime that runs the model."""
    config = yaml.safe_load(bentofile.read_text())
    config["args"] = {**config.get("args", {}), "model_tag": model_tag}
    config.setdefault("labels", {})["platform"] = platform
    config["labels"]["runtime"] = runtime
    config["envs"] = [*config.get("envs", []), {"name": ENV_RUNTIME, "value": runtime}]
    if runtime == OPENVINO:  # only Bentos that run OpenVINO carry it (~150 MB installed)
        config["python"]["packages"].append(openvino_requirement())
    return config


def openvino_requirement() -> str:
    """OpenVINO pinned at the version installed here: the one this machine's tests and figures ran."""
    try:
        return f"openvino=={importlib.metadata.version('openvino')}"
    except importlib.metadata.PackageNotFoundError as error:
        raise RuntimeUnavailableError(
            f"a Bento for the {OPENVINO} runtime pins the OpenVINO version tested here, and none is installed: "
            f"{INSTALL_HINT}"
        ) from error


def stage_sources(context: Path) -> None:
    """Lay the serving packages out under ``context/smallnets`` as the Bento will import them."""
    package = context / "smallnets"
    package.mkdir(parents=True)
    for module in Path(smallnets.core.__file__).parent.parent.glob("*.py"):  # __init__ and the lazy public API
        shutil.copyfile(module, package / module.name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for subpackage in (smallnets.core, smallnets.serve):
        source = Path(subpackage.__file__).parent
        shutil.copytree(source, package / subpackage.__name__.rpartition(".")[2], ignore=ignore)


def build_bento(model_tag: str, platform: str, root: Path, runtime: str = ONNXRUNTIME) -> BentoBuild:
    """``bentoml build`` of ``root`` for ``platform`` (linux/amd64 | linux/arm64) serving with ``runtime``; returns
    where things are."""
    import bentoml

    if platform not in LOCK_PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}: choose one of {sorted(LOCK_PLATFORMS)}")
    config = bentofile_for(model_tag, platform, root / "bentofile.yaml", runtime)
    env = {key: value for key, value in os.environ.items() if key != ENV_MODEL_PATH}
    with tempfile.TemporaryDirectory(prefix="smallnets-bento-") as scratch:
        context = Path(scratch)
        stage_sources(context)
        bentofile = context / "bentofile.yaml"
        bentofile.write_text(yaml.safe_dump(config, sort_keys=False))
        command = [sys.executable, "-m", "bentoml", "build", str(context), "-f", str(bentofile)]
        command += ["--platform", LOCK_PLATFORMS[platform], "--output", "tag"]
        completed = subprocess.run(command, env=env, cwd=context, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"bentoml build failed (exit {completed.returncode}):\n{completed.stderr.strip()}")
    lines = [line for line in completed.stdout.splitlines() if line.startswith(TAG_PREFIX)]
    if not lines:
        raise RuntimeError(f"bentoml build printed no tag:\n{completed.stdout}\n{completed.stderr}")
    tag = lines[-1][len(TAG_PREFIX) :].strip()
    path = Path(bentoml.bentos.get(tag).path)
    python_env = path / "env" / "python"
    locked = python_env / "requirements.lock.txt"
    return BentoBuild(
        tag=tag,
        path=path,
        dockerfile=path / "env" / "docker" / "Dockerfile",
        requirements=locked if locked.exists() else python_env / "requirements.txt",
    )
