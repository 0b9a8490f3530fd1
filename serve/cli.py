"""CLI of the serving stage: `smallnets classify`, `smallnets serve`, `smallnets build`.

Only the standard library at module level: `smallnets --help` must not pay for onnxruntime or BentoML.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

from smallnets.core.targets import OPENVINO, PROVIDERS_HELP, RUNTIME_HELP, RUNTIMES
from smallnets.serve.container_cli import register as register_container

PLATFORMS = ("linux/amd64", "linux/arm64")
SERVICE = "smallnets.serve.service:ImageClassifier"
MODEL_HELP = "an .onnx file, or a `smallnets optimize` output folder (its int8 model if there is one, else fp32)"
# A laptop default: reachable from this machine only. The Bento's container serves on 0.0.0.0 (BentoML's default),
# where the container's port mapping decides who can reach it.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
# Where a Bento's int8 kernels run: an int8 model tuned for one architecture is mistuned (or slow) on the other.
PLATFORM_ARCH = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
MAKE_RUN_ENV = "SMALLNETS_MAKE_RUN"  # set by the Makefile's `run`: its user changes PORT=, not --port


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `classify`, `serve` and `build`."""
    _add_classify(subparsers)
    _add_serve(subparsers)
    _add_build(subparsers)
    register_container(subparsers)  # `containerize`, `base-image`


def _add_classify(subparsers: argparse._SubParsersAction) -> None:
    classify = subparsers.add_parser(
        "classify",
        help="classify image files locally with an ONNX model (no server)",
        description="Run MODEL on each image in this process (no server). Each image is read on "
        "its own: one that cannot be read or decoded is reported on stderr and the others are still classified "
        "(exit code 8; 3 when none was found, 2 when none could be read).",
    )
    classify.add_argument("model", type=Path, metavar="MODEL", help=MODEL_HELP)
    classify.add_argument(
        "images",
        type=Path,
        nargs="+",
        metavar="IMAGE",
        help="image files (jpg/png/webp/gif/bmp/tiff) or folders of them (searched recursively)",
    )
    classify.add_argument("--top-k", type=int, default=5, help="classes per image, 1..20 (default: 5)")
    classify.add_argument(
        "--json", action="store_true", help="print one JSON document with every result and error (default: off)"
    )
    classify.add_argument("--threads", type=int, default=None, help="inference threads (default: all usable cores)")
    _add_runtime_options(classify)
    classify.set_defaults(handler=run_classify)


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve an ONNX model over HTTP with BentoML",
        description="Import MODEL into the BentoML model store (once per content) and serve /classify, "
        "/classify_batch, /metadata, /metrics, /livez and /readyz. Any number of servers can run side by side on "
        f"different ports, each with its own metrics. The default host {DEFAULT_HOST} is reachable from this "
        "machine only; --host 0.0.0.0 serves every network interface (what a built Bento's container does).",
    )
    serve.add_argument("model", type=Path, help=MODEL_HELP)
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port, 1-65535 (default: {DEFAULT_PORT})")
    serve.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on; 0.0.0.0 for every interface (default: {DEFAULT_HOST}, this machine only)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes, each with its own model session (default: one per 4 cores of the CPU quota)",
    )
    serve.add_argument("--max-upload-mb", type=float, default=None, help="upload size cap in MB (default: 20)")
    serve.add_argument(
        "--threads",
        type=int,
        default=None,
        help="inference threads per worker (default: usable cores / --workers)",
    )
    serve.add_argument(
        "--grpc-port",
        type=int,
        default=0,
        help="also serve the Open Inference Protocol over gRPC (KServe v2 GRPCInferenceService) on this port, on "
        "the same host and workers (default: 0, no gRPC)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per HTTP request, BentoML's access log (default: off)",
    )
    _add_runtime_options(serve)
    serve.set_defaults(handler=run_serve)


def _add_build(subparsers: argparse._SubParsersAction) -> None:
    build = subparsers.add_parser(
        "build",
        help="build a Docker-ready Bento around an ONNX model",
        description="Import MODEL into the BentoML model store and build a Bento (serving code + model + locked "
        "requirements for --platform); `smallnets containerize` makes the image. The container serves on "
        "0.0.0.0:3000.",
    )
    build.add_argument("model", type=Path, help=MODEL_HELP)
    build.add_argument(
        "--platform",
        choices=PLATFORMS,
        default="linux/amd64",
        help="platform of the image and its locked wheels (default: linux/amd64)",
    )
    build.add_argument("--runtime", choices=RUNTIMES, default=None, help=RUNTIME_HELP)
    build.set_defaults(handler=run_build)


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", choices=RUNTIMES, default=None, help=RUNTIME_HELP)
    parser.add_argument("--providers", default=None, help=PROVIDERS_HELP)


def _providers(value: str | None) -> list[str] | None:
    return [name.strip() for name in value.split(",") if name.strip()] if value else None


