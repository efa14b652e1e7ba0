#!/usr/bin/env bash
# GPU readiness in one command, on a machine with a CUDA GPU (installs nothing new; under 10 minutes):
#
#     bash benchmarks/gpu_check.sh [--dry-run]
#
# 1. the `cuda` tests (every routing on CUDA against the CPU, two training steps each, bf16 autocast);
# 2. benchmarks/step.py on the GPU (fp32, bf16, torch.compile), results in benchmarks/results/;
# 3. a one-epoch `capslab compare` of every routing on the shared backbone, three runs per GPU, each run
#    pinned to one GPU; table in benchmarks/results/.
# Without a GPU it says so in one line and exits 2 (--dry-run lists the steps on any machine).
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
run() {
    echo "+ $*"
    if [ "$DRY" = 0 ]; then "$@"; fi
}
if [ "$DRY" = 0 ] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device here (torch.cuda.is_available() is false); nothing to check" >&2
    exit 2
fi
GPU=$( [ "$DRY" = 0 ] && python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))" || echo GPU)
run python -m pytest -m cuda -p no:randomly -q tests/test_cuda.py
run python benchmarks/step.py --device cuda --variants fp32,bf16,compile
run capslab compare recipes/compare/routing.yaml train.epochs=1 train.device=cuda --runs-per-gpu 3 --out "benchmarks/results/compare-routing-$GPU"
