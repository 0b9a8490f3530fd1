"""CLI of the container images: `smallnets containerize` and `smallnets base-image` (library: serve/container.py).

Only the standard library at module level, like serve/cli.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PLATFORMS = ("linux/amd64", "linux/arm64")
ENGINE_HELP = "docker or podman (default: Docker where an engine answers, else podman)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `containerize` and `base-image`."""
    containerize = subparsers.add_parser(
        "containerize",
        help="build a runnable OCI image (Docker/podman) serving a model",
        description="Import MODEL, build its Bento for --platform and the image through BentoML's containerize "
        "backend: Docker where an engine answers, else podman. Prints the image tag, its size and the run line "
        "that serves it (read-only root, scratch on a tmpfs, port 3000, as deploy/k8s runs it). Without --base, "
        "the base is smallnets' Debian bookworm + python3.11 image, built once from this machine's apt mirror "
        "(`smallnets base-image`; needs root and debootstrap).",
    )
    containerize.add_argument(
        "model",
        type=Path,
        metavar="MODEL",
        help="a `smallnets optimize` output folder (its int8 model if there is one, else fp32) or an .onnx file",
    )
    containerize.add_argument("-t", "--tag", default=None, help="image tag (default: the Bento's tag)")
    containerize.add_argument(
        "--platform",
        choices=PLATFORMS,
        default="linux/amd64",
        help="image platform; linux/arm64 builds under qemu emulation on x86 (default: linux/amd64)",
    )
    containerize.add_argument(
        "--base",
        default=None,
        metavar="IMAGE",
        help="base image with python3.11, e.g. python:3.11-slim (default: smallnets' Debian base, built if missing)",
    )
    containerize.add_argument("--engine", choices=("docker", "podman"), default=None, help=ENGINE_HELP)
    containerize.set_defaults(handler=run_containerize)

    base = subparsers.add_parser(
        "base-image",
        help="build the Debian bookworm + python3.11 base image without Docker Hub",
        description="debootstrap Debian bookworm (minbase + python3.11) from this machine's apt mirror and import "
        "it as smallnets-base:bookworm-python3.11-<arch>; reused when present. Needs root and debootstrap "
        "(and qemu-user-static + binfmt-support for the other architecture).",
    )
    base.add_argument("--platform", choices=PLATFORMS, default="linux/amd64", help="(default: linux/amd64)")
    base.add_argument("--engine", choices=("docker", "podman"), default=None, help=ENGINE_HELP)
    base.add_argument("--rebuild", action="store_true", help="replace an existing base image (default: reuse it)")
    base.set_defaults(handler=run_base_image)


def run_containerize(args: argparse.Namespace) -> int:
    from smallnets.serve.container import ContainerizeConfig, containerize, describe

    config = ContainerizeConfig(args.model, args.tag, args.platform, args.base, args.engine)
    print(describe(containerize(config)))
    return 0


def run_base_image(args: argparse.Namespace) -> int:
    from smallnets.serve.base_image import ensure_base_image
    from smallnets.serve.engines import detect_engine

    engine = detect_engine(args.engine)
    base = ensure_base_image(engine, args.platform, rebuild=args.rebuild)
    print(f"base: {base.tag}")
    print(f"size: {engine.image_size(base.tag) / 1e6:.0f} MB")
    print(f"built: {f'{base.seconds:.0f} s' if base.built else 'no (reused)'}")
    return 0
