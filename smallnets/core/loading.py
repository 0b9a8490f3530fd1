"""One classifier from a path: an .onnx file or an optimize output folder (its int8 model when there is one).

The public API's ``load`` and the serving CLI's ``classify`` both open models this way, so a file that is not a
model fails the same way (ValueError naming the file and what to pass) wherever it is given.
"""

from __future__ import annotations

from pathlib import Path

from smallnets.core.artifacts import resolve_model_file
from smallnets.core.openvino_runtime import RuntimeUnavailableError
from smallnets.core.runtime import OnnxClassifier, resolve_runtime


def load_classifier(
    model: str | Path, providers: list[str] | None = None, threads: int | None = None, runtime: str | None = None
) -> OnnxClassifier:
    """The ONNX classifier in ``model`` on ``runtime`` (default: the one the file was built for); the runtime's
    own errors become one ValueError naming the file."""
    path = resolve_model_file(model)
    try:
        return OnnxClassifier(path, providers=providers, threads=threads, runtime=resolve_runtime(path, runtime))
    except (ValueError, OSError, RuntimeUnavailableError):
        raise
    except Exception as error:  # the runtime's own exception types, e.g. for a JPEG renamed .onnx
        detail = " ".join(str(error).split())
        raise ValueError(
            f"{path} is not a loadable ONNX model ({detail}); pass an .onnx file written by `smallnets export` "
            "or `smallnets optimize`"
        ) from error
