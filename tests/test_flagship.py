"""The flagship (issue 27): `convert --batch-size --train-blocks --lora-rank`, parts trained from the CLI and assembled by
`merge`, and the whole CPU pipeline of `37_flagship` on a tiny SD3 (every stage in its own process, exactness checked)."""
import json, os
from pathlib import Path
import pytest, torch
from diffusionblocks.errors import ConfigError


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('data'); old = os.environ.get('DIFFUSIONBLOCKS_DATA'); os.environ['DIFFUSIONBLOCKS_DATA'] = str(d)
    yield d
    if old is None: os.environ.pop('DIFFUSIONBLOCKS_DATA', None)
    else: os.environ['DIFFUSIONBLOCKS_DATA'] = old


def _source(path):
    d = pytest.importorskip('diffusers')
    from diffusionblocks.experiments.flagship import TINY
    torch.manual_seed(0); d.SD3Transformer2DModel(**TINY).save_pretrained(str(path))


def test_convert_parts_train_and_merge(tmp_path, data_dir):
    "Two parts converted with --train-blocks (batch 2, LoRA rank 2) train only their block through `train --resume --residency mapped`; `merge` assembles them."
    from diffusionblocks.cli import main
    from diffusionblocks.checkpoint import RunDir
    _source(tmp_path / 'src')
    for k in (0, 1):
        assert main(['convert', str(tmp_path / 'src'), '--out', str(tmp_path / f'p{k}'), '--blocks', '2', '--batch-size', '2', '--lora-rank', '2',
                     '--baseline-iterations', '2', '--train-blocks', str(k), '--json']) == 0
        assert main(['train', '--resume', str(tmp_path / f'p{k}'), '--residency', 'mapped', '--no-eval', '--quiet', '--device', 'cpu']) == 0
        state = json.loads((RunDir(tmp_path / f'p{k}').latest() / 'state.json').read_text())
        assert state['steps'] == [2 if j == k else 0 for j in range(2)] and state['config']['batch_size'] == 2
    assert main(['merge', str(tmp_path / 'p0'), str(tmp_path / 'p1'), '--out', str(tmp_path / 'merged')]) == 0
    assert json.loads((RunDir(tmp_path / 'merged').latest() / 'state.json').read_text())['steps'] == [2, 2]


def test_convert_refuses_bad_parts(tmp_path, data_dir):
    import diffusionblocks.jobs.core as jc
    from diffusionblocks.tasks.converted.task import convert
    _source(tmp_path / 'src')
    with pytest.raises(ConfigError, match=r'--train-blocks must name blocks in 0..1'): convert(str(tmp_path / 'src'), str(tmp_path / 'a'), blocks=2, train_blocks=[2], runs=jc)
    with pytest.raises(ConfigError, match='--batch-size must be an integer >= 1'): convert(str(tmp_path / 'src'), str(tmp_path / 'b'), blocks=2, batch_size=0, runs=jc)


@pytest.mark.slow
def test_flagship_pipeline_tiny(tmp_path):
    "The CPU flagship's stages on a tiny SD3: end to end completes (tiny), the mapped CLI part runs train every block, one block is bit-exact, the merged LoRA parts equal their parts."
    pytest.importorskip('diffusers')
    from diffusionblocks.experiments.flagship import flagship_cpu, TINY, summary
    R = flagship_cpu(tmp_path / 'run', steps=2, blocks=2, parts=((0,), (1,)), lora_parts=((0,), (1,)), lora_steps=2, lora_rank=2, limit_gib=4, config=TINY, log=None)
    assert R['exact']['equal'] and R['e2e']['ok'] and sorted(R['losses']) == ['0', '1']
    assert R['merge']['equal'] and R['merge']['check']['steps'] == [2, 2] and set(R['lora']['files']) == {'0'}
    assert 'bit-identical' in summary(R) and not any((tmp_path / 'run').glob('ft*')) and not any((tmp_path / 'run').glob('lora*'))
