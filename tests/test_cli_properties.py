"""Property-based test of the `diffusionblocks` command: arguments for every sub-command are drawn from a grammar of
good and bad values (numbers at and past their limits; paths that are files, folders, missing, read-only; runs of
another task). Every invocation must end with exit status 0, or 2 with exactly one line on stderr and no traceback,
and must change no file outside the places it is allowed to write (its --out / run directory, the data cache)."""
import contextlib, hashlib, io, os, stat
from pathlib import Path
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from diffusionblocks.cli import main

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
FAST, SLOW = settings(max_examples=40, **SETTINGS), settings(max_examples=400, **SETTINGS)


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def snapshot(root):
    "path -> content hash of every file under root (the tree a command may not touch)."
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(root).rglob('*') if p.is_file()}


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A workspace with a finished image-generation run, a finished classification run, a file, a user folder and a read-only run."
    root = tmp_path_factory.mktemp('cli')
    old = os.getcwd(); os.chdir(root)
    env = {k: os.environ.get(k) for k in ('DIFFUSIONBLOCKS_DATA', 'HF_HUB_OFFLINE')}
    os.environ.update(DIFFUSIONBLOCKS_DATA=str(root / 'cache'), HF_HUB_OFFLINE='1')
    assert run_cli(['train', '--baseline-iterations', '3', '--n-eval', '20', '--sample-steps', '3', '--out', 'gen', '--quiet'])[0] == 0
    assert run_cli(['train', '--config', 'vit-digits', '--baseline-iterations', '2', '--out', 'cls', '--quiet'])[0] == 0
    (root / 'afile').write_text('not a folder')
    (root / 'user').mkdir(); (root / 'user' / 'notes.txt').write_text('mine')
    assert run_cli(['train', '--baseline-iterations', '2', '--no-eval', '--out', 'ro', '--quiet'])[0] == 0
    for p in [root / 'ro', *(root / 'ro').rglob('*')]: p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield root
    for p in [root / 'ro', *(root / 'ro').rglob('*')]: p.chmod(p.stat().st_mode | stat.S_IWUSR)
    os.chdir(old)
    for k, v in env.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v


# the grammar ------------------------------------------------------------------------------------------------------
# Good values are kept cheap (a test must not train for hours); bad ones sit at and past every limit.
def ints(good, lo, hi): return st.sampled_from([*map(str, good), str(lo - 1), str(hi + 1), '-5', 'x', 'nan', '1e3', '2.5', ''])
def floats(good, lo, hi): return st.sampled_from([*map(str, good), str(lo - 1), str(hi * 10 + 1), '-1', 'nan', 'inf', 'abc', '1e999'])
RUNS = st.sampled_from(['gen', 'cls', 'ro', 'user', 'afile', 'missing', 'gen/checkpoint', '.'])
OUTS = st.sampled_from(['new-{n}', 'afile', 'afile/x', 'user', 'gen', 'ro/new', 'new-{n}/deep/er', 'new-{n}.png', 'user/s.png', 'gen', ''])
DEVICES = st.sampled_from(['cpu', 'cuda', 'gpu7', 'banana', 'cuda:9', 'meta', ''])
PRESETS = st.sampled_from(['digits', 'vit-digits', 'nope', '', 'digits-latent'])
METHODS = st.sampled_from(['ff', 'e2e', 'noprop-dt', 'dblocks', 'sgd'])

def opt(flag, values): return st.one_of(st.just([]), values.map(lambda v: [flag, v]))
def flag(name): return st.sampled_from([[], [name]])

def train_argv():
    # a "good" train is kept tiny: it always has a small --iterations and --no-eval or a small --n-eval
    budget = st.one_of(st.just(['--baseline-iterations', '1', '--no-eval']), st.just(['--baseline-iterations', '2', '--n-eval', '10', '--sample-steps', '2']),
                       ints([1, 2], 1, 10**9).map(lambda v: ['--baseline-iterations', v, '--no-eval']), st.just(['--steps', '1', '--no-eval']))
    parts = [budget, opt('--config', PRESETS), opt('--method', METHODS), flag('--baseline'), opt('--blocks', ints([1, 2, 3, 4, 6, 7], 1, 1024)),
             opt('--seed', ints([0, 7, 2**62], 0, 2**62)), opt('--out', OUTS), opt('--resume', RUNS), flag('--overwrite'), opt('--device', DEVICES),
             opt('--n-eval', ints([2, 12], 2, 10**7)), opt('--sample-steps', ints([1, 3], 1, 10**5)), opt('--threads', ints([0, 1, 2], 0, 1024)),
             opt('--data', st.sampled_from(['digits', 'missing-folder', 'afile', 'user']))]
    return st.tuples(*parts).map(lambda ps: ['train', '--quiet', *[x for p in ps for x in p]])

