"""CapsNet training-step benchmark against the conv floor (one process, one run).

    python benchmarks/step.py                       # CPU: fp32, fp32 channels_last, bf16 (if supported)
    python benchmarks/step.py --variants fp32 --reps 9
    python benchmarks/step.py --profile             # per-operator times of one floor and one step

The floor is forward + backward of Conv1 (+ ReLU) + the PrimaryCaps convolution alone; the step is
the full CapsNet training step (dynamic routing, 3 iterations; margin + reconstruction loss; Adam),
at the same batch and memory format. Floor and step alternate within each repetition, so the ratio
floor_time / step_time (= step throughput / floor throughput) is measured under the same load;
medians are reported. Each variant is timed in a fresh process. Inference is the model's evaluation
forward (no decoder target; masked by the
prediction) under ``torch.inference_mode``. Peak memory is measured for the step alone, in a fresh
subprocess: on CPU the peak resident set (VmHWM), on CUDA ``torch.cuda.max_memory_allocated``.
Results go to benchmarks/results/step-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch

import capslab
from capslab.routing import backends
from capslab.train.setup import device_name

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=7, help="timed repetitions (medians reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--variants",
        default=None,
        help="comma list of fp32, fp32-cl, bf16, bf16-cl, compile, fp32-ops, fp32-plain, fp32-onednn (default: "
        "what the device supports; fp32-ops: the fused loop of PyTorch operators instead of the compiled CPU "
        "kernel; fp32-plain: the plain routing loop on einsum votes, the reference for the speed-up; "
        "fp32-onednn: the convolutions' weight gradient from oneDNN instead of capslab.Conv2d's GEMM)",
    )
    p.add_argument("--adam", choices=["fused", "foreach"], default="fused")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time, steadier with --threads 1 on a machine other jobs load",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--profile",
        action="store_true",
        help="print torch.profiler's per-operator table of one step of the first variant, and exit",
    )
    p.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)  # internal: one variant's peak memory
    p.add_argument("--measure-child", default=None, help=argparse.SUPPRESS)  # internal: one variant's timings
    return p.parse_args(argv)


def default_variants(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["fp32", "bf16", "compile"]
    out = ["fp32", "fp32-cl"]
    if cpu_has_bf16():
        out += ["bf16", "bf16-cl"]
    return out


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def cpu_name() -> str:
    return device_name(torch.device("cpu")).rsplit(" (", 1)[0]


# the variables that hold an AVX-512 machine to AVX2 (docs/performance.md), recorded when set
ISA_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "NUMBA_CPU_NAME")


def cpu_fields() -> dict:
    """The instruction set a CPU result ran with: torch's kernels' and the variables that held it lower."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_env": {k: os.environ[k] for k in ISA_VARS if k in os.environ},
    }


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM); 0 where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Setup:
    """Model, data, loss and optimiser of one variant."""

    def __init__(
        self,
        variant: str,
        batch: int,
        device: torch.device,
        adam: str,
        routing: dict | None = None,
        model_section: dict | None = None,
    ):
        """``routing`` and ``model_section``: recipe sections (default: dynamic routing, 3 iterations; the paper's
        CapsNet)."""
        torch.manual_seed(0)
        self.device, self.variant = device, variant
        self.bf16 = variant.startswith("bf16")
        self.cl = variant.endswith("-cl")
        info = capslab.DataInfo(1, 28, 28, 10)
        routing = routing or {"name": "dynamic", "iterations": 3}
        model = capslab.build_model({"name": "capsnet", **(model_section or {})}, info, routing=routing).to(device)
        # capslab.routing.backends: "-plain" autograd through the reference loop, votes stored (B, J, I, D);
        # "-ops" the fused operator loop (capslab.routing.fused), no compiled kernel
        self.backend = "reference" if variant.endswith("-plain") else "fused" if variant.endswith("-ops") else None
        if variant.endswith("-onednn"):  # nn.Conv2d's own backward (floor and step alike)
            for conv in (model.conv1, model.primary.conv):
                conv.fast = lambda x: False
        fmt = torch.channels_last if self.cl else torch.contiguous_format
        self.model = model.to(memory_format=fmt)
        self.forward = torch.compile(self.model) if variant == "compile" else self.model
        self.loss = capslab.build_loss("margin")
        kw = {"fused": True} if adam == "fused" else {"foreach": True}
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, **kw)
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(batch, 1, 28, 28, generator=g).to(device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 10, (batch,), generator=g).to(device)

    def autocast(self):
        """The variant's context for a forward pass: bf16 autocast, and its routing backend."""
        stack = ExitStack()
        if self.bf16:
            stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
        stack.enter_context(backends.use(self.backend))
        return stack

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.forward(self.x, self.y)
            recon = capslab.reconstruction_loss(out.reconstruction.float(), self.x)
            loss = self.loss(out.scores.float(), self.y) + recon
        loss.backward()
        self.opt.step()

    def floor(self) -> None:
        m = self.model
        for p in (*m.conv1.parameters(), *m.primary.conv.parameters()):
            p.grad = None
        with self.autocast():
            h = m.primary.conv(m.conv1(self.x).relu_())
        h.float().sum().backward()

    @torch.inference_mode()
    def infer(self) -> None:
        self.model.eval()
        with self.autocast():
            self.forward(self.x)
        self.model.train()


