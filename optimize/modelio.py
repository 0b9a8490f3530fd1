"""Loading, saving and checking ONNX files with errors that name the file and the fix."""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from smallnets.core.files import atomic_output


class InvalidModelError(ValueError):
    """The file is missing, not ONNX, corrupt, or fails the ONNX checker."""


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read and check an ONNX file; any failure becomes one InvalidModelError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"{path}: no such ONNX file (export one with `smallnets export NAME -o OUT.onnx`)")
    try:
        model = onnx.load(str(path))
    except (DecodeError, OSError, ValueError, RuntimeError) as error:
        raise InvalidModelError(f"{path}: not a readable ONNX model ({error}); is it the .onnx file?") from error
    if not model.graph.node:
        raise InvalidModelError(f"{path}: not an ONNX model (empty graph); is it the .onnx file?")
    check_model(model, str(path))
    return model


def check_model(model: onnx.ModelProto, source: str = "model") -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise InvalidModelError(f"{source}: fails the ONNX checker: {error}") from error


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write via a temporary name in the same folder and rename, so a crash never leaves half a file."""
    path = Path(path)
    with atomic_output(path) as temporary:
        onnx.save(model, str(temporary))
    return path


def copy_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> onnx.ModelProto:
    """Carry every ``metadata_props`` entry over (tools like ORT's offline optimizer drop them)."""
    existing = {entry.key: entry for entry in target.metadata_props}
    for entry in source.metadata_props:
        if entry.key in existing:
            existing[entry.key].value = entry.value
        else:
            target.metadata_props.add(key=entry.key, value=entry.value)
    return target


def input_hw(model: onnx.ModelProto) -> tuple[int | None, int | None]:
    """Static (H, W) of the NCHW input, None where symbolic."""
    initializers = {init.name for init in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in initializers)
    dims = graph_input.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise InvalidModelError(f"expected an NCHW image input, got rank {len(dims)} for input {graph_input.name!r}")
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[2:])  # type: ignore[return-value]
