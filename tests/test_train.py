"Cross-module tests of the training engine and checkpoints: exact resume (shared parameters, EMA, residency, workers, a crash mid-save, SIGKILL), refusals, subsets of blocks, the B× budget."
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import pytest, torch
from diffusionblocks import checkpoint as ckpt
from diffusionblocks.blocks import DiffusionBlocks, EmbeddingTarget, VectorAdapter, vector_blocks
from diffusionblocks.checkpoint import CheckpointError, block_file, latest_checkpoint, load_weights, read_file
from diffusionblocks.layers import AdaLNZeroLayer
from diffusionblocks.partition import Partition
from diffusionblocks.train import NonFiniteLossError, TrainConfig, Trainer

torch.set_num_threads(1)          # tiny models: one thread is fastest and robust on a loaded 2-core machine
QUIET = dict(progress=False, tensorboard=False)
ROOT = Path(__file__).resolve().parents[1]


def tiny(blocks=3, depth=6, width=16, seed=0, **kw):
    torch.manual_seed(seed)
    return vector_blocks(2, blocks=blocks, depth=depth, width=width, heads=2, cond_dim=16, **kw)


def points(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(n, 1, generator=g) < 0.5, -1., 1.) * torch.tensor([0.6, 0.]) + 0.1 * torch.randn(n, 2, generator=g)


class LabelAdapter(VectorAdapter):
    "A classification adapter: the noisy label embedding is token 0, the input x token 1, a linear head."
    def __init__(self, emb_dim, width, cond_dim, x_dim, num_classes):
        super().__init__(emb_dim, width, cond_dim, x_dim)
        self.cls = torch.nn.Linear(emb_dim, num_classes)
    def head(self, D, c): return self.cls(D)


def classifier(seed=0):
    "Discrete target (a learned, shared label embedding) and a shared adapter: both are shared parameters."
    torch.manual_seed(seed)
    return DiffusionBlocks([AdaLNZeroLayer(16, 2, 16) for _ in range(6)], LabelAdapter(8, 16, 16, 4, 5), Partition.make(3),
                           target=EmbeddingTarget(5, 8), share_adapter=True)


def labelled(n=256):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(1))
    return x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()


def x_is_input(b): return b[1], {'x': b[0]}


def full_state(tr):
    "Every tensor a resumed run must reproduce, keyed by name."
    out = {f'p.{n}': p for n, p in tr.model.named_parameters()}
    groups = [(str(k), tr.params[k], tr.opt[k], tr.ema[k]) for k in tr.trained]
    if tr.shared_opt is not None: groups.append(('shared', tr.shared, tr.shared_opt, tr.shared_ema))
    for tag, ps, opt, ema in groups:
        out.update({f'opt.{tag}.{n}.{s}': v for n, p in ps.items() for s, v in opt.state[p].items()})
        out.update({f'ema.{tag}.{n}': e for n, e in (ema or {}).items()})
    out.update({f'rng.{k}': tr.gen[k].get_state() for k in tr.trained})
    out['schedule'] = tr.schedule.order
    out['steps'] = torch.tensor(tr.steps)
    return out


def assert_same(a, b):
    assert set(a) == set(b)
    for n in a: assert torch.equal(a[n].cpu(), b[n].cpu()), n


def kill_at(tr, iteration):
    "Make tr.fit() die (like a killed process: no final save) during iteration `iteration`."
    step = tr.step
    def dying(k, batch):
        if tr.iteration == iteration - 1: raise KeyboardInterrupt('killed')
        return step(k, batch)
    tr.step = dying
    with pytest.raises(KeyboardInterrupt): tr.fit()


@pytest.mark.parametrize('residency', ['all', 'active'])
def test_exact_resume_with_shared_parameters_and_ema(tmp_path, residency):
    "Uniform schedule, EMA, warmup + cosine, a learned shared embedding and shared adapter; resumed in the other residency."
    cfg = TrainConfig(iterations=30, batch_size=32, lr=5e-3, warmup=6, ema=0.9, save_every=7, residency=residency, **QUIET)
    ref = Trainer(classifier(), cfg, labelled(), tmp_path / 'ref', batch_fn=x_is_input, device='cpu')
    assert ref.shared_opt is not None and len(ref.shared) > 2
    ref.fit()
    tr = Trainer(classifier(), cfg, labelled(), tmp_path / 'run', batch_fn=x_is_input, device='cpu')
    kill_at(tr, 17)
    other = 'all' if residency == 'active' else 'active'
    tr2 = Trainer(classifier(seed=7), TrainConfig(**{**cfg.to_dict(), 'residency': other}), labelled(), tmp_path / 'run',
                  batch_fn=x_is_input, device='cpu', resume=True)
    assert tr2.iteration == 14
    tr2.fit()
    assert_same(full_state(ref), full_state(tr2))
    assert [r['iteration'] for r in tr2.run.metrics()] == [r['iteration'] for r in ref.run.metrics()]


