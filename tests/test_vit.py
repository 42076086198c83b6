"Cross-module tests of the ViT classifier: a run through the one runner and the classify command, and the block-local baselines through the engine. (The model's own tests are in nbs/15_vit.ipynb.)"
import json
import torch
from diffusionblocks.tasks.classification.vit import ViTConfig
from diffusionblocks.tasks.classification.baselines import ContrastiveFF, NoPropDT, BackpropCNN, cnn_blocks
from diffusionblocks.train import Trainer, TrainConfig

torch.set_num_threads(1)
TINY = ViTConfig(8, 1, 2, 16, 6, 2, 32, 0.)
QUIET = dict(progress=False, tensorboard=False)
BF = lambda b: (b[1], {'x': b[0]})


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_local_baselines_train_through_the_engine():
    x, y = data(32)
    for model in (ContrastiveFF(TINY, 5, blocks=3), NoPropDT(1, 8, 5, T=3), BackpropCNN(1, 8, 5, T=3), cnn_blocks(1, 8, 5)):
        tr = Trainer(model, TrainConfig(iterations=3 * model.num_blocks, batch_size=16, **QUIET), (x, y), batch_fn=BF, device='cpu')
        s = tr.fit()
        assert sum(s['steps']) == 3 * model.num_blocks and all(torch.isfinite(torch.tensor(v)) for v in s['final_loss'].values())


def test_classification_run_through_the_runner_and_the_command(tmp_path, monkeypatch, capsys):
    "A vit-digits run through the one runner: metrics, the B× budget, `classify RUN`, and a refusal to overwrite it."
    import diffusionblocks.jobs.core as jc
    from diffusionblocks.cli import main
    monkeypatch.setenv('DIFFUSIONBLOCKS_DATA', str(tmp_path / 'cache'))
    job = jc.make_job('vit-digits', baseline_iterations=3, options=dict(limit=200, test_limit=50, sample_steps=1, curve=[2]))
    m = jc.run_job(job, out=tmp_path / 'run', device='cpu', progress=False)
    saved = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert saved['method'] == 'dblocks' and saved['n_test'] == 50 and saved['iterations'] == 9 and saved['sample_steps'] == 1
    assert saved['block_calls'] == 2 and set(saved['accuracy_vs_sample_steps']) == {'1', '2'}
    assert set(saved) >= {'accuracy', 'ece', 'nll', 'train_seconds', 'hardware', 'steps_per_block'}
    assert main(['classify', str(tmp_path / 'run'), '--sample-steps', '1', '2']) == 0
    out = json.loads(capsys.readouterr().out)
    key = 'accuracy_vs_sample_steps_paper_inference'               # the headline inference, named as in metrics.json
    assert set(out[key]) == {'1', '2'} and out[key]['1'] == saved['accuracy'] == saved[key]['1']
    assert main(['train', '--config', 'vit-digits', '--out', str(tmp_path / 'run'), '--quiet']) == 2
    assert 'already holds a run' in capsys.readouterr().err
