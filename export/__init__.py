"""PyTorch side: reference architectures (tables + one builder per family), weights, torch -> ONNX export."""
