"""ONNX side: simplify, fuse, quantize (per-target options from smallnets.core.targets) and validate."""