def timed(fn, device: torch.device, clock=time.perf_counter) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - t0


def step_flops(s: Setup) -> float:
    """Multiply-add FLOPs (x2) of one training step of ``s`` (forward + backward), counted by
    torch.utils.flop_counter on the reference routing loop: the same algorithm as the compiled kernel, in
    operators the counter sees. Convolutions and matrix products only (the FLOP bound's own terms)."""
    from torch.utils.flop_counter import FlopCounterMode

    with backends.use("reference"), FlopCounterMode(display=False) as counter:
        out = s.model(s.x, s.y)
        loss = s.loss(out.scores, s.y) + capslab.reconstruction_loss(out.reconstruction, s.x)
        loss.backward()
    s.model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """The machine's fp32 matrix-product rate on this process's threads: the median of ``reps`` n x n products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    times = [timed(lambda: a @ b, device) for _ in range(reps)]
    return 2 * n**3 / statistics.median(times) / 1e9


def measure(variant: str, args, device: torch.device) -> dict:
    s = Setup(variant, args.batch, device, args.adam)
    flops = step_flops(s) / args.batch  # per image
    for _ in range(args.warmup):
        s.floor(), s.step(), s.infer()
    floor, step, infer, ratios = [], [], [], []
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for _ in range(args.reps):  # alternate, so both see the same machine load
        floor.append(timed(s.floor, device, clock))
        step.append(timed(s.step, device, clock))
        infer.append(timed(s.infer, device, clock))
        ratios.append(floor[-1] / step[-1])
    f, st, inf = (statistics.median(v) for v in (floor, step, infer))
    gflops = matmul_gflops(device)
    bound = gflops * 1e9 / flops  # img/s if every FLOP ran at the matmul rate
    return {
        "gflop_per_image": flops / 1e9,
        "matmul_gflops": gflops,
        "flop_bound_img_s": bound,
        "flop_bound_fraction": (args.batch / st) / bound,
        "floor_s": f,
        "step_s": st,
        "infer_s": inf,
        "floor_img_s": args.batch / f,
        "train_img_s": args.batch / st,
        "infer_img_s": args.batch / inf,
        "ratio": f / st,
        "ratio_median_of_pairs": statistics.median(ratios),
        "floor_all_s": floor,
        "step_all_s": step,
    }


def peak_child(variant: str, args, device: torch.device) -> None:
    """In a fresh process: build, run steps, print the peak memory as JSON."""
    s = Setup(variant, args.batch, device, args.adam)
    base_kb = status_kb("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(max(3, args.warmup + 1)):
        s.step()
    out = {"peak_rss_mb": status_kb("VmHWM") / 1024, "rss_before_steps_mb": base_kb / 1024}
    if device.type == "cuda":
        torch.cuda.synchronize()
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def profile_step(variant: str, args, device: torch.device) -> None:
    """One step after warm-up under torch.profiler: self time per operator (and per input shape)."""
    from torch.profiler import ProfilerActivity, profile

    s = Setup(variant, args.batch, device, args.adam)
    for _ in range(max(2, args.warmup)):
        s.floor(), s.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, fn in (("floor", s.floor), ("step", s.step)):
        with profile(activities=activities, record_shapes=True) as prof:
            fn()
        print(f"{variant} {name}")
        print(
            prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=40
            )
        )


def in_child(flag: str, variant: str, args) -> dict:
    """Run ``flag`` (--measure-child, --peak-child) for one variant in a fresh process; its JSON line.

    A fresh process per variant: in one process, a variant measured after another ran 3-8% slower
    (allocator and thread-pool state left by the first), whichever came first."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        flag,
        variant,
        "--batch",
        str(args.batch),
        "--device",
        args.device,
        "--adam",
        args.adam,
        "--warmup",
        str(args.warmup),
        "--reps",
        str(args.reps),
        "--clock",
        args.clock,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{variant}: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else 'failed'}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def targets(fp32: dict) -> dict:
    """Issue 5's CPU targets for the fp32 step: throughput ratio and peak memory."""
    out = {"ratio >= 0.90": {"value": fp32["ratio"], "target": 0.90, "met": fp32["ratio"] >= 0.90}}
    if "peak_rss_mb" in fp32:
        gb = fp32["peak_rss_mb"] / 1024
        out["peak RSS GB <= 1.3"] = {"value": gb, "target": 1.3, "met": gb <= 1.3}
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.peak_child:
        return peak_child(args.peak_child, args, device)
    if args.measure_child:
        return print(json.dumps(measure(args.measure_child, args, device)))
    variants = args.variants.split(",") if args.variants else default_variants(device)
    if args.profile:
        return profile_step(variants[0], args, device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    report = {
        "device": dev_name,
        "device_type": device.type,
        **(cpu_fields() if device.type == "cpu" else {}),
        "torch": torch.__version__,
        "capslab": capslab.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "reps": args.reps,
        "adam": args.adam,
        "clock": args.clock,
        "loadavg_before": os.getloadavg(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "variants": {},
    }
    for v in variants:
        r = in_child("--measure-child", v, args)
        if not args.no_memory:
            r.update(in_child("--peak-child", v, args))
        report["variants"][v] = r
        mem = f", peak {r['peak_rss_mb']:.0f} MB RSS" if "peak_rss_mb" in r else ""
        print(
            f"{v:8s} floor {r['floor_s']:.3f} s ({r['floor_img_s']:.0f} img/s)  step {r['step_s']:.3f} s "
            f"({r['train_img_s']:.0f} img/s)  ratio {r['ratio']:.3f}  inference {r['infer_img_s']:.0f} img/s{mem}  "
            f"FLOP bound {r['flop_bound_img_s']:.0f} img/s ({r['gflop_per_image']:.2f} GFLOP/img at "
            f"{r['matmul_gflops']:.0f} GFLOP/s), fraction {r['flop_bound_fraction']:.2f}",
            flush=True,
        )
    report["loadavg_after"] = os.getloadavg()
    if device.type == "cpu" and "fp32" in report["variants"]:
        report["targets"] = targets(report["variants"]["fp32"])
        for name, t in report["targets"].items():
            print(f"target {name}: {t['value']:.3f} against {t['target']} ({'met' if t['met'] else 'not met'})")
    slug = re.sub(r"[^a-z0-9]+", "-", (dev_name if device.type == "cuda" else "cpu").lower()).strip("-")
    out = args.out or ROOT / "results" / f"step-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
