"The peft path of per-block LoRA equals ours (slow: importing peft pulls in transformers). The other LoRA tests — the engine trains only block k's adapters, per-block files from separate runs assemble into one routed model, exact resume, refused files — are in nbs/35_lora.ipynb."
import pytest, torch, torch.nn as nn
from diffusionblocks.blocks import DiffusionBlocks, VectorAdapter, vector_blocks
from diffusionblocks.flow import FlowPartition
from diffusionblocks.processes import FlowNoise
from diffusionblocks.layers import AdaLNZeroLayer
from diffusionblocks.tasks.converted.lora import add_lora, is_lora_name, lora_model, lora_state, load_block_lora, merge_lora, save_block_lora

torch.set_num_threads(1)


def pretrained(seed=0, flow=False):
    "A small 3-block model with random ('pretrained') weights, so every gate is open."
    torch.manual_seed(seed)
    if flow:
        m = DiffusionBlocks([AdaLNZeroLayer(16, 2, 16) for _ in range(3)], VectorAdapter(2, 16, 16), FlowPartition.make(3), process=FlowNoise())
    else:
        m = vector_blocks(2, blocks=3, depth=3, width=16, heads=2, cond_dim=16)
    for p in m.parameters(): nn.init.normal_(p, std=0.1)
    return m


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

