"""Issue 14's GPU measurements in one process tree (~3 min on an H200): step time of B = 3, 4 against end-to-end/B with
and without fused AdamW, at batch 128 and 256, and with torch.compile; the peak-memory ratio end-to-end / `active` at
B = 4; `sequential` + `active` against `all` timed within one process. Writes $OUT/engine/engine.json after every row
(a time-out keeps what was measured). SMOKE=1: a tiny CPU version to check the script."""
import json, os, sys, time
from pathlib import Path
import torch
from diffusionblocks.bench import run_spec, bench_residency, add_model_column

OUT = Path(os.environ.get('OUT', '/tmp/out')) / 'engine'; OUT.mkdir(parents=True, exist_ok=True)
SMOKE = os.environ.get('SMOKE') == '1'
BUDGET = float(os.environ.get('ENGINE_SECONDS', 200))
dev = 'cuda' if torch.cuda.is_available() and not SMOKE else 'cpu'
model = 'dit-tiny' if SMOKE else 'dit-s2'
t0 = time.time()
res = dict(device=torch.cuda.get_device_name() if dev == 'cuda' else 'cpu', torch=torch.__version__, model=model, speed=[], memory=[], compile=[], residency=None)

def save(): (OUT / 'engine.json').write_text(json.dumps(res, indent=1))
def left(): return BUDGET - (time.time() - t0)
def spec(B, bs, **kw):
    return dict(model=model, blocks=B, device=dev, batch_size=bs, timed_steps=3 if SMOKE else 30, track=False,
                residency=None if B == 1 else kw.pop('residency', 'all'), schedule=kw.pop('schedule', 'uniform'), checkpointing=False, **kw)

for bs in ([4] if SMOKE else [128, 256]):
    for fused in (False, True):
        for B in ((1, 3) if SMOKE else (1, 3, 4)):
            if left() < 20: break
            r = run_spec(spec(B, bs, fused=fused)); res['speed'].append(r); save()
            print(f"bs={bs} fused={fused} B={B}: {r['step_seconds'] * 1e3:.2f} ms/step, peak {(r['peak_bytes'] or 0) / 2**20:.0f} MiB", flush=True)
for B, kw in ((1, {}), (4 if not SMOKE else 3, dict(residency='active', schedule='sequential'))):
    if left() < 20: break
    r = run_spec(spec(B, 4 if SMOKE else 128, **kw)); res['memory'].append(r); save()
    print(f"memory B={B} {kw}: peak {(r['peak_bytes'] or 0) / 2**20:.0f} MiB", flush=True)
if left() > 40:
    res['residency'] = bench_residency(model, 3 if SMOKE else 4, dev, 4 if SMOKE else 128, steps=3 if SMOKE else 20, rounds=3 if SMOKE else 5); save()
    print('active/all within one process:', res['residency']['ratio_active_over_all'], flush=True)
for B in ((1, 3) if SMOKE else (1, 4)):
    if left() < 60: break
    try: r = run_spec(spec(B, 4 if SMOKE else 128, compile=True), timeout=int(max(30, left() - 10)))
    except Exception as e: r = dict(blocks=B, error=str(e)[:300])
    res['compile'].append(r); save(); print(f"compile B={B}: {r.get('step_seconds', float('nan')) * 1e3:.2f} ms/step", flush=True)
print(f"engine measurements done in {time.time() - t0:.0f} s")
