"""Hardening (issue 26): damaged run directories, files that must not be read (symlinks to /dev/zero, fifos), a full
disk, names too long for the filesystem, a degenerate partition, a refused torchrun job. Black-box, through
`diffusionblocks.cli.main([...])` and library calls. The rule: bad input gets one line (exit status 2, exactly one
line on stderr) and a refused command changes nothing on disk (`tree` hashes every byte and the file list); a
damaged checkpoint or pointer is skipped with one warning line, and a full disk loses nothing already saved.

Every case is one line with exit status 2 (or works), and a refused command leaves every byte of the watched trees as it was."""
import contextlib, errno, hashlib, io, json, os, shutil, stat, subprocess, sys, tempfile, warnings
from pathlib import Path
import pytest, torch
from diffusionblocks.cli import main
from diffusionblocks import checkpoint as ckpt
from diffusionblocks.checkpoint import RunDir, atomic_write, find_checkpoint, POINTER, block_file
from diffusionblocks.errors import ConfigError, CheckpointError

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


# ---------------------------------------------------------------- helpers
def run_cli(*argv):
    "(exit status, stdout, stderr, warning messages) of one in-process command."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue(), [str(x.message) for x in w if issubclass(x.category, UserWarning)]


def tree(root) -> dict:
    "Every entry under root (and root itself): relative path -> sha256 of a file, 'dir', the target of a link, or the kind."
    root = Path(root)
    if not os.path.lexists(root): return {}
    out = {}
    for p in [root, *sorted(root.rglob('*'))]:
        st, key = os.lstat(p), str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode): out[key] = 'link:' + os.readlink(p)
        elif stat.S_ISDIR(st.st_mode): out[key] = 'dir'
        elif stat.S_ISREG(st.st_mode): out[key] = hashlib.sha256(p.read_bytes()).hexdigest() + f':{stat.S_IMODE(st.st_mode):o}'
        else: out[key] = f'special:{stat.S_IFMT(st.st_mode):o}'
    return out


def refused(*argv, watch=(), contains=()):
    "Run a command that must be refused: exit 2, exactly one stderr line (containing every `contains`), nothing under `watch` changed."
    before = {str(w): tree(w) for w in watch}
    rc, out, err, _ = run_cli(*argv)
    assert rc == 2 and err.count('\n') == 1 and err.startswith('diffusionblocks'), (rc, err[-3000:])
    assert all(c in err for c in contains), err
    for w in watch: assert tree(w) == before[str(w)], f'{w} changed'
    return err.strip()


def one_warning(ws, *parts):
    assert len(ws) == 1 and '\n' not in ws[0] and all(p in ws[0] for p in parts), ws
    return ws[0]


def latest(run): return json.loads((Path(run) / 'checkpoint' / POINTER).read_text())['checkpoint']


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    "A finished digits run with two checkpoints: step-00000012 and step-00000024 (LATEST)."
    root = tmp_path_factory.mktemp('hardening')
    env = {k: os.environ.get(k) for k in ('DIFFUSIONBLOCKS_DATA', 'HF_HUB_OFFLINE')}
    os.environ.update(DIFFUSIONBLOCKS_DATA=str(root / 'cache'), HF_HUB_OFFLINE='1')
    run = root / 'base'
    assert run_cli('train', '--iterations', '4', '--no-eval', '--quiet', '--out', run)[0] == 0
    assert run_cli('train', '--resume', run, '--iterations', '8', '--no-eval', '--quiet')[0] == 0
    assert sorted(p.name for p in (run / 'checkpoint').iterdir()) == ['LATEST', 'step-00000012', 'step-00000024']
    yield run
    for k, v in env.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v


@pytest.fixture
def run(base, tmp_path):
    "A fresh copy of the base run to damage."
    shutil.copytree(base, tmp_path / 'run', symlinks=True)
    return tmp_path / 'run'


def sample(run, out):
    return run_cli('sample', run, '--n', '4', '--sample-steps', '2', '--out', out)


# ---------------------------------------------------------------- 1. damaged run directories
@pytest.mark.parametrize('name', ['.', '..', '/tmp', '{run}/checkpoint/step-00000012', '.tmp-step-00000024', 'step-00000099'])
def test_bad_pointer_falls_back(run, tmp_path, name):
    "LATEST naming something that is not a checkpoint directory inside checkpoint/: one warning, the newest valid one."
    (run / 'checkpoint' / POINTER).write_text(json.dumps({'checkpoint': name.format(run=run), 'previous': []}))
    before = tree(run)
    rc, _, err, ws = sample(run, tmp_path / 's.png')
    assert rc == 0, err
    one_warning(ws, 'LATEST', 'using checkpoint', 'step-00000024')
    assert tree(run) == before


