"""Conversion of pretrained diffusion transformers into blocks (issue 16): our DiT runs and tiny randomly initialised diffusers
transformers of every supported class (a config only, no download) — converted, fine-tuned a few steps through `train --resume`
and sampled; routing by t; residency in memory-mapped safetensors under a memory limit."""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch, torch.nn as nn
from diffusionblocks.errors import ConfigError


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('data'); old = os.environ.get('DIFFUSIONBLOCKS_DATA'); os.environ['DIFFUSIONBLOCKS_DATA'] = str(d)
    yield d
    if old is None: os.environ.pop('DIFFUSIONBLOCKS_DATA', None)
    else: os.environ['DIFFUSIONBLOCKS_DATA'] = old


def tiny(name, seed=0, std=0.1):
    "A tiny diffusers transformer of each supported class, randomly initialised with gates away from zero."
    d = pytest.importorskip('diffusers')
    torch.manual_seed(seed)
    if name == 'dit': m = d.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=6, sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    elif name == 'sd3': m = d.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=6, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=12, out_channels=4, pos_embed_max_size=8)
    else: m = d.FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=3, num_single_layers=3, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=12, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    if std:
        for p in m.parameters(): nn.init.normal_(p, std=std)
    return m.eval()


# ------------------------------------------------------------------ the run system: convert -> train --resume -> sample
def _convert_and_finetune(tmp_path, name, **kw):
    import diffusionblocks.jobs.core as jc
    from diffusionblocks.tasks.converted.task import convert as _convert
    import diffusionblocks.jobs.core as jc
    convert = lambda *a, **k: _convert(*a, runs=jc, **k)
    src = tmp_path / f'{name}-src'; tiny(name, std=0.02).save_pretrained(str(src))
    r = convert(str(src), str(tmp_path / f'{name}-run'), baseline_iterations=4, **kw)
    before, job, _ = jc.load_run(r['run_dir'])
    m = jc.resume_run(r['run_dir'], progress=False, eval_settings=dict(n_eval=8, sample_steps=3))
    after, *_ = jc.load_run(r['run_dir'])
    return r, job, m, before, after


@pytest.mark.slow
@pytest.mark.parametrize('name', ['sd3', 'dit', 'flux'])
def test_convert_diffusers_finetune_and_sample(tmp_path, data_dir, name):
    r, job, m, before, after = _convert_and_finetune(tmp_path, name, blocks=3)
    assert (job.task, job.blocks, job.model['cls']) == ('converted', 3, type(tiny(name)).__name__)
    assert m['steps_per_block'] == [4, 4, 4] and all(torch.isfinite(torch.tensor(m['eval_loss_per_block'])))
    assert Path(m['samples']).exists() and abs(m['sample_std']) > 0
    if name != 'dit': assert (m['shift'], m['shift_source']) == (1.0, 'default')   # a model folder without a scheduler config
    for k in range(3):                                                       # every block moved, its adapter too (per-block copies)
        a, b = dict(before.blocks[k].named_parameters()), dict(after.blocks[k].named_parameters())
        assert any(not torch.equal(a[n], b[n]) for n in a if '.layers.' not in f'.{n}')
        assert any(not torch.equal(a[n], b[n]) for n in a if n.startswith('layers.'))


@pytest.mark.slow
def test_convert_diffusers_frozen_distill(tmp_path, data_dir):
    "shared='frozen' + distillation from the full model (kept in RUN/source): the shared adapter does not move."
    r, job, m, before, after = _convert_and_finetune(tmp_path, 'sd3', layers_per_block=2, shared='frozen', distill=True)
    assert (job.method, job.blocks) == ('distill', 3) and (Path(r['run_dir']) / 'source' / 'config.json').exists()
    sa, sb = before.blocks[0].adapter.state_dict(), after.blocks[0].adapter.state_dict()
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert after.process.describe()['type'] == 'Distill'


