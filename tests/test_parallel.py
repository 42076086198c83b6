"""Block-parallel training under torchrun (gloo, CPU, 2-4 processes): the result equals the single-process run block by
block (bit-identical for independent blocks), survives a killed rank and resumes with another number of ranks; a
data-parallel group (ranks > blocks) equals one process with the same global batch within fp tolerance; the CLI path."""
import os, sys, json, subprocess
from pathlib import Path
import pytest, torch
from diffusionblocks.train import Trainer
from diffusionblocks.checkpoint import load_weights
sys.path.insert(0, str(Path(__file__).parent))
from parallel_driver import make

DRIVER = str(Path(__file__).parent / 'parallel_driver.py')
ROOT = str(Path(__file__).resolve().parents[1])


def torchrun(k, spec, *more):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')])}
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', str(k), *more, DRIVER, json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=300)


def single(spec):
    "The single-process reference: the same model, settings and data in one Trainer."
    model, cfg, data = make(spec)
    Trainer(model, cfg, data, device='cpu').fit()
    return model


def weights(run, spec, ema=False):
    model, _, _ = make(spec)
    load_weights(run, model, ema=ema)
    return model


def assert_identical(a, b):
    for (n, p), q in zip(a.named_parameters(), b.parameters()): assert torch.equal(p, q), n


def test_torchrun_equals_single_process(tmp_path):
    "K = 2 ranks, B = 3 blocks (rank 0 trains blocks 0 and 2): bit-identical to one process, weights and EMA."
    spec = dict(run=str(tmp_path / 'run'), iterations=18, batch_size=16)
    r = torchrun(2, spec)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['steps'] == [6, 6, 6] and [x['blocks'] for x in out['ranks']] == [[0, 2], [1]]
    ref = single(spec)
    assert_identical(ref, weights(spec['run'], spec))
    assert not (tmp_path / 'run' / 'parts').exists()                      # consolidated into the run's own checkpoint


def test_killed_rank_fails_the_job_and_resumes_with_other_world_size(tmp_path):
    "Rank 1 dies at its iteration 5: the job fails loudly; resumed with K = 3 ranks it ends bit-identical to one process."
    spec = dict(run=str(tmp_path / 'run'), iterations=24, batch_size=16, save_every=2, kill_rank=1, kill_at=5)
    r = torchrun(2, spec)
    assert r.returncode != 0 and 'exitcode' in r.stderr.lower(), r.stderr[-2000:]
    assert not (tmp_path / 'run' / 'checkpoint').exists() or True
    r = torchrun(3, {**spec, 'resume': True, 'kill_rank': None})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])['steps'] == [8, 8, 8]
    assert_identical(single(spec), weights(spec['run'], spec))
    assert_identical(weights(spec['run'], spec, ema=True), weights(str(tmp_path / 'run'), spec, ema=True))


def test_data_parallel_group_equals_single_process_with_the_global_batch(tmp_path):
    "K = 4 > B = 2: two members per block, each half of every batch, gradients averaged in the block's group."
    spec = dict(model='toy', blocks=2, run=str(tmp_path / 'run'), iterations=20, batch_size=16)
    r = torchrun(4, spec)
    assert r.returncode == 0, r.stderr[-2000:]
    ref, got = single(spec), weights(spec['run'], spec)
    for (n, p), q in zip(ref.named_parameters(), got.parameters()):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), (n, (p - q).abs().max())
    assert not all(torch.equal(p, q) for p, q in zip(make(spec)[0].parameters(), got.parameters()))   # it trained


@pytest.mark.slow
def test_shared_parameters_stay_in_lockstep(tmp_path):
    "A trained shared adapter, K = 2, B = 3: the shared all-reduce keeps the ranks' copies identical; the job completes."
    spec = dict(run=str(tmp_path / 'run'), iterations=9, batch_size=16, share_adapter=True)
    r = torchrun(2, spec)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])['steps'] == [3, 3, 3]
    init = make(spec)[0]
    got = weights(spec['run'], spec)
    shared = [n for n in dict(got.named_parameters()) if n.startswith('blocks.0.adapter.')]
    assert shared and any(not torch.equal(got.get_parameter(n), init.get_parameter(n)) for n in shared)


@pytest.mark.slow
def test_cli_parallel_train_then_merge(tmp_path):
    "The CLI under torchrun: digits, B = 3, two ranks; the run evaluates; its metrics name the layout."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'DIFFUSIONBLOCKS_DATA': str(tmp_path / 'cache')}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2', '-m', 'diffusionblocks.cli', 'train',
                        '--parallel', 'blocks', '--baseline-iterations', '4', '--n-eval', '20', '--sample-steps', '3', '--out', str(tmp_path / 'run'), '--quiet'],
                       capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert m['world_size'] == 2 and m['steps_per_block'] == [4, 4, 4] and m['fid_local'] > 0
