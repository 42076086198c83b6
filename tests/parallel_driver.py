"""A torchrun worker for tests/test_parallel.py: trains a tiny model block-parallel (`parallel.fit_parallel`) into a run
directory. argv[1] is a JSON spec: model ('vector' or 'toy'), run, iterations, batch_size, resume, kill_rank, kill_at."""
import os, sys, json
import torch
from torch import nn
from torch.utils.data import Dataset
from diffusionblocks.blocks import vector_blocks
from diffusionblocks.train import TrainConfig, Trainer
from diffusionblocks.parallel import fit_parallel
from diffusionblocks.errors import DiffusionBlocksError

torch.set_num_threads(1)


class Jittered(Dataset):
    "Fixed points plus a random jitter drawn from the global torch RNG (an augmentation)."
    def __init__(self, n=256, d=2):
        g = torch.Generator().manual_seed(0)
        self.y = torch.randn(n, d, generator=g) * torch.linspace(0.2, 0.8, d)
    def __len__(self): return len(self.y)
    def __getitem__(self, i): return self.y[i] + 0.05 * torch.randn(self.y.shape[1])


class Toy(nn.Module):
    "A deterministic block-wise model (no noise draws): block k regresses a fixed map of y; for data-parallel equality."
    def __init__(self, blocks=2, d=4):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, d)) for _ in range(blocks))
        self.split = [1] * blocks
    @property
    def num_blocks(self): return len(self.blocks)
    def block_parameters(self, k): return {f'blocks.{k}.{n}': p for n, p in self.blocks[k].named_parameters()}
    def shared_parameters(self): return {}
    def loss(self, k, y, generator=None, **cond):
        loss = ((self.blocks[k](y) - torch.tanh(y.roll(1, -1) * (k + 1))) ** 2).mean()
        return loss, {'loss': loss.detach(), 'loss_unweighted': loss.detach()}
    def fingerprint(self): return dict(model='Toy', num_blocks=self.num_blocks, split=self.split, params={n: list(t.shape) for n, t in self.state_dict().items()})
    def set_checkpointing(self, on=True): return self


def make(spec):
    "(model, config, data) of a spec: the same on every rank and in the single-process reference."
    torch.manual_seed(0)
    quiet = dict(progress=False, tensorboard=False, save_every=spec.get('save_every', 0), save_minutes=0)
    if spec.get('model', 'vector') == 'toy':
        return Toy(spec.get('blocks', 2)), TrainConfig(iterations=spec['iterations'], batch_size=spec['batch_size'], lr=1e-2, **quiet), Jittered(256, 4)
    m = vector_blocks(2, blocks=spec.get('blocks', 3), depth=6, width=16, heads=2, cond_dim=16, share_adapter=spec.get('share_adapter', False))
    cfg = TrainConfig(iterations=spec['iterations'], batch_size=spec['batch_size'], lr=1e-2, warmup=3, ema=0.9, shared=spec.get('shared', 'train'), **quiet)
    return m, cfg, Jittered()


if __name__ == '__main__':
    spec = json.loads(sys.argv[1])
    model, cfg, data = make(spec)
    rank = int(os.environ['RANK'])
    def kill(tr, info):
        if rank == spec.get('kill_rank') and info['iteration'] == spec.get('kill_at'): os._exit(9)   # a rank dies mid-run
    try: s = fit_parallel(model, cfg, data, spec['run'], device='cpu', resume=spec.get('resume', False), callbacks=[kill])
    except DiffusionBlocksError as e: print(f'diffusionblocks: error: {e}', file=sys.stderr); sys.exit(2)   # as the CLI does
    if rank == 0: print(json.dumps({k: s[k] for k in ('steps', 'world', 'ranks')}))
