#!/usr/bin/env python3
"""Write README.md from nbs/index.ipynb (nbdev-readme needs Quarto, which cannot be installed offline).

First the headline blocks of index.ipynb (`<!-- results: NAME -->` … `<!-- /results -->`) are re-rendered from their
results files (`diffusionblocks.results.sync_blocks`, registry `diffusionblocks.experiments.headlines.HEADLINES`);
the notebook is rewritten only when a block changed. Then markdown cells are copied verbatim; code cells become
```python fences, with their text outputs (if any) as plain fences; cells marked `#| hide` are left out, and the
directive lines of the rest are dropped.
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

def sync_headlines(nb) -> bool:
    "Re-render the notebook's headline blocks from their results files; True when one changed."
    from diffusionblocks.results import sync_blocks
    from diffusionblocks.experiments.headlines import HEADLINES
    changed = False
    for c in nb['cells']:
        if c['cell_type'] != 'markdown': continue
        src = ''.join(c['source'])
        new = sync_blocks(src, HEADLINES, root / 'nbs')
        if new != src: c['source'], changed = new.splitlines(keepends=True), True
    return changed

if __name__ == '__main__':
    path = root / 'nbs' / 'index.ipynb'
    nb = json.loads(path.read_text())
    if sync_headlines(nb): path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    (root / 'README.md').write_text(render(nb))
