"""ONNX side: simplify, fuse, quantize (per-target presets) and validate."""
