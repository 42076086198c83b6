"Cross-module tests of the flow-matching process: the container trains it with the engine towards the closed-form loss minimum, samples it with routing by t, and records it in fingerprints."
import json, math
import pytest, torch, torch.nn as nn
from diffusionblocks.blocks import DiffusionBlocks, TaskAdapter, VectorAdapter, EmbeddingTarget
from diffusionblocks.errors import ConfigError
from diffusionblocks.flow import FlowConfig, FlowPartition, DiscretePartition, euler_flow, flow_velocity, sample_flow
from diffusionblocks.processes import FlowNoise
from diffusionblocks.layers import AdaLNZeroLayer
from diffusionblocks.partition import Partition
from diffusionblocks.sampling import sample_euler
from diffusionblocks.train import TrainConfig, Trainer

torch.set_num_threads(1)
MU, S = torch.tensor([1., -0.5]), 0.5          # Gaussian data N(μ, s²I)


def gaussian(n, seed):
    return MU + S * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def v_star(x, t):
    "The exact velocity field E[ε − x0 | x_t = x] of N(μ, s²I) data."
    t = t.to(x)[:, None]; V = (1 - t)**2 * S**2 + t**2
    return (t - (1 - t) * S**2) / V * (x - (1 - t) * MU.to(x)) - MU.to(x)


def min_loss(P, k, n=20001):
    "The closed-form minimum of block k's velocity MSE, E_t[s²/V_t] over its widened range (midpoint rule in mass)."
    hi, lo = P.quantiles(k)
    q = lo + (torch.arange(n, dtype=torch.float64) + 0.5) / n * (hi - lo)
    t = P.config.icdf(q)
    return (S**2 / ((1 - t)**2 * S**2 + t**2)).mean().item()


class Identity(nn.Module):
    def forward(self, h, c): return h


class OracleAdapter(TaskAdapter):
    "Tokens = the state; readout = the exact velocity at t = c_noise / 1000."
    def stem(self, z_in, **cond): return z_in[:, None]
    def condition(self, c_noise, generator=None, **cond): return c_noise[:, None] / 1000
    def readout(self, h, c): return v_star(h[:, 0], c[:, 0])


def tiny(blocks=2, config=FlowConfig(), seed=0, **kw):
    torch.manual_seed(seed)
    return DiffusionBlocks([AdaLNZeroLayer(16, 2, 16) for _ in range(blocks)], VectorAdapter(2, 16, 16),
                           FlowPartition.make(blocks, config=config), process=FlowNoise(**kw))


def mean_loss(m, k, reps=4):
    with torch.no_grad():
        return sum(m.loss(k, gaussian(2048, 100 + i), generator=torch.Generator().manual_seed(i))[0].item() for i in range(reps)) / reps


def test_oracle_loss_is_the_closed_form_minimum():
    "The process's loss, fed the exact velocity field, equals the closed-form minimum E_t[s²/V_t] on each block's range."
    P = FlowPartition.make(3, config=FlowConfig(0., 1., 3.))
    m = DiffusionBlocks([Identity() for _ in range(3)], OracleAdapter(), P, process=FlowNoise())
    for k in range(3):
        got = mean_loss(m, k)
        assert abs(got - min_loss(P, k)) < 0.02, (k, got, min_loss(P, k))   # MC error of 8k draws ≈ 0.006
    # and the routed x0 estimate of the exact field at t = 1 is the data mean
    torch.testing.assert_close(m(torch.randn(5, 2), torch.ones(5)), MU.expand(5, 2), atol=1e-5, rtol=0)


def test_engine_trains_towards_the_minimum():
    "A tiny flow DiffusionBlocks trained by the engine: each block's loss falls from its zero-velocity value to near the closed-form minimum."
    m = tiny()
    before = [mean_loss(m, k) for k in range(2)]
    torch.testing.assert_close(torch.tensor(before), torch.full((2,), 1 + S**2 + MU.pow(2).mean().item()), atol=0.05, rtol=0)  # v̂ = 0 at init
    cfg = TrainConfig(iterations=100, batch_size=64, lr=3e-3, warmup=10, progress=False, tensorboard=False, save_minutes=0)
    Trainer(m, cfg, gaussian(4096, 1), device='cpu').fit()
    for k in range(2):
        after, floor = mean_loss(m, k), min_loss(m.partition, k)
        assert after > floor - 0.03, (k, after, floor)                      # nothing beats the closed-form minimum
        assert after - floor < 0.3 * (before[k] - floor), (k, before[k], after, floor)


