"""smallnets: small image-classification CNNs, PyTorch -> validated int8 ONNX -> BentoML, with benchmarks."""

__version__ = "0.1.0"
