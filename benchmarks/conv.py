"""The PrimaryCaps convolution (9x9, stride 2, 20x20 -> 6x6) computed several ways, each direction timed alone.

Why capslab.Conv2d computes what it does (docs/performance.md): its weight gradient is one GEMM over unfolded
patches; forward and input gradient stay oneDNN's. The alternatives measured here, each checked against
oneDNN's result:

- forward: ``space_to_depth``, a stride-1 5x5 convolution of the input's 2x2 space-to-depth (4C channels);
- input gradient: ``phases``, four stride-1 transposed convolutions, one per output parity (the 5x5, 5x4, 4x5
  and 4x4 taps of the kernel); ``pixel_shuffle``, one transposed convolution with the four sub-kernels padded
  to 5x5 and stacked (a quarter more multiply-adds), then a depth-to-space;
- weight gradient: ``gemm`` (capslab.Conv2d's), against oneDNN's.

    python benchmarks/conv.py                                    # batch 32 and 128, Conv1 128 and 256 channels
    MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/conv.py

Results: benchmarks/results/conv-<isa>.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from step import cpu_fields  # benchmarks/ is on sys.path when run as a script

from capslab.layers.conv import gemm_weight_grad
from capslab.train.setup import device_name

ROOT = Path(__file__).resolve().parent
K, S, H = 9, 2, 20  # PrimaryCaps: kernel, stride, input size


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="32x128,32x256,128x256", help="comma list of BATCHxCHANNELS (input channels)")
    p.add_argument("--out-channels", type=int, default=256)
    p.add_argument("--reps", type=int, default=5, help="rounds; each times every method in turn (medians)")
    p.add_argument("--inner", type=int, default=5, help="calls per timing")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def sub_kernels(w: torch.Tensor) -> torch.Tensor:
    """(O, C, 9, 9) -> (O, 4C, 5, 5): tap (2m + ph, 2n + pw) at channel 4c + 2ph + pw, zero past the kernel."""
    O, C, k, _ = w.shape
    h = (k + 1) // 2
    wp = F.pad(w, (0, 2 * h - k, 0, 2 * h - k))
    return wp.view(O, C, h, 2, h, 2).permute(0, 1, 3, 5, 2, 4).reshape(O, 4 * C, h, h)


def dgrad_onednn(g, x, w):
    mask = [True, False, False]
    return torch.ops.aten.convolution_backward(g, x, w, None, [S, S], [0, 0], [1, 1], False, [0, 0], 1, mask)[0]


def dgrad_phases(g, x, w):
    out = torch.zeros_like(x)
    for ph in range(S):
        for pw in range(S):
            r = F.conv_transpose2d(g, w[:, :, ph::S, pw::S])  # input rows 2a + ph, a = output row + tap
            out[:, :, ph::S, pw::S][:, :, : r.shape[2], : r.shape[3]] = r
    return out


def dgrad_pixel_shuffle(g, x, w):
    return F.pixel_shuffle(F.conv_transpose2d(g, sub_kernels(w)), S)


def wgrad_onednn(g, x, w):
    mask = [False, True, False]
    return torch.ops.aten.convolution_backward(g, x, w, None, [S, S], [0, 0], [1, 1], False, [0, 0], 1, mask)[1]


def wgrad_gemm(g, x, w):
    return gemm_weight_grad(x, g, K, S).view_as(w)


METHODS = {
    "forward": {
        "onednn": lambda g, x, w: F.conv2d(x, w, stride=S),
        "space_to_depth": lambda g, x, w: F.conv2d(F.pixel_unshuffle(x, S), sub_kernels(w)),
    },
    "input_grad": {"onednn": dgrad_onednn, "phases": dgrad_phases, "pixel_shuffle": dgrad_pixel_shuffle},
    "weight_grad": {"onednn": wgrad_onednn, "gemm": wgrad_gemm},
}


def timed(fn, args, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn(*args)
    return (time.perf_counter() - start) / inner


def measure(batch: int, channels: int, args) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, channels, H, H)
    w = torch.randn(args.out_channels, channels, K, K) / (channels * K * K) ** 0.5
    oh = (H - K) // S + 1
    g = torch.randn(batch, args.out_channels, oh, oh)
    gflop = 2 * batch * oh * oh * args.out_channels * channels * K * K / 1e9  # each direction
    result = {}
    for direction, methods in METHODS.items():
        ref = methods["onednn"](g, x, w)
        times: dict[str, list[float]] = {name: [] for name in methods}
        for name, fn in methods.items():
            got = fn(g, x, w)
            err = ((got - ref).abs().max() / ref.abs().max()).item()
            assert err < 1e-5, (direction, name, err)  # the same result within float32 rounding
            fn(g, x, w)  # warm-up
        for _ in range(args.reps):
            for name, fn in methods.items():  # interleaved: every method sees the same machine load
                times[name].append(timed(fn, (g, x, w), args.inner))
        result[direction] = {
            name: {"ms": statistics.median(t) * 1e3, "gflop_s": gflop / statistics.median(t)}
            for name, t in times.items()
        }
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    report = {
        "device": device_name(torch.device("cpu")),
        **cpu_fields(),
        "torch": torch.__version__,
        "out_channels": args.out_channels,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "shapes": {},
    }
    print(f"{report['device']}, torch kernels {report['cpu_capability']}, {report['isa_env'] or 'no ISA limits'}")
    for shape in args.shapes.split(","):
        batch, channels = (int(v) for v in shape.split("x"))
        r = report["shapes"][shape] = measure(batch, channels, args)
        for direction, methods in r.items():
            cells = "  ".join(f"{name} {m['ms']:.1f} ms ({m['gflop_s']:.0f} GFLOP/s)" for name, m in methods.items())
            print(f"batch {batch:4d}, {channels} in: {direction:11s} {cells}", flush=True)
    out = args.out or ROOT / "results" / f"conv-{report['cpu_capability'].lower()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
