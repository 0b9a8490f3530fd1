"""`smallnets containerize`: one model (file or `smallnets optimize` folder) -> a runnable OCI image of its Bento.

The steps, each failing in one line before the next starts: the model is resolved and refused when its int8
kernels were tuned for another CPU architecture than the image's platform; an engine is picked (serve/engines.py);
the base image is made sure of (serve/base_image.py, unless --base names one); the model is imported and the Bento
built for the platform (serve/bento.py); then `bentoml.container.build` (BentoML's docker / podman backend) renders
serve/Dockerfile.j2 with the base as the SMALLNETS_BASE build argument, the host's CA bundle as a build secret (pip
reaches PyPI through whatever TLS proxy the host trusts; the file is never in a layer) and labels from the model
card. The engine tags the image only when every step succeeded: a failed build leaves no tag behind.
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from smallnets.serve.engines import Engine, detect_engine

PLATFORM_ARCH = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
IMAGE_PORT = 3000
CA_SECRET_ID = "smallnets-ca"  # serve/Dockerfile.j2 mounts it for the pip install only
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
LABEL_PREFIX = "io.github.smallnets."
# How the Deployment runs the image (deploy/k8s/deployment.yaml): read-only root, scratch on a tmpfs, its own user.
SCRATCH = "/scratch"
RUN_ENV = {"BENTOML_HOME": f"{SCRATCH}/bentoml", "TMPDIR": f"{SCRATCH}/tmp"}
BUILD_LOG_LINES = 40


@dataclass(frozen=True)
class ContainerizeConfig:
    model: Path  # an .onnx file or a `smallnets optimize` output folder
    tag: str | None = None  # default: the Bento's tag, smallnets-classifier:<version>
    platform: str = "linux/amd64"
    base: str | None = None  # default: the Debian base serve/base_image.py builds (once) for the platform
    engine: str | None = None  # docker | podman; default: Docker where an engine answers, else podman


@dataclass(frozen=True)
class ContainerImage:
    tag: str
    engine: str
    platform: str
    base: str
    bento: str
    model_tag: str
    model_file: Path
    size_bytes: int
    build_seconds: float
    labels: dict[str, str] = field(default_factory=dict)
    run_flags: tuple[str, ...] = ()  # what this engine needs on this host (podman's ulimits)

    def run_command(self, port: int = IMAGE_PORT) -> list[str]:
        """The `docker run` / `podman run` line that serves the image as the Deployment runs it."""
        env = [flag for name, value in RUN_ENV.items() for flag in ("-e", f"{name}={value}")]
        return [
            self.engine,
            "run",
            "--rm",
            "-p",
            f"{port}:{IMAGE_PORT}",
            "--read-only",
            "--tmpfs",
            SCRATCH,
            *env,
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            *self.run_flags,
            *(["--platform", self.platform] if PLATFORM_ARCH[self.platform] != platform.machine() else []),
            self.tag,
        ]


def containerize(config: ContainerizeConfig) -> ContainerImage:
    """Build the image of ``config.model`` for ``config.platform`` (see the module docstring for the steps)."""
    from smallnets.core.artifacts import resolve_model_file
    from smallnets.serve.base_image import ensure_base_image
    from smallnets.serve.bento import LOCK_PLATFORMS, build_bento
    from smallnets.serve.store import import_model, read_card

    if config.platform not in LOCK_PLATFORMS:
        raise ValueError(f"unknown platform {config.platform!r}: choose one of {', '.join(LOCK_PLATFORMS)}")
    model_file = resolve_model_file(config.model)
    card = read_card(model_file)
    check_architecture(card, model_file, config.platform)
    engine = detect_engine(config.engine)
    base = config.base or ensure_base_image(engine, config.platform).tag
    started = time.monotonic()
    model_tag = import_model(model_file)
    bento = build_bento(model_tag, config.platform, project_root())
    tag = config.tag or bento.tag
    labels = image_labels(card, bento.tag, config.platform, base)
    build_image(engine, bento.tag, tag, config.platform, base, labels)
    return ContainerImage(
        tag=tag,
        engine=engine.name,
        platform=config.platform,
        base=base,
        bento=bento.tag,
        model_tag=model_tag,
        model_file=model_file,
        size_bytes=engine.image_size(tag),
        build_seconds=time.monotonic() - started,
        labels=labels,
        run_flags=tuple(engine.ulimit_flags()),
    )


def project_root() -> Path:
    """Where bentofile.yaml lives (serve/bento.py stages the serving packages next to it)."""
    return Path(__file__).resolve().parent.parent


def check_architecture(card, model_file: Path, platform: str) -> None:
    """An int8 model is tuned for one CPU architecture (its target); the image must run on that one."""
    quantization = card.quantization or {}
    arch = quantization.get("arch")
    if card.precision != "int8" or not arch or arch == PLATFORM_ARCH[platform]:
        return
    matching = next((name for name, value in PLATFORM_ARCH.items() if value == arch), None)
    fix = f"use --platform {matching}" if matching else "use a model optimized for this platform"
    target = "arm64" if platform == "linux/arm64" else "auto (on an x86 machine)"
    raise ValueError(
        f"{model_file} is int8 for {arch} CPUs (target {quantization.get('name')}), not for --platform {platform}: "
        f"{fix}, or optimize it with --target {target}, or containerize its model.fp32.onnx"
    )


def image_labels(card, bento: str, platform: str, base: str) -> dict[str, str]:
    """OCI labels plus what a registry browser should show of the model: name, precision, accuracy, version."""
    from smallnets.core.version import __version__  # not the root package: it pulls in the API (the house floors)

    return {
        "org.opencontainers.image.title": "smallnets-classifier",
        "org.opencontainers.image.description": f"{card.display_name} {card.precision} image classifier (smallnets)",
        "org.opencontainers.image.version": __version__,
        "org.opencontainers.image.base.name": base,
        f"{LABEL_PREFIX}model": card.display_name,
        f"{LABEL_PREFIX}precision": card.precision,
        f"{LABEL_PREFIX}accuracy": card.accuracy.summary,
        f"{LABEL_PREFIX}weights": card.weights_kind,
        f"{LABEL_PREFIX}target": (card.quantization or {}).get("name", "none (fp32)"),
        f"{LABEL_PREFIX}version": __version__,
        f"{LABEL_PREFIX}bento": bento,
        f"{LABEL_PREFIX}platform": platform,
    }


def build_image(engine: Engine, bento: str, tag: str, platform: str, base: str, labels: dict[str, str]) -> None:
    """`bentoml.container.build` through the engine's backend; RuntimeError with the engine's reason on failure."""
    import bentoml

    options: dict = {"build_arg": {"SMALLNETS_BASE": base}, "label": labels, "platform": platform}
    if engine.name == "podman":
        # host network: the RUN steps need no CNI/netavark setup; docker format keeps the HEALTHCHECK (OCI has none)
        options |= {"network": "host", "format": "docker", "ulimit": engine.ulimits() or None}
    # BentoML 1.4 resolves the Bento's Dockerfile template inside its temporary build context and refuses a path
    # outside the working directory: build from the temporary folder's parent.
    with ca_bundle() as bundle, build_log() as lines, chdir(tempfile.gettempdir()):
        options["secret"] = f"id={CA_SECRET_ID},src={bundle}"
        result = bentoml.container.build(bento, backend=engine.name, image_tag=(tag,), **options)
    if result is None or not engine.image_exists(tag):  # BentoML logs a failed build and returns None
        errors = [line for line in lines if "error" in line.lower()] or list(lines) or ["no output"]
        reason = errors[-1].strip()
        if base in reason:
            reason += f" (the base {base} is neither here nor pullable: without --base smallnets builds its own)"
        raise RuntimeError(f"{engine.name} build of {tag} failed: {reason}")


@contextmanager
def ca_bundle() -> Iterator[str]:
    """The CA bundle the host trusts (a TLS proxy's CA included), or an empty file (then pip uses its own)."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), *CA_BUNDLES):
        if candidate and Path(candidate).is_file():
            yield candidate
            return
    with tempfile.NamedTemporaryFile(prefix="smallnets-ca-") as empty:
        yield empty.name


@contextmanager
def build_log() -> Iterator[deque[str]]:
    """The engine's output lines, shown on stderr as they come (a build takes minutes) and kept for the error."""
    lines: deque[str] = deque(maxlen=BUILD_LOG_LINES)

    class Echo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            for line in record.getMessage().splitlines():
                if line.strip():
                    lines.append(line)
                    print(f"  | {line}", file=sys.stderr, flush=True)

    logger = logging.getLogger("bentoml._internal.container")
    handler, level, propagate = Echo(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def describe(image: ContainerImage) -> str:
    """What `smallnets containerize` prints: one `key: value` per line, the run line last."""
    rows = {
        "image": image.tag,
        "size": f"{image.size_bytes / 1e6:.0f} MB",
        "platform": image.platform,
        "engine": image.engine,
        "base": image.base,
        "bento": image.bento,
        "model": f"{image.model_tag} ({image.model_file})",
        "accuracy": image.labels.get(f"{LABEL_PREFIX}accuracy", ""),
        "build": f"{image.build_seconds:.0f} s",
        "run": shlex.join(image.run_command()),
    }
    return "\n".join(f"{key}: {value}" for key, value in rows.items())
