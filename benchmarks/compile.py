"""What the compiled CPU loops cost before the first step: numba's compile on an empty cache, then the load
from the cache it wrote, then a warm step.

A fresh clone has no compile cache, so the quickstart's first step pays the compile (docs/performance.md).
Each measurement runs in its own process with NUMBA_CACHE_DIR set to a new empty directory (the cached
loops next to capslab's modules are not used), so every run starts as a fresh clone does:

    python benchmarks/compile.py                        # the quickstart's model: dynamic routing, batch 32
    python benchmarks/compile.py --routing em --reps 2

Results: benchmarks/results/compile-<routing>-cpu.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--routing", default="dynamic", help="registered routing name (default: dynamic)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--conv-channels", type=int, default=128, help="Conv1 width (the quickstart's: 128)")
    p.add_argument("--reps", type=int, default=2, help="fresh caches measured (medians reported)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # internal: one measurement
    return p.parse_args(argv)


def child(args) -> dict:
    """Times of the first and a later training step in this process (its NUMBA_CACHE_DIR set by the parent)."""
    t0 = time.perf_counter()
    import torch
    from step import Setup  # benchmarks/ is on sys.path when run as a script

    s = Setup(
        "fp32", args.batch, torch.device("cpu"), "fused", {"name": args.routing}, {"conv_channels": args.conv_channels}
    )
    ready = time.perf_counter() - t0

    def timed_step() -> float:
        start = time.perf_counter()
        s.step()
        return time.perf_counter() - start

    first = timed_step()
    later = sorted(timed_step() for _ in range(5))[2]
    return {"import_build_s": ready, "first_step_s": first, "warm_step_s": later}


def run_child(args, cache: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--routing", args.routing, "--batch", str(args.batch)]
    cmd += ["--conv-channels", str(args.conv_channels)]
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        return print(json.dumps(child(args)))
    import torch
    from step import cpu_fields  # benchmarks/ is on sys.path when run as a script; imported here, not in children

    import capslab
    from capslab.train.setup import device_name

    runs = []
    for _ in range(args.reps):
        with tempfile.TemporaryDirectory(prefix="capslab-numba-") as cache:
            cold, warm = run_child(args, cache), run_child(args, cache)  # empty cache, then the one it wrote
        runs.append({"empty_cache": cold, "cache_written": warm})

    def med(which: str, key: str) -> float:
        return statistics.median(r[which][key] for r in runs)

    def first(which: str) -> float:  # the first step's cost beyond a warm step
        return med(which, "first_step_s") - med(which, "warm_step_s")

    report = {
        "device": device_name(torch.device("cpu")),
        **cpu_fields(),
        "torch": torch.__version__,
        "capslab": capslab.__version__,
        "numba": __import__("numba").__version__,
        "routing": args.routing,
        "batch": args.batch,
        "conv_channels": args.conv_channels,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "runs": runs,
        "first_step_extra_s": {"empty_cache": first("empty_cache"), "cache_written": first("cache_written")},
        "warm_step_s": med("empty_cache", "warm_step_s"),
    }
    extra = report["first_step_extra_s"]
    print(
        f"{args.routing}, batch {args.batch}: first step costs {extra['empty_cache']:.1f} s beyond a warm step "
        f"({report['warm_step_s'] * 1000:.0f} ms) on an empty compile cache, {extra['cache_written']:.1f} s once "
        f"the cache is written ({report['device']}, {report['cpu_capability']})"
    )
    out = args.out or ROOT / "results" / f"compile-{args.routing}-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
