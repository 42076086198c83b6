#!/usr/bin/env bash
# The ViT gap (issue 15) at a GPU budget: end-to-end vs faithful vs improved DiffusionBlocks-ViT at equal budgets:
# digits at 1x, 3x and 9x the base budget (100 iterations; 2 seeds; 1x and 3x are the CPU tables' arms and budgets in
# nbs/17b_vit_gap.ipynb), and the CIFAR-10 copy with the paper's ViT (12 x 128, MLP 3072) at 300 base iterations when
# the copy is available ($DIFFUSIONBLOCKS_SHARED_DATA), 1 seed.
# Order: CIFAR-10 (<= 80 s), then digits 1x/3x, then digits 9x while time is left (<= 140 s in all).
# Writes "$OUT/reproduce/vit_gap_<data>.json" (copy them to nbs/results/vit_gap_gpu_<data>.json; 17b_vit_gap reads them).
# Usage (repo root): OUT=/tmp/out bash gpu/reproduce.sh        SMOKE=1: a tiny CPU check of the same path.
# Budget: <= 150 s on one H200 + 16 cores (each stage has its own timeout; a stage that runs out leaves the others' results).
set -u
OUT="${OUT:-/tmp/out}"; DEST="$OUT/reproduce"; mkdir -p "$DEST"
if [ -z "${PY:-}" ]; then PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python; fi
DEVICE=cuda; EXTRA='{}'; CIFAR_EXTRA='{"baseline_iterations": 300, "options": {"test_limit": 5000}}'; SLOW=1; MULTS='[1, 3]'; SEEDS=2; CIFAR=1
if [ "${SMOKE:-0}" = 1 ]; then   # a CPU check of the same path: tiny budgets, one budget and seed, CIFAR only with SMOKE_CIFAR=1
  DEVICE=cpu; SLOW=20; MULTS='[1]'; SEEDS=1; CIFAR="${SMOKE_CIFAR:-0}"
  EXTRA='{"baseline_iterations": 3, "options": {"limit": 200, "test_limit": 50}}'; CIFAR_EXTRA='{"baseline_iterations": 2, "options": {"limit": 200, "test_limit": 50}}'
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
stage() {  # stage NAME DATA MULTIPLES OVERRIDES TIMEOUT
  timeout "$5" "$PY" - "$1" "$2" "$3" "$4" "$DEST" "$DEVICE" "$SEEDS" <<'PY'
import json, sys, time, torch
from diffusionblocks.experiments.vit_gap import vit_gap
name, data, mults, over, dest, dev, seeds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7])
if dev == 'cuda': torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True   # the released code's fp32 with TF32
t = time.time()
res = vit_gap(data, "gpu", seeds=seeds if data == "digits" else 1, multiples=tuple(mults), out=f'{dest}/runs-{name}', device=dev, parallel=6 if dev == "cuda" else 3, overrides=over)
res['wall_seconds'] = round(time.time() - t, 1)
open(f'{dest}/vit_gap_{name}.json', 'w').write(json.dumps(res, indent=1))
for g in res['gaps']: print(name, g['multiple'], g['arm'], f"e2e {g['e2e']['mean']:.4f} dblocks {g['dblocks']['mean']:.4f} gap {g['gap']:+.4f}")
print(name, 'seconds', res['wall_seconds'])
PY
}
T0=$(date +%s)
left() { echo $(( 140 * SLOW - ($(date +%s) - T0) )); }
# 1. the paper's ViT on the CIFAR-10 copy (the most informative GPU measurement), when the copy is there
if [ "$CIFAR" = 1 ] && "$PY" -c "from diffusionblocks.data import shared_data_dir as s; import sys; d = s(); sys.exit(0 if d and (d / 'cifar10-jpg.tar.gz').is_file() else 1)"; then
  stage cifar10 cifar10 '[1]' "$CIFAR_EXTRA" $(( 80 * SLOW )) || echo "cifar10 stage failed or timed out"
else echo "no CIFAR-10 stage (no copy under DIFFUSIONBLOCKS_SHARED_DATA, or SMOKE without SMOKE_CIFAR=1)"; fi
# 2. digits at 1x and 3x (2 seeds), then 9x if time is left
L=$(left); [ "$L" -gt 20 ] && { stage digits digits "$MULTS" "$EXTRA" "$L" || echo "digits stage failed or timed out"; }
L=$(left); [ "${SMOKE:-0}" != 1 ] && [ "$L" -gt 30 ] && { stage digits9 digits "[9]" "$EXTRA" "$L" || echo "digits 9x stage failed or timed out"; }
echo "total $(( $(date +%s) - T0 )) s; results in $DEST"
