"Cross-module tests of the masked-diffusion language model: the engine resumes it exactly, checkpoints refuse a σ model, the sequences never cross a split, and the closed-form ELBO of i.i.d. characters."
import math
import pytest, torch
from diffusionblocks.checkpoint import load_weights
from diffusionblocks.data import CharVocab, TEXT8_CHARS, TextSequences
from diffusionblocks.errors import ConfigError
from diffusionblocks.tasks.masked_lm.mdm import UnigramDenoiser, elbo_bpc, mdm_blocks, sample_tokens
from diffusionblocks.partition import MaskPartition
from diffusionblocks.train import TrainConfig, Trainer

torch.set_num_threads(1)
QUIET = dict(progress=False, tensorboard=False)


def tiny(blocks=3, seed=0, **kw):
    torch.manual_seed(seed)
    return mdm_blocks(dict(depth=3, hidden=16, heads=2), vocab_size=27, seq_len=16, blocks=blocks, **kw)


def corpus(n=4000, seed=0):
    return TextSequences(torch.randint(0, 27, (n,), generator=torch.Generator().manual_seed(seed)), 16)


def test_exact_resume(tmp_path):
    "A masked-diffusion run killed mid-way and resumed ends bit-identical to an uninterrupted one (t, masks, data order)."
    cfg = TrainConfig(iterations=12, batch_size=8, lr=3e-3, warmup=2, save_every=5, **QUIET)
    ref = Trainer(tiny(), cfg, corpus(), tmp_path / 'ref', device='cpu'); ref.fit()
    tr = Trainer(tiny(), cfg, corpus(), tmp_path / 'run', device='cpu'); tr.fit(until=5)
    tr2 = Trainer(tiny(seed=3), cfg, corpus(), tmp_path / 'run', device='cpu', resume=True)
    assert tr2.iteration == 5
    tr2.fit()
    for (n, a), b in zip(ref.model.state_dict().items(), tr2.model.state_dict().values()): assert torch.equal(a, b), n


def test_checkpoint_refuses_other_processes_and_partitions(tmp_path):
    cfg = TrainConfig(iterations=3, batch_size=8, **QUIET)
    Trainer(tiny(), cfg, corpus(), tmp_path, device='cpu').fit()
    load_weights(tmp_path, tiny(seed=1))                                      # the same model loads
    with pytest.raises(Exception, match='scheme|partition'): load_weights(tmp_path, tiny(scheme='linear', schedule='cosine'))


def test_sequences_stay_inside_their_split():
    ids = torch.arange(1000) % 27
    for stride in (None, 7, 64):
        s = TextSequences(ids, 64, stride)
        last = (len(s) - 1) * (stride or 64)
        assert last + 64 <= len(ids) and last + (stride or 64) + 64 > len(ids)
        assert torch.equal(s[len(s) - 1], ids[last:last + 64])


def test_unigram_elbo_is_the_entropy_and_sampling_reproduces_it():
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(27, generator=g), 0)
    H = -(p * p.log2()).sum().item()
    x = torch.multinomial(p, 200 * 64, replacement=True, generator=g).view(200, 64)
    r = elbo_bpc(UnigramDenoiser(p), x, samples=8, intervals=MaskPartition(4, schedule='cosine'), mask_id=27)
    assert abs(r['bpc'] - H) < 3 * r['bpc_stderr'] and r['bpc_stderr'] < 0.03
    assert sum(r['bpc_per_block']) == pytest.approx(r['bpc'], abs=1e-9)
    xs = sample_tokens(UnigramDenoiser(p), 64, 64, grid=MaskPartition(2).grid(8), partition=MaskPartition(2), mask_id=27,
                       generator=torch.Generator().manual_seed(0))
    f = torch.bincount(xs.flatten(), minlength=27).double() / xs.numel()
    assert 0.5 * (f - p.double()).abs().sum() < 0.05


def test_bad_configurations_are_one_line():
    with pytest.raises(ValueError, match='cannot split 3 layers evenly into 2 blocks'): tiny(blocks=2)
    with pytest.raises(ConfigError, match='unknown masking schedule'): tiny(schedule='sqrt')
