"""The BentoML model store side: import an exported ONNX file as a versioned BentoML model and find it again.

A Bento ships its models from the store, so `smallnets serve` and `smallnets build` both go through here. The
tag is ``<card name>_<precision>:<content digest>``: the digest covers the graph and weights and the model card
without its volatile fields (the export timestamp), so rebuilding the same model (`make run` again) finds the
stored copy instead of adding another one; a changed model gets a new version.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from smallnets.core.artifacts import resolve_model_file
from smallnets.core.metadata import ModelCard
from smallnets.core.metadata import read_card as read_card  # the one card reader, used through here by serve

MODEL_FILENAME = "model.onnx"
_TAG_UNSAFE = re.compile(r"[^a-z0-9_.-]+")
# ModelProto.metadata_props (onnx.proto): the field that holds the model card.
METADATA_PROPS_FIELD = 14
# Card fields that differ between two exports of the same model.
VOLATILE_PROVENANCE = ("exported_at",)


def model_name(card: ModelCard) -> str:
    """BentoML model name from the card: registry name plus precision, e.g. ``efficientnet_lite0_int8``."""
    return _TAG_UNSAFE.sub("_", f"{card.name}_{card.precision}".lower()).strip("_.-")


def import_model(path: str | Path) -> str:
    """Put ``path`` into the BentoML model store (if not there yet) and return its tag ``name:version``."""
    import bentoml
    from bentoml.exceptions import NotFound

    path = resolve_model_file(path)
    card = read_card(path)
    tag = f"{model_name(card)}:{content_digest(path, card)[:16]}"
    try:
        return str(bentoml.models.get(tag).tag)
    except NotFound:
        pass
    labels = {"precision": card.precision, "family": card.family, "weights": card.weights}
    metadata = {"display_name": card.display_name, "resolution": card.resolution, "source": str(path.resolve())}
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        shutil.copyfile(path, model.path_of(MODEL_FILENAME))
    return str(model.tag)


def content_digest(path: Path, card: ModelCard) -> str:
    """SHA-256 of the model without its metadata, plus its card without volatile fields: equal models, equal tag."""
    digest = hashlib.sha256()
    data = path.read_bytes()
    for field, start, end in _top_level_fields(data):
        if field != METADATA_PROPS_FIELD:
            digest.update(data[start:end])
    stable = json.loads(card.to_json())
    stable["provenance"] = {k: v for k, v in stable["provenance"].items() if k not in VOLATILE_PROVENANCE}
    digest.update(json.dumps(stable, sort_keys=True).encode())
    return digest.hexdigest()


def _top_level_fields(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each top-level protobuf field (no onnx package in serving)."""
    position = 0
    while position < len(data):
        start = position
        key, position = _varint(data, position)
        wire_type = key & 7
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type == 2:
            length, position = _varint(data, position)
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"not an ONNX model: protobuf wire type {wire_type} at byte {start}")
        yield key >> 3, start, position


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


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