def test_latest_checkpoint_replaced_by_a_file(run, tmp_path):
    "A regular file in place of the latest checkpoint: the previous one is used; a resume writes the new checkpoint over it."
    ck = run / 'checkpoint' / 'step-00000024'; shutil.rmtree(ck); ck.write_text('not a checkpoint')
    rc, _, err, ws = sample(run, tmp_path / 's.png')
    assert rc == 0, err
    one_warning(ws, 'step-00000024', 'not a checkpoint directory', 'using checkpoint', 'step-00000012')
    (run / 'checkpoint' / 'step-00000036').write_text('a stray file named as the next checkpoint')
    rc, _, err, ws = run_cli('train', '--resume', run, '--iterations', '12', '--no-eval', '--quiet')
    assert rc == 0, err
    one_warning(ws, 'step-00000024', 'not a checkpoint directory', 'using checkpoint', 'step-00000012')
    assert latest(run) == 'step-00000036' and find_checkpoint(run / 'checkpoint')[1] == run / 'checkpoint' / 'step-00000036'
    assert not ck.exists()                                            # pruned like any checkpoint past `keep`


def test_non_utf8_metrics_resume(run):
    "Undecodable and unparsable lines in metrics.jsonl: skipped with one warning line, the resume completes."
    with open(run / 'metrics.jsonl', 'ab') as f: f.write(b'\xff\xfe\x00garbage\n{"iteration": \n')
    rc, _, err, ws = run_cli('train', '--resume', run, '--iterations', '12', '--no-eval', '--quiet')
    assert rc == 0, err
    one_warning(ws, 'metrics.jsonl', 'skipped 2 unreadable line(s)')
    rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
    assert rows[-1]['iteration'] == 36 and latest(run) == 'step-00000036'


def test_unreadable_block_file_falls_back(run, tmp_path, monkeypatch):
    "A block file that cannot be opened (EACCES; patched: we may be root) is a damaged checkpoint: the previous one is used."
    bad, real = run / 'checkpoint' / 'step-00000024' / block_file(1), open
    def guarded(path, *a, **k):
        if Path(str(path)) == bad: raise PermissionError(errno.EACCES, 'Permission denied', str(path))
        return real(path, *a, **k)
    monkeypatch.setattr('builtins.open', guarded)
    rc, _, err, ws = sample(run, tmp_path / 's.png')
    assert rc == 0, err
    one_warning(ws, str(bad), 'unreadable: Permission denied', 'using checkpoint', 'step-00000012')


def test_unreadable_block_file_as_a_user(base):
    "The same with a real chmod 000, read as user nobody (skipped unless we are root with setpriv)."
    if os.geteuid() != 0 or not shutil.which('setpriv'): pytest.skip('needs root and setpriv')
    d = Path(tempfile.mkdtemp(prefix='hardening-', dir='/tmp'))
    try:
        os.chmod(d, 0o755); shutil.copytree(base / 'checkpoint', d / 'checkpoint')
        for p in [d / 'checkpoint', *(d / 'checkpoint').rglob('*')]: os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(d / 'checkpoint' / 'step-00000024' / block_file(0), 0)
        bad = d / 'checkpoint' / 'step-00000024' / block_file(0)
        nobody = lambda code: subprocess.run(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', sys.executable, '-c', code],
                                             capture_output=True, text=True, timeout=120, env={**os.environ, 'PYTHONPATH': str(ROOT)})
        probe = nobody(f"import diffusionblocks.checkpoint\ntry: open({str(bad)!r}, 'rb')\nexcept PermissionError: print('denied')")
        if probe.returncode or probe.stdout.strip() != 'denied': pytest.skip(f'user nobody cannot run this check here: {(probe.stderr or probe.stdout).strip()[-300:]}')
        r = nobody("import warnings, json\nfrom diffusionblocks.checkpoint import find_checkpoint\n"
                   "with warnings.catch_warnings(record=True) as w:\n"
                   f"    warnings.simplefilter('always'); s, c = find_checkpoint({str(d / 'checkpoint')!r})\n"
                   "print(json.dumps([c.name, [str(x.message) for x in w]]))")
        assert r.returncode == 0, r.stderr[-2000:]
        name, ws = json.loads(r.stdout.strip().splitlines()[-1])
        assert name == 'step-00000012' and len(ws) == 1 and 'Permission denied' in ws[0], (name, ws)
    finally: shutil.rmtree(d, ignore_errors=True)


