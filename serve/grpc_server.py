"""The Open Inference Protocol over gRPC (KServe v2 ``inference.GRPCInferenceService``) beside REST.

BentoML's service API serves no gRPC itself, so each worker runs a ``grpc.aio`` server in its own event loop, on
the same ``Engine`` as its HTTP app (one model copy, one batcher: gRPC and REST rows share batches), started by the
service's startup hook when SMALLNETS_GRPC_PORT is set; several workers share the port (SO_REUSEPORT). Answered:
ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata and ModelInfer (``images`` as BYTES, or the
FP32 tensor, in typed ``contents`` or ``raw_input_contents``; outputs come back in ``raw_output_contents``).

Same admission, limits, batching and deadline as REST (the client's gRPC deadline too, when sooner). A message
over the upload cap is refused by gRPC itself before it is decoded (RESOURCE_EXHAUSTED). Errors map to status
codes: refused input INVALID_ARGUMENT, unknown model NOT_FOUND, over the pixel budget RESOURCE_EXHAUSTED, predicted
wait over the target UNAVAILABLE (with ``retry-after`` in the trailing metadata), deadline DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from smallnets.core.version import __version__
from smallnets.serve import metrics
from smallnets.serve import oip_messages_pb2 as pb
from smallnets.serve.admission import Overloaded
from smallnets.serve.batching import BatcherStopped, DeadlineExceeded
from smallnets.serve.clock import RequestClock
from smallnets.serve.engine import Engine, ModelInfo
from smallnets.serve.forms import RequestRejected
from smallnets.serve.oip_codec import (
    EXTENSIONS,
    IMAGES_INPUT,
    SERVER_NAME,
    InferRequest,
    decode_input,
    input_shape,
    model_metadata_body,
    one_input_error,
    output_tensors,
    requested_outputs,
    tensor_bytes,
    top_k_value,
)
from smallnets.serve.settings import DEFAULT_TOP_K

LOGGER = logging.getLogger(__name__)
SERVICE = "inference.GRPCInferenceService"
INFER_ROUTE = f"grpc:/{SERVICE}/ModelInfer"  # the route label of its requests in /metrics
# Answers are small (logits of at most a batch-request's images); this only guards the client.
MAX_SEND_BYTES = 64 * 1024 * 1024
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class GrpcFrontEnd:
    """The gRPC server of one worker; ``start`` in the worker's event loop, ``stop`` at shutdown."""

    def __init__(self, engine: Engine, is_ready: Callable[[], bool]) -> None:
        self.engine = engine
        self.is_ready = is_ready
        self.server: grpc.aio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.engine.settings.max_upload_bytes),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                ("grpc.so_reuseport", 1),
            ]
        )
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, self._handlers())])
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.server.add_insecure_port(address)
        await self.server.start()
        LOGGER.info("Open Inference Protocol over gRPC on %s", address)

    async def stop(self, grace_s: float) -> None:
        if self.server is not None:
            await self.server.stop(grace_s)

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        methods = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest),
        }
        return {
            name: grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=kind.FromString, response_serializer=_serialize
            )
            for name, (behaviour, kind) in methods.items()
        }

    async def server_live(self, _: pb.ServerLiveRequest, __: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, _: pb.ServerReadyRequest, __: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.is_ready())

    async def server_metadata(
        self, _: pb.ServerMetadataRequest, __: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS))

    async def model_ready(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._check_model(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=self.is_ready())

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._check_model(request.name, request.version, context)
        body = model_metadata_body(self.engine.info)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        tensors = {key: [tensor(**item) for item in body[key]] for key in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(
            name=body["name"], versions=body["versions"], platform=body["platform"], **tensors
        )

    async def _check_model(self, name: str, version: str, context: grpc.aio.ServicerContext) -> None:
        info = self.engine.info
        if not info.serves(name, version or None):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {name!r} version {version!r}: this server serves {info.name!r} (or "
                f"{info.base_name!r}), versions {list(info.versions) or 'none'}",
            )

    async def model_infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        """Admission, then the work under the sooner of our deadline and the client's; errors become codes."""
        await self._check_model(request.model_name, request.model_version, context)
        engine = self.engine
        clock = RequestClock.start(engine.settings.request_timeout_s)
        remaining = context.time_remaining()
        if remaining is not None:
            clock.deadline = min(clock.deadline, clock.started + remaining)
        code, message, trailer = grpc.StatusCode.OK, "", ()
        try:
            async with engine.admitted(request.ByteSize()) as ticket, asyncio.timeout_at(clock.deadline):
                parsed = parse_grpc(engine.info, engine.settings.max_batch_images, request)
                if parsed.uploads is not None:
                    logits = await engine.logits_for_uploads(parsed.uploads, clock, ticket)
                else:
                    logits = await engine.logits_for_tensor(parsed.tensor, clock, ticket)
                response = encode_grpc(engine.info, parsed, logits.astype(np.float32, copy=False), clock)
        except Overloaded as overloaded:
            code, message = grpc.StatusCode.UNAVAILABLE, overloaded.refusal.message
            trailer = (("retry-after", str(overloaded.refusal.retry_after_s)),)
        except RequestRejected as rejected:
            code, message = STATUS_CODES.get(rejected.status, grpc.StatusCode.INTERNAL), rejected.message
        except (TimeoutError, DeadlineExceeded):
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            message = f"not answered within the deadline ({engine.settings.request_timeout_s:g} s or the client's)"
        except BatcherStopped:
            code, message = grpc.StatusCode.UNAVAILABLE, "server busy: shutting down"
        except asyncio.CancelledError:
            metrics.observe_request(INFER_ROUTE, "CANCELLED", clock.elapsed(), clock.phases)
            raise
        metrics.observe_request(INFER_ROUTE, code.name, clock.elapsed(), clock.phases)
        if code is not grpc.StatusCode.OK:
            context.set_trailing_metadata(trailer)
            await context.abort(code, message)
        if engine.warning:  # a random-weight model: its predictions mean nothing
            context.set_trailing_metadata((("warning", engine.warning),))
        return response


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def parameter_values(parameters: Any) -> dict[str, Any]:
    """A protocol parameter map as plain values (whichever of bool/int64/string/double/uint64 is set)."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def parse_grpc(info: ModelInfo, max_images: int, request: pb.ModelInferRequest) -> InferRequest:
    """A gRPC inference request validated like a REST one (serve/oip_codec.py)."""
    parameters = parameter_values(request.parameters)
    k = top_k_value(parameters.get("top_k"), "parameter 'top_k'")
    listed = [{"name": item.name, "parameters": parameter_values(item.parameters)} for item in request.outputs]
    outputs = requested_outputs(listed or None, info.output_name, k)
    if len(request.inputs) != 1:
        raise one_input_error(info)
    spec = request.inputs[0]
    shape = input_shape(list(spec.shape), spec.name)
    raw, values = None, None
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise RequestRejected(400, "raw_input_contents must hold one entry, for the one input")
        raw = request.raw_input_contents[0]
    elif spec.name == IMAGES_INPUT:
        values = list(spec.contents.bytes_contents)
    else:
        values = spec.contents.fp32_contents
    uploads, tensor = decode_input(info, max_images, spec.name, spec.datatype, shape, raw, values)
    return InferRequest(request.id or None, uploads, tensor, outputs, k or DEFAULT_TOP_K, binary_output=True)


def encode_grpc(
    info: ModelInfo, parsed: InferRequest, logits: np.ndarray, clock: RequestClock
) -> pb.ModelInferResponse:
    """The outputs, each in ``raw_output_contents`` (the protocol's binary form), with the request's timing."""
    response = pb.ModelInferResponse(
        model_name=info.name, model_version=(info.versions or ("",))[0], id=parsed.request_id or ""
    )
    response.parameters["inference_ms"].double_param = clock.inference_ms()
    response.parameters["batch_size"].int64_param = clock.batch_size
    for tensor in output_tensors(info, parsed, logits):
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.array.shape))
        response.raw_output_contents.append(tensor_bytes(tensor))
    return response
