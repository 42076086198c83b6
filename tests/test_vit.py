"Cross-module tests of the ViT classifier and the block-local baselines: engine + checkpoint round trip, σ → block routing end to end, block invariance, the Q1 fix, the classify command."
import json
from pathlib import Path
import pytest, torch
from diffusionblocks.tasks.classification.vit import ViTConfig, ViT, vit_blocks, classify, evaluate_classifier, Supervised
from diffusionblocks.tasks.classification.baselines import ContrastiveFF, NoPropDT, BackpropCNN, cnn_blocks
from diffusionblocks.train import Trainer, TrainConfig
from diffusionblocks.checkpoint import CheckpointError, load_weights
from diffusionblocks.noise import equal_mass_sigmas

torch.set_num_threads(1)
TINY = ViTConfig(8, 1, 2, 16, 6, 2, 32, 0.)
QUIET = dict(progress=False, tensorboard=False)
BF = lambda b: (b[1], {'x': b[0]})


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


@pytest.mark.parametrize('B', [1, 2, 3, 6])
def test_default_inference_calls_every_block_once_in_order(B):
    "The default S = B − 1 Euler steps (S + 1 calls) route to blocks 0, 1, …, B-1 (highest noise first) through the partition's tie rule."
    m = vit_blocks(TINY, 5, blocks=B)
    ks, sig = [], []
    hs = [b.register_forward_hook(lambda mod, a, o, k=k: ks.append(k)) for k, b in enumerate(m.blocks)]
    classify(m, data(4)[0], callback=lambda d: sig.append(d['sigma']))
    for h in hs: h.remove()
    assert ks == (list(range(B)) if B >= 2 else [0, 0])
    assert sig == pytest.approx(equal_mass_sigmas(max(B, 2)).tolist())


def test_blocks_are_invariant_to_other_blocks_weights():
    torch.manual_seed(0)
    m = vit_blocks(TINY, 5, blocks=3).eval()
    for p in m.parameters(): p.data.normal_(0, 0.1)            # leave the zero init so outputs depend on the layers
    x, y = data(8)
    z = m.target.encode(y) + 0.3 * torch.randn(8, 16)
    D0, l0 = m.denoise_block(1, z, 0.3, x=x)
    with torch.no_grad():
        for k in (0, 2):
            for p in m.blocks[k].layers.parameters(): p.add_(1.)
    D1, l1 = m.denoise_block(1, z, 0.3, x=x)
    assert torch.equal(D0, D1) and torch.equal(l0, l1)


def test_engine_checkpoint_round_trip_reproduces_predictions(tmp_path):
    "Train a DiffusionBlocks ViT and an end-to-end ViT with the engine, reload the checkpoints, predict identically."
    x, y = data()
    for make, pred in ((lambda: vit_blocks(TINY, 5, blocks=3), lambda m, v: classify(m, v, generator=torch.Generator().manual_seed(1))),
                       (lambda: Supervised(ViT(TINY, 5)), lambda m, v: m.predict(v))):
        torch.manual_seed(0); m = make()
        run = tmp_path / type(m).__name__
        Trainer(m, TrainConfig(iterations=6, batch_size=16, lr=1e-3, **QUIET), (x, y), run, batch_fn=BF, device='cpu').fit()
        torch.manual_seed(123); m2 = make()
        load_weights(run, m2)
        with torch.no_grad(): assert torch.equal(pred(m.eval(), x), pred(m2.eval(), x))


def test_inference_mixes_the_normalised_table():
    "Quirk Q1 fixed: the Euler step's x0 estimate lies in the convex hull of the unit-norm rows."
    torch.manual_seed(0)
    m = vit_blocks(TINY, 5, blocks=3)
    with torch.no_grad(): m.target.embedding.weight.mul_(100.)   # raw rows far from unit norm
    zs, orig = [], m.denoise_block
    def spy(k, z, sigma, **cond): zs.append(z.clone()); return orig(k, z, sigma, **cond)
    m.denoise_block = spy
    classify(m, data(4)[0], sample_steps=2)
    # the last call's input at σ_min is ≈ the mix (plus σ_min/σ noise): its norm is at most ~1
    assert zs[-1].norm(dim=-1).max() < 1.1