def test_both_checkpoints_damaged_sample_refused(run, tmp_path):
    for it in (12, 24): (run / 'checkpoint' / f'step-{it:08d}' / block_file(0)).write_bytes(b'garbage')
    refused('sample', run, '--n', '4', '--sample-steps', '2', '--out', tmp_path / 's.png', watch=[run, tmp_path / 's.png'],
            contains=[block_file(0)])


def test_refused_resume_keeps_config(run):
    "train --resume RUN --iterations N refused (every checkpoint damaged) must not rewrite config.json."
    for it in (12, 24): (run / 'checkpoint' / f'step-{it:08d}' / block_file(0)).write_bytes(b'garbage')
    refused('train', '--resume', run, '--iterations', '12', '--no-eval', '--quiet', watch=[run])


# ---------------------------------------------------------------- 2. bounded reads, no special files
def test_config_json_to_dev_zero_refused(run, tmp_path):
    (run / 'config.json').unlink(); (run / 'config.json').symlink_to('/dev/zero')
    refused('sample', run, '--n', '4', '--out', tmp_path / 's.png', watch=[run, tmp_path / 's.png'],
            contains=['config.json', 'character device, not a regular file'])


def test_config_json_fifo_refused(run, tmp_path):
    (run / 'config.json').unlink(); os.mkfifo(run / 'config.json')
    refused('sample', run, '--n', '4', '--out', tmp_path / 's.png', watch=[run], contains=['config.json', 'is a fifo'])


def test_config_json_symlink_to_a_file_is_fine(run, tmp_path):
    (run / 'config.json').rename(tmp_path / 'config.json'); (run / 'config.json').symlink_to(tmp_path / 'config.json')
    rc, _, err, ws = sample(run, tmp_path / 's.png')
    assert rc == 0 and not ws, (err, ws)


@pytest.mark.parametrize('special', ['zero', 'fifo', 'directory'])
def test_special_latest_falls_back(run, tmp_path, special):
    "LATEST a symlink to /dev/zero, a fifo or a folder: never read, a damaged pointer: one warning, the newest valid checkpoint."
    p = run / 'checkpoint' / POINTER; p.unlink()
    if special == 'zero': p.symlink_to('/dev/zero')
    elif special == 'fifo': os.mkfifo(p)
    else: p.mkdir()
    before = tree(run)
    rc, _, err, ws = sample(run, tmp_path / 's.png')
    assert rc == 0, err
    one_warning(ws, str(p), 'not a regular file', 'using checkpoint', 'step-00000024')
    assert tree(run) == before


def test_state_json_to_dev_zero_falls_back(run, tmp_path):
    st = run / 'checkpoint' / 'step-00000024' / 'state.json'; st.unlink(); st.symlink_to('/dev/zero')
    rc, _, err, ws = sample(run, tmp_path / 's.png')
    assert rc == 0, err
    one_warning(ws, 'state.json', 'character device', 'step-00000012')


def test_read_bounded_limits(tmp_path):
    p = tmp_path / 'big.json'; p.write_bytes(b' ' * 100)
    with pytest.raises(CheckpointError, match='too large: 100 B, more than the 64 B'): ckpt.read_bounded(p, 64, 'config')
    assert ckpt.read_bounded(p, 100) == b' ' * 100


# ---------------------------------------------------------------- 3. a full disk
@contextlib.contextmanager
def tmpfs(path, size):
    "A small tmpfs at path (skips the test where mounting is not permitted)."
    path.mkdir()
    if os.geteuid() != 0 or not shutil.which('mount'): pytest.skip('mounting a tmpfs needs root')
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)], capture_output=True, text=True)
    if r.returncode: pytest.skip(f'cannot mount a tmpfs here: {r.stderr.strip()}')
    try: yield path
    finally: subprocess.run(['umount', '-l', str(path)], capture_output=True)


