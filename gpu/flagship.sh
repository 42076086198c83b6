#!/usr/bin/env bash
# Issue 27 (the flagship) on a GPU: the 2.03 B-parameter SD3-medium-sized transformer of nbs/37_flagship.ipynb
# (random weights, 16x16x16 latents, 4 text tokens), bf16 autocast, every training process capped at 16 GiB of device
# memory with torch.cuda.set_per_process_memory_fraction (a 16 GB card on an H200):
#   1. end to end (B = 1) under the cap: expected to fail (fp32 weights + gradients alone are 16.2 GB);
#   2. B chosen by the planner (diffusionblocks.plan.training_memory: the smallest B dividing 24 whose predicted peak fits
#      16 GiB; at batch 32 that is B = 3, 13.0 GiB predicted; B = 2 would need 19.3 GiB);
#   3. `diffusionblocks convert SRC --blocks B --batch-size 32 --block-schedule sequential --baseline-iterations 20`,
#      then `train --resume RUN --residency active --device cuda` under the cap (inactive blocks and their AdamW moments in
#      pinned host memory): peak torch.cuda.max_memory_allocated, seconds per step, per-block loss windows, the
#      planner's prediction beside the measured peak.
# Writes $OUT/flagship/gpu.json (+ logs). SMOKE=1: a tiny SD3 on the CPU (a plumbing check, no cap).
# Run from the repository root:  OUT=/tmp/out bash gpu/flagship.sh
# Expected device time on one H200: about 6 minutes (source built on the GPU ~0.5 min and saved ~1 min, end-to-end attempt
# ~0.5 min, convert ~1.5 min, 3 blocks x 20 steps + swaps + the 32 GB checkpoint ~2 min, imports ~0.5 min); at most
# 10 minutes. Scratch disk ~33 GB at the peak under $SCRATCH (default /tmp/flagship-gpu), removed at the end; host memory
# ~35 GB (the inactive blocks and their moments in pinned memory).
set -euo pipefail
OUT=${OUT:-runs/gpu}; mkdir -p "$OUT/flagship"
SCRATCH=${SCRATCH:-/tmp/flagship-gpu}; rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" DIFFUSIONBLOCKS_DATA="${DIFFUSIONBLOCKS_DATA:-/tmp/dbcache}"
PY=${PYTHON:-python}; [ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" - "$OUT/flagship" "$SCRATCH" <<'PYEOF'
import json, os, subprocess, sys, time, platform
import torch
from diffusionblocks.experiments.flagship import FLAGSHIP, TINY, TOKENS
from diffusionblocks.plan import plan_table, training_memory, model_blocks, layer_activations
out_dir, scratch = sys.argv[1], sys.argv[2]
smoke = os.environ.get('SMOKE') == '1'
dev = 'cpu' if smoke or not torch.cuda.is_available() else 'cuda'
CAP = 16 * 2**30
cfg, batch, steps = (TINY, 4, 2) if smoke else (FLAGSHIP, 32, 20)
t00 = time.time()
# what every stage process runs first: the cap, then the stage
PRE = f"""
import json, sys, time, torch
cuda = torch.cuda.is_available() and {dev == 'cuda'!r}
if cuda: torch.cuda.set_per_process_memory_fraction(min(1.0, {CAP} / torch.cuda.get_device_properties(0).total_memory))
t0 = time.time()
"""
POST = """
res.update(seconds=round(time.time() - t0, 1), peak_bytes=torch.cuda.max_memory_allocated() if cuda else None)
print('RESULT ' + json.dumps(res), flush=True)
"""
STAGES = {
 'source': """
import diffusers
torch.manual_seed(0)
with torch.device('cuda' if cuda else 'cpu'): net = diffusers.SD3Transformer2DModel(**CFG)
net.save_pretrained(SRC, max_shard_size='2GB'); res = dict(params=sum(p.numel() for p in net.parameters()))
""",
 'e2e': """
import diffusers
from diffusionblocks.tasks.converted.convert import wrap_diffusers
from diffusionblocks.tasks.converted.task import CondImages
from diffusionblocks.train import Trainer, TrainConfig
c = diffusers.SD3Transformer2DModel.load_config(SRC); g = torch.Generator().manual_seed(0)
data = CondImages(torch.randn(4 * BATCH, c['in_channels'], c['sample_size'], c['sample_size'], generator=g), torch.zeros(4 * BATCH, dtype=torch.long),
                  {'encoder_hidden_states': torch.randn(1, 4, c['joint_attention_dim'], generator=g), 'pooled_projections': torch.randn(1, c['pooled_projection_dim'], generator=g)}, ['x'], 'random', 'train')
try:
    model = wrap_diffusers(diffusers.SD3Transformer2DModel.from_pretrained(SRC), 1)
    Trainer(model, TrainConfig(iterations=2, batch_size=BATCH, lr=1e-4, progress=False, tensorboard=False), data, device='cuda' if cuda else 'cpu').fit()
    res = dict(ok=True)
except (torch.OutOfMemoryError, RuntimeError) as e: res = dict(ok=False, error=' '.join(str(e).split())[:300])
""",
 'convert': """
from diffusionblocks.cli import main
res = dict(rc=main(['convert', SRC, '--out', RUN, '--blocks', str(B), '--batch-size', str(BATCH), '--block-schedule', 'sequential', '--baseline-iterations', str(STEPS), '--json']))
""",
 'train': """
from diffusionblocks.cli import main
from diffusionblocks.checkpoint import RunDir
res = dict(rc=main(['train', '--resume', RUN, '--residency', 'active', '--no-eval', '--quiet', '--device', 'cuda' if cuda else 'cpu']))
m = json.loads(open(RUN + '/metrics.json').read())
res.update(metrics={k: m.get(k) for k in ('iterations', 'steps_per_block', 'train_seconds', 'params', 'final_loss', 'peak_memory_bytes')},
           seconds_per_step=m['train_seconds'] / m['iterations'], log=[{k: r[k] for k in ('iteration', 'block', 'step', 'loss', 'n')} for r in RunDir(RUN).metrics()])
""",
}
def stage(name, B=None):
    code = PRE + f"CFG, SRC, RUN, B, BATCH, STEPS = {cfg!r}, {scratch + '/src'!r}, {scratch + '/run'!r}, {B!r}, {batch}, {steps}\n" + STAGES[name] + POST
    t = time.time()
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    open(f'{out_dir}/{name}.log', 'w').write(p.stdout + p.stderr)
    line = next((l for l in reversed(p.stdout.splitlines()) if l.startswith('RESULT ')), None)
    r = json.loads(line[7:]) if line else dict(ok=False, error=f'rc {p.returncode}: {p.stderr[-300:]}')
    r['wall_seconds'] = round(time.time() - t, 1); print(name, {k: v for k, v in r.items() if k != 'log'}, flush=True)
    return r
R = dict(device=torch.cuda.get_device_name() if dev == 'cuda' else f'CPU {platform.machine()} (smoke)', torch=torch.__version__, smoke=smoke,
         cap_bytes=CAP, precision='bf16 autocast' if dev == 'cuda' else 'fp32', batch_size=batch, steps_per_block=steps, config=cfg)
R['source'] = stage('source')
R['e2e'] = stage('e2e')
# the planner picks B: the smallest divisor of 24 whose predicted peak fits the cap (device memory; no runtime: max_memory_allocated)
a = layer_activations(batch, TOKENS, 1536, 'bf16')
def predict(B):
    mb = model_blocks('sd3-flagship', B)
    return training_memory(mb['params'], B, 'active', 'adamw', 'bf16', 24, a, block_params=mb['block_params'])
R['plan'] = {B: int(predict(B)['peak']) for B in (1, 2, 3, 4, 6, 8, 12)}
B = 2 if smoke else next(B for B in (1, 2, 3, 4, 6, 8, 12) if predict(B)['peak'] <= CAP)
R['blocks'], R['predicted_peak_bytes'] = B, int(predict(B)['peak'])
R['convert'] = stage('convert', B)
import shutil; shutil.rmtree(scratch + '/src', ignore_errors=True)
R['train'] = stage('train', B)
if R['train'].get('peak_bytes'): R['planner_error'] = R['predicted_peak_bytes'] / R['train']['peak_bytes'] - 1
R['losses'] = {str(k): [r['loss'] for r in R['train'].get('log', []) if r['block'] == k] for k in range(B)}
R['seconds'] = round(time.time() - t00, 1)
json.dump(R, open(f'{out_dir}/gpu.json', 'w'), indent=1)
shutil.rmtree(scratch, ignore_errors=True)
print('wrote', f'{out_dir}/gpu.json', 'in', R['seconds'], 's; B =', B, 'predicted', R['predicted_peak_bytes'] / 2**30, 'GiB, measured',
      (R['train'].get('peak_bytes') or 0) / 2**30, 'GiB')
PYEOF
