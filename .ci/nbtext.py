#!/usr/bin/env python3
"""Round-trip notebooks through a plain-text form, for editing notebooks with a text editor or a script.

    python .ci/nbtext.py to-text nbs/01_noise.ipynb  > /tmp/01_noise.py   # notebook -> text
    python .ci/nbtext.py to-nb /tmp/01_noise.py nbs/01_noise.ipynb       # text -> notebook (outputs dropped)

Text form: a line `# %%` starts a code cell, `# %% [markdown]` a markdown cell (its lines are the raw markdown).
The notebook is the source of truth; run `nbdev-clean` after `to-nb`, then `nbdev-export`.
"""
import hashlib, json, sys
from pathlib import Path

CODE, MD = '# %%', '# %% [markdown]'

def to_text(nb_path):
    nb = json.loads(Path(nb_path).read_text())
    out = []
    for c in nb['cells']:
        out.append(MD if c['cell_type'] == 'markdown' else CODE)
        src = ''.join(c['source'])
        out.append(src)
    return '\n'.join(out) + '\n'

def parse(text):
    cells, kind, buf = [], None, []
    def flush():
        if kind is None: return
        src = '\n'.join(buf).strip('\n')
        cells.append((kind, src))
    for line in text.splitlines():
        if line.rstrip() in (CODE, MD):
            flush(); kind, buf = ('markdown' if line.rstrip() == MD else 'code'), []
        else: buf.append(line)
    flush()
    return cells

def to_nb(text, kernel='python3'):
    cells = []
    for i, (kind, src) in enumerate(parse(text)):
        lines = src.splitlines(keepends=True)
        cid = hashlib.sha1(f'{i}:{src}'.encode()).hexdigest()[:8]   # stable ids: export and clean agree
        c = {'cell_type': kind, 'id': cid, 'metadata': {}, 'source': lines}
        if kind == 'code': c.update(execution_count=None, outputs=[])
        cells.append(c)
    return {'cells': cells, 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': kernel}},
            'nbformat': 4, 'nbformat_minor': 5}

if __name__ == '__main__':
    cmd, *args = sys.argv[1:]
    if cmd == 'to-text': sys.stdout.write(to_text(args[0]))
    elif cmd == 'to-nb': Path(args[1]).write_text(json.dumps(to_nb(Path(args[0]).read_text()), indent=1) + '\n')
    else: sys.exit(f'unknown command {cmd!r}: use to-text or to-nb')
