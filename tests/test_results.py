"""Results files and the README's generated headlines: a changed results file makes the README check fail until
`.ci/make_readme.py` is run again."""
import json, shutil, subprocess, sys
from pathlib import Path
import pytest
from diffusionblocks.results import load_results, render_headline, sync_blocks
from diffusionblocks.experiments.headlines import HEADLINES

ROOT = Path(__file__).resolve().parents[1]

@pytest.mark.parametrize('name', list(HEADLINES))
def test_headline_files_carry_provenance_and_render(name):
    paths = HEADLINES[name][0]
    for path in ([paths] if isinstance(paths, str) else paths):
        assert set(load_results(ROOT / 'nbs' / path)['provenance']) >= {'command', 'commit', 'date', 'hardware', 'seeds'}
    assert render_headline(name, HEADLINES, ROOT / 'nbs').startswith('* **')

def _copy(tmp):
    (tmp / '.ci').mkdir(); (tmp / 'nbs' / 'results').mkdir(parents=True)
    shutil.copy(ROOT / '.ci' / 'make_readme.py', tmp / '.ci')
    shutil.copy(ROOT / 'nbs' / 'index.ipynb', tmp / 'nbs')
    for paths, _ in HEADLINES.values():
        for path in ([paths] if isinstance(paths, str) else paths): shutil.copy(ROOT / 'nbs' / path, tmp / 'nbs' / path)
    shutil.copy(ROOT / 'README.md', tmp)

def _make_readme(tmp): subprocess.run([sys.executable, str(tmp / '.ci' / 'make_readme.py')], check=True, cwd=tmp)

def test_committed_readme_is_in_sync_with_results(tmp_path):
    _copy(tmp_path); _make_readme(tmp_path)
    assert (tmp_path / 'README.md').read_text() == (ROOT / 'README.md').read_text()

def test_changed_results_file_changes_readme(tmp_path):
    _copy(tmp_path)
    f = tmp_path / 'nbs' / HEADLINES['pdiff'][0]
    d = json.loads(f.read_text())
    for m in d['results'].values(): m['novelty_iou_generated'] = 0.5
    f.write_text(json.dumps(d))
    _make_readme(tmp_path)
    readme = (tmp_path / 'README.md').read_text()
    assert readme != (ROOT / 'README.md').read_text() and 'wrong-set IoU is 0.50 / 0.50' in readme
    nb = (tmp_path / 'nbs' / 'index.ipynb').read_text(); _make_readme(tmp_path)       # regenerated: stable again
    assert (tmp_path / 'nbs' / 'index.ipynb').read_text() == nb

def test_results_file_without_provenance_is_refused(tmp_path):
    _copy(tmp_path)
    f = tmp_path / 'nbs' / HEADLINES['language'][0]
    d = json.loads(f.read_text()); d.pop('provenance'); f.write_text(json.dumps(d))
    r = subprocess.run([sys.executable, str(tmp_path / '.ci' / 'make_readme.py')], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and 'lacks provenance' in r.stderr


def _commands(command:str) -> list:
    "The commands of a provenance record: split on ';' outside parentheses, each without its trailing note and env vars."
    parts, depth, cur = [], 0, ''
    for ch in command:
        depth += (ch == '(') - (ch == ')')
        if ch == ';' and depth == 0: parts.append(cur); cur = ''
        else: cur += ch
    out = []
    for p in parts + [cur]:
        p = p.strip()
        while p.endswith(')') and ' (' in p and not p.split(' (')[0].endswith(')') and '(' not in p.split(' ')[0]:
            p = p[:p.rindex(' (')].strip()                         # "cmd (a note)" -> "cmd"
        words = p.split()
        while words and '=' in words[0] and not words[0].startswith('-') and '(' not in words[0]: words.pop(0)
        if words: out.append(' '.join(words))
    return out

def _check_command(cmd:str):
    "A recorded command still runs as written: the CLI parses it, its notebook or script exists, its function exists."
    import shlex, re
    from diffusionblocks.cli import build_parser
    if re.match(r'^[A-Za-z_]\w*\(', cmd):
        from diffusionblocks._modidx import d
        name = cmd.split('(')[0]
        assert any(k.endswith('.' + name) for m in d['syms'].values() for k in m), f'no library function {name}'
        return
    words = shlex.split(cmd)
    if words[0] == 'diffusionblocks': build_parser().parse_args(words[1:])      # SystemExit on a removed flag
    elif words[0] == 'nbdev-test':
        pat = words[words.index('--file-re') + 1]
        assert any(re.search(pat, p.name) for p in (ROOT / 'nbs').glob('*.ipynb')), f'no notebook matches {pat!r}'
    elif words[0] in ('bash', 'python', 'python3') or words[0].startswith('gpu/'):
        script = words[1] if words[0] in ('bash', 'python', 'python3') else words[0]
        assert (ROOT / script).is_file(), f'{script} does not exist'
    else: raise AssertionError(f'unrecognised command {cmd!r}')

@pytest.mark.parametrize('path', sorted(p.name for p in (ROOT / 'nbs' / 'results').glob('*.json')))
def test_every_results_file_has_provenance_and_a_command_that_still_parses(path):
    pv = load_results(ROOT / 'nbs' / 'results' / path)['provenance']
    cmds = _commands(pv['command'])
    assert cmds, pv['command']
    for c in cmds: _check_command(c)

def test_a_broken_command_is_caught():
    assert _commands("A=1 diffusionblocks train --baseline (a note); nbdev-test --file-re 27b") == [
        'diffusionblocks train --baseline', 'nbdev-test --file-re 27b']
    from diffusionblocks.cli import CliError
    with pytest.raises((SystemExit, CliError), match='unrecognized'): _check_command('diffusionblocks train --no-such-flag 3')
    with pytest.raises(AssertionError, match='no notebook'): _check_command('nbdev-test --file-re 99_nothing')
    with pytest.raises(AssertionError, match='no library function'): _check_command('no_such_function(x=1)')
