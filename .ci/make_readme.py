#!/usr/bin/env python3
"""Write README.md from nbs/index.ipynb (nbdev-readme needs Quarto, which cannot be installed offline).

Markdown cells are copied verbatim; code cells become ```python fences, with their text outputs (if any) as
plain fences; cells marked `#| hide` are left out, and the directive lines of the rest are dropped.
"""
import json
from pathlib import Path

root = Path(__file__).resolve().parents[1]

def render(nb):
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source']).rstrip()
        if c['cell_type'] == 'markdown': parts.append(src.replace('](images/', '](nbs/images/')); continue
        lines = src.splitlines()
        if any(l.strip() in ('#| hide', '#|hide', '#| include: false') for l in lines): continue
        code = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
        if code: parts.append(f'```python\n{code}\n```')
        outs = [''.join(o.get('text', '')) or ''.join(o.get('data', {}).get('text/plain', '')) for o in c.get('outputs', [])]
        out = ''.join(outs).rstrip()
        if out: parts.append(f'```\n{out}\n```')
    return '<!-- Generated from nbs/index.ipynb by .ci/make_readme.py: edit the notebook, not this file. -->\n\n' + '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    nb = json.loads((root / 'nbs' / 'index.ipynb').read_text())
    (root / 'README.md').write_text(render(nb))
