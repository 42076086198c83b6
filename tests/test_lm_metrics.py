"""Prompted generative perplexity, the BOS token and sample entropy (issue 23), on the exported modules: tiny
untrained models, no training, no network."""
import math, sys, types
from unittest import mock
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from diffusionblocks.data import CharVocab
from diffusionblocks.errors import ConfigError, DataError
from diffusionblocks.lm_metrics import (LocalReference, HFReference, perplexity, sample_entropy, diversity, text_metrics,
                                        _windows)

torch.set_num_threads(1)
CHARS = CharVocab('abcdefgh')


class Bigram(nn.Module):
    def __init__(self, V=8): super().__init__(); self.table = nn.Parameter(torch.randn(V, V))
    def hidden(self, x): return self.table[x]
    def forward(self, x): return self.table[x]


class GRU(nn.Module):
    def __init__(self, V=8, d=16):
        super().__init__(); self.emb, self.rnn, self.head = nn.Embedding(V, d), nn.GRU(d, d, batch_first=True), nn.Linear(d, V)
    def hidden(self, x): return self.rnn(self.emb(x))[0]
    def forward(self, x): return self.head(self.hidden(x))


def hand_nll(model, ids):
    "Summed CE of ids[1:] given the prefix, by hand."
    x = torch.tensor([ids])
    return F.cross_entropy(model(x)[0, :-1], x[0, 1:], reduction='sum').item()


def test_sample_entropy_by_hand():
    # 'aab': ln 3 - 2/3 ln 2 = 0.636514; 'abcd': ln 4 = 1.386294
    assert sample_entropy(['aab', 'abcd']) == pytest.approx(1.011404, abs=1e-6)
    assert sample_entropy([[3, 3, 9]]) == pytest.approx(math.log(3) - 2 / 3 * math.log(2), abs=1e-12)
    assert sample_entropy(['zzzz']) == 0. and math.isnan(sample_entropy(['']))
    assert diversity(['abab'])['entropy'] == pytest.approx(math.log(2))


def test_windows_with_a_context():
    for n, first in ((10, 1), (10, 3), (10, 6), (11, 5), (4, 2)):
        w = _windows(n, 4, 2, first)
        assert sorted(j for s, e, f in w for j in range(f, e)) == list(range(first, n))
        assert all(e - s <= 4 and f > s for s, e, f in w)
    assert _windows(3, 4, 2, 3) == []


@pytest.mark.parametrize('max_len', [None, 3])
def test_prompted_nll_scores_only_the_continuation(max_len):
    torch.manual_seed(0)
    for model in (Bigram(), GRU()):
        if max_len and isinstance(model, GRU): continue         # windows are exact only for a one-token context
        ref = LocalReference(model, CHARS, max_len=max_len, batch_size=2)
        texts, ctxs = ['abcab', 'h', 'gg'], ['hd', 'e', '']
        total, n = ref.nll(texts, ctxs)
        assert n == 5 + 1 + 1                                   # no BOS, no context: 'gg' loses its first token
        with torch.no_grad():
            hand = sum(hand_nll(model, CHARS.encode(c + t).tolist()) - (hand_nll(model, CHARS.encode(c).tolist()) if len(c) > 1 else 0)
                       for c, t in zip(ctxs, texts))
        assert total == pytest.approx(hand, abs=1e-4)
    with pytest.raises(DataError, match='2 contexts for 1 texts'): ref.nll(['a'], ['b', 'c'])


def test_local_bos_is_a_one_token_context():
    torch.manual_seed(0); bi = Bigram()
    with_bos, plain = LocalReference(bi, CHARS, bos=7), LocalReference(bi, CHARS)
    assert plain.bos is None and plain.nll(['ab'])[1] == 1
    assert with_bos.nll(['ab'])[1] == 2
    assert with_bos.nll(['ab'])[0] == pytest.approx(plain.nll(['ab'], ['h'])[0], abs=1e-6)
    with pytest.raises(ConfigError, match='bos'): LocalReference(bi, CHARS, bos=-1)


