"""Damaged checkpoints, two writers, a run killed before its first checkpoint.

The fault matrix: every file kind of a checkpoint (a block file, the shared file, state.json, the LATEST pointer) ×
every fault (truncate, garble the header, swap two files, flip a bit in the tensor data, delete, NaN weights, a
pickle in place of a safetensors file), applied to the latest of two checkpoints (step 8; the previous is step 4)
or to both, then read by a resuming Trainer and by load_weights. The expected outcome of every case is written in
EXPECTED below: the checkpoint used (with exactly one warning line naming what was skipped) or a one-line
CheckpointError naming the file.
"""
import json, os, pickle, shutil, signal, subprocess, sys, time, warnings
from pathlib import Path
import pytest, torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from diffusionblocks.blocks import vector_blocks
from diffusionblocks.checkpoint import (STATE_FILE, SHARED_FILE, POINTER, block_file, load_weights, RunDir, _file_sha256,
                                        _state_sha256)
from diffusionblocks.errors import CheckpointError, RunInUseError
from diffusionblocks.train import TrainConfig, Trainer

torch.set_num_threads(1)
QUIET = dict(progress=False, tensorboard=False)
ROOT = Path(__file__).resolve().parents[1]
CFG = TrainConfig(iterations=8, batch_size=16, lr=1e-2, ema=0.9, save_every=4, **QUIET)


def tiny(seed=0):
    "Three blocks and a shared adapter: block files and a non-empty shared file."
    torch.manual_seed(seed)
    return vector_blocks(2, blocks=3, depth=3, width=8, heads=2, cond_dim=8, share_adapter=True)


def points(n=128):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope='module')
def template(tmp_path_factory):
    "A finished run with checkpoints step-00000004 and step-00000008, and the weights each holds."
    d = tmp_path_factory.mktemp('template') / 'run'
    Trainer(tiny(), CFG, points(), d, device='cpu').fit()
    weights = {}
    for it in (4, 8):
        m = tiny(seed=9); load_weights(d / 'checkpoint' / f'step-{it:08d}', m); weights[it] = m.state_dict()
    return d, weights


# ---------------------------------------------------------------- faults
KIND_FILE = {'block': block_file(0), 'shared': SHARED_FILE, 'state': STATE_FILE}
SWAP_WITH = {'block': block_file(1), 'shared': block_file(0), 'state': block_file(0)}   # inside the same checkpoint


def rehash(ck):
    "Record the files' current sha256 in state.json, as if the checkpoint had been written with this content."
    st = json.loads((ck / STATE_FILE).read_text()); st.pop('state_sha256')
    st['sha256'] = {fn: _file_sha256(ck / fn) for fn in st['sha256']}
    st['state_sha256'] = _state_sha256(st)
    (ck / STATE_FILE).write_text(json.dumps(st))


