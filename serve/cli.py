"""CLI of the serving stage: `smallnets classify`, `smallnets serve`, `smallnets build`.

Only the standard library at module level: `smallnets --help` must not pay for onnxruntime or BentoML.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

PLATFORMS = ("linux/amd64", "linux/arm64")
SERVICE = "smallnets.serve.service:ImageClassifier"
MODEL_HELP = "an .onnx file, or a `smallnets optimize` output folder (its int8 model if there is one, else fp32)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `classify`, `serve` and `build`."""
    classify = subparsers.add_parser("classify", help="classify image files locally with an ONNX model (no server)")
    classify.add_argument("model", type=Path, help="exported or optimized .onnx file")
    classify.add_argument("images", type=Path, nargs="+", help="image files (jpg/png/webp/gif/bmp/tiff)")
    classify.add_argument("--top-k", type=int, default=5, help="classes per image (1..20, default 5)")
    _add_runtime_options(classify)
    classify.set_defaults(handler=run_classify)

    serve = subparsers.add_parser("serve", help="serve an ONNX model over HTTP with BentoML")
    serve.add_argument("model", type=Path, help=MODEL_HELP)
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--workers", type=int, default=1, help="worker processes, each with its own session")
    serve.add_argument("--max-upload-mb", type=float, default=None, help="upload size cap (default 20 MB)")
    _add_runtime_options(serve)
    serve.set_defaults(handler=run_serve)

    build = subparsers.add_parser("build", help="build a Docker-ready Bento around an ONNX model")
    build.add_argument("model", type=Path, help=MODEL_HELP)
    build.add_argument("--platform", choices=PLATFORMS, default="linux/amd64", help="target of the locked wheels")
    build.set_defaults(handler=run_build)


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime intra-op threads per worker (default: cores/workers)"
    )
    parser.add_argument(
        "--providers", default=None, help="comma-separated execution providers, e.g. cpu or xnnpack,cpu"
    )


def _providers(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",") if name.strip()] if value else None


def run_classify(args: argparse.Namespace) -> int:
    from smallnets.core.images import load_image
    from smallnets.core.runtime import OnnxClassifier
    from smallnets.serve.settings import MAX_TOP_K

    if not 1 <= args.top_k <= MAX_TOP_K:
        raise ValueError(f"--top-k must be from 1 to {MAX_TOP_K}, got {args.top_k}")
    classifier = OnnxClassifier(args.model, providers=_providers(args.providers), threads=args.threads)
    for note in classifier.provider_notes:
        print(f"note: {note}", file=sys.stderr)
    images = [load_image(path) for path in args.images]
    results = classifier.classify(images, args.top_k)
    name_width = max(len("image"), *(len(path.name) for path in args.images))
    print(f"model: {classifier.card.display_name} ({classifier.card.precision}, {', '.join(classifier.providers)})")
    print(f"{'image':<{name_width}}  rank  class_id   score  label")
    for path, predictions in zip(args.images, results, strict=True):
        for rank, prediction in enumerate(predictions, start=1):
            shown = path.name if rank == 1 else ""
            print(
                f"{shown:<{name_width}}  {rank:>4}  {prediction.class_id:>8}  {prediction.score:6.4f}  "
                f"{prediction.label}"
            )
    return 0


def serve_environment(args: argparse.Namespace) -> dict[str, str]:
    """What the BentoML worker processes read at import (serve/settings.py)."""
    from smallnets.serve import settings

    env = {**os.environ, settings.ENV_WORKERS: str(args.workers)}
    env.pop(settings.ENV_MODEL_PATH, None)
    if args.threads is not None:
        env[settings.ENV_THREADS] = str(args.threads)
    if args.providers:
        env[settings.ENV_PROVIDERS] = args.providers
    if args.max_upload_mb is not None:
        env[settings.ENV_MAX_UPLOAD_MB] = str(args.max_upload_mb)
    return env


def run_serve(args: argparse.Namespace) -> NoReturn:
    from smallnets.core.artifacts import resolve_model_file
    from smallnets.core.hardware import detect_cpu
    from smallnets.core.runtime import resolve_providers
    from smallnets.serve.store import import_model

    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        raise ValueError("--workers and --threads must be positive integers")
    resolve_providers(_providers(args.providers))  # fail here, not in every worker
    cores = detect_cpu().usable_cores
    if args.threads is not None and args.workers * args.threads > cores:
        print(
            f"warning: {args.workers} workers x {args.threads} threads > {cores} cores: requests will fight for "
            f"CPU; use --threads {max(1, cores // args.workers)}",
            file=sys.stderr,
        )
    tag = import_model(args.model)
    print(f"serving {resolve_model_file(args.model)} as {tag} on http://{args.host}:{args.port}", flush=True)
    command = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--arg", f"model_tag={tag}"]
    command += ["--host", args.host, "--port", str(args.port)]
    os.chdir(project_root())
    # Become the server (no idle parent holding onnxruntime in memory; signals reach BentoML directly).
    os.execve(sys.executable, command, serve_environment(args))


def project_root() -> Path:
    """Where bentofile.yaml and the serve/ package live (the Bento's build context)."""
    return Path(__file__).resolve().parent.parent


def run_build(args: argparse.Namespace) -> int:
    from smallnets.serve.bento import build_bento
    from smallnets.serve.store import import_model

    tag = import_model(args.model)
    result = build_bento(tag, args.platform, project_root())
    print(f"model: {tag}")
    print(f"bento: {result.tag}")
    print(f"dockerfile: {result.dockerfile}")
    print(f"requirements: {result.requirements}")
    print(f"containerize: bentoml containerize {result.tag} --platform {args.platform}")
    return 0
