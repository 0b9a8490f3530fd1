"""The Prometheus metrics the service exports at /metrics (next to BentoML's own ``bentoml_service_*`` ones).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms, base units), so the usual
dashboards work: request rate and errors by route and status, latency by route, where a request's time went
(queue, decode, preprocess, inference), batch sizes, queue depth, and which model and setup is being served.
BentoML runs prometheus_client in multiprocess mode, so each value is summed over the workers.
"""

from __future__ import annotations

from collections.abc import Mapping

import bentoml

# 1 ms .. ~16 s: from a warm small-CNN request to the default 10 s deadline.
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.004,
    0.008,
    0.016,
    0.032,
    0.064,
    0.128,
    0.256,
    0.512,
    1.024,
    2.048,
    4.096,
    8.192,
    16.384,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
PHASES = ("queue", "decode", "preprocess", "inference")

REQUESTS = bentoml.metrics.Counter(
    name="smallnets_requests_total",
    documentation="Requests answered, by route and HTTP status (503 = shed: predicted wait over the latency target, "
    "504 = deadline passed, 499 = client went away first)",
    labelnames=["route", "status"],
)
REQUEST_SECONDS = bentoml.metrics.Histogram(
    name="smallnets_request_duration_seconds",
    documentation="Time from the request reaching the service to its answer, by route",
    labelnames=["route"],
    buckets=LATENCY_BUCKETS,
)
PHASE_SECONDS = bentoml.metrics.Histogram(
    name="smallnets_request_phase_seconds",
    documentation="Per request time in each phase: queue (waiting for a batch), decode, preprocess, inference",
    labelnames=["phase"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_SECONDS = bentoml.metrics.Histogram(
    name="smallnets_inference_seconds",
    documentation="Model time per batch on its runtime (preprocessed tensors in, logits out)",
    labelnames=["model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = bentoml.metrics.Histogram(
    name="smallnets_batch_size",
    documentation="Images per model batch",
    labelnames=["model"],
    buckets=BATCH_BUCKETS,
)
QUEUE_DEPTH = bentoml.metrics.Gauge(
    name="smallnets_queue_depth",
    documentation="Requests held by the workers (reading, decoding, waiting for a batch or running)",
    multiprocess_mode="livesum",
)
PREDICTED_WAIT = bentoml.metrics.Gauge(
    name="smallnets_predicted_wait_seconds",
    documentation="Wait a new request would be predicted by admission (503 past SMALLNETS_LATENCY_TARGET_S), "
    "largest over the workers",
    multiprocess_mode="livemax",
)
MODEL_INFO = bentoml.metrics.Gauge(
    name="smallnets_model_info",
    documentation="The served model and how it runs (value 1; the labels carry the information)",
    labelnames=["model", "architecture", "precision", "providers", "threads", "weights"],  # weights="random": no use
    multiprocess_mode="max",
)


def observe_request(route: str, status: int | str, seconds: float, phases: Mapping[str, float]) -> None:
    """Count one answered request and record its time, in total and per phase (seconds)."""
    REQUESTS.labels(route=route, status=str(status)).inc()
    REQUEST_SECONDS.labels(route=route).observe(seconds)
    for phase, phase_seconds in phases.items():
        PHASE_SECONDS.labels(phase=phase).observe(phase_seconds)


def observe_batch(model: str, batch_size: int, seconds: float) -> None:
    INFERENCE_SECONDS.labels(model=model).observe(seconds)
    BATCH_SIZE.labels(model=model).observe(batch_size)


def publish_model_info(
    model: str, architecture: str, precision: str, providers: str, threads: int, weights: str = "imagenet"
) -> None:
    """``weights``: random, imagenet or file (ModelCard.weights_kind); random answers mean nothing."""
    MODEL_INFO.labels(
        model=model,
        architecture=architecture,
        precision=precision,
        providers=providers,
        threads=str(threads),
        weights=weights,
    ).set(1)
