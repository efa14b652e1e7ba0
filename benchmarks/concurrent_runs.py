"""Training throughput of N runs at once, one thread each: what `capslab compare --jobs N` sees.

    python benchmarks/concurrent_runs.py [--jobs 2] [--steps 10] [--batch 32]

Starts N processes together (OMP_NUM_THREADS=1 each), each timing ``--steps`` CapsNet training steps
(Conv1 64, 16 primary types, dynamic routing, margin + reconstruction, Adam) after three warm-up steps,
once with the compiled routing kernel and once on the operator path; writes
benchmarks/results/concurrent-<cpu>.json and prints img/s per process. ``--numba-pool N`` sets
NUMBA_NUM_THREADS (default: unset, so capslab sizes numba's pool to torch's one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import sys, time, json, torch, capslab
from capslab.routing import backends
steps, batch = int(sys.argv[1]), int(sys.argv[2])
info = capslab.DataInfo(1, 28, 28, 10)
x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
out = {}
for compiled in (True, False):
    torch.manual_seed(0)
    m = capslab.build_model({"name": "capsnet", "conv_channels": 64, "primary_types": 16}, info, "dynamic")
    opt, loss = torch.optim.Adam(m.parameters()), capslab.build_loss("margin")
    for i in range(steps + 3):
        if i == 3:
            t = time.perf_counter()
        with backends.use("auto" if compiled else "fused"):
            o = m(x, y)
        l = loss(o.scores, y) + capslab.reconstruction_loss(o.reconstruction, x)
        opt.zero_grad(); l.backward(); opt.step()
    out["kernel" if compiled else "operators"] = round(batch * steps / (time.perf_counter() - t), 1)
print(json.dumps(out))
"""


def cpu_model() -> str:
    import torch

    from capslab.train.setup import device_name

    return device_name(torch.device("cpu")).rsplit(" (", 1)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--numba-pool", type=int, default=None)
    args = ap.parse_args()
    from capslab.compare.launch import thread_env

    env = {**os.environ, **thread_env(1)}
    env.pop("NUMBA_NUM_THREADS", None)
    if args.numba_pool:
        env["NUMBA_NUM_THREADS"] = str(args.numba_pool)
    t0 = time.time()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(args.steps), str(args.batch)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(args.jobs)
    ]
    runs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    result = {
        "cpu": cpu_model(),
        "jobs": args.jobs,
        "batch": args.batch,
        "steps": args.steps,
        "numba_pool": args.numba_pool,
        "img_per_s": runs,
        "wall_s": round(time.time() - t0, 1),
    }
    suffix = f"-pool{args.numba_pool}" if args.numba_pool else ""
    out = Path(__file__).parent / "results" / f"concurrent-cpu{suffix}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for k, r in enumerate(runs):
        print(f"process {k}: kernel {r['kernel']} img/s, operators {r['operators']} img/s")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