def fill(mnt, leave:int):
    "Fill the filesystem at mnt, leaving about `leave` bytes free."
    st = os.statvfs(mnt); free = st.f_bavail * st.f_frsize
    with open(mnt / 'filler', 'wb') as f:
        try: f.write(b'\0' * max(0, free - leave))
        except OSError: pass


def no_debris(root): return not [p for p in Path(root).rglob('*') if p.name.startswith('.tmp') or p.name.endswith('.tmp')]


def test_disk_full_first_checkpoint(tmp_path):
    with tmpfs(tmp_path / 'mnt', '1m') as mnt:
        err = refused('train', '--iterations', '4', '--no-eval', '--quiet', '--out', mnt / 'run',
                      contains=['no space left on device writing', 'checkpoint/step-00000012/', 'free'])
        print(err)
        assert (mnt / 'run' / 'config.json').is_file() and not (mnt / 'run' / 'checkpoint' / POINTER).exists()
        assert no_debris(mnt / 'run')


def test_disk_full_later_checkpoint(base, tmp_path):
    "A resume on a full disk: the failed checkpoint leaves the previous checkpoints and LATEST byte for byte, no debris."
    with tmpfs(tmp_path / 'mnt', '24m') as mnt:
        shutil.copytree(base, mnt / 'run'); fill(mnt, 256 << 10)
        before = tree(mnt / 'run' / 'checkpoint')
        err = refused('train', '--resume', mnt / 'run', '--iterations', '12', '--no-eval', '--quiet',
                      contains=['no space left on device writing', 'step-00000036', 'free'])
        print(err)
        assert tree(mnt / 'run' / 'checkpoint') == before and no_debris(mnt / 'run')
        with warnings.catch_warnings(): warnings.simplefilter('error'); state, d = find_checkpoint(mnt / 'run' / 'checkpoint')
        assert d.name == 'step-00000024' and state['iteration'] == 24          # what was saved is whole, and still the latest


def test_disk_full_before_config(tmp_path):
    with tmpfs(tmp_path / 'mnt', '256k') as mnt:
        fill(mnt, 0)
        refused('train', '--iterations', '4', '--no-eval', '--quiet', '--out', mnt / 'run', contains=['space'])
        assert not (mnt / 'run' / 'config.json').exists() and no_debris(mnt)


def test_disk_full_merge(base, tmp_path):
    with tmpfs(tmp_path / 'mnt', '1m') as mnt:
        refused('merge', base, '--out', mnt / 'merged', watch=[base], contains=['no space left on device writing', 'free'])
        assert not (mnt / 'merged' / 'checkpoint' / POINTER).exists() and no_debris(mnt)


def test_disk_full_sample_png(base, tmp_path):
    with tmpfs(tmp_path / 'mnt', '256k') as mnt:
        fill(mnt, 0)
        refused('sample', base, '--n', '4', '--sample-steps', '2', '--out', mnt / 's.png', watch=[base], contains=['space'])


def _full_after(nbytes, where=''):
    "A _write_file that, for paths containing `where`, writes a few bytes, then fails as a full disk does."
    real = ckpt._write_file
    def write(path, data):
        if where not in str(path): return real(path, data)
        with open(path, 'wb') as f: f.write(data[:nbytes])
        raise OSError(errno.ENOSPC, 'No space left on device', str(path))
    return write


def test_disk_full_patched_checkpoint(run, monkeypatch):
    "ENOSPC from the checkpoint writer (runs everywhere): one line, previous checkpoints and LATEST intact, no debris."
    before = tree(run / 'checkpoint')
    monkeypatch.setattr(ckpt, '_write_file', _full_after(100, where=f'{os.sep}checkpoint{os.sep}'))
    refused('train', '--resume', run, '--iterations', '12', '--no-eval', '--quiet',
            contains=['no space left on device writing', str(run / 'checkpoint' / 'step-00000036' / block_file(0)), 'free'])
    assert tree(run / 'checkpoint') == before and no_debris(run)


def test_disk_full_patched_config(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, '_write_file', _full_after(10))
    refused('train', '--iterations', '4', '--no-eval', '--quiet', '--out', tmp_path / 'run',
            contains=['no space left on device writing', 'config.json'])
    assert not (tmp_path / 'run' / 'config.json').exists() and no_debris(tmp_path)


