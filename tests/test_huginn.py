"Cross-module tests of the recurrent-depth (Huginn) model: truncated BPTT stops gradients, the DiffusionBlocks step runs the core once, the depth sampler's mean, exact KV-cached decoding, exact resume of both trainers, and the FLOP account."
import math
import pytest, torch, torch.nn as nn
from diffusionblocks.data import TextSequences
from diffusionblocks.errors import ConfigError
from diffusionblocks.tasks.recurrent_lm.huginn import (HuginnLM, HuginnTrainer, huginn_blocks, batch_next_token, decode_recurrent, sample_depth,
                                    step_flops, train_flops)
from diffusionblocks.train import TrainConfig, Trainer

torch.set_num_threads(1)
V, CFG = 11, dict(hidden=16, heads=2, prelude=1, core=2, coda=1, mean_recurrence=4, backprop_depth=2, cond_dim=8)
QUIET = dict(progress=False, tensorboard=False)


def randomise(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        if p.ndim > 1: nn.init.normal_(p, std=0.3, generator=g)
    return m


@pytest.mark.parametrize('free,graded', [(0, 2), (3, 2), (5, 1)])
def test_truncated_bptt_stops_gradients(free, graded):
    "Only the last `graded` iterations carry gradients: the states entering the earlier ones get none, the prelude still does."
    net = randomise(HuginnLM(V, CFG)); tr = HuginnTrainer(net)
    states, orig = [], net.step
    def spy(s, e, *a, **k):
        if s.requires_grad: s.retain_grad()
        states.append(s); return orig(s, e, *a, **k)
    net.step = spy
    tr.loss(0, torch.randint(0, V, (2, 7)), depth=(free, graded))[0].backward()
    assert len(states) == free + graded
    assert [s.requires_grad for s in states] == [False] * (free + 1) + [True] * (graded - 1)
    for s in states[free + 1:]: assert s.grad is not None and s.grad.abs().sum() > 0
    assert net.prelude[0].attn.qkv.weight.grad.abs().sum() > 0 and net.tok.weight.grad.abs().sum() > 0
    assert net.iterations_run.tolist() == [free, graded]


def test_diffusion_step_runs_the_core_once():
    m = huginn_blocks(CFG, V)
    calls = []
    for l in m.blocks[0].layers: l.register_forward_hook(lambda *a: calls.append(1))
    y, cond = batch_next_token(torch.randint(0, V, (3, 9)))
    m.loss(0, y, generator=torch.Generator().manual_seed(0), **cond)[0].backward()
    assert len(calls) == CFG['core']


def test_depth_sampler_mean():
    "r = Poisson(LogNormal(ln r̄ − σ²/2, σ)) + 1 has mean r̄ + 1; the split is (max(r − k, 0), min(r, k))."
    g = torch.Generator().manual_seed(1)
    draws = [sample_depth(8, 3, 0.5, g) for _ in range(6000)]
    r = torch.tensor([a + b for a, b in draws], dtype=torch.float64)
    assert abs(r.mean().item() - 9) < 4 * r.std().item() / math.sqrt(len(r))
    assert all(b == min(a + b, 3) and a == max(a + b - 3, 0) for a, b in draws)


@pytest.mark.parametrize('kind', ['huginn', 'dblocks'])
def test_cached_decoding_is_exact(kind):
    m = randomise(HuginnLM(V, CFG) if kind == 'huginn' else huginn_blocks(CFG, V), 2)
    p = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(3))
    a = decode_recurrent(m, p, 6, recurrence=3, generator=torch.Generator().manual_seed(4))
    b = decode_recurrent(m, p, 6, recurrence=3, generator=torch.Generator().manual_seed(4), use_cache=False)
    assert torch.equal(a, b) and a.shape == (3, 10)


@pytest.mark.parametrize('kind', ['huginn', 'dblocks'])
def test_exact_resume(tmp_path, kind):
    "Killed mid-way and resumed, both trainers end bit-identical to an uninterrupted run (Huginn's random depths included)."
    make = lambda seed=0: (torch.manual_seed(seed), HuginnTrainer(HuginnLM(V, CFG)) if kind == 'huginn' else huginn_blocks(CFG, V))[1]
    seqs = TextSequences(torch.randint(0, V, (2000,), generator=torch.Generator().manual_seed(0)), 9)
    cfg = TrainConfig(iterations=8, batch_size=4, lr=3e-3, warmup=2, save_every=3, **QUIET)
    ref = Trainer(make(), cfg, seqs, tmp_path / 'ref', batch_fn=batch_next_token, device='cpu'); ref.fit()
    Trainer(make(), cfg, seqs, tmp_path / 'run', batch_fn=batch_next_token, device='cpu').fit(until=3)
    tr = Trainer(make(7), cfg, seqs, tmp_path / 'run', batch_fn=batch_next_token, device='cpu', resume=True); tr.fit()
    for (n, a), b in zip(ref.model.state_dict().items(), tr.model.state_dict().values()): assert torch.equal(a, b), n


def test_flop_account_is_linear_and_exact():
    tr = HuginnTrainer(HuginnLM(V, CFG))
    tr.net.iterations_run.copy_(torch.tensor([12, 8]))                    # 4 steps of (3, 2)
    acc = train_flops(tr, (2, 9), 4)
    assert acc['train_flops'] == 4 * step_flops(tr, torch.zeros(2, 9, dtype=torch.long), depth=(3, 2))
    assert tr.net.iterations_run.tolist() == [12, 8]
    with torch.no_grad(): db = train_flops(huginn_blocks(CFG, V), (2, 9), 4)    # counted under an evaluation's no_grad too
    assert db['train_flops'] == 4 * db['flops_per_step'] and db['flops_per_step'] < acc['flops_per_step']


def test_bad_input_one_line():
    with pytest.raises(ConfigError, match='unknown recurrent-depth model'): HuginnLM(V, 'nope')
    with pytest.raises(ConfigError, match='recurrence'): decode_recurrent(HuginnLM(V, CFG), torch.zeros(1, 2, dtype=torch.long), 1, recurrence=0)
