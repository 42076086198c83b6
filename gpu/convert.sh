#!/usr/bin/env bash
# Issue 16 (conversion): peak device memory of block-wise fine-tuning with only the active block resident (residency='active',
# inactive blocks + their AdamW moments in pinned host memory) against the whole model resident (residency='all'), at B = 1, 3, 6:
#   * dit-s2-cifar10: the project's DiT-S/2 on 32×32×3 (the paper's CIFAR-10 configuration), batch 128;
#   * diffusers-dit-xl2: a diffusers DiTTransformer2DModel with DiT-XL/2's config (28 layers, width 1152, 675 M parameters),
#     randomly initialised (no hub), converted with `wrap_diffusers`, on 32×32×4 latents, batch 32.
# Two steps per block, AdamW, bf16 autocast. Writes $OUT/convert/memory.json. SMOKE=1: tiny models on the CPU (a plumbing check).
# Run from the repository root:  OUT=/tmp/out bash gpu/convert.sh   (expected <= 150 s on one H200, imports included)
set -euo pipefail
OUT=${OUT:-runs/gpu}; mkdir -p "$OUT/convert"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
PY=${PYTHON:-python}; [ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" - "$OUT/convert/memory.json" <<'PYEOF'
import gc, json, os, sys, time, platform
import torch
from diffusionblocks.tasks.image_generation.dit import dit_blocks, DiTConfig
from diffusionblocks.train import Trainer, TrainConfig
from diffusionblocks.tasks.converted.convert import wrap_diffusers
smoke = os.environ.get('SMOKE') == '1'
dev = 'cpu' if smoke or not torch.cuda.is_available() else 'cuda'
t0 = time.time()

def ours(B):
    cfg = DiTConfig(6, 32, 2, 2) if smoke else 'DiT-S/2'
    torch.manual_seed(0)
    return dit_blocks(cfg, 8 if smoke else 32, 3, 10, blocks=B), (8 if smoke else 128, 3, 8 if smoke else 32), 10

def diffusers_xl(B):
    from diffusers import DiTTransformer2DModel
    kw = dict(num_attention_heads=2, attention_head_dim=8, num_layers=6, sample_size=8) if smoke else \
         dict(num_attention_heads=16, attention_head_dim=72, num_layers=28, sample_size=32)
    torch.manual_seed(0)
    with torch.device(dev): m = DiTTransformer2DModel(in_channels=4, out_channels=8, patch_size=2, num_embeds_ada_norm=1000, **kw)
    return wrap_diffusers(m, B), (4 if smoke else 32, 4, kw['sample_size']), 1000

def measure(make, B, residency):
    model, (n, C, S), K = make(B)
    params = sum(p.numel() for p in model.parameters())
    block = max(sum(p.numel() for p in model.block_parameters(k).values()) for k in range(B))
    data = (torch.randn(4 * n, C, S, S), torch.randint(0, K, (4 * n,)))
    cfg = TrainConfig(iterations=2 * B, batch_size=n, progress=False, residency=residency, lr=1e-4, save_every=0)
    if dev == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    tr = Trainer(model, cfg, data, device=dev)
    if dev == 'cuda': torch.cuda.synchronize(); resident = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
    t = time.time(); s = tr.fit(); sec = time.time() - t
    peak = torch.cuda.max_memory_allocated() if dev == 'cuda' else None
    row = dict(blocks=B, residency=residency, params=params, largest_block_params=block, batch=n, steps=s['iterations'],
               peak_bytes=peak, resident_before_training_bytes=resident if dev == 'cuda' else None, seconds=round(sec, 2), swaps=s['swaps'])
    del tr, model, data; gc.collect()
    if dev == 'cuda': torch.cuda.empty_cache()
    print(json.dumps(row), flush=True)
    return row

rows = {}
for name, make in (('dit-s2-cifar10', ours), ('diffusers-dit-xl2', diffusers_xl)):
    rows[name] = [measure(make, B, r) for B in (1, 3, 6) for r in (('all',) if B == 1 else ('all', 'active'))]
out = dict(device=torch.cuda.get_device_name() if dev == 'cuda' else f'CPU {platform.machine()} (smoke)', torch=torch.__version__,
           smoke=smoke, precision='bf16 autocast' if dev == 'cuda' else 'fp32', optimizer='AdamW', results=rows, seconds=round(time.time() - t0, 1),
           note="peak_bytes = torch.cuda.max_memory_allocated during training (weights, grads, AdamW moments, activations); residency 'active' keeps one block (+ shared tensors) on the device")
json.dump(out, open(sys.argv[1], 'w'), indent=1)
print('wrote', sys.argv[1], 'in', out['seconds'], 's')
PYEOF