def test_local_baselines_train_through_the_engine():
    x, y = data(32)
    for model in (ContrastiveFF(TINY, 5, blocks=3), NoPropDT(1, 8, 5, T=3), BackpropCNN(1, 8, 5, T=3), cnn_blocks(1, 8, 5)):
        tr = Trainer(model, TrainConfig(iterations=3 * model.num_blocks, batch_size=16, **QUIET), (x, y), batch_fn=BF, device='cpu')
        s = tr.fit()
        assert sum(s['steps']) == 3 * model.num_blocks and all(torch.isfinite(torch.tensor(v)) for v in s['final_loss'].values())


def test_classification_run_through_the_runner_and_the_command(tmp_path, monkeypatch, capsys):
    "A vit-digits run through the one runner: metrics, the B× budget, `classify RUN`, and a refusal to overwrite it."
    import diffusionblocks.jobs.core as jc
    from diffusionblocks.cli import main
    monkeypatch.setenv('DIFFUSIONBLOCKS_DATA', str(tmp_path / 'cache'))
    job = jc.make_job('vit-digits', baseline_iterations=3, options=dict(limit=200, test_limit=50, sample_steps=1, curve=[2]))
    m = jc.run_job(job, out=tmp_path / 'run', device='cpu', progress=False)
    saved = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert saved['method'] == 'dblocks' and saved['n_test'] == 50 and saved['iterations'] == 9 and saved['sample_steps'] == 1
    assert saved['block_calls'] == 2 and set(saved['accuracy_vs_sample_steps']) == {'1', '2'}
    assert set(saved) >= {'accuracy', 'ece', 'nll', 'train_seconds', 'hardware', 'steps_per_block'}
    assert main(['classify', str(tmp_path / 'run'), '--sample-steps', '1', '2']) == 0
    out = json.loads(capsys.readouterr().out)
    key = 'accuracy_vs_sample_steps_paper_inference'               # the headline inference, named as in metrics.json
    assert set(out[key]) == {'1', '2'} and out[key]['1'] == saved['accuracy'] == saved[key]['1']
    assert main(['train', '--config', 'vit-digits', '--out', str(tmp_path / 'run'), '--quiet']) == 2
    assert 'already holds a run' in capsys.readouterr().err


def test_released_profile_routes_boundary_grids_like_bucketize_right():
    "The 4-point grid's interior points lie on the B = 3 boundaries: the library calls blocks 0, 1, 2, 2; the released tie rule 0, 0, 1, 2."
    calls = {}
    for profile in ('paper', 'released'):
        m = vit_blocks(TINY, 5, blocks=3, profile=profile)
        ks = []
        hs = [b.register_forward_hook(lambda mod, a, o, k=k: ks.append(k)) for k, b in enumerate(m.blocks)]
        classify(m, data(4)[0], sample_steps=3, cond_max=None)
        for h in hs: h.remove()
        calls[profile] = ks
    assert calls == {'paper': [0, 1, 2, 2], 'released': [0, 0, 1, 2]}
    # the released code's own rule on the same grid: bucketize(σ, ascending boundaries, right=True) − 1, reversed
    m = vit_blocks(TINY, 5, blocks=3, profile='released')
    asc = torch.tensor(m.partition.boundaries[::-1], dtype=torch.float64)
    g = equal_mass_sigmas(4)
    ref = (3 - 1) - (torch.bucketize(g, asc, right=True) - 1).clamp(0, 2)
    assert m.partition.block_of(g).tolist() == ref.tolist()


def test_block0_log_uniform_changes_block0_training_only():
    "The improved option: block 0's training σ are log-uniform over its range; blocks 1, 2 and routing are untouched; an engine step still trains only the sampled block."
    torch.manual_seed(0)
    m = vit_blocks(TINY, 5, blocks=3, profile='released', share_adapter=True, block0_sigma='log-uniform')
    hi, lo = m.partition.train_range(0)
    s = m.partition.sample_sigma(0, 50_000, torch.Generator().manual_seed(0)).double().log()
    u = (s - torch.log(torch.tensor(lo, dtype=torch.float64))) / torch.log(torch.tensor(hi / lo, dtype=torch.float64))
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.003            # uniform in ln σ on [lo, hi]
    ref = vit_blocks(TINY, 5, blocks=3, profile='released', share_adapter=True)
    for k in (1, 2):
        assert torch.equal(m.partition.sample_sigma(k, 64, torch.Generator().manual_seed(3)), ref.partition.sample_sigma(k, 64, torch.Generator().manual_seed(3)))
    assert m.fingerprint()['partition']['type'] == 'CoverPartition' and m.partition.tie == 'higher'
