"""smallnets: small image-classification CNNs, PyTorch -> validated int8 ONNX -> BentoML, with benchmarks.

The public API (see the README): ``export_model``, ``optimize_model``, ``load``, ``evaluate``. Stages live in
``smallnets.export``, ``smallnets.optimize``, ``smallnets.serve`` and ``smallnets.benchmarks`` over the shared
contract in ``smallnets.core``; importing this package loads none of them.
"""

from smallnets.api import evaluate, export_model, load, optimize_model
from smallnets.core.version import __version__

__all__ = ["__version__", "evaluate", "export_model", "load", "optimize_model"]
