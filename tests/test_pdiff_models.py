"Tests of the p-diff generators that train for seconds: the parameter autoencoder on a low-dimensional family, and DDPM (through the Trainer) and EDM DiffusionBlocks learning a two-cluster latent. (The closed forms, the exact-oracle sampler and the config errors are checked in nbs/31_pdiff_models.ipynb.)"
import torch, torch.nn.functional as F
from diffusionblocks.tasks.parameter_diffusion.models import (ParamAutoencoder, train_autoencoder, EpsUNet1d, DDPM, ddpm_sample,
                                          latent_blocks, edm_sample)
from diffusionblocks.train import TrainConfig, Trainer

torch.set_num_threads(1)
QUIET = dict(progress=False, tensorboard=False, threads=1)


def test_autoencoder_reconstructs_a_low_dimensional_family():
    "Held-out vectors of a 4-d subspace of R^64 come back far below the data spread; training is deterministic."
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(4, 64, generator=g) / 4
    Xtr, Xte = torch.randn(200, 4, generator=g) @ basis, torch.randn(100, 4, generator=g) @ basis
    def fit(iterations):
        torch.manual_seed(0)
        return train_autoencoder(ParamAutoencoder(64, latent=8, channels=(8, 16)), Xtr, iterations=iterations, batch_size=32, lr=1e-2, seed=1)
    a, b, c = fit(150), fit(10), fit(10)
    with torch.no_grad(): err = F.mse_loss(a(Xte), Xte).item()
    assert err < 0.1 * Xte.var().item(), (err, Xte.var().item())
    assert all(torch.equal(p, q) for p, q in zip(b.state_dict().values(), c.state_dict().values()))
    assert not a.training


def two_clusters(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    mu = torch.tensor([0.8, -0.5, 0.3, 0.6, -0.7, 0.2, 0.5, -0.4])
    side = torch.randint(0, 2, (n, 1), generator=g).float() * 2 - 1
    return side * mu + 0.05 * torch.randn(n, 8, generator=g), mu


def check_two_clusters(samples, Y, mu, median_max=0.4):
    side = (samples @ mu).sign()
    assert (samples.mean(0) - Y.mean(0)).abs().max() < 0.25
    assert (samples.std(0) - Y.std(0)).abs().max() < 0.2
    assert 0.25 < (side > 0).float().mean() < 0.75
    assert (samples - side[:, None] * mu).norm(dim=1).median() < median_max


def test_ddpm_learns_two_clusters_with_the_trainer(tmp_path):
    "The Trainer trains DDPM as a one-block engine model (with a run directory); samples match a two-cluster latent."
    Y, mu = two_clusters(512)
    torch.manual_seed(0)
    ddpm = DDPM(EpsUNet1d(8, channels=(32, 64)), T=100)
    tr = Trainer(ddpm, TrainConfig(iterations=300, batch_size=64, lr=5e-3, warmup=20, **QUIET), Y, run_dir=tmp_path / 'run', device='cpu')
    tr.fit()
    assert (tmp_path / 'run' / 'config.json').exists()
    x = ddpm_sample(ddpm, 256, torch.Generator().manual_seed(0))
    check_two_clusters(x, Y, mu)
    torch.testing.assert_close(x, ddpm_sample(ddpm, 256, torch.Generator().manual_seed(0)))   # seeded sampling
    assert DDPM(EpsUNet1d(8, channels=(16, 32)), T=50).fingerprint() != ddpm.fingerprint()  # T is part of the identity


def test_edm_diffusion_blocks_learn_two_clusters():
    "Two DiffusionBlocks over the latent (trained independently by the Trainer) sample the two-cluster latent."
    Y, mu = two_clusters(512)
    torch.manual_seed(0)
    model = latent_blocks(8, blocks=2, depth=2, width=32, heads=2, cond_dim=32, tokens=2)
    Trainer(model, TrainConfig(iterations=400, batch_size=64, lr=3e-3, warmup=20, **QUIET), Y, device='cpu').fit()
    # median distance to the nearer centre: 1.71 untrained; 0.23–0.74 after training over 19 seeds (two engine versions,
    # 2026-11-30): at this budget the seed matters, so the bound is half the untrained value, not a lucky seed's
    check_two_clusters(edm_sample(model, 256, torch.Generator().manual_seed(0), sample_steps=20), Y, mu, median_max=0.85)
