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