def run_classify(args: argparse.Namespace) -> int:
    from smallnets.core.errors import EXIT_NOT_FOUND, EXIT_PARTIAL, EXIT_USAGE
    from smallnets.core.loading import load_classifier
    from smallnets.serve.settings import MAX_TOP_K

    if not 1 <= args.top_k <= MAX_TOP_K:
        raise ValueError(f"--top-k must be from 1 to {MAX_TOP_K}, got {args.top_k}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    classifier = load_classifier(
        args.model, providers=_providers(args.providers), threads=args.threads, runtime=args.runtime
    )
    for note in classifier.provider_notes:
        print(f"note: {note}", file=sys.stderr)
    for note in filter(None, (classifier.cpu_note, classifier.weights_note)):  # int8 for another CPU; random weights
        print(f"warning: {note}", file=sys.stderr)
    results = [classify_one(classifier, path, args.top_k) for path in image_files(args.images)]
    model = {
        "name": classifier.card.display_name,
        "precision": classifier.card.precision,
        "weights": classifier.card.weights,
        "path": str(classifier.path),
        "runtime": classifier.runtime,
        "providers": classifier.providers,
    }
    if args.json:
        print(json.dumps({"model": model, "results": results}, indent=2))
    else:
        print_table(model, [result for result in results if "predictions" in result])
    errors = [result for result in results if "error" in result]
    for result in errors:
        print(f"smallnets classify: error: {result['error']}", file=sys.stderr)
    if errors and len(errors) == len(results):  # nothing classified: not a partial result
        return EXIT_NOT_FOUND if not any(Path(result["image"]).is_file() for result in errors) else EXIT_USAGE
    return EXIT_PARTIAL if errors else 0


def image_files(arguments: list[Path]) -> list[Path]:
    """The files named, with each folder replaced by the images below it (missing paths stay, to be reported)."""
    from smallnets.core.images import iter_image_files

    files: list[Path] = []
    for path in arguments:
        found = list(iter_image_files(path)) if path.is_dir() else [path]
        files.extend(found or [path])  # an empty folder is reported as one error
    return files


