"Text metrics: MAUVE's closed-form extremes, exact perplexities of hand-computable models, windowing and padding invariance, diversity on hand examples, the local reference's training and cache, and HFReference's paths with a stand-in `transformers`."
import math, sys, types
import pytest, torch, torch.nn as nn
from diffusionblocks import lm_metrics
from diffusionblocks.data import CharVocab
from diffusionblocks.errors import CheckpointError, ConfigError, DataError, MissingDependencyError
from diffusionblocks.lm_metrics import (HFReference, LocalReference, ReferenceLM, cached_reference, distinct_n, diversity,
                                        mauve, perplexity, repetition_rate, text_metrics, train_lm)

torch.set_num_threads(1)
CHARS = CharVocab('abcdefgh')


class Uniform(nn.Module):
    def __init__(self, V): super().__init__(); self.V, self.emb = V, nn.Embedding(V, 4)
    def hidden(self, x): return self.emb(x)
    def forward(self, x): return torch.zeros(*x.shape, self.V)


class Bigram(nn.Module):
    def __init__(self, V): super().__init__(); self.table = nn.Parameter(torch.randn(V, V))
    def hidden(self, x): return self.table[x]
    def forward(self, x): return self.table[x]


class TinyGRU(nn.Module):
    def __init__(self, V, d=16):
        super().__init__(); self.emb, self.rnn, self.norm, self.head = nn.Embedding(V, d), nn.GRU(d, d, batch_first=True), nn.LayerNorm(d), nn.Linear(d, V)
    def hidden(self, x): return self.norm(self.rnn(self.emb(x))[0])
    def forward(self, x): return self.head(self.hidden(x))


def one_line(e): assert '\n' not in str(e.value), str(e.value)


def test_mauve_same_law_high_separated_low():
    g = torch.Generator().manual_seed(1)
    a, b, c = (torch.randn(300, 16, generator=g) for _ in range(3))
    same, far = mauve(a, b), mauve(a, c + 4)
    assert same['mauve'] > 0.9 and far['mauve'] < 0.1, (same, far)
    assert (same['n_p'], same['n_q'], same['num_buckets'], same['scaling_factor']) == (300, 300, 30, 5.)
    assert mauve(a, b, num_buckets=8, scaling_factor=2.)['num_buckets'] == 8
    for bad in (dict(scaling_factor=-1.), dict(num_buckets=1), dict(num_buckets='many')):
        with pytest.raises(ConfigError) as e: mauve(a, b, **bad)
        one_line(e)
    with pytest.raises(DataError, match='NaN'): mauve(a, b * math.nan)
    with pytest.raises(DataError, match='matrix'): mauve(a[0], b)


def test_uniform_model_gen_ppl_is_V():
    for V in (8, 27):
        vocab = CharVocab('abcdefgh' if V == 8 else 'abcdefghijklmnopqrstuvwxyz ')
        assert abs(perplexity(LocalReference(Uniform(V), vocab, max_len=5), ['abcdefgh' * 3, 'ba', 'hhh']) - V) < 1e-5 * V


def test_nll_is_the_hand_sum_and_windows_do_not_change_a_bigram():
    torch.manual_seed(0); bi = Bigram(8)
    texts = ['abcabcddhhgfeabcdefgh', 'hgfe', 'a', 'ab', '']
    hand, count = 0., 0
    for t in texts:
        ids = CHARS.encode(t)
        if len(ids) > 1: hand -= bi.table[ids[:-1]].log_softmax(-1).gather(-1, ids[1:, None]).sum().item(); count += len(ids) - 1
    for kw in (dict(), dict(max_len=2), dict(max_len=5, batch_size=1), dict(max_len=7, batch_size=2)):
        total, n = LocalReference(bi, CHARS, **kw).nll(texts)
        assert n == count and abs(total - hand) < 1e-4, (kw, total, hand)
    with pytest.raises(DataError) as e: perplexity(LocalReference(bi, CHARS), ['a', ''])
    one_line(e)


