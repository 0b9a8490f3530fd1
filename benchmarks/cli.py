"""`smallnets bench` (latency/throughput/memory suite) and `smallnets bench-http` (load on a running server).

Only the standard library is imported here; the handlers import the suite, onnxruntime and plotting lazily.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from smallnets.benchmarks.http_wire import BODIES  # standard library only, like this module
from smallnets.benchmarks.selection import DEFAULT_VARIANTS, PEER_VARIANTS  # standard library only
from smallnets.core.targets import ONNXRUNTIME, PROVIDERS_HELP  # standard library only too
from smallnets.optimize.efforts import MEASURABLE_EFFORTS

EFFORT_CHOICES = MEASURABLE_EFFORTS  # the words of `smallnets optimize --effort` worth measuring


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""
    add_bench_parser(subparsers)
    add_bench_http_parser(subparsers)


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`smallnets bench`: what to measure, how long, where artifacts are cached, and where results go."""
    bench = subparsers.add_parser(
        "bench",
        help="latency, throughput and memory of models x variants, each measurement in a fresh process",
        description="Build (or reuse) each model's artifacts through export and optimize, measure every variant "
        "interleaved in fresh processes, and write results.json, results.csv, report.md and PNG plots.",
    )
    add_selection_arguments(bench)
    add_loop_arguments(bench)
    add_build_arguments(bench)
    add_output_arguments(bench)
    bench.set_defaults(handler=run_bench)
    return bench


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """What is measured: models, variants, settings (batch, threads), target, weights and labelled photos."""
    from smallnets.export.cli import shipped_weights  # standard library only, like this module

    parser.add_argument(
        "--models",
        default="all-default",
        help="comma-separated registry names, each optionally NAME:width=0.5:resolution=128, or all-default "
        "(one default variant of every family) (default: all-default)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated subset of {','.join(DEFAULT_VARIANTS)} and, with the peers extra, "
        f"{','.join(PEER_VARIANTS)} (default: {','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--eval-dir",
        type=Path,
        help="labelled photos (ImageFolder of synset folders): one in five calibrates int8 (ours and NNCF's), the "
        "rest give each real-weight variant's top-1 (default: $SMALLNETS_EVAL_DIR, else no top-1)",
    )
    parser.add_argument("--batch", default="1,8", help="batch sizes (default: 1,8)")
    parser.add_argument(
        "--threads",
        default="1,all",
        help="intra-op thread counts; `all` = usable cores, `serving` = one server worker's threads (default: 1,all)",
    )
    parser.add_argument("--target", default="auto", help="optimize preset for onnx-opt/onnx-int8 (default: auto)")
    parser.add_argument(
        "--weights",
        default=None,
        metavar="imagenet|random|PATH",
        help="imagenet (registered checkpoint; fails like `smallnets export` where none is available), a "
        "state-dict PATH, or random (seeded; unvalidated, warned about) (default: per model, imagenet where it "
        f"ships with smallnets ({', '.join(shipped_weights())}), else random)",
    )


def add_loop_arguments(parser: argparse.ArgumentParser) -> None:
    """How long each measurement runs: time- or count-bounded loop, warm-up, interleaved repeats, providers."""
    bounds = parser.add_mutually_exclusive_group()
    bounds.add_argument(
        "--duration", type=float, default=0.3, help="seconds of timed inference per run (>= 3 runs) (default: 0.3)"
    )
    bounds.add_argument(
        "--iterations", type=int, help="a fixed number of timed iterations per run instead (default: use --duration)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed iterations after the first run, within ~0.25 s (default: 2)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per configuration (default: 2)")
    parser.add_argument("--providers", help=PROVIDERS_HELP)


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Where artifacts are cached and how hard optimize searches when it builds them."""
    parser.add_argument(
        "--cache-dir", type=Path, help="artifact cache (default: $SMALLNETS_CACHE or ~/.cache/smallnets)"
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="rebuild cached artifacts instead of reusing them (default: reuse)"
    )
    parser.add_argument(
        "--effort",
        choices=EFFORT_CHOICES,
        default="bounded",
        help="int8 recipe search when building: bounded (fewer calibration images and timing runs, same evaluation; "
        "fits the all-default time budget) or full (optimize's defaults, what `smallnets pipeline` ships) "
        "(default: bounded)",
    )
    parser.add_argument("--optimize-effort", dest="effort", choices=EFFORT_CHOICES, help=argparse.SUPPRESS)  # old name
    parser.add_argument(
        "--max-drop",
        type=float,
        help="optimize's accuracy budget (top-1 points, upper end of the 95%% interval) when building int8; the "
        "measured drop is reported either way (default: optimize's own, what `smallnets pipeline` ships)",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Where results go, whether an earlier output may be replaced, and redrawing from an earlier run."""
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier bench output folder; a folder with files smallnets did not write is never "
        "replaced (default: refuse any non-empty folder)",
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="RESULTS_JSON",
        nargs="+",
        help="measure nothing: redraw report.md, results.csv and plots from earlier results.json files, several merged "
        "into one report (default: measure)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="output folder (default: results, or the folder of --from-results)"
    )


