"Cross-module tests of the ViT classifier: a run through the one runner and the classify command. (The model's own tests are in nbs/15_vit.ipynb, the block-local baselines' in nbs/16_local_baselines.ipynb.)"
import json
import torch

torch.set_num_threads(1)


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
