"""Tests for tasks/audio.py: the procedural keyword task, Speech Commands and SHD.

The real-dataset loaders are exercised on tiny fixtures that each test writes in the dataset's
real on-disk format (torchaudio's Speech Commands folder layout with 16-bit PCM WAVs; an HDF5
file in the SHD schema with variable-length datasets), through the same code path as real data.
"""
import os
import wave

import numpy as np
import pytest
import torch

import tasks.audio as audio
from tasks.audio import (AUDIO_TASK_INFO, KEYWORDS, SPEECH_COMMANDS_WORDS, FeatureConfig,
                         build_audio_keywords, build_shd, build_speech_commands, read_shd,
                         synthesize_keywords, waveform_features)
from tasks.base import DataError

SMALL = dict(n_train=80, n_test=20, val_fraction=0.25)  # 60 train, 20 val, 20 test


# --------------------------------------------------------------------------------------------
# audio_keywords

@pytest.fixture(scope='module')
def keywords():
    return build_audio_keywords(seed=3, **SMALL)


def test_keywords_shapes_and_metadata(keywords):
    info = AUDIO_TASK_INFO['audio_keywords']
    keywords.check()  # the shared invariants of tasks.base
    assert keywords.kind == 'audio' and keywords.label_kind == 'sequence'
    assert keywords.source == 'offline'
    assert keywords.num_classes == info['classes'] == 10
    assert list(keywords.input_shape) == info['input_shape'] == [51, 40]
    for ds, n in ((keywords.train, 60), (keywords.val, 20), (keywords.test, 20)):
        x, y = ds.tensors
        assert x.shape == (n, 51, 40) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64


def test_keywords_balanced_finite_normalised(keywords):
    x, y = keywords.train.tensors
    # Generated balanced: the training part (train + val) and the test set.
    y_all = torch.cat([y, keywords.val.tensors[1]])
    assert torch.bincount(y_all, minlength=10).tolist() == [8] * 10
    assert torch.bincount(keywords.test.tensors[1], minlength=10).tolist() == [2] * 10
    for ds in (keywords.train, keywords.val, keywords.test):
        assert torch.isfinite(ds.tensors[0]).all()
    # Normalised per feature with training statistics.
    assert torch.allclose(x.mean(dim=(0, 1)), torch.zeros(40), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 1)), torch.ones(40), atol=1e-3)


def test_keywords_deterministic_per_seed(keywords):
    again = build_audio_keywords(seed=3, **SMALL)
    for a, b in zip(keywords.train.tensors + keywords.val.tensors + keywords.test.tensors,
                    again.train.tensors + again.val.tensors + again.test.tensors):
        assert torch.equal(a, b)
    # data_seed makes other clips; the run seed only moves the validation carve.
    other_data = build_audio_keywords(seed=3, data_seed=1, **SMALL)
    assert not torch.equal(keywords.test.tensors[0], other_data.test.tensors[0])
    other_run = build_audio_keywords(seed=4, **SMALL)
    assert torch.equal(other_run.test.tensors[1], keywords.test.tensors[1])
    assert not torch.equal(other_run.val.tensors[1], keywords.val.tensors[1])
    # The global RNG is neither used nor disturbed.
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    build_audio_keywords(seed=5, n_train=10, n_test=0)
    assert torch.equal(torch.rand(1), before)


def test_keywords_test_split_independent_of_train_size():
    a = build_audio_keywords(n_train=20, n_test=10)
    b = build_audio_keywords(n_train=30, n_test=10)
    assert torch.equal(a.test.tensors[1], b.test.tensors[1])


def test_keywords_options():
    d = build_audio_keywords(seed=0, n_train=24, val_fraction=0, n_test=12, classes=12, n_mels=20,
                             seconds=0.5, noise=0.0, features='mfcc', n_mfcc=13)
    assert d.num_classes == 12 and d.input_shape == (FeatureConfig().num_frames(8000), 13)
    assert torch.bincount(d.train.tensors[1]).tolist() == [2] * 12
    with pytest.raises(DataError, match='unknown option.*bogus.*n_train'):
        build_audio_keywords(bogus=1)
    with pytest.raises(DataError, match='classes'):
        build_audio_keywords(classes=13)


def test_keyword_classes_share_units_in_different_orders():
    """Bag-of-units cannot separate the classes: every class has a permutation partner."""
    for word in KEYWORDS:
        partners = [w for w in KEYWORDS if w != word and sorted(w) == sorted(word)]
        assert partners, word


def _band_fraction(w, lo, hi):
    power = torch.fft.rfft(w).abs() ** 2
    f = torch.fft.rfftfreq(w.shape[-1], 1 / audio.SAMPLE_RATE)
    return (power[:, (f >= lo) & (f < hi)].sum(1) / power.sum(1)).mean().item()