def test_features_last_token_padding_invariant_and_truncated():
    torch.manual_seed(0); gru = TinyGRU(8)
    texts = ['abc', 'hgfedcba', 'a', 'abcdefgh' * 3, 'bb', 'cab']
    ref = LocalReference(gru, CHARS, batch_size=4)
    f = ref.features(texts)
    assert f.shape == (6, 16) and f.dtype == torch.float32 and f.device.type == 'cpu'
    alone = torch.cat([ref.features([t]) for t in texts])
    assert torch.allclose(f, alone, atol=1e-5)
    with torch.no_grad(): assert torch.allclose(f[1], gru.hidden(CHARS.encode('hgfedcba')[None])[0, -1], atol=1e-5)
    assert torch.allclose(LocalReference(gru, CHARS, max_len=3).features(['hgfedcba']), ref.features(['hgf']), atol=1e-6)
    assert gru.training                                            # scoring restores the model's mode
    assert isinstance(ref, ReferenceLM) and ref.local and ref.label == 'local'


def test_distinct_and_repetition_hand_examples():
    assert distinct_n(['abab'], 2) == 2 / 3 and repetition_rate(['abab'], 2) == 1 / 3
    assert distinct_n([[1, 2, 3], torch.tensor([1, 2, 4])], 2) == 3 / 4 and repetition_rate([[1, 2, 3], [1, 2, 4]], 2) == 0.
    assert repetition_rate(['xyz' * 10], 3) == 25 / 28                  # the first 3 trigrams are new, the other 25 repeat
    assert distinct_n(['abcd', 'efgh'], 1) == 1.
    assert math.isnan(distinct_n(['abc'], 4)) and math.isnan(repetition_rate(['abc'], 4))
    d = diversity(['abcdefgh'])
    assert d == {'distinct_1': 1., 'distinct_2': 1., 'distinct_3': 1., 'distinct_4': 1., 'repetition_rate': 0.}
    with pytest.raises(ConfigError) as e: repetition_rate(['abc'], 0)
    one_line(e)


def test_train_lm_on_unigram_tokens_reaches_exp_entropy():
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(8, generator=g) * 1.5, 0)
    torch.manual_seed(0)
    lm = train_lm(TinyGRU(8), torch.multinomial(p, 20_000, replacement=True, generator=g), seq_len=16, iterations=60, lr=1e-2)
    assert not lm.training
    test = [CHARS.decode(torch.multinomial(p, 200, replacement=True, generator=g)) for _ in range(25)]
    best = math.exp(-(p * p.log()).sum().item())
    assert abs(perplexity(LocalReference(lm, CHARS), test) / best - 1) < 0.03


def test_train_lm_rejects_bad_input():
    for ids, kw, err in ((torch.zeros(5, dtype=torch.long), dict(seq_len=8, iterations=1), DataError),
                         (torch.zeros(2, 50, dtype=torch.long), dict(seq_len=8, iterations=1), DataError),
                         (torch.zeros(50), dict(seq_len=8, iterations=1), DataError),
                         (torch.zeros(50, dtype=torch.long), dict(seq_len=0, iterations=1), ConfigError)):
        with pytest.raises(err) as e: train_lm(TinyGRU(8), ids, **kw)
        one_line(e)


def test_cached_reference_trains_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv('DIFFUSIONBLOCKS_DATA', str(tmp_path))
    calls = []
    real = lm_metrics.train_lm
    monkeypatch.setattr(lm_metrics, 'train_lm', lambda *a, **k: calls.append(1) or real(*a, **k))
    ids, kw = torch.randint(0, 8, (3000,), generator=torch.Generator().manual_seed(0)), dict(seq_len=16, iterations=4)
    m1 = cached_reference('tiny', lambda: TinyGRU(8), ids, **kw)
    path = tmp_path / 'reference-lm' / 'tiny.safetensors'
    assert path.exists() and not list(path.parent.glob('.*tmp'))
    m2 = cached_reference('tiny', lambda: TinyGRU(8), ids, **kw)
    assert len(calls) == 1 and not m2.training
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    for args, kw2, err, msg in (((ids[1:],), kw, CheckpointError, 'other data'),
                                ((ids,), dict(seq_len=16, iterations=5), CheckpointError, 'other settings'),
                                ((ids,), dict(kw, lr=1e-3), CheckpointError, 'other settings')):
        with pytest.raises(err, match=msg) as e: cached_reference('tiny', lambda: TinyGRU(8), *args, **kw2)
        one_line(e)
    with pytest.raises(ConfigError) as e: cached_reference('a/b', lambda: TinyGRU(8), ids, **kw)
    one_line(e)


