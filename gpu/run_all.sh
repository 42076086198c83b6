#!/usr/bin/env bash
# The session's one device run (H200 + 16 cores, <= 9 min): every GPU check, each part under its own time limit.
# Results go to $RES/<part>/ and come back as ONE file, $OUT/results.tgz (+ $OUT/summary.txt): the device returns <= 8 files.
# On the device: `bash gpu/wheels.sh` here first, then run with carry [".whl", "shared_data"]. SMOKE=1: tiny CPU versions.
set -u
T_START=$(date +%s)
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
# PARTS: which parts run (default: `reproduce all --scale gpu-short`, which fills the call; vit_gap and table1 are
# issue 22's, the others as before)
PARTS="${PARTS:-reproduce}"
DEV="$( [ "${SMOKE:-0}" = 1 ] && echo cpu || echo cuda )"
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
has vit_gap && part vit_gap "${GAP_TIMEOUT:-400}" env OUT="$RES/vit_gap" RUNS=/tmp/vit-gap-runs GAP_SECONDS="${GAP_SECONDS:-270}" $PY gpu/vit_gap.py
pkill -f 'jc.run_job' 2>/dev/null; sleep 1   # runs a cut part left behind
has vit_gap && part vit_gap_collect 40 env OUT="$RES/vit_gap" RUNS=/tmp/vit-gap-runs GAP_SECONDS=0 $PY gpu/vit_gap.py   # what finished, if the part was cut
has table1 && part table1 "${T1_TIMEOUT:-$(( ${CALL_SECONDS:-585} - $(date +%s) + T_START ))}" $PY -m diffusionblocks.cli reproduce 1 --scale gpu-short --seeds "${T1_SEEDS:-3}" --processes 12 --device "$DEV" --out "$RES/table1" ${SMOKE:+$( [ "$SMOKE" = 1 ] && echo --baseline-iterations 2 )}
# reproduce: every table at gpu-short, the cheap tables first, under the call's remaining time minus the collection;
# finished arms live in runs/reproduce-all-gpu-short (carry it back next call: it resumes there), then --collect writes
# the summary from whatever finished.
REP_OUT="${REP_OUT:-runs/reproduce-all-gpu-short}"
REP_ARGS="--scale gpu-short --seeds ${REP_SEEDS:-1} --out $REP_OUT --tables ${REP_TABLES:-1,6,pdiff,3,5,4,11,2,10,7}"
has reproduce && part reproduce "${REP_TIMEOUT:-$(( ${CALL_SECONDS:-585} - 70 - $(date +%s) + T_START ))}" $PY -m diffusionblocks.cli reproduce all $REP_ARGS --processes "${REP_PROCS:-12}" --device "$DEV" ${SMOKE:+$( [ "$SMOKE" = 1 ] && echo --baseline-iterations 2 )}
pkill -f 'jc.run_job' 2>/dev/null; sleep 1
has reproduce && part reproduce_collect 40 $PY -m diffusionblocks.cli reproduce all $REP_ARGS --collect ${SMOKE:+$( [ "$SMOKE" = 1 ] && echo --baseline-iterations 2 )}
if has reproduce && [ -d "$REP_OUT" ]; then
  mkdir -p "$RES/reproduce_runs"; cp -r "$REP_OUT" "$RES/reproduce_runs/"
  [ -f "$REP_OUT/summary.json" ] && cp "$REP_OUT/summary.json" "$OUT/reproduce_all_gpu_short.json"
fi
has engine && part engine 170 env ENGINE_SECONDS=160 OUT="$RES" $PY gpu/engine.py
has scaling && part scaling 100 $PY -m diffusionblocks.cli bench scaling --procs 1 2 3 6 --blocks 6 --baseline-iterations 100 --device cpu --out "$RES/scaling"
has nccl && part nccl 60 $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m diffusionblocks.cli train --config digits --parallel blocks --baseline-iterations 60 --n-eval 200 --sample-steps 10 --device cuda --quiet --out "$RES/nccl/run"
has convert && [ -f gpu/convert.sh ] && part convert 120 env OUT="$RES" bash gpu/convert.sh
[ -f "$RES/vit_gap/vit_gap.json" ] && cp "$RES/vit_gap/vit_gap.json" "$OUT/vit_gap.json"
[ -f "$RES/table1/table.json" ] && cp "$RES/table1/table.json" "$OUT/table1_gpu_short.json"
find "$RES" -name '*.safetensors' -delete; find "$RES" -type d -name checkpoint -prune -exec rm -rf {} +
tar czf "$OUT/results.tgz" -C "$RES" . && cp "$RES/summary.txt" "$OUT/summary.txt"
ls -la "$OUT"; cat "$OUT/summary.txt"
