"""The memory planner (issue 27): its parts, its checks against every measured peak under nbs/results, and `bench plan`."""
import json
from pathlib import Path
import pytest
from diffusionblocks.errors import ConfigError
from diffusionblocks.plan import (training_memory, check_measurements, plan_table, model_blocks, parse_bytes, layer_activations,
                                  MODELS, OPTIMIZER_BYTES)

RESULTS = Path(__file__).resolve().parents[1] / 'nbs' / 'results'


def test_parts_and_app_g():
    "App. G's (4P + A)·L/B is the special case; gradients and moments only for trainable parameters; the checkpoint write is a phase."
    P, L, A = 40, 12, 5                                                   # one layer's weight bytes, layers, activation bytes
    assert training_memory(120, 1, layers=L, layer_activation_bytes=A, io_activation_bytes=0)['peak'] == (4 * P + A) * L
    assert training_memory(120, 4, 'active', layers=L, layer_activation_bytes=A, io_activation_bytes=0)['peak'] == (4 * P + A) * L / 4
    assert training_memory(120, 4, 'all', layers=L, layer_activation_bytes=A, io_activation_bytes=0)['peak'] == 3 * P * L + (P + A) * L / 4
    lora = training_memory(800, 8, 'mapped', trainable_params=1)
    assert (lora['weights'], lora['gradients'], lora['optimizer_state']) == (400, 4, 8)
    m = training_memory(800, 8, 'mapped', checkpoint=True)
    assert (m['step'], m['save'], m['peak'], m['phase']) == (1600, 2400, 2400, 'checkpoint')
    assert training_memory(800, 8, optimizer='sgd')['optimizer_state'] == 0 and set(OPTIMIZER_BYTES) >= {'adamw', 'sgd'}
    assert training_memory(800, 8, precision='bf16')['cast_cache'] == 200


@pytest.mark.parametrize('kw, msg', [(dict(params=-1), 'params must be'), (dict(params=10, blocks=0), 'blocks must be'),
                                     (dict(params=10, residency='disk'), 'residency must be one of'),
                                     (dict(params=10, optimizer='adagrad'), 'optimizer must be one of'),
                                     (dict(params=10, layer_activation_bytes=3), 'needs layers')])
def test_bad_input_is_one_line(kw, msg):
    with pytest.raises(ConfigError, match=msg) as e: training_memory(**kw)
    assert '\n' not in str(e.value)


def test_within_15_percent_of_every_measured_peak():
    "Every measured training peak under nbs/results (bench memory CPU + H100, conversion, flagship) within 15 %."
    rows = [r for r in check_measurements(RESULTS) if not r['calibration']]
    files = {r['file'] for r in rows}
    assert {'bench-memory-dit-s2-cuda.json', 'bench-memory-dit-s2-cpu.json', 'convert-memory-cpu.json'} <= files
    if (RESULTS / 'flagship-cpu.json').exists(): assert 'flagship-cpu.json' in files
    bad = [(r['file'], r['blocks'], r['residency'], round(r['error'], 3)) for r in rows if abs(r['error']) > 0.15]
    assert not bad, bad


def test_models_and_plan():
    assert model_blocks('sd3-medium', 1)['source_params'] == 2028328000
    assert model_blocks('flux-dev', 1)['source_params'] == 11901408320
    rows = plan_table('sd3-medium', parse_bytes('16GB'), [1, 2, 4, 8])
    assert [r['fits'] for r in rows] == [False, False, True, True] and rows[0]['step'] > 32e9
    cpu = plan_table('sd3-flagship', parse_bytes('23GiB'), [1, 8], device='cpu', batch_size=2)
    assert not cpu[0]['fits'] and cpu[1]['fits'] and cpu[1]['phase'] == 'checkpoint'
    lora = plan_table('sd3-medium', parse_bytes('16GB'), [8], lora_rank=16)[0]
    assert lora['optimizer_state'] < 0.05 * rows[-1]['optimizer_state']
    with pytest.raises(ConfigError, match='unknown model'): plan_table('sd4', 1)
    with pytest.raises(ConfigError, match='is not a size'): parse_bytes('16 gallons')
    assert abs(layer_activations(8, 256, 384) - 53.5e6) < 1e5


def test_cli_bench_plan(capsys):
    from diffusionblocks.cli import main
    assert main(['bench', 'plan', '--model', 'sd3-medium', '--memory', '16GB', '--blocks', '1', '4', '8']) == 0
    out = capsys.readouterr().out
    assert 'smallest B that fits: 4' in out and 'sd3-medium' in out
    assert main(['bench', 'plan', '--model', 'sd3-medium', '--memory', '16GB', '--blocks', '1', '--json']) == 1
    assert json.loads(capsys.readouterr().out)['rows'][0]['fits'] is False
    assert main(['bench', 'plan', '--memory', '16GB']) == 2
    err = capsys.readouterr().err
    assert 'needs --model' in err and err.count('\n') == 1
