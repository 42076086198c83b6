"Tests of the p-diff generators: DDPM closed forms and an exact-oracle sampler check, the parameter autoencoder on a low-dimensional family, and DDPM (through the Trainer) and EDM DiffusionBlocks learning a two-cluster latent."
import math
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from diffusionblocks.errors import ConfigError, DataError
from diffusionblocks.tasks.parameter_diffusion.models import (ParamAutoencoder, train_autoencoder, ddpm_schedule, EpsUNet1d, DDPM, ddpm_sample,
                                          latent_blocks, edm_sample)
from diffusionblocks.train import TrainConfig, Trainer

torch.set_num_threads(1)
QUIET = dict(progress=False, tensorboard=False, threads=1)


def test_schedule_closed_forms():
    "ᾱ_t = Π(1 − β_s), β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t) and the posterior mean coefficients, against plain Python."
    s = ddpm_schedule()
    assert all(v.dtype == torch.float64 and v.shape == (1000,) for v in s.values())
    betas = [1e-4 + (2e-2 - 1e-4) * i / 999 for i in range(1000)]
    ac, prev = 1.0, 1.0
    for t, b in enumerate(betas):
        ac *= 1 - b
        assert math.isclose(s['betas'][t].item(), b, rel_tol=1e-12)
        assert math.isclose(s['alphas_cumprod'][t].item(), ac, rel_tol=1e-10)
        assert math.isclose(s['posterior_variance'][t].item(), b * (1 - prev) / (1 - ac), rel_tol=1e-9, abs_tol=1e-300)
        assert math.isclose(s['posterior_mean_coef1'][t].item(), b * math.sqrt(prev) / (1 - ac), rel_tol=1e-9)
        assert math.isclose(s['posterior_mean_coef2'][t].item(), (1 - prev) * math.sqrt(1 - b) / (1 - ac), rel_tol=1e-9, abs_tol=1e-300)
        prev = ac
    assert s['alphas_cumprod'][-1] < 1e-4                       # x_T is essentially pure noise
    with pytest.raises(ConfigError, match='T must'): ddpm_schedule(1)


class OracleEps(nn.Module):
    "The exact ε-predictor of Gaussian data N(m, s²I): ε̂ = √(1−ᾱ)(x − √ᾱ m)/(ᾱ s² + 1 − ᾱ)."
    def __init__(self, m, s, schedule):
        super().__init__()
        self.latent, self.m, self.s, self.ac = m.shape[0], m, s, schedule['alphas_cumprod'].float()
        self.dummy = nn.Parameter(torch.zeros(()))
    def forward(self, x, t):
        a = self.ac[t][:, None]
        return (1 - a).sqrt() * (x - a.sqrt() * self.m) / (a * self.s**2 + 1 - a)


@pytest.mark.parametrize('s', [0.0, 0.3])
def test_ancestral_sampler_with_exact_eps(s):
    "With the exact ε of N(m, s²I) (s = 0: a point), ancestral sampling with β̃_t returns that distribution."
    m = torch.tensor([0.5, -1.0, 2.0, 0.0])
    sched = ddpm_schedule()                                        # the paper's T = 1000: x_T is N(0, I) (√ᾱ_T ≈ 0.006)
    ddpm = DDPM(OracleEps(m, s, sched))
    x = ddpm_sample(ddpm, 4000, torch.Generator().manual_seed(0))
    assert (x.mean(0) - m).abs().max() < 0.03
    assert (x.std(0) - s).abs().max() < 0.03
    test_clip = ddpm_sample(ddpm, 10, torch.Generator().manual_seed(0), clip=0.25)
    assert test_clip.abs().max() <= 0.25 + 1e-5                    # the last step returns the clamped x̂₀ (coef2 = 0 at t = 1)


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


def test_autoencoder_noise_and_batch_independence():
    "The loss adds exactly σ_v and σ_z noise (0: plain MSE); a vector's code does not depend on its batch."
    torch.manual_seed(0)
    x = torch.randn(6, 30)
    clean = ParamAutoencoder(30, latent=5, input_noise=0., latent_noise=0.)
    test = lambda: torch.testing.assert_close(clean.loss(x, torch.Generator().manual_seed(0)), F.mse_loss(clean(x), x))
    test()
    noisy = ParamAutoencoder(30, latent=5, latent_noise=0.5); noisy.load_state_dict(clean.state_dict())
    g = torch.Generator().manual_seed(0)
    xi_v = 0.001 * torch.randn(x.shape, generator=g)
    z = noisy.encode(x + xi_v)
    want = F.mse_loss(noisy.decode(z + 0.5 * torch.randn(z.shape, generator=g)), x)
    torch.testing.assert_close(noisy.loss(x, torch.Generator().manual_seed(0)), want)
    torch.testing.assert_close(clean.encode(x[:2]), clean.encode(x)[:2])
    with pytest.raises(DataError, match=r'\(K, 30\)'): train_autoencoder(clean, torch.randn(4, 31), iterations=1)


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


def test_config_errors():
    with pytest.raises(ConfigError, match='divide'): latent_blocks(8, tokens=3)
    with pytest.raises(ConfigError, match='odd'): EpsUNet1d(8, kernel=4)
    with pytest.raises(ConfigError, match='noise'): ParamAutoencoder(10, input_noise=-1.)
