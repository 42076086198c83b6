"`diffusionblocks reproduce`: the table registry, the paper-vs-ours arithmetic on recorded metrics, reuse of finished arms, the command's one-line errors; the CPU reproductions themselves behind `slow`."
import json, math, argparse
from pathlib import Path
import pytest
from diffusionblocks.errors import ConfigError
from diffusionblocks.jobs.reproduce import TABLES, TABLE_SCALES, table_arms, write_table, reproduce, get_table, reproduce_all, table_keys
from diffusionblocks.results import load_results
from diffusionblocks.cli import main
from diffusionblocks.experiments.vit_gap import gap_job, GAP_ARMS, GAP_CHAIN


def test_every_row_of_every_table_has_its_arm_at_every_scale():
    get_table("1")                                                     # loads every task, and so every table
    assert set(TABLES) >= {'1', '2', '6', '7', '10'}
    for k, t in TABLES.items():
        for s in TABLE_SCALES:
            arms = table_arms(k, s)
            assert all(r.arm is None or r.arm in arms for r in t.rows), (k, s)
            assert t.reference in [r.label for r in t.rows]
    assert {j.blocks for j in table_arms('10', 'paper').values()} == {1, 2, 3, 4, 6}
    assert all(j.overlap == 0 for a, j in table_arms('7', 'cpu').items() if a != 'e2e')


def _fake_run(d, metrics):
    d.mkdir(parents=True); (d / 'config.json').write_text('{}'); (d / 'metrics.json').write_text(json.dumps(metrics))


def test_table_from_recorded_metrics(tmp_path):
    "Paper vs ours, deltas against the end-to-end row and the spread over seeds, from hand-written metrics.json files."
    t = get_table('2')
    jobs = table_arms('2', 'cpu')
    for seed, (e2e, db) in enumerate([(10., 8.), (12., 7.)]):
        _fake_run(tmp_path / f'e2e-s{seed}', dict(fid_local=e2e, hardware='cpu test', iterations=300))
        _fake_run(tmp_path / f'dblocks-s{seed}', dict(fid_local=db, hardware='cpu test', iterations=900))
    res = write_table(t, 'cpu', 2, tmp_path, jobs, 'diffusionblocks reproduce 2 --scale cpu --seeds 2 --out X')
    e, d = res['rows']
    assert (e['paper'], d['paper']) == (39.83, 37.20)
    assert d['ours'] == pytest.approx(7.5) and d['spread']['std'] == pytest.approx(math.sqrt(0.5)) and (d['spread']['min'], d['spread']['max'], d['spread']['n']) == (7., 8., 2)
    assert d['delta_paper'] == pytest.approx(37.20 - 39.83) and d['delta_ours'] == pytest.approx(7.5 - 11.)
    assert e['delta_ours'] == 0 and res['hardware'] == ['cpu test'] and res['arms']['dblocks']['finished'] == 2
    assert res['arms']['e2e']['command'].endswith('--arm e2e')
    md = (tmp_path / 'table.md').read_text()
    assert '| + DiffusionBlocks (B = 3) | 37.20 | 7.50 |' in md and (tmp_path / 'table.png').stat().st_size > 1000
    assert json.loads((tmp_path / 'table.json').read_text())['rows'][1]['values'] == [8., 7.]


def test_finished_arms_are_reused_not_retrained(tmp_path):
    "A table whose arms all have metrics.json trains nothing (the fake runs have no checkpoint to train from)."
    for a in table_arms('1', 'cpu'):
        _fake_run(tmp_path / f'{a}-s0', dict(accuracy=0.5, hardware='h', iterations=1))
    res = reproduce('1', out=tmp_path, device='cpu')
    assert [r['ours'] for r in res['rows']] == [50.] * len(table_arms('1', 'cpu'))


def test_missing_arms_leave_ours_empty(tmp_path):
    res = write_table(get_table('6'), 'cpu', 1, tmp_path, table_arms('6', 'cpu'), 'cmd')
    assert all(r['ours'] is None and r['delta_ours'] is None for r in res['rows'])
    assert [r['arm'] for r in res['rows']].count(None) == 2            # NoProp-CT and -FM are not in the library