@pytest.mark.slow
def test_convert_own_run_resume_sequential(tmp_path, data_dir):
    "A digits DiT run (end to end) → B = 3 with the sequential schedule; the pretrained layers are in the iteration-0 checkpoint."
    import diffusionblocks.jobs.core as jc
    from diffusionblocks.tasks.converted.task import convert as _convert
    import diffusionblocks.jobs.core as jc
    convert = lambda *a, **k: _convert(*a, runs=jc, **k)
    from diffusionblocks.checkpoint import RunDir
    jc.run_job(jc.make_job('digits', baseline=True, iterations=3), out=tmp_path / 'e2e', progress=False, evaluate=False)
    convert(tmp_path / 'e2e', tmp_path / 'b3', blocks=3, baseline_iterations=3, block_schedule='sequential')
    src, *_ = jc.load_run(tmp_path / 'e2e'); cv, job, _ = jc.load_run(tmp_path / 'b3')
    la, lb = [l for b in src.blocks for l in b.layers], [l for b in cv.blocks for l in b.layers]
    assert all(torch.equal(x, y) for a, b in zip(la, lb, strict=True) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    m = jc.resume_run(tmp_path / 'b3', progress=False, evaluate=False)
    assert m['steps_per_block'] == [3, 3, 3]
    assert [r['block'] for r in RunDir(tmp_path / 'b3').metrics()] == sorted(r['block'] for r in RunDir(tmp_path / 'b3').metrics())
    with pytest.raises(ConfigError, match='already holds a run'): convert(tmp_path / 'e2e', tmp_path / 'b3', blocks=3)
    # the per-block LoRA hook: only the low-rank adapters move when the converted run fine-tunes
    convert(tmp_path / 'e2e', tmp_path / 'lora', blocks=3, baseline_iterations=2, lora=dict(rank=2))
    a, *_ = jc.load_run(tmp_path / 'lora'); jc.resume_run(tmp_path / 'lora', progress=False, evaluate=False); b, *_ = jc.load_run(tmp_path / 'lora')
    moved = [n for (n, x), y in zip(a.state_dict().items(), b.state_dict().values()) if not torch.equal(x, y)]
    assert moved and all('lora_' in n for n in moved)


def test_cli_convert_command(tmp_path, capsys):
    "`convert` is the converted task's Command: its parser is made from the typed ConvertArgs; bad values are one line."
    from diffusionblocks.cli import build_parser, main
    a = build_parser().parse_args(['convert', 'x/y', '--blocks', '3', '--shared', 'frozen', '--distill', '--out', str(tmp_path / 'r')])
    assert (a.source, a.blocks, a.shared, a.distill) == ('x/y', '3', 'frozen', 'true')
    for argv, msg in [(['--blocks', '0'], 'option blocks must be an integer in [1, 1024]'), (['--baseline-iterations', '0'], 'option baseline_iterations must be'),
                      (['--baseline-iterations', '0'], 'option baseline_iterations must be'), (['--shared', 'tied'], 'one of copy, frozen')]:
        assert main(['convert', str(tmp_path), *argv, '--out', str(tmp_path / 'r')]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count('\n') == 1, err
    assert not (tmp_path / 'r').exists()


# ------------------------------------------------------------------ residency: only the active block in process memory
LIMIT_SCRIPT = textwrap.dedent('''
    import json, re, resource, sys, torch
    from diffusionblocks.tasks.image_generation.dit import dit_blocks, DiTConfig
    from diffusionblocks.train import Trainer, TrainConfig
    from diffusionblocks.tasks.converted.convert import MappedStore, bind_checkpoint, empty_weights
    mode, run, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = (torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    with empty_weights(): m = dit_blocks(DiTConfig(6, 512, 8, 2), 8, 1, 10, blocks=6)
    vm = lambda: int(re.search(r'VmData:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (vm() + budget, resource.RLIM_INFINITY))
    try:
        store = MappedStore('cpu')
        bind_checkpoint(m, run, store)
        if mode == 'all':
            for p in m.parameters(): p.data = p.data.clone()            # materialise every block in process memory
        cfg = TrainConfig(iterations=3, batch_size=4, progress=False, residency='active' if mode == 'active' else 'all')
        Trainer(m, cfg, data, device='cpu', **({'offload': store} if mode == 'active' else {})).fit()
        print(json.dumps({'ok': True}))
    except (RuntimeError, MemoryError) as e: print(json.dumps({'ok': False, 'error': str(e)[:80]}))
''')


@pytest.mark.slow
def test_mapped_store_trains_a_model_larger_than_the_memory_limit(tmp_path):
    "RLIMIT_DATA counts anonymous memory, not shared file maps: whole-model training fails where active-block training fits."
    from diffusionblocks.tasks.image_generation.dit import dit_blocks, DiTConfig
    from diffusionblocks.train import Trainer, TrainConfig
    torch.manual_seed(0)
    m = dit_blocks(DiTConfig(6, 512, 8, 2), 8, 1, 10, blocks=6)
    Trainer(m, TrainConfig(iterations=1, progress=False), run_dir=tmp_path / 'run', device='cpu').save()
    n = sum(p.numel() for p in m.parameters()) * 4                            # bytes of the weights (fp32)
    script = tmp_path / 'limit.py'; script.write_text(LIMIT_SCRIPT)
    res = {mode: json.loads(subprocess.run([sys.executable, str(script), mode, str(tmp_path / 'run'), str(n)], capture_output=True, text=True,
                                           env={**os.environ, 'OMP_NUM_THREADS': '1', 'MALLOC_MMAP_THRESHOLD_': '65536'}).stdout.strip().splitlines()[-1]) for mode in ('all', 'active')}
    assert res['active']['ok'] and not res['all']['ok'], res


# ------------------------------------------------------------------ residency from the run layer and the CLI (issue 24)
def _checkpoint_params(run_dir):
    from diffusionblocks.checkpoint import RunDir, block_file, read_file
    _, d = RunDir(run_dir).load()
    return {f'{k}/{n}': t for k in range(3) for n, t in read_file(d / block_file(k))[0].items() if n.startswith(('param.', 'opt.'))}


def test_resume_mapped_equals_resume_all(tmp_path, data_dir):
    "`train --resume RUN --residency mapped` (built empty, bound to the checkpoint's files) takes bit-for-bit the steps of an all-resident resume; RUN/mapped is removed."
    import diffusionblocks.jobs.core as jc
    from diffusionblocks.tasks.converted.task import convert
    from diffusionblocks.cli import main
    src = tmp_path / 'src'; tiny('sd3', std=0.02).save_pretrained(str(src))
    for r in ('all', 'mapped'): convert(str(src), str(tmp_path / r), blocks=3, baseline_iterations=3, runs=jc)
    jc.resume_run(tmp_path / 'all', progress=False, evaluate=False)
    assert main(['train', '--resume', str(tmp_path / 'mapped'), '--residency', 'mapped', '--no-eval', '--quiet', '--device', 'cpu']) == 0
    a, b = _checkpoint_params(tmp_path / 'all'), _checkpoint_params(tmp_path / 'mapped')
    assert a.keys() == b.keys() and any(n.startswith('0/opt.') for n in a) and all(torch.equal(a[n], b[n]) for n in a)
    assert json.loads((tmp_path / 'mapped' / 'metrics.json').read_text())['residency'] == 'mapped' and not (tmp_path / 'mapped' / 'mapped').exists()
    with pytest.raises(ConfigError, match='--residency must be one of all, active, mapped'): jc.resume_run(tmp_path / 'all', residency='disk')



CLI_LIMIT_SCRIPT = textwrap.dedent('''
    import faulthandler, json, re, resource, sys
    faulthandler.dump_traceback_later(300, exit=True)       # an allocation failing inside a native library must not hang the test
    import datasets, diffusers, sklearn.datasets
    import diffusionblocks.jobs.core as jc
    from diffusionblocks.cli import main
    jc.load_tasks(); diffusers.SD3Transformer2DModel       # every import first (datasets reserves ~1 GB of address space): the limit is for the run
    run, residency, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
    vm = lambda: int(re.search(r'VmData:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (vm() + budget, resource.RLIM_INFINITY))
    try: print(json.dumps({'rc': main(['train', '--resume', run, '--residency', residency, '--no-eval', '--quiet', '--device', 'cpu'])}))
    except (RuntimeError, MemoryError) as e: print(json.dumps({'rc': None, 'error': str(e)[:80]}))
''')


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='RLIMIT_DATA and /proc/self/status are Linux')
def test_cli_mapped_finetunes_a_converted_model_larger_than_the_memory_limit(tmp_path, data_dir):
    """A converted SD3 (12 layers, B = 12, 239 MiB of fp32 weights) fine-tunes through `train --resume RUN --residency mapped`
    in a process whose anonymous memory (RLIMIT_DATA, above its imports) is limited to the size of the weights; the same
    command with every block resident dies. Peak anonymous memory of the mapped run ≈ 7/B of the weights: the active
    block (weights, gradients, AdamW moments: 4/B) and one block file being serialised at checkpoint time (3/B)."""
    import diffusionblocks.jobs.core as jc
    from diffusionblocks.tasks.converted.task import convert
    from diffusionblocks.checkpoint import RunDir
    d = pytest.importorskip('diffusers')
    torch.manual_seed(0)
    net = d.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=12, attention_head_dim=64, num_attention_heads=6,
                                  joint_attention_dim=16, caption_projection_dim=384, pooled_projection_dim=12, out_channels=4, pos_embed_max_size=8)
    weights = sum(p.numel() for p in net.parameters()) * 4
    assert weights > 200 * 2**20
    net.save_pretrained(str(tmp_path / 'src')); del net
    for r in ('mapped', 'all'): convert(str(tmp_path / 'src'), str(tmp_path / r), blocks=12, baseline_iterations=1, runs=jc)
    script = tmp_path / 'limit.py'; script.write_text(CLI_LIMIT_SCRIPT)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MALLOC_MMAP_THRESHOLD_': '65536'}
    def run(residency):
        p = subprocess.run([sys.executable, str(script), str(tmp_path / residency), residency, str(weights)], capture_output=True, text=True, env=env)
        last = (p.stdout.strip().splitlines() or [''])[-1]
        return json.loads(last) if last.startswith('{') else {'rc': None, 'error': p.stderr[-300:]}
    res = {r: run(r) for r in ('mapped', 'all')}
    assert res['mapped']['rc'] == 0 and res['all']['rc'] != 0, res
    state = RunDir(tmp_path / 'mapped').load()[0]
    assert state['steps'] == [1] * 12 and json.loads((tmp_path / 'mapped' / 'metrics.json').read_text())['residency'] == 'mapped'
    assert not (tmp_path / 'all' / 'metrics.json').exists()
