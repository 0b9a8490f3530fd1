"""The Open Inference Protocol's codec without a server: REST bodies and gRPC messages in, the same validated
request out; logits out in the protocol's JSON and binary forms."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from smallnets.serve import oip_messages_pb2 as pb
from smallnets.serve.engine import ModelInfo
from smallnets.serve.forms import RequestRejected
from smallnets.serve.grpc_server import encode_grpc, parse_grpc
from smallnets.serve.oip_codec import HEADER_LENGTH, encode_rest, output_tensors, parse_rest, tensor_bytes

INFO = ModelInfo(
    name="tiny_int8",
    base_name="tiny",
    versions=("abc",),
    input_name="input",
    output_name="logits",
    labels=("cat", "dog", "fox"),
    crop=4,
    metadata={},
)
PHOTO = b"\xff\xd8 pretend jpeg"


def rest(payload: dict, binary: bytes = b"") -> bytes:
    return json.dumps(payload).encode() + binary


def test_photos_in_json_and_in_binary_read_the_same() -> None:
    as_json = {
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(PHOTO).decode()]}]
    }
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4 + len(PHOTO)},
                }
            ]
        }
    ).encode()
    binary = header + struct.pack("<I", len(PHOTO)) + PHOTO
    for parsed in (parse_rest(INFO, 4, rest(as_json), None), parse_rest(INFO, 4, binary, str(len(header)))):
        assert [upload.data for upload in parsed.uploads] == [PHOTO] and parsed.tensor is None
        assert parsed.outputs == [("logits", {})]


def test_grpc_messages_read_like_rest_bodies() -> None:
    rows = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    request = pb.ModelInferRequest(model_name="tiny", raw_input_contents=[rows.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[2, 3, 4, 4])
    request.parameters["top_k"].int64_param = 2
    parsed = parse_grpc(INFO, 4, request)
    assert np.array_equal(parsed.tensor, rows) and parsed.top_k == 2
    assert [name for name, _ in parsed.outputs] == ["logits", "top_k_class_ids", "top_k_labels", "top_k_scores"]
    typed = pb.ModelInferRequest(model_name="tiny")
    typed.inputs.add(name="images", datatype="BYTES", shape=[1]).contents.bytes_contents.append(PHOTO)
    assert [upload.data for upload in parse_grpc(INFO, 4, typed).uploads] == [PHOTO]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"inputs": []}, "exactly one input"),
        ({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "datatype BYTES"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 5, 5], "data": [0.0]}]}, "shape"),
        ({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [5], "data": ["AA=="] * 5}]}, "from 1 to 4"),
        ({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]}, "base64"),
        ({"parameters": {"top_k": 0}, "inputs": []}, "top_k"),
        ({"outputs": [{"name": "features"}], "inputs": []}, "unknown output"),
    ],
)
def test_bad_requests_are_refused_with_the_fix_named(payload: dict, fragment: str) -> None:
    with pytest.raises(RequestRejected) as refused:
        parse_rest(INFO, 4, rest(payload), None)
    assert refused.value.status == 400 and fragment in refused.value.message


def test_outputs_encode_to_json_binary_and_grpc_alike() -> None:
    logits = np.array([[0.1, 2.0, -1.0]], dtype=np.float32)
    payload = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 4, 4], "data": [0.0] * 48}]}
    parsed = parse_rest(INFO, 4, rest({**payload, "parameters": {"top_k": 1, "binary_data_output": True}}), None)
    tensors = output_tensors(INFO, parsed, logits)
    assert [tensor.name for tensor in tensors] == ["logits", "top_k_class_ids", "top_k_labels", "top_k_scores"]
    body, headers = encode_rest({"outputs": []}, tensors)
    header = json.loads(body[: int(headers[HEADER_LENGTH])])
    assert [output["parameters"]["binary_data_size"] for output in header["outputs"]] == [12, 8, 7, 4]
    assert tensor_bytes(tensors[2]) == struct.pack("<I", 3) + b"dog"

    class Clock:
        batch_size = 1

        def inference_ms(self) -> float:
            return 1.5

    answer = encode_grpc(INFO, parsed, logits, Clock())
    assert answer.model_name == "tiny_int8" and answer.model_version == "abc"
    assert np.array_equal(np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(1, 3), logits)
    assert np.frombuffer(answer.raw_output_contents[1], "<i8").tolist() == [1]
