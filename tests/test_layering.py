"""The package's shape, checked: each module imports only its own layer or the ones below (the jobs layer and the CLI
sit on top and nothing below imports them), the CLI names its sub-commands by explicit imports, and methods live in
their classes or use `@patch` (no `Cls.name = _function` assignments)."""
import ast, re
from pathlib import Path
import diffusionblocks

PKG = Path(diffusionblocks.__file__).parent
LAYERS = [{'errors'},
          {'theory', 'noise', 'flow', 'partition', 'layers', 'processes', 'blocks', 'sampling'},                  # the core
          {'engine', 'residency', 'checkpoint', 'train', 'parallel', 'data', 'tokens', 'fid', 'lm_metrics', 'latents'},                                 # engine, data, metrics
          {'dit', 'vit', 'baselines', 'profiles', 'mdm', 'ar', 'huginn', 'pdiff', 'pdiff_models', 'lora', 'convert'},                              # architectures
          {'jobs.core', 'jobs.image', 'jobs.classify', 'jobs.text', 'jobs.lm', 'jobs.recurrent', 'jobs.pdiff', 'jobs.convert', 'jobs.reproduce', 'jobs.parallel', 'bench'},                  # the jobs layer
          {'cli'}]
LEVEL = {m: i for i, ms in enumerate(LAYERS) for m in ms}


def modules():
    for p in sorted(PKG.rglob('*.py')):
        name = '.'.join(p.relative_to(PKG).with_suffix('').parts)
        if name in ('__init__', '_modidx') or name.endswith('__init__'): continue
        yield name, p


def imported(name, path):
    "The package modules a module imports (relative or absolute)."
    tree, pkg = ast.parse(path.read_text()), name.rsplit('.', 1)[0] if '.' in name else ''
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split('.')[:len(pkg.split('.')) - (node.level - 1)] if pkg else []
                mod = '.'.join([*[b for b in base if b], *(node.module.split('.') if node.module else [])])
            elif node.module and node.module.startswith('diffusionblocks'): mod = node.module.removeprefix('diffusionblocks').lstrip('.')
            else: continue
            for a in node.names:
                full = f'{mod}.{a.name}' if mod else a.name
                yield full if full in LEVEL else mod
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith('diffusionblocks.'): yield a.name.removeprefix('diffusionblocks.')


def test_every_module_has_a_layer():
    assert {n for n, _ in modules()} <= set(LEVEL), sorted({n for n, _ in modules()} - set(LEVEL))


def test_nothing_imports_upward():
    bad = [(n, m) for n, p in modules() for m in imported(n, p) if m in LEVEL and LEVEL[m] > LEVEL[n]]
    assert not bad, bad


def test_cli_imports_its_commands_explicitly():
    src = (PKG / 'cli.py').read_text()
    assert 'importlib' not in src and 'import_module' not in src


def test_no_method_assignment():
    pat = re.compile(r'^[A-Z]\w*\.\w+(\s*,\s*[A-Z]\w*\.\w+)*\s*=\s*_?[a-z_]\w*(\s*,\s*_?[a-z_]\w*)*\s*$', re.M)
    hits = [(n, m.group(0)) for n, p in modules() for m in pat.finditer(p.read_text())]
    assert not hits, hits