def test_synthesis_is_real_speech_like_audio():
    g = torch.Generator().manual_seed(0)
    n = 16
    a = synthesize_keywords([('a',)] * n, g, noise=0.0)
    i = synthesize_keywords([('i',)] * n, g, noise=0.0)
    s = synthesize_keywords([('s',)] * n, g, noise=0.0)
    assert a.shape == (n, int(0.8 * 16000)) and a.dtype == torch.float32
    assert a.abs().max() < 1  # no clipping
    # Formants: /a/ has F1 ~730 Hz, /i/ has F1 ~270 Hz; /s/ is high-frequency noise.
    assert _band_fraction(a, 550, 950) > 0.3 > _band_fraction(i, 550, 950)
    assert _band_fraction(i, 0, 400) > 0.5 > _band_fraction(a, 0, 400)
    assert _band_fraction(s, 4000, 8000) > 0.8 > _band_fraction(a, 4000, 8000)

    # Voiced units are periodic at a pitch in the synthesis range (85-260 Hz); noise is not.
    def periodicity(w):
        w = w - w.mean()
        ac = torch.fft.irfft(torch.fft.rfft(w, n=2 * len(w)).abs() ** 2)[:len(w)]
        lags = slice(16000 // 280, 16000 // 80)
        return (ac[lags].max() / ac[0]).item()

    wa, seg = synthesize_keywords([('a',)], g, noise=0.0, return_segments=True)
    start, stop = (seg[0, 0] * 16000).long().tolist()
    assert periodicity(wa[0, start:stop]) > 0.5
    ws, seg = synthesize_keywords([('s',)], g, noise=0.0, return_segments=True)
    start, stop = (seg[0, 0] * 16000).long().tolist()
    assert periodicity(ws[0, start:stop]) < 0.3


def test_synthesis_unit_order_is_the_word_order():
    g = torch.Generator().manual_seed(1)
    w, seg = synthesize_keywords([('a', 's', 'i'), ('i', 's', 'a')], g, noise=0.0,
                                 return_segments=True)
    assert (seg[:, 1:, 0] >= seg[:, :-1, 1]).all()  # units follow each other in time
    for clip, word in zip(range(2), (('a', 's', 'i'), ('i', 's', 'a'))):
        pieces = [w[clip:clip + 1, int(a * 16000):int(b * 16000)] for a, b in seg[clip].tolist()]
        hi = [_band_fraction(p, 4000, 8000) for p in pieces]
        assert int(np.argmax(hi)) == word.index('s')


def test_waveform_features_shapes():
    cfg = FeatureConfig(n_mels=24, hop_ms=10, win_ms=25)
    x = waveform_features(torch.zeros(3, 16000), cfg)
    assert x.shape == (3, 101, 24) and torch.isfinite(x).all()
    assert waveform_features(torch.randn(16000), cfg).shape == (101, 24)
    assert FeatureConfig().key() != FeatureConfig(n_mels=20).key()


# --------------------------------------------------------------------------------------------
# speech_commands

def _write_wav(path, samples, rate=16000, width=2):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wave.open(str(path), 'wb') as f:
        f.setnchannels(1)
        f.setsampwidth(width)
        f.setframerate(rate)
        if width == 2:
            f.writeframes(np.asarray(samples, dtype='<i2').tobytes())
        else:
            f.writeframes(np.asarray(samples, dtype=np.uint8).tobytes())


def _tone(freq, seconds=0.3, amp=8000):
    t = np.arange(int(seconds * 16000)) / 16000
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _speech_commands_fixture(root):
    """A tiny Speech Commands v2 tree; returns {split: sorted list of labels}."""
    base = root / 'SpeechCommands' / 'speech_commands_v0.02'
    files = {'yes': ['aa_nohash_0', 'bb_nohash_0', 'cc_nohash_0'],
             'no': ['aa_nohash_0', 'bb_nohash_0', 'dd_nohash_1'],
             'up': ['aa_nohash_0', 'cc_nohash_0', 'ee_nohash_0']}
    for k, (word, names) in enumerate(files.items()):
        for j, name in enumerate(names):
            seconds = 1.3 if j == 0 else 0.3  # one longer than 1 s: trimmed
            _write_wav(base / word / f'{name}.wav', _tone(300 + 400 * k + 50 * j, seconds))
    _write_wav(base / '_background_noise_' / 'white_noise.wav', _tone(1000, 1.0))  # excluded
    (base / 'validation_list.txt').write_text('no/bb_nohash_0.wav\nup/cc_nohash_0.wav\n')
    (base / 'testing_list.txt').write_text('yes/cc_nohash_0.wav\nno/dd_nohash_1.wav\n'
                                           'up/ee_nohash_0.wav\n')
    idx = {w: SPEECH_COMMANDS_WORDS.index(w) for w in files}
    return base, {'train': sorted([idx['yes']] * 2 + [idx['no'], idx['up']]),
                  'val': sorted([idx['no'], idx['up']]),
                  'test': sorted([idx['yes'], idx['no'], idx['up']])}


def test_speech_commands_fixture_loads_with_official_splits(tmp_path, monkeypatch):
    base, want = _speech_commands_fixture(tmp_path)
    d = build_speech_commands(data_dir=tmp_path).check()
    assert d.num_classes == 35 and d.source == 'download' and d.label_kind == 'sequence'
    assert d.input_shape == tuple(AUDIO_TASK_INFO['speech_commands']['input_shape']) == (63, 40)
    for split in ('train', 'val', 'test'):
        x, y = getattr(d, split).tensors
        assert sorted(y.tolist()) == want[split], split
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
    cache_dir = tmp_path / 'SpeechCommands' / 'tsp_cache'
    caches = sorted(p.name for p in cache_dir.iterdir())
    assert len(caches) == 3 and not any(n.endswith('.tmp') for n in caches)

    # Second load: a cache hit, no WAV is read.
    def no_reading(*a, **k):
        raise AssertionError('WAV read despite the cache')
    monkeypatch.setattr(audio, '_read_wav_pcm16', no_reading)
    again = build_speech_commands(data_dir=tmp_path)
    assert torch.equal(again.train.tensors[0], d.train.tensors[0])
    small = build_speech_commands(data_dir=tmp_path, n_train=2, n_test=1)
    assert [len(small.train), len(small.val), len(small.test)] == [2, 2, 1]
    # Another feature setting misses the cache and rebuilds.
    with pytest.raises(AssertionError, match='despite the cache'):
        build_speech_commands(data_dir=tmp_path, n_mels=20)
    monkeypatch.undo()
    d20 = build_speech_commands(data_dir=tmp_path, n_mels=20)
    assert d20.input_shape == (63, 20)
    assert len(list(cache_dir.iterdir())) == 6


def test_read_wav_pads_trims_and_scales(tmp_path):
    samples = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    _write_wav(tmp_path / 'a.wav', samples)
    out = audio._read_wav_pcm16(str(tmp_path / 'a.wav'), length=6)
    np.testing.assert_allclose(out, [0, 0.5, -1, 32767 / 32768, 0, 0])
    assert audio._read_wav_pcm16(str(tmp_path / 'a.wav'), length=2).tolist() == [0, 0.5]


def test_speech_commands_missing_folder_names_path_and_url(tmp_path):
    with pytest.raises(DataError) as e:
        build_speech_commands(data_dir=tmp_path / 'nowhere')
    msg = str(e.value)
    assert str(tmp_path / 'nowhere' / 'SpeechCommands' / 'speech_commands_v0.02') in msg
    assert 'http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz' in msg
    assert '--download' in msg


def test_speech_commands_corrupt_wav_names_file(tmp_path):
    base, _ = _speech_commands_fixture(tmp_path)
    bad = base / 'yes' / 'bb_nohash_0.wav'
    bad.write_bytes(b'RIFF\x00\x00garbage, not a wave file')
    with pytest.raises(DataError, match=str(bad)):
        build_speech_commands(data_dir=tmp_path)
    _write_wav(bad, np.full(100, 128), width=1)  # 8-bit PCM: not what the dataset holds
    with pytest.raises(DataError, match='16-bit') as e:
        build_speech_commands(data_dir=tmp_path)
    assert str(bad) in str(e.value)


def test_speech_commands_unknown_option(tmp_path):
    with pytest.raises(DataError, match='unknown option.*n_mels'):
        build_speech_commands(data_dir=tmp_path, n_mel=3)


# --------------------------------------------------------------------------------------------
# shd

def _write_shd(path, times, units, labels, drop=None):
    import h5py
    with h5py.File(path, 'w') as f:
        sp = f.create_group('spikes')
        if drop != 'spikes/times':
            d = sp.create_dataset('times', (len(times),), dtype=h5py.vlen_dtype(np.float16))
            for i, t in enumerate(times):
                d[i] = np.asarray(t, dtype=np.float16)
        if drop != 'spikes/units':
            d = sp.create_dataset('units', (len(units),), dtype=h5py.vlen_dtype(np.uint16))
            for i, u in enumerate(units):
                d[i] = np.asarray(u, dtype=np.uint16)
        if drop != 'labels':
            f.create_dataset('labels', data=np.asarray(labels, dtype=np.uint8))
        f.create_group('extra')  # present in the real files; ignored


def _shd_fixture(root, n_train=10, n_test=4):
    folder = root / 'shd'
    folder.mkdir()
    rng = np.random.RandomState(0)

    def sample():
        k = rng.randint(5, 40)
        return np.sort(rng.uniform(0, 1.2, k)), rng.randint(0, 700, k)

    for name, n in (('train', n_train), ('test', n_test)):
        smp = [sample() for _ in range(n)]
        _write_shd(folder / f'shd_{name}.h5', [s[0] for s in smp], [s[1] for s in smp],
                   np.arange(n) % 20)
    return folder


def test_shd_binning_by_hand(tmp_path):
    # Exactly representable in float16: 0.0, 0.0126, 0.0503 and 0.25 s (and one past max_time).
    times = [np.float16(v) for v in (0.0, 0.01258, 0.01259, 0.0503, 0.25, 1.5)]
    units = [3, 699, 699, 3, 0, 5]
    _write_shd(tmp_path / 'one.h5', [times, [0.5]], [units, [7]], [4, 19])
    x, y = read_shd(tmp_path / 'one.h5', bin_ms=10, max_time=1.0)
    assert x.shape == (2, 100, 700) and x.dtype == torch.float32 and y.tolist() == [4, 19]
    want = torch.zeros(100, 700)
    for t, u in zip(times, units):
        frame = int(float(t) * 1000) // 10
        if frame < 100:
            want[frame, u] += 1
    assert want[1, 699] == 2 and want.sum() == 5
    assert torch.equal(x[0], want)
    assert x[1].sum() == 1 and x[1, 50, 7] == 1
    # Coarser bins, shorter window.
    x, _ = read_shd(tmp_path / 'one.h5', bin_ms=25, max_time=0.1)
    assert x.shape == (2, 4, 700) and x[0, 0, 3] == 1 and x[0, 0, 699] == 2 and x[0, 2, 3] == 1
    assert x[0].sum() == 4


def test_shd_builder_splits(tmp_path):
    _shd_fixture(tmp_path)
    d = build_shd(data_dir=tmp_path, val_fraction=0.2).check()
    assert d.num_classes == 20 and d.input_shape == (100, 700) and d.source == 'download'
    assert [len(d.train), len(d.val), len(d.test)] == [8, 2, 4]
    assert sorted(d.train.tensors[1].tolist() + d.val.tensors[1].tolist()) == list(range(10))
    again = build_shd(data_dir=tmp_path, val_fraction=0.2)
    assert torch.equal(again.val.tensors[0], d.val.tensors[0])
    d5 = build_shd(data_dir=tmp_path, bin_ms=5, max_time=0.5, n_train=3)
    assert d5.input_shape == (100, 700) and len(d5.train) == 3


def test_shd_missing_files_and_keys(tmp_path):
    with pytest.raises(DataError) as e:
        build_shd(data_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / 'shd') in msg and 'https://zenkelab.org/datasets/' in msg
    assert 'shd_train.h5.gz' in msg and 'gunzip' in msg

    folder = _shd_fixture(tmp_path)
    _write_shd(folder / 'shd_test.h5', [[0.1]], [[1]], [0], drop='spikes/units')
    with pytest.raises(DataError, match="shd_test.h5.*'spikes/units'"):
        build_shd(data_dir=tmp_path)
    _write_shd(folder / 'shd_test.h5', [[0.1], [0.2]], [[1], [2]], [0])
    with pytest.raises(DataError, match="shd_test.h5.*'labels'"):
        build_shd(data_dir=tmp_path)
    with pytest.raises(DataError, match='unknown option.*bin_ms'):
        build_shd(data_dir=tmp_path, bins=3)


def test_shd_gzipped_files(tmp_path):
    import gzip
    import shutil
    folder = _shd_fixture(tmp_path)
    for split in ('train', 'test'):
        h5 = folder / f'shd_{split}.h5'
        with open(h5, 'rb') as src, gzip.open(f'{h5}.gz', 'wb') as dst:
            shutil.copyfileobj(src, dst)
        h5.unlink()
    with pytest.raises(DataError, match='gunzip'):
        build_shd(data_dir=tmp_path)
    # With download=True a local archive is unpacked (no network needed).
    d = build_shd(data_dir=tmp_path, download=True)
    assert len(d.train) + len(d.val) == 10 and (folder / 'shd_test.h5').is_file()
    assert not [p for p in folder.iterdir() if p.name.endswith('.tmp')]