def test_summary_from_recorded_metrics(tmp_path):
    "`reproduce all --collect` on hand-written metrics: paired deltas, the interval, sign agreement, provenance."
    out = tmp_path / 'all'
    for seed, (e2e, db) in enumerate([(10., 8.), (12., 9.), (11., 9.5)]):          # lower FID: DiffusionBlocks better, like the paper
        _fake_run(out / '2' / f'e2e-s{seed}', dict(fid_local=e2e, hardware='cpu test', train_seconds=5.))
        _fake_run(out / '2' / f'dblocks-s{seed}', dict(fid_local=db, hardware='cpu test', train_seconds=7.))
    for seed, (o, g) in enumerate([(0.90, 0.80), (0.91, 0.95)]):                    # p-diff: one row from two metrics of one arm
        _fake_run(out / 'pdiff' / f'ddpm-s{seed}', dict(acc_original_best=o, acc_generated_best=g, hardware='cpu test'))
    sm = reproduce_all(seeds=3, out=out, collect=True)
    assert sorted(sm['tables']) == ['2', 'pdiff'] and sm['errors'] == {}
    d = next(r for r in sm['rows'] if r['table'] == '2')
    assert d['delta_ours'] == pytest.approx(-6.5 / 3) and d['n'] == 3 and d['sign_agrees'] is True
    assert d['distinguishable'] is True and d['delta_ours_ci95'][1] < 0                  # paired: −2 −3 −1.5
    assert d['rel_paper'] > 0 and d['rel_ours'] > 0                                    # + = better than the reference
    p = next(r for r in sm['rows'] if r['label'].startswith('p-diff'))
    assert p['delta_ours'] == pytest.approx(100 * (-0.10 + 0.04) / 2) and p['n'] == 2 and p['distinguishable'] is False
    assert sm['tables']['2']['train_seconds'] == 36. and sm['tables']['2']['finished'] == 6
    assert sm['counts']['sign_agrees'] >= 1
    assert load_results(out / 'summary.json')['provenance']['seeds'] == [0, 1, 2]
    assert (out / 'summary.png').stat().st_size > 1000 and '| 2 | + DiffusionBlocks (B = 3) |' in (out / 'summary.md').read_text()


def test_reproduce_all_refusals_change_nothing(tmp_path, capsys):
    assert table_keys()[:3] == ['1', '2', '3'] and table_keys()[-1] == 'pdiff'
    for argv, msg in ((['--tables', '1,x'], "--tables names no table 'x'"), (['--seeds', '0'], '--seeds must be in'),
                      (['--arm', 'e2e'], '--arm names an arm of one table'), (['--scale', 'tpu'], '--scale must be one of')):
        assert main(['reproduce', 'all', '--out', str(tmp_path / 'o'), *argv]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count('\n') == 1, err
    assert main(['reproduce', '1', '--collect']) == 2 and '--collect applies to `reproduce all`' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('argv, msg', [(['reproduce', '9'], "no table '9'"), (['reproduce', '1', '--scale', 'tpu'], '--scale must be one of'),
                                       (['reproduce', '1', '--seeds', '0'], '--seeds must be in'), (['reproduce', '1', '--seeds', 'two'], '--seeds must be an integer'),
                                       (['reproduce', '1', '--arm', 'sgd', '--out', 'OUT'], "no arm 'sgd'"), (['reproduce', '1', '--out', 'FILE'], 'is a file')])
def test_command_errors_are_one_line(argv, msg, tmp_path, capsys):
    (tmp_path / 'f').write_text('')
    assert main([str(tmp_path) if v == 'OUT' else str(tmp_path / 'f') if v == 'FILE' else v for v in argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count('\n') == 1, err


def test_gap_arms_are_equal_budget_and_differ_only_in_their_change():
    jobs = {a: gap_job('digits', a, multiple=3) for a in GAP_ARMS}
    assert {j.baseline_iterations for j in jobs.values()} == {900}
    f, d = jobs['faithful'], jobs['default']
    assert (f.options.profile, f.options.share_adapter, f.lr, f.lr_schedule) == ('released', True, 1e-3, 'constant')
    assert (d.options.profile, d.options.share_adapter, d.lr, d.lr_schedule) == ('paper', False, 2e-3, 'cosine')
    # a one-at-a-time arm differs from the faithful arm only in its own option
    for a, key in (('init', 'init'), ('norm', 'layer_norm'), ('modulation', 'modulation'), ('lw-none', 'loss_weighting')):
        diff = {k for k, v in jobs[a].options.to_dict().items() if f.options.to_dict()[k] != v}
        assert diff == {key}, (a, diff)
    assert [a for _, a, _ in GAP_CHAIN][0] == 'faithful' and [a for _, a, _ in GAP_CHAIN][-1] == 'default'


@pytest.mark.slow
@pytest.mark.parametrize('table', ['2', '6', '7', '10'])
def test_cpu_reproduction_runs_at_a_tiny_budget(table, tmp_path, monkeypatch):
    monkeypatch.setenv('DIFFUSIONBLOCKS_DATA', str(tmp_path / 'cache'))
    over = dict(baseline_iterations=3, options=dict(n_eval=40, feature_iterations=5, sample_steps=4)) if table in ('2', '7', '10') else dict(baseline_iterations=3, options=dict(limit=200, test_limit=50))
    res = reproduce(table, out=tmp_path / 'out', overrides=over, device='cpu')
    assert all((r['ours'] is not None) == (r['arm'] is not None) for r in res['rows'])
