"""Runs as a user meets them, through the real console command in subprocesses: one writer per run directory, a run
killed before its first checkpoint stays usable, and a resume may lengthen the budget but never silently change a run."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest


def cli(*argv, env=None, **kw):
    return subprocess.Popen([sys.executable, '-m', 'diffusionblocks.cli', *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.fixture
def env(tmp_path):
    return {**os.environ, 'DIFFUSIONBLOCKS_DATA': str(tmp_path / 'cache'), 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}


def test_two_writers_one_run(tmp_path, env):
    "Two `train --out C` started together: one trains, the other is refused in one line; the run is whole."
    argv = ('train', '--baseline-iterations', '30', '--no-eval', '--quiet', '--out', tmp_path / 'C')
    ps = [cli(*argv, env=env), cli(*argv, env=env)]
    res = [(p.wait(timeout=300), *p.communicate()) for p in ps]
    codes = sorted(r[0] for r in res)
    assert codes == [0, 2], res
    err = next(r[2] for r in res if r[0] == 2)
    assert err.count('\n') == 1 and ('in use by another process' in err or 'already holds a run' in err), err
    cfg = json.loads((tmp_path / 'C' / 'config.json').read_text())
    assert cfg['job']['preset'] == 'digits' and cfg['train']['iterations'] == 90
    rows = [json.loads(l) for l in (tmp_path / 'C' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['iteration'] for r in rows] == sorted(r['iteration'] for r in rows)      # one writer: no interleaving
    assert json.loads((tmp_path / 'C' / 'checkpoint' / 'LATEST').read_text())['previous'] == []


def test_killed_before_first_checkpoint_restarts_from_zero(tmp_path, env):
    "kill -9 before any checkpoint: the run keeps its config.json, a resume restarts at iteration 0 and says so, then sample/eval work."
    run = tmp_path / 'K'
    p = cli('train', '--baseline-iterations', '60', '--no-eval', '--quiet', '--out', run, env=env)
    t0 = time.time()
    while not (run / 'config.json').exists():
        assert p.poll() is None and time.time() - t0 < 120, p.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert not (run / 'checkpoint' / 'LATEST').exists()
    assert json.loads((run / 'config.json').read_text())['job']['baseline_iterations'] == 60
    r = cli('train', '--resume', run, '--baseline-iterations', '20', '--quiet', env=env)          # not shorter: refused, nothing lost
    out, err = r.communicate(timeout=120)
    assert r.returncode == 2 and 'only lengthen' in err, err
    r = cli('train', '--resume', run, '--quiet', '--no-eval', env=env)
    out, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    assert 'iteration 0' in err, err                                                       # visibly restarted
    assert json.loads((run / 'checkpoint' / 'LATEST').read_text())['checkpoint'].startswith('step-00000180')
    cfg = json.loads((run / 'config.json').read_text())
    assert cfg['job']['baseline_iterations'] == 60 and cfg['train']['iterations'] == 180
    r = cli('sample', run, '--n', '10', '--sample-steps', '4', '--out', tmp_path / 's.png', env=env)
    assert r.wait(timeout=120) == 0 and (tmp_path / 's.png').is_file(), r.communicate()


def test_resume_lengthens_the_budget_and_keeps_finished_results(tmp_path, env):
    run = tmp_path / 'R'
    assert cli('train', '--baseline-iterations', '10', '--no-eval', '--quiet', '--out', run, env=env).wait(timeout=300) == 0
    r = cli('train', '--resume', run, '--no-eval', '--quiet', env=env); _, err = r.communicate(timeout=120)
    assert r.returncode == 2 and 'finished run' in err and err.count('\n') == 1, err
    r = cli('train', '--resume', run, '--blocks', '4', env=env); _, err = r.communicate(timeout=120)
    assert r.returncode == 2 and 'cannot change blocks' in err, err
    r = cli('train', '--resume', run, '--baseline-iterations', '20', '--no-eval', '--quiet', env=env); _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    state = json.loads((run / 'config.json').read_text())
    assert state['job']['baseline_iterations'] == 20
    m = json.loads((run / 'metrics.json').read_text())
    assert m['iterations'] == 60 and sum(m['steps_per_block']) == 60
