"""The names of the files the stages hand to each other: one place, so a stage never guesses another's layout.

`smallnets pipeline -o DIR` writes EXPORT_NAME, then `smallnets optimize -o DIR` writes FP32_NAME, INT8_NAME (only
when int8 was accepted) and the reports; serve/ and benchmarks/ read the folder through `resolve_model_file`.
"""

from __future__ import annotations

from pathlib import Path

EXPORT_NAME = "model.export.onnx"
FP32_NAME = "model.fp32.onnx"
INT8_NAME = "model.int8.onnx"
REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
# What a folder offers to serve, best first: int8 exists only where optimize accepted it.
SERVABLE_NAMES = (INT8_NAME, FP32_NAME)


def export_report_path(model: str | Path) -> Path:
    """The JSON `smallnets export` writes beside MODEL.onnx: MODEL.export.json (model.export.onnx's too, not
    model.export.export.json)."""
    model = Path(model)
    return model.with_name(model.name.removesuffix(".onnx").removesuffix(".export") + ".export.json")


def resolve_model_file(path: str | Path) -> Path:
    """An .onnx file as given, or the best model in a `smallnets optimize` output folder (int8, else fp32)."""
    path = Path(path)
    if path.is_dir():
        for name in SERVABLE_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"{path} holds none of {', '.join(SERVABLE_NAMES)}: run `smallnets optimize MODEL.onnx -o {path}` "
            "or pass an .onnx file"
        )
    if not path.exists():
        raise FileNotFoundError(missing_model_message(path))
    return path


def missing_model_message(path: Path) -> str:
    """Why a model file is absent, with what to pass instead (optimize writes no int8 file when it rejects int8)."""
    folder = path.parent
    if path.name == INT8_NAME and (folder / FP32_NAME).is_file():
        return (
            f"no {INT8_NAME} in {folder}: int8 was rejected (see {folder / REPORT_MARKDOWN}); "
            f"use {folder} or {folder / FP32_NAME}"
        )
    return (
        f"model file {path} does not exist: pass an .onnx file (`smallnets export NAME -o FILE.onnx` makes one) "
        "or a `smallnets optimize` output folder"
    )