def test_exact_resume_with_loader_workers(tmp_path):
    "The data order survives a restart with worker processes (the sampler state is the number of samples consumed)."
    cfg = TrainConfig(iterations=16, batch_size=32, lr=1e-2, block_schedule='round-robin', num_workers=2, **QUIET)
    ref = Trainer(tiny(), cfg, points(), tmp_path / 'ref', device='cpu'); ref.fit()
    tr = Trainer(tiny(), cfg, points(), tmp_path / 'run', device='cpu'); tr.fit(until=9)
    tr2 = Trainer.from_run(tmp_path / 'run', tiny(seed=3), points(), device='cpu')
    assert tr2.iteration == 9
    tr2.fit()
    assert_same(full_state(ref), full_state(tr2))


def test_crash_inside_checkpoint_writer(tmp_path, monkeypatch):
    "A save that dies midway leaves the previous checkpoint latest and loadable; resuming from it is still exact."
    cfg = TrainConfig(iterations=15, batch_size=16, lr=1e-2, ema=0.5, save_every=5, **QUIET)
    ref = Trainer(tiny(), cfg, points(), tmp_path / 'ref', device='cpu'); ref.fit()
    real, calls = ckpt._write_file, []
    def dies_in_second_save(path, data):
        calls.append(path)
        if len(calls) == 8: raise KeyboardInterrupt('killed while writing ' + Path(path).name)
        real(path, data)
    monkeypatch.setattr(ckpt, '_write_file', dies_in_second_save)
    tr = Trainer(tiny(), cfg, points(), tmp_path / 'run', device='cpu')
    with pytest.raises(KeyboardInterrupt): tr.fit()
    monkeypatch.setattr(ckpt, '_write_file', real)
    assert tr.iteration == 10 and latest_checkpoint(tmp_path / 'run' / 'checkpoint').name == 'step-00000005'
    assert (tmp_path / 'run' / 'checkpoint' / '.tmp-step-00000010').is_dir()          # the debris of the dead save
    load_weights(tmp_path / 'run', tiny(seed=1))                                         # the previous one loads
    tr2 = Trainer(tiny(seed=1), cfg, points(), tmp_path / 'run', device='cpu', resume=True)
    assert tr2.iteration == 5
    tr2.fit()
    assert_same(full_state(ref), full_state(tr2))
    assert not (tmp_path / 'run' / 'checkpoint' / '.tmp-step-00000010').exists()     # cleaned by the next save


@pytest.mark.parametrize('make, what', [
    (lambda: tiny(depth=9), 'layer split'),
    (lambda: tiny(width=32), 'shape'),
    (lambda: tiny(blocks=2), 'block count'),
    (lambda: tiny(scheme='log-uniform'), 'partition boundaries'),
    (lambda: tiny(overlap=0.2), 'partition overlap'),
    (lambda: tiny(split=[1, 2, 3]), 'layer split'),
    (lambda: classifier(), 'target space'),
])
def test_refuses_mismatched_checkpoints(tmp_path, make, what):
    cfg = TrainConfig(iterations=3, batch_size=8, **QUIET)
    Trainer(tiny(), cfg, points(), tmp_path, device='cpu').fit()
    for load in (lambda: Trainer(make(), cfg, points(), tmp_path, device='cpu', resume=True), lambda: load_weights(tmp_path, make())):
        with pytest.raises(CheckpointError) as e: load()
        assert what in str(e.value) and '\n' not in str(e.value)
        assert isinstance(e.value, ValueError)


