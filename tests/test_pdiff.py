"Tests of the p-diff checkpoint tools: exact subset and standardisation round trips, wrong-set IoU and novelty against brute force, the Zeng et al. controls' statistics, deterministic checkpoint collection that changes only the subset, evaluation and the plot."
import json, math
import pytest, torch
from diffusionblocks.errors import ConfigError
from diffusionblocks.tasks.parameter_diffusion.pdiff import (SmallCNN, ResNetSmall, norm_subset, subset_shapes, get_subset, set_subset, Standardizer,
                                   train_classifier, collect_checkpoints, evaluate_params, wrong_iou, novelty,
                                   noise_controls, average_controls, gaussian_controls, weight_average, accuracy_novelty_plot)

torch.set_num_threads(1)


def toy_data(n=96, seed=0, classes=3):
    "8×8 one-channel noise images whose class shifts the brightness, with a per-image jitter: learnable, not perfectly."
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, 8, 8, generator=g) + (y.float() - 1)[:, None, None, None] * 0.6 + 0.25 * torch.randn(n, 1, 1, 1, generator=g)
    return x, y


def tiny(seed=0):
    torch.manual_seed(seed)
    return SmallCNN(1, 3, width=4)


def bn_checkpoints(K=25, C=5, seed=0):
    "Raw checkpoints of one BN layer with running stats: weight ≈ 1, bias, mean, positive skewed variance."
    g = torch.Generator().manual_seed(seed)
    P = torch.cat([1 + 0.2 * torch.randn(K, C, generator=g), 0.1 * torch.randn(K, C, generator=g),
                   torch.randn(K, C, generator=g), torch.exp(torch.randn(K, C, generator=g))], 1)
    return P, ['bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var'], [(C,)] * 4


def test_standardizer_exact_inverse_and_state():
    P, names, shapes = bn_checkpoints()
    st = Standardizer.fit(P, names, shapes)
    Z = st.encode(P)
    assert Z.dtype == torch.float32 and Z.shape == P.shape
    for part in Z.double().split(5, 1):                                  # per tensor: mean 0, mean per-checkpoint std 1
        assert abs(part.mean()) < 1e-5 and abs(part.std(1).mean() - 1) < 1e-5
    torch.testing.assert_close(st.decode(Z), P, atol=1e-5, rtol=1e-5)
    v = P[:, 15:]; p = 0.95 * v.mean(1).mean()                           # the running_var log map, by hand
    u = torch.log(v.double() / p + 0.05)
    torch.testing.assert_close(Z[:, 15:].double(), (u - u.mean(1).mean()) / u.std(1).mean(), atol=1e-5, rtol=1e-5)
    st2 = Standardizer.from_state_dict(json.loads(json.dumps(st.state_dict())))
    torch.testing.assert_close(st2.encode(P), Z)
    assert (st.decode(torch.full((1, 20), -50.))[0, 15:] > 0).all()    # decoded variances are clipped positive


def test_standardizer_rejects_mismatch():
    P, names, shapes = bn_checkpoints()
    with pytest.raises(ConfigError): Standardizer.fit(P[:, :-1], names, shapes)


@pytest.mark.parametrize('stats', [False, True])
def test_subset_round_trip_exact(stats):
    m = ResNetSmall(1, 4, width=4, blocks=(1, 1))
    names = norm_subset(m, stats=stats)
    assert names[:4] == ['layers.1.bn1.weight', 'layers.1.bn1.bias'] + (['layers.1.bn1.running_mean', 'layers.1.bn1.running_var'] if stats else ['layers.1.bn2.weight', 'layers.1.bn2.bias'])
    D = sum(math.prod(s) for s in subset_shapes(m, names))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    v = torch.randn(D)
    assert torch.equal(get_subset(set_subset(m, names, v), names), v)
    changed = {k for k, t in m.state_dict().items() if not torch.equal(t, before[k])}
    assert changed == set(names)
    with pytest.raises(ConfigError): set_subset(m, names, torch.randn(D + 1))
    with pytest.raises(ConfigError): get_subset(m, ['nope.weight'])


def test_wrong_iou_matches_sets():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(6, 40, generator=g) < 0.3, torch.rand(5, 40, generator=g) < 0.3
    a[0] = False; b[0] = False                                           # empty sets
    iou = wrong_iou(a, b)
    for i in range(6):
        for j in range(5):
            A, B = set(a[i].nonzero().flatten().tolist()), set(b[j].nonzero().flatten().tolist())
            assert iou[i, j] == pytest.approx(len(A & B) / len(A | B) if A | B else 1.0)
    assert torch.equal(wrong_iou(a, a).diagonal(), torch.ones(6, dtype=torch.float64))


def test_novelty_brute_force():
    g = torch.Generator().manual_seed(1)
    P, W = torch.randn(7, 9, generator=g), torch.rand(7, 30, generator=g) < 0.4
    nv = novelty(P, P, W, W, exclude_self=True)
    iou, d = wrong_iou(W, W), torch.cdist(P.double(), P.double())
    for i in range(7):
        others = [j for j in range(7) if j != i]
        assert nv['max_iou'][i] == pytest.approx(max(iou[i, j].item() for j in others))
        assert nv['min_l2'][i] == pytest.approx(min(d[i, j].item() for j in others))
    nv2 = novelty(P[:3], P, W[:3], W)                                    # judged against themselves: IoU 1, L2 0
    assert torch.equal(nv2['max_iou'], torch.ones(3, dtype=torch.float64)) and torch.all(nv2['min_l2'] < 1e-6)