DEFAULT_LEVELS = "1,4,16,64"


def add_bench_http_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`smallnets bench-http`: bounded closed-loop load on a running server."""
    http = subparsers.add_parser(
        "bench-http",
        help="bounded HTTP load on a running smallnets server (loopback only)",
        description="Drive a running server (e.g. `smallnets serve`) with closed-loop clients at each concurrency "
        "for a fixed duration; report requests/s, p50/p90/p99 latency and errors by status.",
    )
    http.add_argument("--url", required=True, help="server URL on this machine, e.g. http://127.0.0.1:3000")
    http.add_argument("--images", default="samples", help="a folder of images, or `samples` (default: samples)")
    http.add_argument("--concurrency", default=DEFAULT_LEVELS, help=f"concurrency levels (default: {DEFAULT_LEVELS})")
    http.add_argument(
        "--find-knee",
        type=float,
        default=None,
        metavar="P99_MS",
        help="report the highest concurrency whose answered p99 stays within P99_MS, stopping at the first level "
        "past it (levels: --concurrency when given, else 1,2,4,...,512) (default: off)",
    )
    http.add_argument("--duration", type=float, default=10.0, help="seconds per level (default: 10)")
    http.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds (default: 30)")
    http.add_argument("--field", default="image", help="multipart field of the upload (default: image)")
    http.add_argument(
        "--body",
        choices=BODIES,
        default="multipart",
        help="send each image as a multipart upload, or raw as the request body with its image/* Content-Type "
        "(the lighter path) (default: multipart)",
    )
    http.add_argument(
        "--in-process",
        action="store_true",
        help="first measure the floor: the server's own model file and thread count (from its /metadata) "
        "decoding, preprocessing and classifying the same images in this process, one at a time and in batches "
        "of 16; the report sets each level against it (default: HTTP only)",
    )
    http.add_argument(
        "-o", "--output", type=Path, default=Path("results/http"), help="output folder (default: results/http)"
    )
    http.set_defaults(handler=run_bench_http)
    return http


def run_bench(args: argparse.Namespace) -> int:
    if args.from_results:
        return redraw(args.from_results, args.output or args.from_results[0].parent)
    from smallnets.benchmarks.suite import run_suite
    from smallnets.core.files import check_output_dir
    from smallnets.export.cli import default_weights, warn_if_random

    output = args.output or Path("results")
    check_output_dir(output, args.force)  # before the build and the measurements: never overwrite silently
    config = bench_config(args)  # unknown models fail here, before any warning about their weights
    randoms = [c.label for c in config.models if default_weights(c.name, c.overrides, args.weights) == "random"]
    if randoms:
        warn_if_random("random", randoms)
    result = run_suite(config, output)
    replace_own_files(output, result.files)
    print_summary(result.rows, config, output)
    return 0


def replace_own_files(folder: Path, written: list[Path]) -> None:
    """List exactly what this run wrote as bench's, and delete what an earlier bench wrote that this one did not
    (a plot of a setting no longer measured); files of another command (bench-http's folder) stay theirs."""
    from smallnets.core.files import read_manifest, write_manifest

    names = [path.relative_to(folder).as_posix() for path in written]
    earlier = read_manifest(folder) or {"files": []}
    for stale in set(earlier["files"]) - set(names):
        if "/" not in stale:  # bench writes no sub-folder; a nested name is another command's
            (folder / stale).unlink(missing_ok=True)
    write_manifest(folder, "bench", names)


def bench_config(args: argparse.Namespace) -> Any:
    """The suite's BenchConfig from parsed arguments; bad values fail here with the option's name."""
    from smallnets.benchmarks.artifacts import check_choice, default_cache_dir
    from smallnets.benchmarks.labelled import eval_dir_from_env
    from smallnets.benchmarks.selection import parse_models, parse_positive_ints, parse_variants
    from smallnets.benchmarks.suite import BenchConfig
    from smallnets.core.hardware import cpu_quota, detect_cpu, serving_cores, serving_threads

    models = tuple(parse_models(args.models))
    for choice in models:
        check_choice(choice)  # an unknown name or variant fails here, before the build and any weights warning
    if args.duration <= 0 or (args.iterations is not None and args.iterations < 1):
        raise ValueError("--duration must be > 0 seconds and --iterations >= 1")
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError("--repeats must be >= 1 and --warmup >= 0")
    cores = detect_cpu().usable_cores
    serving = serving_threads(serving_cores(quota=cpu_quota()))  # what a server worker and optimize's gate run
    return BenchConfig(
        models=models,
        variants=tuple(parse_variants(args.variants)),
        batches=tuple(parse_positive_ints(args.batch, "--batch")),
        threads=tuple(
            parse_positive_ints(args.threads.replace("all", str(cores)).replace("serving", str(serving)), "--threads")
        ),
        target=args.target,
        weights=args.weights,
        duration_s=args.duration,
        iterations=args.iterations,
        warmup=args.warmup,
        repeats=args.repeats,
        providers=tuple(args.providers.split(",")) if args.providers else None,
        cache_dir=args.cache_dir or default_cache_dir(),
        rebuild=args.rebuild,
        optimize_effort=args.effort,
        eval_dir=args.eval_dir or eval_dir_from_env(),
        max_drop=args.max_drop,
    )


def print_summary(rows: list[dict[str, Any]], config: Any, output: Path) -> None:
    """The first setting's table on the terminal, and where the full report is."""
    from smallnets.benchmarks.report import markdown_table, ordered, with_speedups

    setting = (config.batches[0], config.threads[0])
    first = [row for row in with_speedups(rows) if (row["batch"], row["threads"]) == setting]
    print(f"\nbatch {setting[0]}, {setting[1]} thread(s):\n{markdown_table(ordered(first))}")
    print(f"\nfull report: {output / 'report.md'} (results.json, results.csv, timings.json and plots beside it)")


def redraw(results: list[Path], output: Path) -> int:
    """Re-render earlier runs (several are merged into one report), e.g. measured on a box without matplotlib."""
    from smallnets.benchmarks.report import merge_results, write_results
    from smallnets.core.files import ensure_writable_dir

    rows, machine = merge_results(results)
    written = write_results(ensure_writable_dir(output), rows, machine)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def run_bench_http(args: argparse.Namespace) -> int:
    from smallnets.benchmarks.http_load import (
        KNEE_LEVELS,
        check_reachable,
        find_knee,
        load_payloads,
        run_load,
        server_metadata,
    )
    from smallnets.benchmarks.report import HttpRun, write_http_results
    from smallnets.benchmarks.selection import parse_positive_ints
    from smallnets.core.files import check_output_dir, ensure_writable_dir, write_manifest

    knee_levels = args.find_knee is not None and args.concurrency == DEFAULT_LEVELS
    levels = list(KNEE_LEVELS) if knee_levels else parse_positive_ints(args.concurrency, "--concurrency")
    if args.find_knee is not None and args.find_knee <= 0:
        raise ValueError("--find-knee must be a p99 target in milliseconds > 0")
    if args.duration <= 0 or args.timeout <= 0:
        raise ValueError("--duration and --timeout must be > 0 seconds")
    check_output_dir(args.output, force=True)  # rewrites its own earlier results, never a folder of someone else's
    outdir = ensure_writable_dir(args.output)
    payloads = load_payloads(args.images)
    check_reachable(args.url)
    server = server_metadata(args.url)
    floor = in_process_floor(server, payloads, args.duration) if args.in_process else None
    results = run_load(
        args.url,
        payloads,
        levels,
        args.duration,
        args.timeout,
        field=args.field,
        body=args.body,
        knee_p99_ms=args.find_knee,
    )
    run = HttpRun(args.url, args.images, args.body, server, floor.to_dict() if floor else None)
    report = write_http_results(outdir, run, results)
    write_manifest(outdir, "bench-http")
    print(report.read_text())
    if args.find_knee is not None:
        knee = find_knee(results, args.find_knee)
        print(f"knee: {knee if knee else 'no level'} client(s) within p99 {args.find_knee:g} ms")
    return 0


def in_process_floor(server: dict[str, Any] | None, payloads: list[Any], duration_s: float) -> Any:
    """The server's own model and threads, measured in this process (see benchmarks/in_process.py)."""
    from smallnets.benchmarks.in_process import measure_floor

    if not server or not server.get("model_file") or not server.get("threads_per_worker"):
        raise ValueError(
            "--in-process needs a smallnets server whose /metadata names its model_file and threads_per_worker; "
            "drop --in-process to measure HTTP only"
        )
    model_file = Path(server["model_file"])
    if not model_file.is_file():
        raise FileNotFoundError(f"--in-process: the server's model file {model_file} is not on this machine")
    runtime = server.get("runtime") or ONNXRUNTIME  # servers older than the runtime choice ran onnxruntime
    threads = int(server["threads_per_worker"])
    print(f"in-process floor: {model_file.name} on {runtime}, {threads} thread(s), {duration_s:g} s x 2")
    return measure_floor(model_file, payloads, threads, duration_s, runtime=runtime)