def damage(run, kind, fault, ck_name):
    "Apply one fault to one file kind of checkpoint `ck_name` (kind 'pointer': to LATEST)."
    ck = run / 'checkpoint' / ck_name
    f = run / 'checkpoint' / POINTER if kind == 'pointer' else ck / KIND_FILE[kind]
    data = f.read_bytes()
    if fault == 'truncate': f.write_bytes(data[:len(data) // 2])
    elif fault == 'garble': f.write_bytes(b'\xde\xad\xbe\xef' * 4 + data[16:])            # the header's first 16 bytes
    elif fault == 'swap':
        other = ck / STATE_FILE if kind == 'pointer' else ck / SWAP_WITH[kind]
        a, b = f.read_bytes(), other.read_bytes(); f.write_bytes(b); other.write_bytes(a)
    elif fault == 'bitflip':
        b = bytearray(data)
        if kind == 'pointer': i = data.index(ck_name.encode()) + len(ck_name) - 1    # the name's last digit: another step
        elif kind == 'state': i = data.index(b'"iteration": ') + len('"iteration": ')  # the iteration's first digit
        else: i = len(data) - 7                                                        # inside the last tensor's data
        b[i] ^= 0x01; f.write_bytes(bytes(b))
    elif fault == 'delete': f.unlink()
    elif fault == 'nan':                      # written so: hashes consistent, the weights not finite
        t = load_file(str(f))
        key = next(k for k in t if k.startswith('param.' if kind == 'block' else 'ema.') and t[k].numel() > 1)
        t[key][0] = float('nan')
        with safe_open(str(f), 'pt') as g: meta = g.metadata()
        save_file(t, str(f), metadata=meta); rehash(ck)
    elif fault == 'pickle': f.write_bytes(pickle.dumps({'param.w': [1., 2.]})); rehash(ck)   # hashes consistent
    else: raise ValueError(fault)


# Expected outcome of each (kind, fault, where): ('use', iteration, text of the one warning line) — the checkpoint read,
# after skipping what is named — or ('error', text of the one-line CheckpointError). B0 = block_0.safetensors.
B0, SH, ST, PTR, NAN, NOT_ST = block_file(0), SHARED_FILE, STATE_FILE, POINTER, 'non-finite', 'not a valid safetensors file'
TABLE = {   # kind: {fault: (damaged latest, damaged latest and previous)}
    'block':   dict(truncate=(('use', 4, B0), ('error', B0)), garble=(('use', 4, B0), ('error', B0)),
                    swap=(('use', 4, B0), ('error', B0)),      # block_0 <-> block_1
                    bitflip=(('use', 4, B0), ('error', B0)), delete=(('use', 4, B0), ('error', B0)),
                    nan=(('use', 4, NAN), ('error', NAN)), pickle=(('use', 4, NOT_ST), ('error', NOT_ST))),
    'shared':  dict(truncate=(('use', 4, SH), ('error', SH)), garble=(('use', 4, SH), ('error', SH)),
                    swap=(('use', 4, B0), ('error', B0)),      # shared <-> block_0: block_0 is the first file checked
                    bitflip=(('use', 4, SH), ('error', SH)), delete=(('use', 4, SH), ('error', SH)),
                    nan=(('use', 4, NAN), ('error', NAN)), pickle=(('use', 4, NOT_ST), ('error', NOT_ST))),
    'state':   dict(truncate=(('use', 4, ST), ('error', ST)), garble=(('use', 4, ST), ('error', ST)),
                    swap=(('use', 4, ST), ('error', ST)),      # state.json <-> block_0: state.json is not JSON
                    bitflip=(('use', 4, ST), ('error', ST)),   # its own sha256 no longer matches
                    delete=(('use', 4, ST), ('error', ST))),
    'pointer': dict(truncate=(('use', 8, PTR), None), garble=(('use', 8, PTR), None),   # LATEST unusable: the newest
                    bitflip=(('use', 8, PTR), None), delete=(('use', 8, PTR), None),   # valid directory is found
                    swap=(('use', 4, ST), None)),              # LATEST <-> step-8's state.json: step-8 has no valid state
}
EXPECTED = {(kind, fault, where): out for kind, row in TABLE.items() for fault, outs in row.items()
            for where, out in zip(('latest', 'both'), outs) if out is not None}
CASES = sorted(EXPECTED)


def _read(run, how):
    "Read the run as a resuming trainer or as load_weights; the checkpoint iteration used."
    if how == 'resume': return Trainer(tiny(seed=5), CFG, points(), run, device='cpu', resume=True).iteration
    m = tiny(seed=5); d = load_weights(run, m)
    return int(d.name.split('-')[1])


@pytest.mark.parametrize('how', ['resume', 'load_weights'])
@pytest.mark.parametrize('kind, fault, where', CASES)
def test_fault_matrix(template, tmp_path, kind, fault, where, how):
    src, weights = template
    run = tmp_path / 'run'; shutil.copytree(src, run)
    for ck in (['step-00000008'] if where == 'latest' else ['step-00000008', 'step-00000004']): damage(run, kind, fault, ck)
    expected = EXPECTED[kind, fault, where]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        if expected[0] == 'error':
            with pytest.raises(CheckpointError) as e: _read(run, how)
            msg = str(e.value)
            assert expected[1] in msg and '\n' not in msg, msg
            return
        it = _read(run, how)
    msgs = [str(x.message) for x in w if issubclass(x.category, UserWarning)]
    assert it == expected[1] and len(msgs) == 1 and expected[2] in msgs[0] and '\n' not in msgs[0], (it, msgs)
    if how == 'load_weights':                           # the weights are exactly those of the checkpoint used
        m = tiny(seed=5)
        with warnings.catch_warnings(): warnings.simplefilter('ignore'); load_weights(run, m)
        assert all(torch.equal(v, weights[it][n]) for n, v in m.state_dict().items())


def test_matrix_counts():
    "Every kind × fault is covered (NaN and pickle only where a file holds tensors)."
    outcomes = [v[0] for v in EXPECTED.values()]
    assert len(EXPECTED) == 2 * 7 * 2 + 5 * 2 + 5 == 43
    assert outcomes.count('use') == 24 and outcomes.count('error') == 19


def test_fallback_resume_continues_exactly(tmp_path):
    "A damaged latest checkpoint: resume from the previous one, end bit-identical to an uninterrupted run; LATEST repaired."
    cfg = TrainConfig(iterations=12, batch_size=16, lr=1e-2, ema=0.9, save_every=4, **QUIET)
    ref = Trainer(tiny(), cfg, points(), tmp_path / 'ref', device='cpu'); ref.fit()
    tr = Trainer(tiny(), cfg, points(), tmp_path / 'run', device='cpu'); tr.fit(until=8)
    damage(tmp_path / 'run', 'block', 'bitflip', 'step-00000008')
    with pytest.warns(UserWarning, match='block_0.safetensors is damaged'):
        tr2 = Trainer(tiny(seed=3), cfg, points(), tmp_path / 'run', device='cpu', resume=True)
    assert tr2.iteration == 4
    assert json.loads((tmp_path / 'run' / 'checkpoint' / POINTER).read_text())['checkpoint'] == 'step-00000004'
    tr2.fit()
    for (n, a), b in zip(ref.model.state_dict().items(), tr2.model.state_dict().values()): assert torch.equal(a, b), n
    assert sorted(p.name for p in (tmp_path / 'run' / 'checkpoint').iterdir()) == ['LATEST', 'step-00000008', 'step-00000012']
    assert [r['iteration'] for r in tr2.run.metrics()] == [r['iteration'] for r in ref.run.metrics()]


# ---------------------------------------------------------------- one writer per run, a kill before the first checkpoint
HOLDER = '''
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from test_checkpoint_faults import tiny, points
from diffusionblocks.train import TrainConfig, Trainer
def hold(trainer, info):
    if info['iteration'] == 1: print('training', flush=True); time.sleep(120)
cfg = TrainConfig(iterations=8, batch_size=16, lr=1e-2, ema=0.9, save_every=0, save_minutes=0, **{quiet!r})   # no checkpoint yet
Trainer(tiny(), cfg, points(), sys.argv[1], device='cpu', meta={{'job': 'holder'}}).fit(callbacks=[hold])
'''


def _holder(tmp_path, run):
    script = tmp_path / 'holder.py'
    script.write_text(HOLDER.format(root=str(ROOT), tests=str(ROOT / 'tests'), quiet=QUIET))
    p = subprocess.Popen([sys.executable, str(script), str(run)], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    assert line == 'training', line
    return p


def test_two_writers_and_a_kill_before_the_first_checkpoint(tmp_path):
    "A training process holds the run: a second writer is refused in one line; once it is killed (before any"
    " checkpoint), a resuming trainer restarts at 0, with config.json as the first writer wrote it."
    run = tmp_path / 'run'
    p = _holder(tmp_path, run)
    try:
        config = (run / 'config.json').read_bytes()
        with pytest.raises(RunInUseError, match=rf'run directory .* is in use by another process \(pid {p.pid}\)'):
            Trainer(tiny(), CFG, points(), run, device='cpu', resume=True)
        tr = Trainer(tiny(), CFG, points(), tmp_path / 'other', device='cpu')
        tr.run = RunDir(run)                                  # a trainer whose fit targets the held directory
        with pytest.raises(RunInUseError, match=str(p.pid)): tr.fit()
    finally:
        p.send_signal(signal.SIGKILL); p.wait()
    assert RunDir(run).latest() is None                       # killed before its first checkpoint
    with pytest.warns(UserWarning, match='no checkpoint .*: starting at iteration 0'):
        tr = Trainer(tiny(), CFG, points(), run, device='cpu', resume=True)
    assert tr.iteration == 0
    tr.fit()                                                  # the lock died with the holder
    assert tr.iteration == 8 and (run / 'config.json').read_bytes() == config
    assert json.loads(config)['job'] == 'holder'
    with pytest.raises(CheckpointError, match='already holds'): Trainer(tiny(), CFG, points(), run, device='cpu')
