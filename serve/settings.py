"""Serving settings from the environment: the one channel from `smallnets serve` / a Bento to the worker processes.

`bentoml serve` imports the service module in fresh worker processes, so the CLI cannot pass Python objects; it
sets these variables instead. The model's store tag is not among them: it is a Bento argument (``model_tag``, see
serve/service.py), which BentoML records inside a built Bento.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from smallnets.core.hardware import cpu_quota, serving_cores, serving_threads, serving_workers
from smallnets.core.targets import RUNTIMES

ENV_MODEL_PATH = "SMALLNETS_MODEL"
ENV_PROVIDERS = "SMALLNETS_PROVIDERS"
ENV_RUNTIME = "SMALLNETS_RUNTIME"
ENV_THREADS = "SMALLNETS_THREADS"
ENV_WORKERS = "SMALLNETS_WORKERS"
ENV_MAX_UPLOAD_MB = "SMALLNETS_MAX_UPLOAD_MB"
ENV_MAX_BATCH_IMAGES = "SMALLNETS_MAX_BATCH_IMAGES"
ENV_MAX_BATCH_SIZE = "SMALLNETS_MAX_BATCH_SIZE"
ENV_MAX_PIXELS = "SMALLNETS_MAX_PIXELS"
ENV_MAX_REQUEST_PIXELS = "SMALLNETS_MAX_REQUEST_PIXELS"
ENV_LATENCY_TARGET_S = "SMALLNETS_LATENCY_TARGET_S"
ENV_MAX_QUEUED_MB = "SMALLNETS_MAX_QUEUED_MB"
ENV_MAX_QUEUED_PIXELS = "SMALLNETS_MAX_QUEUED_PIXELS"
ENV_REQUEST_TIMEOUT_S = "SMALLNETS_REQUEST_TIMEOUT_S"
ENV_DECODE_THREADS = "SMALLNETS_DECODE_THREADS"
ENV_GRPC_PORT = "SMALLNETS_GRPC_PORT"
ENV_GRPC_HOST = "SMALLNETS_GRPC_HOST"
ENV_ACCESS_LOG = "SMALLNETS_ACCESS_LOG"

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_BATCH_IMAGES = 32
# Largest model batch adaptive batching forms: past ~16 a CPU gains no throughput, only latency and memory.
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_PIXELS = 50_000_000
# Decoded pixels one request may cost, summed over its images (JPEGs count at the reduced scale they decode at).
# Decoding runs at ~25-30 MP/s per core here (a 50 MP PNG: ~1.7-2 s), so the worst request accepted (two 50 MP
# images) decodes in ~4 s, inside the 10 s deadline even on a busy machine; heavier requests are refused (413)
# before any pixel is decoded.
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000
DEFAULT_REQUEST_TIMEOUT_S = 10.0
# Admission (serve/admission.py) takes a request while its predicted wait stays within the latency target; by
# default half the deadline, so a rate that halves meanwhile (other work on the machine) still answers in time (at
# 0.8, 512 clients on a busy 2-core machine saw one admitted request in five pass the deadline).
LATENCY_TARGET_SHARE = 0.5
# Memory bounds beside the prediction: request bodies held per worker, and decoded pixels waiting for a decode
# thread (two of the largest requests).
DEFAULT_MAX_QUEUED_MB = 256.0
DEFAULT_MAX_QUEUED_PIXELS = 200_000_000
DEFAULT_GRPC_HOST = "127.0.0.1"
MAX_TOP_K = 20
DEFAULT_TOP_K = 5


class SettingsError(ValueError):
    """A serving environment variable has an unusable value."""


@dataclass(frozen=True)
class ServeSettings:
    """Where the model comes from and how each worker runs it."""

    model_path: str | None
    runtime: str | None  # core.targets.RUNTIMES: what runs the model; None: the one the file was built for
    providers: tuple[str, ...]
    threads: int
    workers: int
    max_upload_bytes: int
    max_batch_images: int
    max_batch_size: int
    max_pixels: int
    max_request_pixels: int
    request_timeout_s: float
    latency_target_s: float
    max_queued_bytes: int
    max_queued_pixels: int
    decode_threads: int
    cpu_quota: float | None
    cores: int
    grpc_port: int  # 0: no gRPC front-end
    grpc_host: str
    access_log: bool  # BentoML's line per request: off unless asked (a load test printed thousands)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        env = os.environ if environ is None else environ
        quota = cpu_quota()
        cores = serving_cores(quota=quota)
        workers = _positive_int(env, ENV_WORKERS, serving_workers(cores))
        # Each worker owns a share of the cores: N workers x all cores would oversubscribe the machine.
        default_threads = serving_threads(cores, workers)
        max_batch_size = _positive_int(env, ENV_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_SIZE)
        timeout_s = _positive_float(env, ENV_REQUEST_TIMEOUT_S, DEFAULT_REQUEST_TIMEOUT_S)
        providers = tuple(name.strip() for name in env.get(ENV_PROVIDERS, "").split(",") if name.strip())
        return cls(
            model_path=env.get(ENV_MODEL_PATH) or None,
            runtime=_runtime(env),
            providers=providers,
            threads=_positive_int(env, ENV_THREADS, default_threads),
            workers=workers,
            max_upload_bytes=int(_positive_float(env, ENV_MAX_UPLOAD_MB, DEFAULT_MAX_UPLOAD_MB) * 1024 * 1024),
            max_batch_images=_positive_int(env, ENV_MAX_BATCH_IMAGES, DEFAULT_MAX_BATCH_IMAGES),
            max_batch_size=max_batch_size,
            max_pixels=_positive_int(env, ENV_MAX_PIXELS, DEFAULT_MAX_PIXELS),
            max_request_pixels=_positive_int(env, ENV_MAX_REQUEST_PIXELS, DEFAULT_MAX_REQUEST_PIXELS),
            request_timeout_s=timeout_s,
            latency_target_s=_positive_float(env, ENV_LATENCY_TARGET_S, LATENCY_TARGET_SHARE * timeout_s),
            max_queued_bytes=int(_positive_float(env, ENV_MAX_QUEUED_MB, DEFAULT_MAX_QUEUED_MB) * 1024 * 1024),
            max_queued_pixels=_positive_int(env, ENV_MAX_QUEUED_PIXELS, DEFAULT_MAX_QUEUED_PIXELS),
            # More parallel decoders than cores only queue for the CPU and multiply peak memory (one decoded
            # upload each).
            decode_threads=_positive_int(env, ENV_DECODE_THREADS, max(1, cores // workers)),
            cpu_quota=quota,
            cores=cores,
            grpc_port=_port(env, ENV_GRPC_PORT),
            grpc_host=env.get(ENV_GRPC_HOST) or DEFAULT_GRPC_HOST,
            access_log=env.get(ENV_ACCESS_LOG, "").lower() in ("1", "true", "yes", "on"),
        )


def _runtime(env: Mapping[str, str]) -> str | None:
    runtime = env.get(ENV_RUNTIME) or None
    if runtime is not None and runtime not in RUNTIMES:
        raise SettingsError(f"{ENV_RUNTIME}={runtime!r} must be one of {', '.join(RUNTIMES)} (unset: the file's own)")
    return runtime


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SettingsError(f"{name}={raw!r} must be a positive integer (unset it to use the default {default})")
    return value


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise SettingsError(f"{name}={raw!r} must be a positive number (unset it to use the default {default})")
    return value


def _port(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name)
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) > 65535:
        raise SettingsError(f"{name}={raw!r} must be a TCP port from 1 to 65535, or 0 for none")
    return int(raw)
