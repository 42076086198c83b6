"Cross-module tests of per-block LoRA: the engine trains only block k's adapters, per-block files from separate runs assemble into one routed model, and the peft path equals ours."
import copy, json
import pytest, torch, torch.nn as nn
from diffusionblocks.blocks import DiffusionBlocks, VectorAdapter, vector_blocks
from diffusionblocks.errors import CheckpointError
from diffusionblocks.flow import FlowPartition
from diffusionblocks.processes import FlowNoise
from diffusionblocks.layers import AdaLNZeroLayer
from diffusionblocks.tasks.converted.lora import (LoRALinear, add_lora, is_lora_name, lora_layers, lora_model, lora_state, load_block_lora,
                                  merge_lora, read_block_lora, save_block_lora)
from diffusionblocks.train import TrainConfig, Trainer

torch.set_num_threads(1)
QUIET = dict(progress=False, tensorboard=False, save_minutes=0)


def pretrained(seed=0, flow=False):
    "A small 3-block model with random ('pretrained') weights, so every gate is open."
    torch.manual_seed(seed)
    if flow:
        m = DiffusionBlocks([AdaLNZeroLayer(16, 2, 16) for _ in range(3)], VectorAdapter(2, 16, 16), FlowPartition.make(3), process=FlowNoise())
    else:
        m = vector_blocks(2, blocks=3, depth=3, width=16, heads=2, cond_dim=16)
    for p in m.parameters(): nn.init.normal_(p, std=0.1)
    return m


def data(n=256, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * 0.5 + torch.tensor([1., -0.5])


def test_engine_trains_only_block_k_lora():
    "Trainer(model, cfg, train_blocks=(1,)) on a model with adapters everywhere: only block 1's LoRA parameters change; frozen weights get no optimizer state."
    m = add_lora_all(pretrained())
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    tr = Trainer(m, TrainConfig(iterations=9, batch_size=16, lr=1e-2, **QUIET), data(), device='cpu', train_blocks=(1,))
    tr.fit()
    assert tr.steps[1] > 0 and tr.steps[0] == tr.steps[2] == 0
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    lora1 = {n for n in before if n.startswith('blocks.1.') and is_lora_name(n)}
    assert changed and changed <= lora1, sorted(changed - lora1)
    assert any(n.endswith('lora_B') for n in changed)                      # B left zero: the adapter really learned
    state_of = {id(p) for p in tr.opt[1].state}
    names = {id(p): n for n, p in m.named_parameters()}
    assert {names[i] for i in state_of} <= lora1 and state_of                # AdamW moments for LoRA parameters only
    assert set(tr.opt) == {1}


def add_lora_all(m, **kw):
    names = add_lora(m, rank=2, **kw)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == set(names)
    return m


def test_separate_runs_assemble_by_routing(tmp_path):
    "Blocks 0 and 2 fine-tuned in separate runs (a flow model), saved per block, loaded into the base: each t is served by its own block's adapter."
    base = pretrained(flow=True)
    runs = {}
    for k in (0, 2):
        m = copy.deepcopy(base); add_lora(m.blocks[k], rank=2)
        Trainer(m, TrainConfig(iterations=6, batch_size=16, lr=1e-2, seed=k, **QUIET), data(), device='cpu', train_blocks=(k,)).fit()
        runs[k] = (m, save_block_lora(m, k, tmp_path / f'block{k}.safetensors'))
    _, meta = read_block_lora(runs[2][1])
    assert meta['level'] == 't' and meta['partition'] == 'FlowPartition'
    assert json.loads(meta['nominal']) == list(base.partition.nominal(2))
    combined = lora_model(copy.deepcopy(base), {k: f for k, (_, f) in runs.items()})
    assert set(lora_layers(combined.blocks[1])) == set()                     # block 1 untouched
    z, t = torch.randn(3, 2), torch.tensor([0.95, 0.5, 0.05])                # one t in each block
    with torch.no_grad():
        out = combined(z, t)
        for i, k in enumerate((0, 1, 2)):
            ref = runs[k][0] if k in runs else base
            torch.testing.assert_close(out[i], ref(z[i:i + 1], t[i:i + 1])[0], atol=1e-6, rtol=0)
        assert (out[0] - base(z[:1], t[:1])[0]).abs().max() > 1e-4          # the adapter changed block 0
        merged = lora_model(copy.deepcopy(base), {k: f for k, (_, f) in runs.items()}, merge=True)
        assert not any(is_lora_name(n) for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(z, t), out, atol=1e-5, rtol=0)
        # the merged model is the base architecture: its state loads into a fresh one
        fresh = pretrained(seed=1, flow=True); fresh.load_state_dict(merged.state_dict())
        torch.testing.assert_close(fresh(z, t), out, atol=1e-5, rtol=0)


def test_exact_resume_of_a_lora_run(tmp_path):
    "A LoRA fine-tuning run killed mid-way and resumed ends bit-identical to an uninterrupted one (optimizer state for the adapters only)."
    cfg = TrainConfig(iterations=8, batch_size=16, lr=1e-2, save_every=4, **QUIET)
    ref = Trainer(add_lora_all(pretrained()), cfg, data(), tmp_path / 'ref', device='cpu'); ref.fit()
    tr = Trainer(add_lora_all(pretrained()), cfg, data(), tmp_path / 'run', device='cpu'); tr.fit(until=4)
    tr2 = Trainer(add_lora_all(pretrained()), cfg, data(), tmp_path / 'run', device='cpu', resume=True)
    assert tr2.iteration == 4
    tr2.fit()
    for (n, a), b in zip(ref.model.named_parameters(), tr2.model.parameters()):
        assert torch.equal(a, b), n
    assert any(not torch.equal(a, b) for a, b in zip(ref.model.parameters(), add_lora_all(pretrained()).parameters()))   # it trained


def test_damaged_or_foreign_files_are_refused(tmp_path):
    m = pretrained(); add_lora(m.blocks[0], rank=2)
    f = save_block_lora(m, 0, tmp_path / 'b0.safetensors')
    other = pretrained(); add_lora(other.blocks[0], rank=3)                 # same layers, another rank
    with pytest.raises(CheckpointError, match='has shape'):
        load_block_lora(other, 0, f)
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match='not a valid safetensors file'):
        load_block_lora(pretrained(), 0, f)


