"""The PyTorch eager fp32 baseline: the only benchmarks module that imports torch.

The model is built from the registry with the same weights the ONNX export used, so every variant of a row
computes the same function; ``inference_mode`` and explicit thread counts are what a careful PyTorch user runs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from smallnets.benchmarks.loaded import TimedModel


def load_torch(model: str, variant: Mapping[str, Any], weights: str, threads: int) -> TimedModel:
    """Build the registry model in eval mode with ``threads`` intra-op threads (inter-op pinned to 1)."""
    from smallnets.export.registry import get_spec
    from smallnets.export.weights import load_weights

    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != 1:  # settable once per process (labelled scoring loads several models)
        torch.set_num_interop_threads(1)
    spec = get_spec(model)  # imports the family modules: not part of loading a model
    started = time.perf_counter()
    network = load_weights(spec, variant, weights).model.eval()
    load_ms = (time.perf_counter() - started) * 1000.0
    size_bytes = sum(tensor.numel() * tensor.element_size() for tensor in network.state_dict().values())

    def prepare(batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(batch)

    def run(inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return network(inputs)

    return TimedModel(run, prepare=prepare, provider="torch-eager", size_bytes=size_bytes, load_ms=load_ms)