def test_disk_full_metrics_append_undone(tmp_path, monkeypatch):
    "A metrics append that fails midway is undone (no half line) and one line."
    r = RunDir(tmp_path / 'r'); r.log([{'iteration': 1}])
    before = r.metrics_path.read_bytes()
    real = os.write
    def half(fd, data): real(fd, bytes(data[:5])); raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'write', half)
    with pytest.raises(CheckpointError, match='no space left on device writing .*metrics.jsonl: .* free'): r.log([{'iteration': 2}])
    monkeypatch.setattr(os, 'write', real)
    assert r.metrics_path.read_bytes() == before


# ---------------------------------------------------------------- 4. names too long
def test_long_name_library(tmp_path):
    "A run directory or file whose name is over the filesystem's limit: one line, nothing made."
    from diffusionblocks.blocks import vector_blocks
    from diffusionblocks.train import Trainer, TrainConfig
    long = tmp_path / 'parent' / ('a' * 300) / 'run'
    with pytest.raises(ConfigError, match='300 bytes long, more than the 255') as e:
        Trainer(vector_blocks(2, blocks=2, depth=2, width=8, heads=2, cond_dim=8), TrainConfig(iterations=2, progress=False, tensorboard=False),
                torch.randn(32, 2), long, device='cpu')
    assert '\n' not in str(e.value) and not (tmp_path / 'parent').exists()
    with pytest.raises(ConfigError, match='longer than its filesystem allows'): atomic_write(tmp_path / ('b' * 300), 'x')
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize('sub', ['{long}', 'parent/{long}/x'])
def test_long_out_cli(tmp_path, sub):
    out = tmp_path / sub.format(long='a' * 300)
    refused('train', '--iterations', '4', '--no-eval', '--quiet', '--out', out, watch=[tmp_path], contains=['255'])


# ---------------------------------------------------------------- 5. a degenerate partition
def test_degenerate_partition():
    err = refused('partition', '--blocks', '64', '--p-mean', '100', '--p-std', '1e-6', '--json',
                  contains=['degenerates', 'p_mean=100', 'p_std=1e-06', 'above sigma_max', 'coincide'])
    print(err)
    rc, out, err, _ = run_cli('partition', '--blocks', '3', '--json')
    assert rc == 0 and len(json.loads(out)['blocks']) == 3


# ---------------------------------------------------------------- 6. a refused torchrun job
def torchrun(k, *argv, cwd=None, env=None):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), **(env or {})}
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', str(k), *map(str, argv)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def rank_lines(stderr):
    "What the ranks printed: stderr before torchrun's own report (its log lines start with E/W + date, then its traceback)."
    lines = stderr.splitlines()
    end = next((i for i, l in enumerate(lines) if l[:1] in 'EWI' and l[1:5].isdigit() or l.startswith('Traceback')), len(lines))
    return [l for l in lines[:end] if l.strip()]


def test_torchrun_cli_refused_in_one_line(base, tmp_path):
    "A second torchrun job on a run directory that holds a run: rank 0's one line, no rank traceback; torchrun exits non-zero."
    before = tree(base)
    r = torchrun(2, '-m', 'diffusionblocks.cli', 'train', '--parallel', 'blocks', '--iterations', '4', '--no-eval', '--quiet', '--out', base,
                 env={'DIFFUSIONBLOCKS_DATA': os.environ['DIFFUSIONBLOCKS_DATA']})
    lines = rank_lines(r.stderr)
    assert r.returncode != 0 and lines == [f'diffusionblocks: error: {base} already holds a run: pass --resume {base}, or another --out'], r.stderr[-3000:]
    assert '[rank1]' not in r.stderr and 'exitcode  : 2' in r.stderr, r.stderr[-3000:]
    assert tree(base) == before


def test_fit_parallel_refusal_is_one_line(tmp_path):
    "fit_parallel on a run that already holds a checkpoint (resume not asked): rank 0 says so once, rank 1 exits 2 quietly."
    sys.path.insert(0, str(ROOT / 'tests'))
    from parallel_driver import make
    from diffusionblocks.train import Trainer
    spec = dict(run=str(tmp_path / 'run'), iterations=6, batch_size=16)
    model, cfg, data = make(spec); Trainer(model, cfg, data, spec['run'], device='cpu').fit()
    before = tree(tmp_path / 'run')
    r = torchrun(2, ROOT / 'tests' / 'parallel_driver.py', json.dumps(spec))
    assert r.returncode != 0 and rank_lines(r.stderr) == [f"diffusionblocks: error: {tmp_path / 'run'} already holds a checkpoint: resume it, or use a new run directory"], r.stderr[-3000:]
    assert r.stderr.count('exitcode  : 2') >= 1 and '[rank1]' not in r.stderr, r.stderr[-3000:]   # status 2, no rank traceback (torchrun may stop the other rank first)
    assert tree(tmp_path / 'run') == before


