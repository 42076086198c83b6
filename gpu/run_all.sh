#!/usr/bin/env bash
# The session's one device run (H200 + 16 cores, <= 9 min): every GPU check, each part under its own time limit.
# Results go to $RES/<part>/ and come back as ONE file, $OUT/results.tgz (+ $OUT/summary.txt): the device returns <= 8 files.
# On the device: run with carry [".whl"] (fastcore, torch-fidelity, diffusers wheels). SMOKE=1: tiny CPU versions.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"; RES="${RES:-/tmp/res}"; mkdir -p "$OUT" "$RES"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import fastcore" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" DIFFUSIONBLOCKS_DATA="/tmp/dbcache" MPLBACKEND=Agg HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
[ -d shared_data ] && export DIFFUSIONBLOCKS_SHARED_DATA="$PWD/shared_data"
PY="${PY:-python3}"
part() {   # name seconds command...
  local name=$1 secs=$2; shift 2; mkdir -p "$RES/$name"; local t0=$(date +%s)
  timeout "$secs" "$@" > "$RES/$name/log.txt" 2>&1; local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$RES/summary.txt"; tail -4 "$RES/$name/log.txt"
}
$PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$RES/summary.txt"
nproc | tee -a "$RES/summary.txt"
part engine 170 env ENGINE_SECONDS=160 OUT="$RES" $PY gpu/engine.py
part scaling 100 $PY -m diffusionblocks.cli bench scaling --procs 1 2 3 6 --blocks 6 --baseline-iterations 100 --device cpu --out "$RES/scaling"
part nccl 60 $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m diffusionblocks.cli train --config digits --parallel blocks --baseline-iterations 60 --n-eval 200 --sample-steps 10 --device cuda --quiet --out "$RES/nccl/run"
[ -f gpu/reproduce.sh ] && part reproduce 150 env OUT="$RES" bash gpu/reproduce.sh
[ -f gpu/convert.sh ] && part convert 120 env OUT="$RES" bash gpu/convert.sh
find "$RES" -name '*.safetensors' -delete; find "$RES" -type d -name checkpoint -prune -exec rm -rf {} +
tar czf "$OUT/results.tgz" -C "$RES" . && cp "$RES/summary.txt" "$OUT/summary.txt"
ls -la "$OUT"; cat "$OUT/summary.txt"
