"""The aarch64 side of the x86-vs-ARM check: run models through smallnets.core.runtime and write logits + facts.

Runs inside the emulated (or a native) aarch64 interpreter with only the runtime dependencies (onnxruntime, numpy,
pillow): ``benchmarks/arm64/python -m smallnets.benchmarks.arm64.verify MANIFEST.json OUTDIR``. The host prepares the
manifest (models and preprocessed .npy inputs, so both sides see identical tensors) and compares the logits.

Manifest: ``{"threads": 1, "cases": [{"id", "model", "inputs"}], "preprocess": {"model", "photos", "inputs"},
"agreement": [[fp32_case_id, int8_case_id], ...]}``. Writes OUTDIR/CASE_ID.npy and OUTDIR/result.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from smallnets.benchmarks.machine import machine_block
from smallnets.core.hardware import detect_cpu
from smallnets.core.images import load_image
from smallnets.core.runtime import OnnxClassifier, resolve_providers
from smallnets.core.targets import resolve_target
from smallnets.optimize.validate import compare_logits


def run_case(case: dict[str, str], threads: int, outdir: Path) -> dict[str, Any]:
    """Logits of one model on its inputs, one image at a time (batch 1, as a device would serve them)."""
    classifier = OnnxClassifier(case["model"], threads=threads)
    inputs = np.load(case["inputs"])
    started = time.perf_counter()
    logits = np.concatenate([classifier.run(inputs[i : i + 1]) for i in range(len(inputs))])
    run_s = time.perf_counter() - started
    np.save(outdir / f"{case['id']}.npy", logits)
    return {
        "model": classifier.card.display_name,
        "precision": classifier.card.precision,
        "providers": classifier.providers,
        "threads": classifier.threads,
        "images": len(inputs),
        "load_s": round(classifier.load_ms / 1000.0, 3),
        "run_s": round(run_s, 3),
    }


def check_preprocessing(spec: dict[str, Any]) -> dict[str, Any]:
    """core.images + core.preprocess (aarch64 pillow/numpy) on the same files vs the host's tensors."""
    classifier = OnnxClassifier(spec["model"], threads=1)
    batch = classifier.preprocess([load_image(path) for path in spec["photos"]])
    reference = np.load(spec["inputs"])
    return {"images": len(batch), "max_abs_diff": float(np.max(np.abs(batch - reference)))}


def provider_fallback(requested: Sequence[str]) -> dict[str, Any]:
    providers, notes = resolve_providers(requested)
    return {"requested": list(requested), "providers": providers, "notes": notes}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    manifest = json.loads(args.manifest.read_text())
    args.outdir.mkdir(parents=True, exist_ok=True)
    threads = int(manifest.get("threads", 1))

    preset, reason = resolve_target("auto")
    result: dict[str, Any] = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "available_providers": ort.get_available_providers(),
        "cpu": detect_cpu().to_dict(),
        "auto_target": {"preset": preset.name, "reason": reason},
        "benchmark_machine": machine_block(threads=[threads], target=preset.name, target_reason=reason),
        "provider_fallback": {name: provider_fallback([name]) for name in ("xnnpack", "acl")},
        "cases": {},
    }
    for case in manifest["cases"]:
        print(f"verify: {case['id']}", file=sys.stderr, flush=True)
        result["cases"][case["id"]] = run_case(case, threads, args.outdir)
    if manifest.get("preprocess"):
        result["preprocess"] = check_preprocessing(manifest["preprocess"])
    result["agreement"] = {
        f"{reference}:{candidate}": compare_logits(
            np.load(args.outdir / f"{reference}.npy"), np.load(args.outdir / f"{candidate}.npy")
        ).to_dict()
        for reference, candidate in manifest.get("agreement", [])
    }
    temporary = args.outdir / "result.json.tmp"
    temporary.write_text(json.dumps(result, indent=2))
    temporary.replace(args.outdir / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
