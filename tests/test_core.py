"Cross-module tests of the core: partition CLI as installed, and a trained DiffusionBlocks model against the closed-form Gaussian denoiser."
import json, shutil, subprocess, sys
import pytest, torch, torch.nn as nn
from diffusionblocks.blocks import vector_blocks
from diffusionblocks.noise import c_skip, equal_mass_sigmas
from diffusionblocks.sampling import sample_euler


def test_partition_console_script_json():
    exe = shutil.which('diffusionblocks') or pytest.skip('console script not installed')
    out = subprocess.run([exe, 'partition', '--blocks', '6', '--json'], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)['blocks']
    assert [round(r['sigma_lo'], 4) for r in rows] == [0.9617, 0.505, 0.3012, 0.1796, 0.0943, 0.002]
    assert all(r['train_hi'] >= r['sigma_hi'] and r['train_lo'] <= r['sigma_lo'] for r in rows)


def test_blockwise_training_learns_gaussian_denoiser():
    """Data y ~ N(0, s²) with s = 1 ≠ σ_data: the optimal denoiser is D*(z, σ) = z·s²/(s²+σ²), far from the
    initial D = c_skip·z. Train B = 3 blocks independently (round-robin) and compare with D* in every block."""
    torch.manual_seed(0); g = torch.Generator().manual_seed(0)
    m = vector_blocks(1, blocks=3, depth=3, width=32, heads=2, cond_dim=32)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.)
    for it in range(600):
        k = it % 3
        loss, _ = m.loss(k, torch.randn(256, 1, generator=g), generator=g)
        opt.zero_grad(set_to_none=True); loss.backward(); nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
    z = torch.linspace(-2, 2, 41)[:, None]
    for sigma in (0.05, 0.3, 1.0):           # one σ inside each block's nominal range
        s = sigma * torch.ones(1)
        with torch.no_grad(): D = m(z * (1 + sigma**2) ** 0.5, s.expand(41))
        opt_D = z * (1 + sigma**2) ** 0.5 / (1 + sigma**2)
        init_err = (c_skip(sigma) * z * (1 + sigma**2) ** 0.5 - opt_D).abs().mean()
        err = (D - opt_D).abs().mean()
        assert err < 0.4 * init_err, (sigma, err.item(), init_err.item())
    # Euler sampling through the three trained blocks reproduces the data's standard deviation
    with torch.no_grad(): x = sample_euler(m, 80 * torch.randn(4000, 1, generator=g), equal_mass_sigmas(31))
    assert abs(x.std().item() - 1.0) < 0.1 and abs(x.mean().item()) < 0.1
    # with no grid the sampler uses the model's own (m.sigmas(50)), and starts at its σ_max
    with torch.no_grad(): x = sample_euler(m, m.edm.sigma_max * torch.randn(4000, 1, generator=g))
    assert abs(x.std().item() - 1.0) < 0.1 and abs(x.mean().item()) < 0.1


def test_fingerprint_is_json_and_what_checkpoints_compare():
    "model.fingerprint() is JSON-able and agrees with checkpoint.fingerprint (which reads it)."
    from diffusionblocks.checkpoint import fingerprint
    m = vector_blocks(2, blocks=3, depth=3, width=16, heads=2, cond_dim=16)
    fp = json.loads(json.dumps(m.fingerprint()))
    assert fp == fingerprint(m)
    assert set(fp) == {'model', 'num_blocks', 'split', 'partition', 'target', 'share_adapter', 'params'}