def test_samplers_agree_and_route_one_block_per_step():
    "sample_euler on the model's x̂0 and sample_flow on its velocity are the same integration; each step calls exactly one block."
    m = tiny(blocks=3, config=FlowConfig(shift=3.))
    for b in m.blocks: [nn.init.normal_(p, std=0.1) for p in b.parameters()]
    calls = []
    for k, b in enumerate(m.blocks): b.register_forward_hook(lambda mod, args, out, k=k: calls.append(k))
    eps = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = sample_flow(m, eps, sample_steps=12)
        test_calls = list(calls); calls.clear()
        b = sample_euler(m, eps, m.sigmas(12))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert test_calls == calls == [0] * 4 + [1] * 4 + [2] * 4                # 12 steps, B = 3: 4 per block, in order
    assert m.sigmas(12)[0].item() == 1. and m.sigmas(12)[-1].item() == 0.


def test_routing_uses_nominal_boundaries():
    "forward sends each t to the block whose nominal range holds it (tie: lower noise), even though the training ranges overlap."
    m = tiny(blocks=3)
    for k, b in enumerate(m.blocks):
        b.adapter.readout = (lambda h, c, k=k: torch.full((h.shape[0], 2), float(k)))   # v̂ = block index
    P, x = m.partition, torch.zeros(7, 2)
    bd = P.boundaries
    t = torch.tensor([1., bd[1] + 1e-3, bd[1], bd[1] - 1e-3, bd[2] + 1e-3, bd[2], 1e-3])
    assert P.train_range(0)[1] < bd[1] - 1e-3 and P.train_range(1)[0] > bd[1] + 1e-3   # both blocks train there
    x0 = m(x, t)                                                            # x̂0 = x − t·v̂ = −t·k
    assert (-x0[:, 0] / t).round().long().tolist() == [0, 0, 1, 1, 1, 2, 2]
    torch.testing.assert_close(flow_velocity(m)(x, t)[:, 0], torch.tensor([0., 0, 1, 1, 1, 2, 2]))


def test_fingerprint_and_refusals():
    "The fingerprint records the flow partition and the process (JSON); mismatched process/partition/target pairs are refused in one line."
    fp = tiny(blocks=3, config=FlowConfig(0.5, 0.8, 3.), weighting='x0').fingerprint()
    fp = json.loads(json.dumps(fp))
    assert fp['partition'] == {'type': 'FlowPartition', 'blocks': 3, 'overlap': 0.05, 'config': {'p_mean': 0.5, 'p_std': 0.8, 'shift': 3.}}
    assert fp['process'] == {'type': 'FlowNoise', 'time_scale': 1000., 'weighting': 'x0'}
    layers = lambda: [AdaLNZeroLayer(16, 2, 16) for _ in range(3)]
    with pytest.raises(ConfigError, match='FlowNoise needs a FlowPartition of t, got Partition'):
        DiffusionBlocks(layers(), VectorAdapter(2, 16, 16), Partition.make(3), process=FlowNoise())
    with pytest.raises(ConfigError, match='GaussianNoise needs a σ Partition, got FlowPartition'):
        DiffusionBlocks(layers(), VectorAdapter(2, 16, 16), FlowPartition.make(3))
    with pytest.raises(ConfigError, match='FlowNoise needs a continuous target, got EmbeddingTarget'):
        DiffusionBlocks(layers(), VectorAdapter(2, 16, 16), FlowPartition.make(3), target=EmbeddingTarget(5, 2), process=FlowNoise())
    with pytest.raises(ConfigError, match="unknown flow loss weighting 'snr'"):
        FlowNoise(weighting='snr')


def test_x0_weighting_is_the_x0_error():
    "weighting='x0' is the squared error of x̂0 = x_t − t·v̂ (same t and ε as the uniform loss)."
    m, mx = tiny(), tiny(weighting='x0')
    with torch.no_grad():
        for b in m.blocks: [nn.init.normal_(p, std=0.1) for p in b.parameters()]
        mx.load_state_dict(m.state_dict())
        y = gaussian(512, 3)
        lx, _ = mx.loss(1, y, generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)                                # replay the loss's own t and ε
        t = m.partition.sample_t(1, 512, g); eps = torch.randn(512, 2, generator=g)
        x_t = (1 - t[:, None]) * y + t[:, None] * eps
        x0_hat = m.denoise_block(1, x_t, t)[0]
    torch.testing.assert_close(lx, (x0_hat - y).pow(2).mean(1).mean(), atol=1e-5, rtol=1e-5)


def test_discrete_partition_fingerprint_and_sampling_covers_the_range():
    "A DiscretePartition is a JSON-able dataclass; per-block samples cover exactly its widened index range."
    D = DiscretePartition.make(4, 0.1, torch.linspace(1., 2., 100))
    json.dumps(__import__('dataclasses').asdict(D))
    for k in range(4):
        i = D.sample_index(k, 5000, generator=torch.Generator().manual_seed(k))
        hi, lo = D.train_range(k)
        assert (i.min().item(), i.max().item()) == (lo, hi)
        assert set(D.block_of(i).unique().tolist()) <= {k - 1, k, k + 1}
    assert [D.block_of(torch.tensor(D.nominal(k))).tolist() for k in range(4)] == [[k, k] for k in range(4)]
