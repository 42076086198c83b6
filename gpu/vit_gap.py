"""Issue 22 on the device: the ViT gap grid (`nbs/17b_vit_gap.ipynb`'s `measure`) with 3 seeds, 15 runs at a time.
Writes $OUT/vit_gap.json after every group (copy it to nbs/results/vit_gap.json). SMOKE=1: a tiny CPU version.
Training stops starting new groups after GAP_SECONDS (default 420); finished runs are always read back."""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffusionblocks.experiments.vit_gap import measure, GAP_GROUPS, MAIN_ARMS

smoke = os.environ.get('SMOKE') == '1'
out = Path(os.environ.get('OUT', '/tmp/out')); out.mkdir(parents=True, exist_ok=True)
runs = Path(os.environ.get('RUNS', '/tmp/vit-gap-runs'))
t0 = time.time(); deadline = t0 + float(os.environ.get('GAP_SECONDS', 420))
dev = 'cpu' if smoke else 'cuda'
groups = GAP_GROUPS if not smoke else (('digits', ('e2e', 'faithful', 'default'), (1, 2)), ('cifar10', ('e2e', 'default'), (1,)),
                                       ('digits', ('opt-ours', 'c2'), (1,)))
res = measure(out=runs, path=out / 'vit_gap.json', device=dev, processes=int(os.environ.get('PROCS', 15 if not smoke else 2)),
              seeds=3 if not smoke else 1, groups=groups, deadline=deadline,
              base_iterations=dict(digits=3, cifar10=3) if smoke else None,
              command='SMOKE=1 python gpu/vit_gap.py' if smoke else 'gpu/run_all.sh (PARTS=vit_gap: gpu/vit_gap.py; $OUT/vit_gap.json copied to nbs/results/)')
for data, g in res.items():
    for k, s in g['summary'].items():
        print(data, f'{k}x', {a: round(100 * v['mean'], 1) for a, v in s['accuracy'].items()}, flush=True)
print(f'vit_gap: {sum(len(g["rows"]) for g in res.values())} runs in {time.time() - t0:.0f} s', flush=True)