@pytest.mark.slow                         # importing peft pulls in transformers: ~9 s of CPU
def test_peft_equals_ours(tmp_path):
    "The peft path: same A and B weights give the same outputs; files are portable both ways; merge works for peft's layers."
    pytest.importorskip('peft')
    ours, theirs = pretrained(), pretrained()
    n_ours, n_theirs = add_lora(ours.blocks[1], rank=2, alpha=4.), add_lora(theirs.blocks[1], rank=2, alpha=4., use_peft=True)
    assert len(n_ours) == len(n_theirs) == 8 and all('.default.' in n for n in n_theirs)
    assert {n for n, p in theirs.blocks[1].named_parameters() if p.requires_grad} == set(n_theirs)
    with torch.no_grad():
        for n, p in ours.blocks[1].named_parameters():
            if n.endswith('lora_B'): p.normal_(std=0.1)
    f = save_block_lora(ours, 1, tmp_path / 'ours.safetensors')
    load_block_lora(theirs, 1, f)                                            # ours -> peft
    assert lora_state(theirs.blocks[1]).keys() == lora_state(ours.blocks[1]).keys()
    z, s = torch.randn(5, 2), torch.full((5,), 0.3)                          # σ = 0.3: block 1
    with torch.no_grad():
        ref = ours(z, s)
        assert (ref - pretrained()(z, s)).abs().max() > 1e-4
        torch.testing.assert_close(theirs(z, s), ref, atol=1e-6, rtol=1e-6)
        g = save_block_lora(theirs, 1, tmp_path / 'peft.safetensors')       # peft -> ours, into a model without adapters
        torch.testing.assert_close(lora_model(pretrained(), {1: g})(z, s), ref, atol=1e-6, rtol=1e-6)
        merge_lora(theirs)
        assert not any(is_lora_name(n) for n, _ in theirs.named_parameters())
        assert set(theirs.state_dict()) == set(pretrained().state_dict())    # peft's base_layer unwrapped: the base names again
        torch.testing.assert_close(theirs(z, s), ref, atol=1e-5, rtol=1e-5)