def test_refuses_other_settings_and_overwrites(tmp_path):
    cfg = TrainConfig(iterations=3, batch_size=8, **QUIET)
    Trainer(tiny(), cfg, points(), tmp_path, device='cpu').fit()
    with pytest.raises(CheckpointError, match='already holds a checkpoint'): Trainer(tiny(), cfg, points(), tmp_path, device='cpu')
    with pytest.raises(CheckpointError, match='batch_size'): Trainer.from_run(tmp_path, tiny(), points(), device='cpu', batch_size=4)
    Trainer.from_run(tmp_path, tiny(), points(), device='cpu', schedule='sequential')          # the order never changes a block's weights
    Trainer.from_run(tmp_path, tiny(), points(), device='cpu', log_every=1, progress=True)     # harmless overrides are fine
    (latest_checkpoint(tmp_path / 'checkpoint') / block_file(1)).unlink()
    with pytest.raises(CheckpointError, match='missing'): Trainer.from_run(tmp_path, tiny(), points(), device='cpu')


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path):
    calls = []
    def poisoned(b):
        calls.append(1)
        return (b[0] * float('inf') if len(calls) == 12 else b[0]), {}
    tr = Trainer(tiny(), TrainConfig(iterations=30, batch_size=16, save_every=10, log_every=4, **QUIET), points(), tmp_path,
                 batch_fn=poisoned, device='cpu')
    with pytest.raises(NonFiniteLossError, match=r'at iteration 12, block \d \(its step \d+\).*step-00000010'): tr.fit()
    assert latest_checkpoint(tmp_path / 'checkpoint').name == 'step-00000010'
    m = tiny(seed=1); load_weights(tmp_path, m)
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_subset_of_blocks_and_assembly(tmp_path):
    "Blocks trained in separate runs (processes) are self-contained and assemble into one model."
    init = {n: p.clone() for n, p in tiny().named_parameters()}
    runs = {}
    for k in (0, 2):
        tr = Trainer(tiny(), TrainConfig(iterations=18, batch_size=16, lr=1e-2, **QUIET), points(), tmp_path / f'block{k}', device='cpu', train_blocks=[k])
        s = tr.fit()
        assert s['steps'] == [6 if j == k else 0 for j in range(3)]
        with pytest.raises(ValueError, match='not trained'): tr.step(1, points()[:8])
        for n, p in tr.model.named_parameters():                         # the other blocks are carried along untouched
            assert torch.equal(p, init[n]) == (not n.startswith(f'blocks.{k}.')), n
        tensors, meta = read_file(latest_checkpoint(tmp_path / f'block{k}' / 'checkpoint') / block_file(k))
        assert {'rng'} <= set(tensors) and any(t.startswith('opt.') for t in tensors) and json.loads(meta['state'])['step'] == 6
        untouched, _ = read_file(latest_checkpoint(tmp_path / f'block{k}' / 'checkpoint') / block_file(1))
        assert not any(t.startswith('opt.') for t in untouched)
        runs[k] = {n: p.clone() for n, p in tr.model.named_parameters()}
    m = tiny(seed=5)
    for k in (0, 2): load_weights(tmp_path / f'block{k}', m, blocks=[k])
    for n, p in m.named_parameters():
        k = int(n.split('.')[1])
        if k != 1: assert torch.equal(p, runs[k][n]), n


SCRIPT = '''
import sys, torch
torch.set_num_threads(1)
from diffusionblocks.blocks import vector_blocks
from diffusionblocks.train import TrainConfig, Trainer
torch.manual_seed(0)
m = vector_blocks(2, blocks=3, depth=6, width=16, heads=2, cond_dim=16)
y = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
cfg = TrainConfig(iterations=60, batch_size=16, lr=1e-2, ema=0.9, save_every=1, log_every=1, progress=False, tensorboard=False)
Trainer(m, cfg, y, sys.argv[1], device='cpu', resume=True).fit()
'''


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path):
    "Kill a saving-every-iteration run with SIGKILL at random moments (often mid-save); each restart resumes; the end is exact."
    script = tmp_path / 'train.py'; script.write_text(SCRIPT)
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    run = lambda d, **kw: subprocess.Popen([sys.executable, str(script), str(d)], env=env, **kw)
    assert run(tmp_path / 'ref').wait() == 0
    g, kills = torch.Generator().manual_seed(0), 0
    while True:
        p = run(tmp_path / 'run')
        try: rc = p.wait(timeout=2.5 + 1.5 * torch.rand((), generator=g).item() if kills < 4 else None)
        except subprocess.TimeoutExpired: p.send_signal(signal.SIGKILL); p.wait(); kills += 1; continue
        assert rc == 0; break
    assert kills >= 1 and json.loads((tmp_path / 'run' / 'checkpoint' / 'LATEST').read_text())['checkpoint'] == 'step-00000060'
    ref, out = (tiny(), tiny(seed=1))
    load_weights(tmp_path / 'ref', ref, ema=True); load_weights(tmp_path / 'run', out, ema=True)
    for a, b in zip(ref.parameters(), out.parameters()): assert torch.equal(a, b)
