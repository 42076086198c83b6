"Tokens layer as installed: codecs (char, byte-level BPE, files), their caches, and token corpora from files and hub-layout folders."
import numpy as np
import pytest, torch
from diffusionblocks import tokens
from diffusionblocks.data import split_text, text_path
from diffusionblocks.errors import ConfigError, DataError
from diffusionblocks.tokens import (EOT, BPECodec, CharCodec, Codec, load_codec, load_token_corpus, train_bpe, _pieces)

TEXT = ("ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
        "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n\n") * 25


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    "Every test gets its own cache and an offline hub, so nothing is written to data/ and nothing reaches the network."
    monkeypatch.setenv('DIFFUSIONBLOCKS_DATA', str(tmp_path/'cache'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')


def _message(kind, f, *parts):
    with pytest.raises(kind) as e: f()
    msg = str(e.value)
    assert '\n' not in msg and all(str(p) in msg for p in parts), msg
    return msg


def _same(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bpe_is_lossless_and_deterministic():
    a, b = train_bpe(TEXT, 320), train_bpe([TEXT], 320)
    assert a.describe() == b.describe() and a.tokenizer.to_str() == b.tokenizer.to_str()
    assert isinstance(a, Codec) and len(a) == 320 and a.eos_id == 0 and a.tokenizer.id_to_token(0) == EOT
    for s in [TEXT, 'naïve café — 東京 🙂 ﬁ\u200b\r\n\t x', '', '  spaces  ', f'one{EOT}two', '\x00\x01']:
        ids = a.encode(s)
        assert ids.dtype == torch.int64 and a.decode(ids) == s and a.decode(ids.tolist()) == s
    assert (a.encode(f'one{EOT}two') == 0).sum() == 1
    assert len(a.encode(TEXT)) < 0.6 * len(TEXT)


def test_pieces_encode_like_the_whole_text():
    "Parallel pieces are cut only where the whole text pre-tokenizes the same way, checked with codecs trained on the text itself."
    for seed, chars in ((1, list("xy z\n\n  \t'é東🙂.!-9") + [EOT, "'s", ' \n', '\n ']), (2, list("ab\n\n\n\r  'sT.") + ["'ll", '\n\t'])):
        text = ''.join(np.random.default_rng(seed).choice(chars, 150_000))
        assert len(_pieces(text)) > 2 and ''.join(_pieces(text)) == text
        c = train_bpe(text[:30_000], 400)
        whole = torch.tensor(c.tokenizer.encode(text, add_special_tokens=False).ids)
        assert torch.equal(c.encode(text), whole)
        small = _pieces(text, 100)
        assert len(small) > 500 and torch.equal(torch.tensor([i for e in c.tokenizer.encode_batch(small, add_special_tokens=False) for i in e.ids]), whole)


def test_char_codec():
    c = CharCodec(TEXT)
    assert isinstance(c, Codec) and c.name == 'char' and c.eos_id == c.stoi['\n'] == 0
    assert c.decode(c.encode(TEXT)) == TEXT and CharCodec('abc').eos_id is None
    with pytest.raises(ValueError, match="'Z'"): c.encode('Z')


def test_save_load_identity(tmp_path):
    for c in (train_bpe(TEXT, 300), CharCodec(TEXT)):
        back = load_codec(c.save(tmp_path/f'{c.name}.json'))
        assert type(back) is type(c) and back.describe() == c.describe()
        assert torch.equal(back.encode(TEXT), c.encode(TEXT))
    assert BPECodec.load(tmp_path/'bpe.json').describe() == train_bpe(TEXT, 300).describe()


def test_trained_bpe_is_cached(tmp_path, monkeypatch):
    c = load_codec('bpe', TEXT, 300)
    (f,) = (tmp_path/'cache'/'tokenizers').glob('bpe-300-*.json')
    def boom(*a, **k): raise AssertionError('trained again')
    monkeypatch.setattr(tokens, 'train_bpe', boom)
    assert load_codec('bpe', TEXT, 300).describe() == c.describe()
    with pytest.raises(AssertionError, match='trained again'): load_codec('bpe', TEXT + 'x', 300)
    with pytest.raises(AssertionError, match='trained again'): load_codec('bpe', TEXT, 300, cache=False)


def _file(tmp_path):
    p = tmp_path/'play.txt'; p.write_text(TEXT); return p


def test_file_corpus_splits(tmp_path, monkeypatch):
    p = _file(tmp_path)
    for tok, kw in (('char', {}), ('bpe', dict(vocab_size=300))):
        c = load_token_corpus(p, tok, **kw)
        parts = split_text(TEXT)
        assert {k: c.codec.decode(v) for k, v in c.splits.items()} == parts == dict(c.texts)   # in order, disjoint, complete
        assert c.chars == {k: len(v) for k, v in parts.items()} and c.path == p
    assert c.codec.tokenizer.to_str() == train_bpe(parts['train'], 300).tokenizer.to_str()  # BPE sees the train part only
    monkeypatch.setattr(tokens, 'train_bpe', lambda *a, **k: pytest.fail('trained again'))
    again = load_token_corpus(p, 'bpe', vocab_size=300)
    assert _same(again.splits, c.splits) and len(list((tmp_path/'cache'/'tokens').glob('play.txt-*.npz'))) == 2
    seqs = c.sequences('train', 8)
    assert torch.equal(seqs[2], c['train'][16:24])


def test_hub_layout_corpus(tmp_path):
    import datasets
    datasets.disable_progress_bars()
    docs = [f'doc {i}: ' + 'na ' * (i % 7) + 'café' for i in range(100)]
    for k, v in {'train': docs[:80], 'test': docs[80:]}.items():
        datasets.Dataset.from_dict({'text': v}).to_parquet(str(tmp_path/'hub'/'data'/f'{k}-00000-of-00001.parquet'))
    c = load_token_corpus(f'hf:{tmp_path/"hub"}', 'bpe', vocab_size=300)
    assert (c.texts['train'], c.texts['val'], c.texts['test']) == (EOT.join(docs[:76]), EOT.join(docs[76:80]), EOT.join(docs[80:]))
    for k in ('train', 'val', 'test'):
        assert c.codec.decode(c[k]) == c.texts[k] and torch.equal(c.codec.encode(c.texts[k]), c[k])
    assert int((c['test'] == c.codec.eos_id).sum()) == 19
    (tmp_path/'one').mkdir()
    datasets.Dataset.from_dict({'text': docs}).to_parquet(str(tmp_path/'one'/'data'/'train-00000-of-00001.parquet'))
    h = load_token_corpus(f'hf:{tmp_path/"one"}', 'char', test_fraction=0.2)
    assert (h.texts['train'], h.texts['val'], h.texts['test']) == ('\n'.join(docs[:75]), '\n'.join(docs[75:80]), '\n'.join(docs[80:]))


def test_errors_are_one_line(tmp_path):
    _message(DataError, lambda: load_token_corpus('lm1b', 'bpe', 512, offline=True), "'dvruette/lm1b'", 'network')
    _message(DataError, lambda: load_token_corpus('hf:nobody/none', offline=True), "'nobody/none'")
    _message(DataError, lambda: load_codec('hf:nobody/no-model', offline=True), "'nobody/no-model'", 'tokenizer.json')
    _message(ConfigError, lambda: load_codec('wordpiece'), "unknown tokenizer 'wordpiece'")
    _message(ConfigError, lambda: load_codec('bpe', TEXT), 'vocab_size')
    _message(ConfigError, lambda: train_bpe(TEXT, 64), 'vocab_size', '257')
    _message(ConfigError, lambda: load_token_corpus(_file(tmp_path), test_fraction=0), 'test_fraction')
    (tmp_path/'bad.json').write_text('[1, 2]')
    _message(DataError, lambda: load_codec(tmp_path/'bad.json'), 'not a tokenizer file', 'bad.json')
    _message(DataError, lambda: load_token_corpus(tmp_path/'none.txt'), 'no such text file', 'none.txt')


def test_tinyshakespeare_char():
    try: text_path('tinyshakespeare')
    except DataError: pytest.skip('TinyShakespeare not found')
    c = load_token_corpus('tinyshakespeare')
    assert len(c.codec) == 65 and c.codec.eos_id == 0
    assert {k: len(v) for k, v in c.splits.items()} == {'train': 1_003_854, 'val': 55_769, 'test': 55_771}
    assert c.codec.decode(c['test'][:100]) == c.texts['test'][:100]