# ---------------------------------------------------------------- the run layer's and the CLI's items
def test_unknown_option_refused(tmp_path):
    refused('train', '--iterations', '1', '--no-eval', '--quiet', '--option', 'no_such_key=1', '--out', tmp_path / 'o', watch=[tmp_path], contains=['no_such_key'])


def test_option_image_size_zero(tmp_path):
    refused('train', '--iterations', '1', '--no-eval', '--quiet', '--option', 'image_size=0', '--out', tmp_path / 'o', watch=[tmp_path], contains=['image_size'])


def test_option_augment_not_a_mapping(tmp_path):
    refused('train', '--config', 'vit-digits', '--iterations', '1', '--no-eval', '--quiet', '--option', 'augment=5', '--out', tmp_path / 'o',
            watch=[tmp_path], contains=['augment'])


def test_option_seq_len_named(tmp_path):
    refused('train', '--config', 'md4-shakespeare', '--iterations', '1', '--no-eval', '--quiet', '--option', 'seq_len=1000000000',
            '--out', tmp_path / 'o', watch=[tmp_path], contains=['seq_len'])


def test_empty_config_refused(tmp_path):
    refused('train', '--config', '', '--iterations', '1', '--no-eval', '--quiet', '--out', tmp_path / 'o', watch=[tmp_path])


def test_convert_iterations_zero(base, tmp_path):
    refused('convert', base, '--blocks', '3', '--iterations', '0', '--out', tmp_path / 'o', watch=[tmp_path, base], contains=['iterations'])


def test_convert_config_not_an_object(tmp_path):
    (tmp_path / 'src').mkdir(); (tmp_path / 'src' / 'config.json').write_text('5')
    refused('convert', tmp_path / 'src', '--blocks', '3', '--out', tmp_path / 'o', watch=[tmp_path], contains=['config.json'])


def test_bench_scaling_unknown_config(tmp_path):
    refused('bench', 'scaling', '--config', 'nosuch', watch=[tmp_path], contains=['nosuch'])


def test_reproduce_out_is_a_file(tmp_path):
    (tmp_path / 'afile').write_text('x')
    refused('reproduce', '1', '--out', tmp_path / 'afile', watch=[tmp_path])


@pytest.mark.slow
def test_resume_classification_n_eval(tmp_path):
    run = tmp_path / 'cls'
    assert run_cli('train', '--config', 'vit-digits', '--iterations', '2', '--out', run, '--quiet')[0] == 0
    rc, _, err, _ = run_cli('train', '--resume', run, '--n-eval', '10', '--overwrite', '--quiet')
    assert rc == 2 and err.count('\n') == 1 or json.loads((run / 'metrics.json').read_text()).get('n_eval') == 10, err


def _bounded(argv, tmp_path, seconds=60):
    "Run the command in a subprocess with a memory and time cap: it must be refused in one line, quickly, having allocated little."
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))\n"
            "from diffusionblocks.cli import main; sys.exit(main(sys.argv[1:]))")
    try: r = subprocess.run([sys.executable, '-c', code, *map(str, argv)], capture_output=True, text=True, timeout=seconds, cwd=tmp_path,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    except subprocess.TimeoutExpired: raise AssertionError(f'{argv}: still running after {seconds} s')
    assert r.returncode == 2 and r.stderr.count('\n') == 1, (r.returncode, r.stderr[-2000:])


@pytest.mark.slow
@pytest.mark.parametrize('argv', [['sample', '{base}', '--n', '100000', '--out', 's.png'], ['eval', '{base}', '--n', '10000000'],
                                  ['train', '--iterations', '1', '--sample-steps', '100000', '--n-eval', '10000000', '--out', 'o'],
                                  ['bench', 'memory', '--batch-size', '100000000'], ['bench', 'sample', '--sample-steps', '1000000000']])
def test_oversize_values(base, tmp_path, argv):
    _bounded([a.format(base=base) for a in argv], tmp_path)
