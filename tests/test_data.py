"Data layer as installed: the offline digits default, a folder and tarball round trip, and the one-line DataError messages."
import gzip, tarfile
import numpy as np
import pytest, torch
from PIL import Image
from diffusionblocks.data import DataError, load_images, load_text, text8_clean, CharVocab, tar_cache_dir


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    "Every test gets its own cache and an offline hub, so nothing is written to data/ and nothing reaches the network."
    monkeypatch.setenv('DIFFUSIONBLOCKS_DATA', str(tmp_path/'cache'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')


def _message(f, *parts):
    with pytest.raises(DataError) as e: f()
    msg = str(e.value)
    assert '\n' not in msg and all(str(p) in msg for p in parts), msg
    return msg


def _pngs(root, n=2):
    rng = np.random.default_rng(0)
    for split in ('train', 'test'):
        for c in ('a', 'b'):
            (root/split/c).mkdir(parents=True)
            for j in range(n): Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(root/split/c/f'{j}.png')
    return root


def test_digits_offline():
    tr, te = load_images('digits'), load_images('digits', 'test')
    assert (len(tr), len(te)) == (1437, 360) and tr.shape == te.shape == (1, 8, 8)
    assert tr.images.dtype == torch.float32 and tr.labels.dtype == torch.int64
    assert tr.images.min() == -1 and tr.images.max() == 1 and tr.classes == [str(i) for i in range(10)]
    xb, yb = next(iter(tr.loader(batch_size=32, seed=0)))
    assert xb.shape == (32, 1, 8, 8) and yb.shape == (32,)


def test_folder_and_tarball_agree(tmp_path):
    root = _pngs(tmp_path/'set')
    fo = load_images(root, 'train')
    assert fo.classes == ['a', 'b'] and fo.labels.tolist() == [0, 0, 1, 1] and fo.shape == (3, 6, 5)
    with tarfile.open(tmp_path/'set.tgz', 'w:gz') as tf: tf.add(root, arcname='set')
    assert torch.equal(load_images(tmp_path/'set.tgz', 'train', per_class=2).images, fo.images)   # streamed
    assert not tar_cache_dir(tmp_path/'set.tgz').exists()
    assert torch.equal(load_images(tmp_path/'set.tgz', 'train').images, fo.images)                # extracted
    assert (tar_cache_dir(tmp_path/'set.tgz')/'set'/'train'/'a'/'0.png').is_file()


def test_replaced_tarball_is_extracted_anew(tmp_path):
    "The extraction cache is keyed by the tarball's content: a new tarball under the old name is not served stale images."
    root = _pngs(tmp_path/'one')
    with tarfile.open(tmp_path/'set.tgz', 'w:gz') as tf: tf.add(root, arcname='set')
    first = load_images(tmp_path/'set.tgz', 'train').images
    for f in sorted((root/'train').rglob('*.png')): Image.fromarray(np.full((6, 5, 3), 7, dtype=np.uint8)).save(f)
    with tarfile.open(tmp_path/'set.tgz', 'w:gz') as tf: tf.add(root, arcname='set')
    second = load_images(tmp_path/'set.tgz', 'train').images
    assert not torch.equal(first, second) and torch.allclose(second, torch.full_like(second, 7 / 255 * 2 - 1))


def test_error_messages(tmp_path):
    root = _pngs(tmp_path/'set')
    (root/'train'/'b'/'1.png').write_bytes(b'not a png')
    (tmp_path/'empty').mkdir()
    (tmp_path/'junk.tar.gz').write_bytes(b'\x00garbage' * 100)
    with tarfile.open(tmp_path/'ok.tar.gz', 'w:gz') as tf: tf.add(root/'test', arcname='x/test')
    blob = (tmp_path/'ok.tar.gz').read_bytes(); (tmp_path/'cut.tar.gz').write_bytes(blob[:len(blob) // 2])
    _message(lambda: load_images(tmp_path/'nope'), 'no such file or folder', tmp_path/'nope')
    _message(lambda: load_images(tmp_path/'empty'), 'no images in', tmp_path/'empty')
    _message(lambda: load_images(tmp_path/'junk.tar.gz'), 'corrupt or truncated tarball', 'junk.tar.gz')
    _message(lambda: load_images(tmp_path/'cut.tar.gz', 'test'), 'corrupt or truncated tarball', 'cut.tar.gz')
    _message(lambda: load_images(root, 'train'), 'corrupt or unreadable image', root/'train'/'b'/'1.png')
    _message(lambda: load_images(root, 'val'), "unknown split 'val'", root)
    _message(lambda: load_images('digits', 'valid'), "unknown split 'valid'")
    _message(lambda: load_images('hf:nobody/nothing', offline=True), 'nobody/nothing', 'needs network access or a local copy')
    _message(lambda: load_text(tmp_path/'missing.txt'), 'missing.txt')


def test_text(tmp_path):
    (tmp_path/'t.txt.gz').write_bytes(gzip.compress('To be, or not to be: 2B!\n'.encode()))
    t = load_text(tmp_path/'t.txt.gz')
    c = text8_clean(t)
    assert c == 'to be or not to be two b' and set(c) <= set(' abcdefghijklmnopqrstuvwxyz')
    v = CharVocab(t)
    assert v.decode(v.encode(t)) == t and len(v) == len(set(t))
    assert len(load_text(tmp_path/'t.txt.gz', 'train')) == int(len(t) * 0.9)