def classify_one(classifier: Any, path: Path, top_k: int) -> dict[str, Any]:
    """One image's predictions, or its one-line error: a bad file never stops the others."""
    from smallnets.core.images import IMAGE_SUFFIXES, load_image

    if path.is_dir():
        return {"image": str(path), "error": f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder"}
    try:
        image = load_image(path)
    except FileNotFoundError:
        return {"image": str(path), "error": f"{path}: no such file; check the path"}
    except (ValueError, OSError) as error:
        message = " ".join(str(error).split())
        return {"image": str(path), "error": message if str(path) in message else f"{path}: {message}"}
    predictions = classifier.classify([image], top_k)[0]
    return {"image": str(path), "predictions": [prediction.to_dict() for prediction in predictions]}


def print_table(model: dict[str, Any], results: list[dict[str, Any]]) -> None:
    print(f"model: {model['name']} ({model['precision']}, {', '.join(model['providers'])})")
    if not results:
        return
    names = [Path(result["image"]).name for result in results]
    name_width = max(len("image"), *(len(name) for name in names))
    print(f"{'image':<{name_width}}  rank  class_id   score  label")
    for name, result in zip(names, results, strict=True):
        for rank, prediction in enumerate(result["predictions"], start=1):
            shown = name if rank == 1 else ""
            print(
                f"{shown:<{name_width}}  {rank:>4}  {prediction['class_id']:>8}  {prediction['score']:6.4f}  "
                f"{prediction['label']}"
            )


def serve_environment(args: argparse.Namespace) -> dict[str, str]:
    """What the BentoML worker processes read at import (serve/settings.py)."""
    from smallnets.serve import settings

    env = {**os.environ}
    env.pop(settings.ENV_MODEL_PATH, None)
    if args.workers is not None:
        env[settings.ENV_WORKERS] = str(args.workers)
    if args.threads is not None:
        env[settings.ENV_THREADS] = str(args.threads)
    if args.runtime:
        env[settings.ENV_RUNTIME] = args.runtime
    if args.providers:
        env[settings.ENV_PROVIDERS] = args.providers
    if args.max_upload_mb is not None:
        env[settings.ENV_MAX_UPLOAD_MB] = str(args.max_upload_mb)
    if args.grpc_port:
        env[settings.ENV_GRPC_PORT] = str(args.grpc_port)
        env[settings.ENV_GRPC_HOST] = args.host
    if args.access_log:
        env[settings.ENV_ACCESS_LOG] = "1"
    return env


def run_serve(args: argparse.Namespace) -> NoReturn:
    from smallnets.core.artifacts import resolve_model_file
    from smallnets.core.hardware import cpu_quota, serving_cores
    from smallnets.core.runtime import resolve_providers
    from smallnets.serve.settings import ENV_RUNTIME
    from smallnets.serve.store import import_model, read_card

    if (args.workers is not None and args.workers < 1) or (args.threads is not None and args.threads < 1):
        raise ValueError("--workers and --threads must be positive integers")
    model_file = resolve_model_file(args.model)
    card = read_card(model_file)  # a missing or foreign model fails first, in one line
    check_listen_address(args.host, args.port)  # before BentoML starts: its own failure is a long traceback
    if args.grpc_port:
        if args.grpc_port == args.port:
            raise ValueError(f"--grpc-port must differ from --port ({args.port}): gRPC has a port of its own")
        check_listen_address(args.host, args.grpc_port, option="--grpc-port")
    resolve_providers(_providers(args.providers))  # fail here, not in every worker
    check_runtime_for(model_file, args.runtime or os.environ.get(ENV_RUNTIME) or card.runtime)
    cores = serving_cores(quota=cpu_quota())  # a container's CPU quota, not the host's cores
    workers = args.workers or 1
    if args.threads is not None and workers * args.threads > cores:
        print(
            f"warning: {workers} workers x {args.threads} threads > {cores} cores: requests will fight for "
            f"CPU; use --threads {max(1, cores // workers)}",
            file=sys.stderr,
        )
    tag = import_model(args.model)
    if card.weights_note:  # the page, /metadata, the Warning header and the metric say it too
        print(f"warning: {card.weights_note}", file=sys.stderr, flush=True)
    print(f"serving {model_file} as {tag} on http://{args.host}:{args.port}", flush=True)
    command = [sys.executable, "-m", "smallnets.serve.launch", "serve", SERVICE, "--arg", f"model_tag={tag}"]
    command += ["--host", args.host, "--port", str(args.port)]
    os.chdir(project_root())
    # Become the server (no idle parent holding onnxruntime in memory; signals reach BentoML directly).
    os.execve(sys.executable, command, serve_environment(args))


def check_listen_address(host: str, port: int, option: str = "--port") -> None:
    """A port in range, a host of this machine, and nobody listening there yet; else one line naming the fix."""
    if not 1 <= port <= 65535:
        raise ValueError(f"{option} must be from 1 to 65535, got {port}")
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise ValueError(
            f"--host {host} is not a known host name or address: use {DEFAULT_HOST} (this machine only) or "
            "0.0.0.0 (every interface)"
        ) from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise OSError(
                    errno.EADDRINUSE,
                    f"port {port} on {host} is already in use (another server?): stop it or pick a free one with "
                    f"{port_fix(option, port + 1 if port < 65535 else 3000)}",
                ) from None
            if error.errno == errno.EADDRNOTAVAIL:
                raise ValueError(
                    f"--host {host} is not an address of this machine: use {DEFAULT_HOST} or 0.0.0.0"
                ) from None
            raise OSError(
                error.errno, f"cannot listen on {host}:{port} ({error.strerror}); try another {option}"
            ) from None


def port_fix(option: str, free: int) -> str:
    """How to pick another port: the make variable when `make run` started us (it sets MAKE_RUN_ENV), else the flag."""
    return f"make run PORT={free}" if option == "--port" and os.environ.get(MAKE_RUN_ENV) else f"{option} {free}"


def warn_if_other_arch(card: Any, platform: str) -> None:
    """An int8 model tuned for one CPU architecture still runs on the other, but with the wrong kernels' rounding."""
    quantization = card.quantization or {}
    arch = quantization.get("arch")
    if card.precision == "int8" and arch and arch != PLATFORM_ARCH[platform]:
        print(
            f"warning: the model is int8 for target {quantization.get('name')} ({arch} CPUs) but the Bento is for "
            f"{platform}: its accuracy and speed there are unvalidated; optimize with --target "
            f"{'arm64' if platform == 'linux/arm64' else 'auto (on an x86 machine)'} or package model.fp32.onnx",
            file=sys.stderr,
        )


def check_runtime_for(model_file: Path, runtime: str) -> str:
    """``runtime`` when it is one and can run the file here; else the one-line error, before any worker starts."""
    from smallnets.core.openvino_runtime import check_readable
    from smallnets.core.targets import check_runtime

    if check_runtime(runtime) == OPENVINO:
        check_readable(model_file)  # OpenVINO installed, and the file in ops it reads
    return runtime


def project_root() -> Path:
    """Where bentofile.yaml and the serve/ package live (the Bento's build context)."""
    return Path(__file__).resolve().parent.parent


def run_build(args: argparse.Namespace) -> int:
    from smallnets.core.artifacts import resolve_model_file
    from smallnets.serve.bento import build_bento
    from smallnets.serve.store import import_model, read_card

    model_file = resolve_model_file(args.model)
    card = read_card(model_file)
    warn_if_other_arch(card, args.platform)
    runtime = check_runtime_for(model_file, args.runtime or card.runtime)
    tag = import_model(args.model)
    result = build_bento(tag, args.platform, project_root(), runtime)
    print(f"model: {tag}")
    print(f"bento: {result.tag}")
    print(f"dockerfile: {result.dockerfile}")
    print(f"requirements: {result.requirements}")
    print(f"containerize: smallnets containerize {args.model} --platform {args.platform}")
    return 0