def fake_transformers(V=11, bos=10, adds_bos=False):
    class Tok:
        bos_token_id = bos
        def encode(self, text, add_special_tokens=True):
            return ([bos] if adds_bos and add_special_tokens else []) + [b % V for b in text.encode()]
    class Model(nn.Module):
        def __init__(self):
            super().__init__(); self.config = types.SimpleNamespace(n_positions=64)
            self.emb, self.head = nn.Embedding(V, 6), nn.Linear(6, V)
        def forward(self, input_ids, attention_mask, output_hidden_states, return_dict):
            h = self.emb(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[None, :, None]
            return types.SimpleNamespace(logits=self.head(h), hidden_states=(h, h) if output_hidden_states else None)
    load = lambda cls: types.SimpleNamespace(from_pretrained=lambda name, local_files_only: cls())
    return types.SimpleNamespace(AutoTokenizer=load(Tok), AutoModelForCausalLM=load(Model))


def hf_ref(**kw):
    adds_bos = kw.pop('adds_bos', False)
    with mock.patch.dict(sys.modules, {'transformers': fake_transformers(adds_bos=adds_bos)}):
        torch.manual_seed(0); return HFReference('fake', device='cpu', **kw)


def test_hf_bos_scores_every_token():
    hf, old = hf_ref(), hf_ref(bos=False)
    assert (hf.bos, old.bos) == (10, None)
    assert hf.nll(['hello', 'a'])[1] == 6 and old.nll(['hello', 'a'])[1] == 4
    x = [10] + hf._tokens('hello')
    with torch.no_grad():
        logits = hf.model(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, 6, dtype=torch.long),
                          output_hidden_states=False, return_dict=True).logits[0]
    assert hf.nll(['hello'])[0] == pytest.approx(F.cross_entropy(logits[:-1], torch.tensor(x[1:]), reduction='sum').item(), abs=1e-5)


def test_hf_prompted_tokens_are_the_continuations_own():
    hf, llama = hf_ref(), hf_ref(adds_bos=True)
    ids, first = hf._scored(' world', 'hello')
    assert ids[0] == 10 and ids[first:] == hf._tokens(' world') and first == 1 + len('hello')
    assert llama._scored(' world', 'hello') == (ids, first)            # one BOS, though its encode() adds one
    total, n = hf.nll([' world'], ['hello'])
    assert n == 6 and total == pytest.approx(hf.nll(['hello world'])[0] - hf.nll(['hello'])[0], abs=1e-5)


def test_text_metrics_prompted_keys_and_yardstick():
    torch.manual_seed(0); ref = LocalReference(GRU(), CHARS, label='gru')
    g = torch.Generator().manual_seed(0)
    rand = lambda n, L: [CHARS.decode(torch.randint(0, 8, (L,), generator=g)) for _ in range(n)]
    samples, ctx, real, rctx = rand(30, 12), rand(30, 6), rand(20, 12), rand(20, 6)
    m = text_metrics(ref, samples, real, real=real, contexts=ctx, real_contexts=rctx, num_buckets=3)
    assert m['gen_ppl_local'] == perplexity(ref, samples, ctx) and m['gen_ppl_unprompted_local'] == perplexity(ref, samples)
    assert m['ref_ppl_local'] == perplexity(ref, real, rctx) and m['ref_ppl_unprompted_local'] == perplexity(ref, real)
    assert m['ppl_prompted'] and not m['reference_bos'] and m['entropy'] == sample_entropy(samples)
    plain = text_metrics(ref, samples, real, real=real, num_buckets=3)
    assert not plain['ppl_prompted'] and 'gen_ppl_unprompted_local' not in plain
    assert plain['gen_ppl_local'] == m['gen_ppl_unprompted_local']     # old results stay comparable
    with pytest.raises(ConfigError, match='scored alike'): text_metrics(ref, samples, real, real=real, contexts=ctx)
    with pytest.raises(ConfigError, match='without real'): text_metrics(ref, samples, real, real_contexts=rctx)
    with pytest.raises(DataError, match='3 contexts for 30'): text_metrics(ref, samples, real, contexts=ctx[:3])


def test_text_evaluation_passes_the_rows_prompts(monkeypatch):
    import diffusionblocks.text_eval as te
    from diffusionblocks.tasks import TaskData
    from diffusionblocks.tokens import CharCodec
    codec = CharCodec('abcdefgh ')
    data = TaskData(None, None, {'corpus': {'test': torch.randint(0, 9, (300,), generator=torch.Generator().manual_seed(1))},
                                 'codec': codec})
    job = types.SimpleNamespace(options=te.LMOptions(n_eval=12, continuations=3, prompt_len=5, new_tokens=8), seed=0)
    def decode(pr, M, C, seed):
        p = pr.repeat_interleave(C, 0)
        return torch.cat([p, torch.randint(0, 9, (len(p), M), generator=torch.Generator().manual_seed(seed))], 1), 1., 'random'
    torch.manual_seed(0); ref = LocalReference(GRU(9), codec)
    monkeypatch.setattr(te, 'reference_model', lambda job, data, device, local: ref)
    m = te.text_evaluation(job, data, decode)
    pr, truth = te.prompts(data, 12, 5, 8); ids = decode(pr, 8, 3, 1)[0]
    dec = lambda rows: [codec.decode(r) for r in rows]
    assert m['ppl_prompted'] and m['gen_ppl_local'] == perplexity(ref, dec(ids[:, 5:]), dec(ids[:, :5]))
    assert m['ref_ppl_local'] == perplexity(ref, dec(truth), dec(pr))
    assert 'gen_ppl_unprompted_local' in m and 'ref_ppl_unprompted_local' in m and 'entropy' in m