def test_hf_reference_without_transformers_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, 'transformers', None)           # as if not installed, even where it is
    with pytest.raises(MissingDependencyError, match='pip install transformers') as e: HFReference('gpt2-large')
    one_line(e)


def fake_transformers(available=True, V=11, d=6):
    "A stand-in `transformers`: byte tokenizer mod V; a causal 'model' whose state is the running mean of embeddings."
    class Tok:
        def encode(self, text): return [b % V for b in text.encode()]
    class Model(nn.Module):
        def __init__(self):
            super().__init__(); self.config = types.SimpleNamespace(n_positions=6)
            self.emb, self.head = nn.Embedding(V, d), nn.Linear(d, V)
        def forward(self, input_ids, attention_mask, output_hidden_states, return_dict):
            assert return_dict and attention_mask.shape == input_ids.shape
            h = self.emb(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[None, :, None]
            return types.SimpleNamespace(logits=self.head(h), hidden_states=(self.emb(input_ids), h) if output_hidden_states else None)
    def load(cls):
        def from_pretrained(name, local_files_only):
            assert local_files_only
            if not available: raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {name}")
            return cls()
        return types.SimpleNamespace(from_pretrained=from_pretrained)
    return types.SimpleNamespace(AutoTokenizer=load(Tok), AutoModelForCausalLM=load(Model))


def test_hf_reference_weights_absent_is_one_line_data_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'transformers', fake_transformers(available=False))
    with pytest.raises(DataError, match="'gpt2-xl' is not available locally") as e: HFReference('gpt2-xl', device='cpu')
    one_line(e)


def test_hf_reference_scores_like_the_local_one(monkeypatch):
    monkeypatch.setitem(sys.modules, 'transformers', fake_transformers())
    torch.manual_seed(0)
    ref = HFReference('fake-lm', device='cpu', batch_size=3)
    assert (ref.label, ref.local, ref.max_len) == ('fake-lm', False, 6) and isinstance(ref, ReferenceLM)
    texts = ['hello', 'a', 'abcdefghij', 'xyz']
    f = ref.features(texts)
    assert f.shape == (4, 6) and torch.allclose(f, torch.cat([ref.features([t]) for t in texts]), atol=1e-6)
    total, n = ref.nll(texts)
    assert n == 4 + 0 + 9 + 2 and math.isfinite(total)
    samples, refs = [f'text number {i} ' * 2 for i in range(40)], [f'another {i}!' for i in range(40)]
    m = text_metrics(ref, samples, refs, real=refs, samples_ids=[[i, i + 1, i] for i in range(40)], scaling_factor=2., num_buckets=4)
    assert {'mauve', 'gen_ppl', 'ref_ppl', 'distinct_4', 'repetition_rate'} <= set(m) and not any(k.endswith('_local') for k in m)
    assert (m['reference_model'], m['mauve_scaling_factor'], m['mauve_num_buckets'], m['mauve_n_p']) == ('fake-lm', 2., 4, 40)
    assert m['distinct_1'] == 41 / 120 and m['distinct_4'] != m['distinct_4']   # on the ids; 3-token samples have no 4-gram (NaN)


def test_text_metrics_local_keys_and_bad_input():
    torch.manual_seed(0)
    ref = LocalReference(TinyGRU(8), CHARS, label='gru-test')
    texts = ['abcdefgh'[i % 8:] + 'abc' for i in range(30)]
    m = text_metrics(ref, texts, texts[::-1], num_buckets=3)
    assert set(m) == {'mauve_local', 'gen_ppl_local', 'distinct_1', 'distinct_2', 'distinct_3', 'distinct_4', 'repetition_rate',
                      'reference_model', 'mauve_scaling_factor', 'mauve_num_buckets', 'mauve_n_p', 'mauve_n_q'}
    assert m['reference_model'] == 'gru-test' and m['mauve_local'] > 0.9        # the same texts, in another order
    for args, kw, err in (((ref, 'abc', texts), {}, DataError), ((ref, texts, []), {}, DataError),
                          ((ref, texts, texts), dict(samples_ids=[[1]]), DataError), ((object(), texts, texts), {}, ConfigError)):
        with pytest.raises(err) as e: text_metrics(*args, **kw)
        one_line(e)
