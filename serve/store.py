"""The BentoML model store side: import an exported ONNX file as a versioned BentoML model and find it again.

A Bento ships its models from the store, so `smallnets serve` and `smallnets build` both go through here. The
tag is ``<card name>_<precision>:<sha256 prefix of the file>``: re-importing the same file is a no-op, a changed
file gets a new version.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import onnxruntime as ort

from smallnets.core.artifacts import resolve_model_file
from smallnets.core.files import sha256_file
from smallnets.core.metadata import ModelCard

MODEL_FILENAME = "model.onnx"
_TAG_UNSAFE = re.compile(r"[^a-z0-9_.-]+")


def read_card(path: str | Path) -> ModelCard:
    """The model card of an ONNX file, read through ONNX Runtime's metadata (no onnx package needed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist: export one with `smallnets export NAME -o FILE`")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types for corrupt files
        raise ValueError(f"{path} is not a loadable ONNX model: {error}") from error
    return ModelCard.from_metadata_props(session.get_modelmeta().custom_metadata_map, source=str(path))


def model_name(card: ModelCard) -> str:
    """BentoML model name from the card: registry name plus precision, e.g. ``efficientnet_lite0_int8``."""
    return _TAG_UNSAFE.sub("_", f"{card.name}_{card.precision}".lower()).strip("_.-")


def import_model(path: str | Path) -> str:
    """Put ``path`` into the BentoML model store (if not there yet) and return its tag ``name:version``."""
    import bentoml
    from bentoml.exceptions import NotFound

    path = resolve_model_file(path)
    card = read_card(path)
    tag = f"{model_name(card)}:{sha256_file(path)[:16]}"
    try:
        return str(bentoml.models.get(tag).tag)
    except NotFound:
        pass
    labels = {"precision": card.precision, "family": card.family, "weights": card.weights}
    metadata = {"display_name": card.display_name, "resolution": card.resolution, "source": str(path.resolve())}
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        shutil.copyfile(path, model.path_of(MODEL_FILENAME))
    return str(model.tag)


def stored_model_path(tag: str) -> Path:
    """The ONNX file of a stored model; the error says how to import one."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound as error:
        raise LookupError(
            f"model {tag!r} is not in the BentoML model store: import it with `smallnets serve MODEL.onnx` "
            "or `smallnets build MODEL.onnx` (see `bentoml models list`)"
        ) from error
    return Path(model.path_of(MODEL_FILENAME))
