"""Bounds of optimize's int8 recipe search by name: the one table behind `--effort` of optimize, pipeline and bench.

Standard library only, so the CLIs can offer the names without importing onnx.
"""

from __future__ import annotations

# "full" is the default decision procedure (what `smallnets pipeline` ships); "bounded" cuts calibration images,
# timing runs and repair steps but keeps the whole evaluation set; "quick" is for smoke runs. Values are
# OptimizeConfig fields.
SEARCH_EFFORTS: dict[str, dict[str, int]] = {
    "full": {},
    "bounded": {"calib_images": 32, "latency_runs": 20, "max_repair_steps": 2},
    "quick": {
        "calib_images": 16,
        "eval_per_photo": 4,
        "max_candidates": 2,
        "max_formats": 1,
        "max_repair_steps": 1,
        "latency_runs": 20,
    },
}
# The efforts whose artifacts are worth timing and scoring (the bench's): quick's smaller evaluation set is too
# coarse, one flipped prediction already exceeds the 1% agreement budget and int8 would be rejected for noise.
MEASURABLE_EFFORTS = ("bounded", "full")
