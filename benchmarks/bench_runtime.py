"""Runtime benchmark of a bundle against the torch eager FP32 baseline.

    python benchmarks/bench_runtime.py BUNDLE [--batch 1,8,32] [--seconds 2] [--backends LIST] [--out bench.json]

Goals checked (printed, exit code 1 when missed with --strict):
  * the best CPU backend at batch 8 is >= 3x torch eager FP32 (engine throughput, same batch),
  * the end-to-end pipeline overhead (decode + preprocess on top of the engine) is <= 20% for that backend.
The torch baseline needs torch and the bundle's run dir (bundle.json source.run_dir) with edgeft's training code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

GOAL_SPEEDUP = 3.0
GOAL_OVERHEAD = 0.20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--backends", default=None, help="comma list of backends/artifacts/precisions")
    parser.add_argument("--hint", default=None, help="OpenVINO PERFORMANCE_HINT (LATENCY or THROUGHPUT)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch eager baseline")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)

    from rich.console import Console

    from edgeft.cli.serve import render_bench
    from edgeft.core.errors import EdgeftError
    from edgeft.serve.bench import BenchSettings, parse_batches, run_bench

    console = Console()
    try:
        batches = parse_batches(args.batch)
        settings = BenchSettings.build(
            batches=sorted({*batches, 8}),
            backends=[t for t in args.backends.split(",") if t] if args.backends else None,
            seconds=args.seconds,
            include_torch=not args.no_torch,
            engine_options={"hint": args.hint} if args.hint else {},
        )
        report = run_bench(args.bundle, settings, args.out)
    except EdgeftError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False)
        return 2
    render_bench(report, args.out or Path(report.bundle_dir) / "bench.json")

    at8 = [r for r in report.results if r.batch == 8]
    torch8 = next((r for r in at8 if r.backend.startswith("torch")), None)
    engines = [r for r in at8 if not r.backend.startswith("torch") and r.backend.split(":")[-1].lower() == "cpu"]
    best = max(engines, key=lambda r: r.engine.throughput, default=None)
    missed = []
    if best is None:
        console.print("no CPU backend ran at batch 8")
        return 1 if args.strict else 0
    console.print(
        f"best CPU backend at batch 8: {best.describe} — {best.engine.throughput:.1f} img/s",
        highlight=False,
        markup=False,
    )
    if torch8 is None:
        why = report.skipped_backends.get("torch:cpu/torch-fp32") or report.failed_backends.get(
            "torch:cpu/torch-fp32", "not requested"
        )
        console.print(f"torch eager FP32 baseline unavailable: {why}", highlight=False, markup=False)
    else:
        ratio = best.engine.throughput / torch8.engine.throughput
        ok = ratio >= GOAL_SPEEDUP
        missed += [] if ok else ["speedup"]
        console.print(
            f"torch eager FP32 at batch 8: {torch8.engine.throughput:.1f} img/s -> speedup {ratio:.2f}x "
            f"(goal >= {GOAL_SPEEDUP:.0f}x: {'met' if ok else 'MISSED'})",
            highlight=False,
            markup=False,
        )
    ok = best.pipeline_overhead <= GOAL_OVERHEAD
    missed += [] if ok else ["overhead"]
    console.print(
        f"pipeline overhead of {best.backend}/{best.artifact} at batch 8: {100 * best.pipeline_overhead:.1f}% "
        f"(engine {best.engine.throughput:.1f} vs e2e {best.e2e['throughput']:.1f} img/s; "
        f"goal <= {100 * GOAL_OVERHEAD:.0f}%: {'met' if ok else 'MISSED'})",
        highlight=False,
        markup=False,
    )
    return 1 if (missed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