def test_controls_statistics():
    g = torch.Generator().manual_seed(2)
    K, D = 200, 30
    P = 1 + 2 * torch.randn(K, D, generator=g)
    A = average_controls(P, 3000, k=16, seed=0)
    assert A.shape == (3000, D)
    assert A.std(0).mean() / P.std(0).mean() == pytest.approx(0.25 * math.sqrt((K - 16) / (K - 1)), rel=0.06)
    assert torch.equal(A, average_controls(P, 3000, k=16, seed=0))
    G = gaussian_controls(P, 5000, seed=0)
    torch.testing.assert_close(G.mean(0), P.mean(0), atol=0.15, rtol=0)
    torch.testing.assert_close(G.std(0), P.std(0), atol=0.1, rtol=0)
    N = noise_controls(P, [0.06, 0.12], 100, seed=0)
    assert list(N) == [0.06, 0.12] and all(v.shape == (100, D) for v in N.values())
    for s, v in N.items():                                               # each is an original plus s·ε
        resid = v[:, None] - P[None]
        nearest = resid.norm(dim=-1).argmin(1)
        assert resid[torch.arange(100), nearest].std() == pytest.approx(s, rel=0.05)
    assert noise_controls(P, 0.06, 100, seed=0).shape == (100, D)
    torch.testing.assert_close(weight_average(P), P.mean(0))
    with pytest.raises(ConfigError): average_controls(P[:8], 4, k=16)


def test_noise_controls_standardized_space():
    P, names, shapes = bn_checkpoints()
    st = Standardizer.fit(P, names, shapes)
    Z0 = noise_controls(P, 0.0, 20, seed=3, space='standardized', standardizer=st)
    assert ((Z0[:, None] - P[None]).abs().amax(-1).min(1).values < 1e-4).all()   # amplitude 0: the originals themselves
    Z = noise_controls(P, 0.05, 400, seed=3, space='standardized', standardizer=st)
    assert (Z[:, 15:] > 0).all()                                         # running variances stay positive
    with pytest.raises(ConfigError): noise_controls(P, 0.05, 4, space='standardized')


def test_collect_checkpoints_deterministic_and_only_subset_changes():
    x, y = toy_data()
    net = train_classifier(tiny(), (x, y), iterations=40, lr=1e-2, seed=0, device='cpu')
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copies = []
    h = net.register_forward_pre_hook(lambda mod, inp: copies.append(mod))   # deepcopy keeps the hook: it sees the copy
    names = norm_subset(net)                                             # weights and biases only
    ck = collect_checkpoints(net, (x, y), names, K=6, iterations_between=3, lr=0.05, seed=1, device='cpu')
    h.remove()
    work = copies[-1]                                                    # the collection's private copy
    assert work is not net and all(torch.equal(t, before[k]) for k, t in net.state_dict().items())   # input untouched
    changed = {k for k, t in work.state_dict().items() if not torch.equal(t, before[k])}
    assert changed == set(names)                                         # not even other BN running stats move
    assert ck['params'].shape == (6, get_subset(net, names).numel()) and ck['names'] == names
    assert torch.equal(ck['params'][-1], get_subset(work, names))
    assert not torch.equal(ck['params'][0], ck['params'][-1])
    again = collect_checkpoints(net, (x, y), names, K=6, iterations_between=3, lr=0.05, seed=1, device='cpu')
    assert torch.equal(ck['params'], again['params'])
    other = collect_checkpoints(net, (x, y), names, K=6, iterations_between=3, lr=0.05, seed=2, device='cpu')
    assert not torch.equal(ck['params'], other['params'])


def test_collect_with_stats_moves_only_subset_stats():
    "With running statistics in the subset, their BN modules update them; every other BN module's statistics stay put."
    x, y = toy_data()
    net = train_classifier(tiny(1), (x, y), iterations=20, lr=1e-2, seed=0, device='cpu')
    names = norm_subset(net, stats=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copies = []
    h = net.register_forward_pre_hook(lambda mod, inp: copies.append(mod))
    ck = collect_checkpoints(net, (x, y), names, K=3, iterations_between=2, seed=0, device='cpu')
    h.remove()
    changed = {k for k, t in copies[-1].state_dict().items() if not torch.equal(t, before[k])}
    tracked = {n.rsplit('.', 1)[0] + '.num_batches_tracked' for n in names}
    assert changed - tracked == set(names)
    assert torch.equal(ck['params'][-1], get_subset(copies[-1], names))


def test_evaluate_params_matches_direct():
    x, y = toy_data(seed=3)
    net = train_classifier(tiny(), toy_data(), iterations=60, lr=1e-2, seed=0, device='cpu')
    names = norm_subset(net)
    v0 = get_subset(net, names)
    P = torch.stack([v0, v0 + 0.5 * torch.randn_like(v0), torch.zeros_like(v0)])
    ev = evaluate_params(net, names, P, x, y, batch_size=40, device='cpu')
    assert ev['acc'].shape == (3,) and ev['wrong'].shape == (3, len(y)) and ev['wrong'].dtype == torch.bool
    assert torch.equal(get_subset(net, names), v0)                       # the model is not modified
    with torch.no_grad(): direct = net.eval()(x).argmax(1) != y
    assert torch.equal(ev['wrong'][0], direct)
    assert ev['acc'][0] == pytest.approx(1 - direct.float().mean().item())
    assert ev['acc'][0] > 0.6


def test_accuracy_novelty_plot(tmp_path):
    g = torch.Generator().manual_seed(0)
    groups = {'original': (torch.rand(10, generator=g), torch.rand(10, generator=g)), 'noise 0.06': (torch.rand(5), torch.rand(5))}
    p = accuracy_novelty_plot(groups, tmp_path / 'nov.png')
    assert p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