def sample_argv():
    return st.tuples(RUNS, opt('--n', ints([1, 12], 1, 100_000)), opt('--sample-steps', ints([1, 3], 1, 10**5)), opt('--cfg', floats([0, 1, 2.5], 0, 1e3)),
                     opt('--out', OUTS), opt('--device', DEVICES), opt('--seed', ints([0, 7, 2**62], 0, 2**62))).map(
        lambda ps: ['sample', ps[0], *[x for p in ps[1:] for x in p]])

def eval_argv():
    return st.tuples(RUNS, opt('--n', ints([2, 12], 2, 10**7)), opt('--sample-steps', ints([1, 3], 1, 10**5)), opt('--device', DEVICES)).map(
        lambda ps: ['eval', ps[0], *[x for p in ps[1:] for x in p]])

def classify_argv():
    return st.tuples(st.one_of(RUNS.map(lambda r: [r]), st.just([])), opt('--sample-steps', ints([1, 2], 1, 10**4)), opt('--config', PRESETS),
                     opt('--device', DEVICES)).map(lambda ps: ['classify', *[x for p in ps for x in p]])

def partition_argv():
    return st.tuples(opt('--blocks', ints([1, 2, 3, 4, 6, 7], 1, 1024)), opt('--overlap', floats([0, 0.05, 10], 0, 10)), opt('--scheme', st.sampled_from(['equal-mass', 'linear', 'x'])),
                     opt('--sigma-min', floats([1e-12, 0.002, 1], 1e-12, 1)), opt('--sigma-max', floats([1e-12, 80, 1e12], 1e-12, 1e12)), opt('--p-std', floats([1e-6, 1.2, 100], 1e-6, 100)),
                     flag('--json')).map(lambda ps: ['partition', *[x for p in ps for x in p]])

def bench_argv():
    return st.tuples(st.sampled_from(['memory', 'speed', 'sample', 'nope']), opt('--batch-size', ints([1, 2], 1, 4096)), opt('--timed-steps', ints([1, 2], 1, 10**4)),
                     opt('--blocks', st.sampled_from(['0', '5', '-1', 'x', '7'])), opt('--out', OUTS), opt('--device', st.sampled_from(['cpu', 'gpu7', 'cuda']))).map(
        lambda ps: ['bench', ps[0], *[x for p in ps[1:] for x in p], '--model', 'nope-model'] if ps[0] != 'nope' else ['bench', 'nope'])

ARGV = st.one_of(train_argv(), sample_argv(), eval_argv(), classify_argv(), partition_argv(), st.just(['presets', '--json']), bench_argv(),
                 st.sampled_from([[], ['--help-me'], ['nope'], ['train', '--nope']]))


def allowed(argv, root):
    "The places this invocation may write: its --out, a resumed run, sample's default output, runs/ and the data cache."
    ok = ['cache', 'runs']
    def after(f): return argv[argv.index(f) + 1] if f in argv and argv.index(f) + 1 < len(argv) else None
    for f in ('--out', '--resume'):
        if after(f) is not None: ok.append(after(f))
    if argv[:1] == ['sample'] and len(argv) > 1 and after('--out') is None: ok.append(argv[1])
    return [str(Path(o)) for o in ok]


def check(world, argv, n):
    argv = [a.replace('{n}', str(n)) for a in argv]
    before = snapshot(world)
    try: rc, out, err = run_cli(argv)
    except SystemExit as e: rc, err = e.code, ''          # argparse --help and friends exit by themselves (0)
    assert rc in (0, 2), (argv, rc, err)
    if rc == 2: assert err.count('\n') == 1 and err.strip() and 'Traceback' not in err, (argv, err)
    after_ = snapshot(world)
    ok = allowed(argv, world)
    changed = [p for p in set(before) | set(after_) if before.get(p) != after_.get(p)
               and not any(p == o or p.startswith(o.rstrip('/') + '/') for o in ok)]
    assert not changed, (argv, changed)


_count = iter(range(10**9))

@FAST
@given(argv=ARGV)
def test_cli_never_tracebacks_and_writes_only_its_outputs(world, argv):
    check(world, argv, next(_count))


@pytest.mark.slow
@SLOW
@given(argv=ARGV)
def test_cli_never_tracebacks_and_writes_only_its_outputs_long(world, argv):
    check(world, argv, next(_count))
