"""Audio tasks: a procedural keyword task, Google Speech Commands v2 and Spiking Heidelberg Digits.

Three builders, named lazily by the task registry:

- ``audio_keywords`` (offline, always available): real 16 kHz waveforms synthesised here from a
  small source-filter "speech" model, turned into log-mel features by the same pipeline as
  Speech Commands. Every class is an ordered sequence of three sound units, and the classes come
  in groups that use the *same* units in *different orders*, so a bag-of-frames model cannot
  solve it: the information is in the temporal structure.
- ``speech_commands``: the real Google Speech Commands v2 (35 words, official splits), read with
  the standard-library ``wave`` module (``torchaudio.load`` needs torchcodec/FFmpeg in 2.11) and
  featurised by :func:`waveform_features`; the features are cached on disk.
- ``shd``: the Spiking Heidelberg Digits (HDF5), spike times binned into frames of counts.

All three return a :class:`tasks.base.TaskData` with ``x float32 [N, T, F]`` and ``y int64 [N]``.
Every builder is deterministic and uses only local random generators. Following the registry's
convention, the run ``seed`` only chooses the validation carve where one is carved (audio_keywords,
shd); what data exist (the generated clips, the subsets drawn by ``n_train``/``n_val``/``n_test`` on
the real sets) is fixed by the ``data_seed`` option (default 0), so every run sees the same data.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import functools
import math
import os
import shutil
import tempfile
import urllib.request
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import TensorDataset

from tasks.base import DataError, TaskData, data_root, split_off, torch_generator
from tasks.cache import cached_tensors
from tasks.optional_imports import load_torchaudio

SAMPLE_RATE = 16000

# --------------------------------------------------------------------------------------------
# Static metadata (``tsp tasks --json`` reads this without generating or loading any data).
# --------------------------------------------------------------------------------------------

# Default feature geometry: 40 log-mel bands, 32 ms windows, 16 ms hop -> 1 s of audio = 63 frames.
_DEFAULT_N_MELS = 40
_DEFAULT_HOP_MS = 16.0
_DEFAULT_WIN_MS = 32.0
_KEYWORD_SECONDS = 0.8  # -> 51 frames

SPEECH_COMMANDS_WORDS = tuple(sorted((
    'backward', 'bed', 'bird', 'cat', 'dog', 'down', 'eight', 'five', 'follow', 'forward', 'four',
    'go', 'happy', 'house', 'learn', 'left', 'marvin', 'nine', 'no', 'off', 'on', 'one', 'right',
    'seven', 'sheila', 'six', 'stop', 'three', 'tree', 'two', 'up', 'visual', 'wow', 'yes', 'zero',
)))
SPEECH_COMMANDS_URL = 'http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz'
SHD_URL = 'https://zenkelab.org/datasets/'
SHD_UNITS = 700
SHD_CLASSES = 20


def _frames(seconds: float, hop_ms: float = _DEFAULT_HOP_MS) -> int:
    # torchaudio's spectrogram with center=True gives 1 + floor(samples / hop) frames.
    return 1 + int(round(seconds * SAMPLE_RATE)) // int(round(hop_ms * SAMPLE_RATE / 1000))


AUDIO_TASK_INFO = {
    'audio_keywords': dict(
        kind='audio', input_shape=[_frames(_KEYWORD_SECONDS), _DEFAULT_N_MELS], classes=10,
        source='offline',
        description='Procedural keywords: synthetic 16 kHz speech-like waveforms (formant-filtered '
                    'glottal pulses and noise), each class an ordered sequence of 3 sound units; '
                    'classes share units in different orders; 40 log-mel bands.'),
    'speech_commands': dict(
        kind='audio', input_shape=[_frames(1.0), _DEFAULT_N_MELS],
        classes=len(SPEECH_COMMANDS_WORDS), source='download',
        description='Google Speech Commands v2 (35 words, official splits), 1 s clips, 40 log-mel '
                    'bands, cached features.'),
    'shd': dict(
        kind='audio', input_shape=[100, SHD_UNITS], classes=SHD_CLASSES, source='download',
        description='Spiking Heidelberg Digits: 700-channel cochlear spike trains binned into '
                    '10 ms frames of counts (1 s), 20 spoken digits (English and German).'),
}


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------

def _check_options(task: str, options: dict, allowed: dict) -> dict:
    """Merge ``options`` over the defaults in ``allowed``; an unknown name is a DataError."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listing = ', '.join(f'{k}={v!r}' for k, v in allowed.items())
        raise DataError(f"task '{task}': unknown option(s) {', '.join(unknown)}; "
                        f'the options are (with defaults): {listing}')
    merged = dict(allowed)
    merged.update(options)
    return merged


def _int_option(task: str, name: str, value, lo: int, hi: Optional[int] = None,
                allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    try:
        v = int(value)
        if v != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise DataError(f"task '{task}': option {name}={value!r} must be an integer") from None
    if v < lo or (hi is not None and v > hi):
        rng = f'>= {lo}' if hi is None else f'in [{lo}, {hi}]'
        raise DataError(f"task '{task}': option {name}={v} must be {rng}")
    return v


def _float_option(task: str, name: str, value, lo: float, hi: float = math.inf) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DataError(f"task '{task}': option {name}={value!r} must be a number") from None
    if not (lo <= v <= hi):
        raise DataError(f"task '{task}': option {name}={v} must be in [{lo}, {hi}]")
    return v


def _subsample(x: torch.Tensor, y: torch.Tensor, n: Optional[int], seed: int, salt: int):
    """At most ``n`` samples, a seeded random subset in the original order (None: all)."""
    if n is None or n >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=torch_generator(seed, 'subsample', salt))[:n]
    keep = keep.sort().values
    return x[keep], y[keep]


# --------------------------------------------------------------------------------------------
# Features: one pipeline for every waveform task
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureConfig:
    """How a waveform becomes a feature sequence.

    ``kind='mel'``: log mel power spectrogram with ``n_mels`` bands; ``kind='mfcc'``: ``n_mfcc``
    cepstral coefficients computed from those mel bands. Windows are Hann, ``win_ms`` long every
    ``hop_ms``; the FFT size is the next power of two >= the window.
    """
    sample_rate: int = SAMPLE_RATE
    n_mels: int = _DEFAULT_N_MELS
    win_ms: float = _DEFAULT_WIN_MS
    hop_ms: float = _DEFAULT_HOP_MS
    kind: str = 'mel'
    n_mfcc: int = 20
    f_min: float = 20.0

    def __post_init__(self):
        if self.kind not in ('mel', 'mfcc'):
            raise DataError(f"feature kind {self.kind!r} must be 'mel' or 'mfcc'")
        if self.kind == 'mfcc' and self.n_mfcc > self.n_mels:
            raise DataError(f'n_mfcc={self.n_mfcc} must be <= n_mels={self.n_mels}')
        if self.hop_ms <= 0 or self.win_ms < self.hop_ms:
            raise DataError(f'need 0 < hop_ms <= win_ms, got hop_ms={self.hop_ms}, '
                            f'win_ms={self.win_ms}')

    @property
    def win_length(self) -> int:
        return int(round(self.win_ms * self.sample_rate / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.hop_ms * self.sample_rate / 1000))

    @property
    def n_fft(self) -> int:
        return 1 << (self.win_length - 1).bit_length()

    @property
    def feature_dim(self) -> int:
        return self.n_mels if self.kind == 'mel' else self.n_mfcc

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    def key(self) -> str:
        """A short stable hash of every setting (names the feature cache files)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def waveform_features(wave: torch.Tensor, cfg: FeatureConfig = FeatureConfig(),
                      batch_size: int = 512) -> torch.Tensor:
    """Waveforms ``[N, L]`` (or ``[L]``) -> log features ``float32 [N, T, F]`` (or ``[T, F]``).

    Mel power spectrogram, then ``log(mel + 1e-6)`` (the floor keeps digital silence finite); for
    ``kind='mfcc'`` the DCT of that log-mel. Not normalised: use :func:`normalise_splits` with
    statistics from the training split.
    """
    # Imported here, not at the top: only audio features need torchaudio, and a torchaudio that
    # cannot load must not break the other tasks (see tasks/optional_imports.py).
    torchaudio = load_torchaudio()

    squeeze = wave.dim() == 1
    wave = wave.reshape(1, -1) if squeeze else wave
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length,
        hop_length=cfg.hop_length, f_min=cfg.f_min, f_max=cfg.sample_rate / 2, n_mels=cfg.n_mels,
        power=2.0, center=True)
    dct = None
    if cfg.kind == 'mfcc':
        dct = torchaudio.functional.create_dct(cfg.n_mfcc, cfg.n_mels, norm='ortho')  # [M, C]
    out = []
    with torch.no_grad():
        for i in range(0, wave.shape[0], batch_size):
            feats = torch.log(mel(wave[i:i + batch_size].float()) + 1e-6)  # [B, M, T]
            feats = rearrange(feats, 'b m t -> b t m')
            if dct is not None:
                feats = feats @ dct
            out.append(feats.contiguous())
    feats = torch.cat(out) if out else torch.zeros(0, cfg.num_frames(wave.shape[-1]),
                                                   cfg.feature_dim)
    return feats[0] if squeeze else feats


def normalise_splits(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-5):
    """Standardise every feature with the mean/std of the training split ``[N, T, F]``
    (over samples and time), applied unchanged to the other splits (no test statistics leak)."""
    mean = train.mean(dim=(0, 1), keepdim=True)
    std = train.std(dim=(0, 1), keepdim=True).clamp_min(eps)
    return tuple(((t - mean) / std).float() for t in (train, *others))


# --------------------------------------------------------------------------------------------
# 1. audio_keywords: procedural speech-like keywords
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One sound unit of the synthetic language.

    ``formants``: (centre Hz, bandwidth Hz) of the cascade resonators that shape the source.
    ``voiced`` units filter the glottal pulse train, the others filter white noise; a ``burst``
    (a plosive release) is preceded by a silent closure and decays quickly.
    """
    name: str
    voiced: bool
    formants: tuple
    dur_ms: float
    level: float
    burst: bool = False


# Formant values are textbook adult averages (Peterson & Barney-like) for the vowels; the
# fricatives are noise shaped by broad high resonances; /m/ is a weak low murmur.
UNITS = {u.name: u for u in (
    Unit('a', True, ((730, 90), (1090, 110), (2440, 170)), 160, 1.0),
    Unit('e', True, ((530, 70), (1840, 100), (2480, 150)), 150, 1.0),
    Unit('i', True, ((270, 60), (2290, 100), (3010, 170)), 150, 0.9),
    Unit('o', True, ((570, 80), (840, 90), (2410, 150)), 160, 1.0),
    Unit('u', True, ((300, 60), (870, 90), (2240, 150)), 150, 0.9),
    Unit('m', True, ((250, 60), (1200, 300), (2300, 400)), 110, 0.5),
    Unit('s', False, ((5000, 1200), (6600, 1500)), 130, 0.35),
    Unit('sh', False, ((2600, 450), (3600, 900)), 130, 0.45),
    Unit('t', False, ((4200, 2000),), 35, 0.6, burst=True),
)}

# Each class is an ordered 3-unit "word". Classes come in groups of three that use the same
# three units in different orders, so the frame histogram identifies at most the group (chance
# 1 in 3 within it); only the order separates the classes. Groups are interleaved so that the
# first k classes (option `classes`) mix the groups.
KEYWORDS = (
    ('a', 's', 'i'), ('u', 'sh', 'e'), ('o', 'm', 'a'), ('i', 't', 'u'),
    ('i', 's', 'a'), ('e', 'sh', 'u'), ('a', 'm', 'o'), ('u', 't', 'i'),
    ('s', 'i', 'a'), ('sh', 'e', 'u'), ('m', 'a', 'o'), ('t', 'u', 'i'),
)


_UNIT_TABLE = None


def _unit_table() -> dict:
    """The UNITS as tensors indexed by unit number, plus a final silent padding row.

    Units with fewer than 3 resonators get very broad (~flat) extra ones.
    """
    global _UNIT_TABLE
    if _UNIT_TABLE is None:
        rows = list(UNITS.values())
        freq = torch.full((len(rows) + 1, 3), 1000.0)
        bw = torch.full((len(rows) + 1, 3), 1e4)
        for i, u in enumerate(rows):
            for j, (f, b) in enumerate(u.formants):
                freq[i, j], bw[i, j] = f, b
        _UNIT_TABLE = dict(
            freq=freq, bw=bw,
            level=torch.tensor([u.level for u in rows] + [0.0]),
            dur=torch.tensor([u.dur_ms / 1000 for u in rows] + [0.0]),
            voiced=torch.tensor([u.voiced for u in rows] + [False]),
            burst=torch.tensor([u.burst for u in rows] + [False]))
    return _UNIT_TABLE


def _cascade_response(freq: torch.Tensor, bw: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Complex response of a cascade of 2-pole digital resonators (Klatt), unity gain at DC.

    ``freq``/``bw [..., R]`` in Hz (R resonators) -> ``[..., n_fft // 2 + 1]`` on the rfft grid.
    Each resonator is H(z) = G / (1 - c z^-1 + r^2 z^-2) with r = exp(-pi bw / fs),
    c = 2 r cos(2 pi freq / fs), G = 1 - c + r^2; a cascade multiplies them. The denominator is
    built from real cosines/sines (cheaper than complex powers of z^-1).
    """
    w = (2 * math.pi / n_fft) * torch.arange(n_fft // 2 + 1)
    cos1, sin1, cos2, sin2 = torch.cos(w), torch.sin(w), torch.cos(2 * w), torch.sin(2 * w)
    r = torch.exp(-math.pi * bw / SAMPLE_RATE)
    c = 2 * r * torch.cos(2 * math.pi * freq / SAMPLE_RATE)
    r2 = r * r
    gain = (1 - c + r2).prod(-1, keepdim=True)
    H = None
    for j in range(freq.shape[-1]):  # D(e^jw) = 1 - c e^-jw + r^2 e^-2jw, one resonator at a time
        cj, r2j = c[..., j, None], r2[..., j, None]
        d = torch.complex(1 - cj * cos1 + r2j * cos2, cj * sin1 - r2j * sin2)
        H = d if H is None else H * d
    return gain / H


def _unit_envelope(t: torch.Tensor, start: torch.Tensor, stop: torch.Tensor,
                   burst: torch.Tensor, ramp: float = 0.02) -> torch.Tensor:
    """Amplitude envelope of each unit at times ``t [..., S]`` (seconds) -> ``[..., S]``.

    ``start``/``stop``/``burst`` have shape ``[...]``. A continuant is 1 on [start, stop] with
    raised-cosine ramps of ``ramp`` s outside it, so neighbouring units overlap in their ramps
    (a crude coarticulation). A burst (plosive release) has a 2 ms attack at ``start`` and an
    exponential decay (tau 15 ms) instead of a plateau.
    """
    rel = t - start[..., None]
    up = (rel / ramp + 1).clamp(0, 1)
    down = ((stop[..., None] + ramp - t) / ramp).clamp(0, 1)
    env = 0.5 - 0.5 * torch.cos(math.pi * torch.minimum(up, down))
    if burst.any():
        burst_env = (rel / 0.002 + 1).clamp(0, 1) * torch.exp(-rel.clamp_min(0) / 0.015)
        env = torch.where(burst[..., None], burst_env, env)
    return env


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    """``x`` scaled to unit RMS along the last axis (a single pass; the signals are ~zero-mean)."""
    rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) / math.sqrt(x.shape[-1])
    return x / rms.clamp_min(1e-8)


def _glottal_source(f0: torch.Tensor, open_q: torch.Tensor, close_q: torch.Tensor) -> torch.Tensor:
    """Differentiated Rosenberg glottal pulses: ``f0 [N, L]`` (Hz, time-varying) -> ``[N, L]``.

    The glottal flow rises as half a cosine over the fraction ``open_q`` of each period, falls
    over ``close_q`` and is closed for the rest; its first difference adds the lip radiation
    (+6 dB/octave), giving the usual buzzy voiced excitation with harmonics of f0.
    """
    phase = torch.cumsum(f0 / SAMPLE_RATE, dim=-1)
    frac = phase - torch.floor(phase)  # position inside the current period, [0, 1)
    tp, tn = open_q[:, None], close_q[:, None]
    rising = 0.5 * (1 - torch.cos(math.pi * frac / tp))
    falling = torch.cos(0.5 * math.pi * ((frac - tp) / tn).clamp(0, 1))
    flow = torch.where(frac < tp, rising, torch.where(frac < tp + tn, falling, 0.0))
    return torch.diff(flow, dim=-1, prepend=flow[:, :1])


def synthesize_keywords(words: Sequence[Sequence[str]], generator: torch.Generator, *,
                        seconds: float = _KEYWORD_SECONDS, noise: float = 0.5,
                        return_segments: bool = False):
    """Synthesise one utterance per entry of ``words`` (each a sequence of unit names).

    Returns ``float32 [N, L]`` waveforms at 16 kHz (and, with ``return_segments``, the
    ``[N, K, 2]`` start/stop times in seconds of each unit). The source-filter model, per clip:

    - **Speaker**: a pitch f0 log-uniform in 85-260 Hz with a declining contour, a slow random
      drift and 5 Hz vibrato; a vocal-tract length factor (0.85-1.2) scaling every formant;
      glottal open/close quotients (voice quality) and a little breath noise.
    - **Units**: voiced units filter the glottal pulse train (:func:`_glottal_source`), unvoiced
      ones white noise, through cascade 2-pole resonators at the unit's formants (each jittered
      by +-6 % and its bandwidth by 0.8-1.3x). Each unit is filtered in the frequency domain
      over its own stretch of the clip only, then gated by its envelope and added in: the
      sources are stationary, so this is exact enough, and it vectorises over clips and units.
    - **Timing**: a speaking rate 0.75-1.3x, each unit's duration jittered +-25 %, short random
      pauses, a silent closure before a plosive burst, raised-cosine 20 ms ramps that overlap
      between neighbours, and a random onset inside the clip.
    - **Level**: each unit +-4 dB around its nominal level, the clip gain -20..0 dB, and
      background noise (pink + white) whose RMS is ``noise`` x the speech RMS x 10^U(-0.25,0.25)
      (``noise=0.5`` is an SNR of about 6 dB).
    """
    g = generator
    n = len(words)
    if n == 0:
        return torch.zeros(0, int(round(seconds * SAMPLE_RATE)))
    k_max = max(len(w) for w in words)
    L = int(round(seconds * SAMPLE_RATE))

    def U(lo, hi, *shape):  # uniform draws from the local generator only
        return lo + (hi - lo) * torch.rand(*(shape or (n,)), generator=g)

    # ---- unit parameters, [N, K] (padded units have zero level) ------------------------------
    table = _unit_table()
    pad = len(UNITS)  # the last row of the table is silence, for words shorter than k_max
    names = list(UNITS)
    try:
        ids = torch.tensor([[names.index(u) for u in w] + [pad] * (k_max - len(w)) for w in words])
    except ValueError:
        bad = sorted({u for w in words for u in w} - set(UNITS))
        raise DataError(f'unknown sound unit(s) {bad}; units: {", ".join(UNITS)}') from None
    freq, bw, level, dur = (table[key][ids] for key in ('freq', 'bw', 'level', 'dur'))
    voiced, burst = table['voiced'][ids], table['burst'][ids]

    tract = U(0.85, 1.2)[:, None, None]  # speaker's vocal-tract scaling of all formants
    freq = (freq * tract * U(0.94, 1.06, n, k_max, 3)).clamp(80, 7600)
    bw = bw * U(0.8, 1.3, n, k_max, 3)
    level = level * 10 ** (U(-4, 4, n, k_max) / 20)

    # ---- timing ------------------------------------------------------------------------------
    rate = U(0.75, 1.3)[:, None]
    dur = dur * rate * U(0.75, 1.25, n, k_max) * (level > 0)
    gap = U(0.0, 0.03, n, k_max) * rate + burst * 0.05 * rate  # pause; closure before a burst
    gap = gap * (level > 0)
    gap[:, 0] = 0
    span = (gap + dur).sum(1)
    fit = torch.clamp((seconds - 0.08) / span, max=1.0)  # very slow speakers are squeezed to fit
    dur, gap, span = dur * fit[:, None], gap * fit[:, None], span * fit
    onset = 0.04 + U(0, 1) * (seconds - 0.08 - span).clamp_min(0)
    start = onset[:, None] + torch.cumsum(gap + dur, 1) - dur
    stop = start + dur

    # ---- sources -----------------------------------------------------------------------------
    t = torch.arange(L) / SAMPLE_RATE
    f0 = torch.exp(U(math.log(85), math.log(260)))[:, None]
    decline = U(0.0, 0.25)[:, None]
    contour = 1 + decline * (0.5 - t / seconds)  # declination across the utterance
    drift = torch.nn.functional.interpolate(  # a slow random wander of pitch, ~8 knots/second
        U(-0.04, 0.04, n, 1, max(2, int(seconds * 8))), size=L, mode='linear',
        align_corners=True)[:, 0]
    vibrato = 0.01 * torch.sin(2 * math.pi * 5 * t + U(0, 2 * math.pi)[:, None])
    pulses = _glottal_source(f0 * contour * (1 + drift + vibrato), U(0.3, 0.5), U(0.1, 0.25))
    noise_src = torch.randn(n, L, generator=g)
    # Breath noise: the unvoiced units' noise source, re-used (its correlation is inaudible).
    voiced_src = _unit_rms(pulses) + U(0.0, 0.15)[:, None] * noise_src

    # ---- filtering and gating, one segment per unit: [N, K, S] ---------------------------------
    # Each unit is rendered only over its own support (start - ramp .. stop + ramp, or a burst's
    # decay) plus a margin: its source is cut from the clip's source at that place, filtered by
    # FFT (the sources are stationary, so the circular wrap only touches the margins, where the
    # envelope is ~0), gated by the envelope and added into the clip. Far cheaper than filtering
    # K whole clips.
    ramp, margin = 0.02, 0.02
    support_end = torch.where(burst, start + 0.08, stop + ramp)
    seg0 = torch.floor((start - ramp - margin) * SAMPLE_RATE).long()  # [N, K] first sample
    S = int(((support_end - start).max().item() + ramp + 2 * margin) * SAMPLE_RATE) + 1
    S = -(-S // 256) * 256  # round up: FFT-friendly and stable for nearby settings
    pos = seg0[..., None] + torch.arange(S)  # [N, K, S] absolute sample index
    inside = (pos >= 0) & (pos < L)
    pos = pos.clamp(0, L - 1)
    # One gather from [noise | glottal] side by side: a voiced unit reads the second half.
    both = torch.cat([noise_src, voiced_src], dim=1)  # [N, 2L]
    src = torch.gather(both, 1, (pos + L * voiced[..., None]).flatten(1)).view(n, k_max, S)
    H = _cascade_response(freq, bw, S)
    units = torch.fft.irfft(torch.fft.rfft(src) * H, n=S)
    units = _unit_rms(units)
    env = _unit_envelope(pos / SAMPLE_RATE, start, stop, burst, ramp) * inside
    flat = (pos + L * torch.arange(n).view(n, 1, 1)).flatten()  # sample index in [N * L]
    speech = torch.zeros(n, L)
    speech.view(-1).index_add_(0, flat, (units * env * level[..., None]).flatten())
    # Where some real unit is at least half on: the "active" speech, for the level and the SNR.
    coverage = torch.zeros(n, L)
    coverage.view(-1).scatter_reduce_(0, flat, (env * (level > 0)[..., None]).flatten(), 'amax')

    active = coverage > 0.5
    speech_rms = ((speech ** 2 * active).sum(1) / active.sum(1).clamp_min(1)).sqrt()
    speech = speech / speech_rms.clamp_min(1e-8)[:, None] * 0.1  # speech RMS 0.1 before gain

    if noise > 0:
        # Background: white noise tilted towards pink (1/f power) by a random amount.
        spec = torch.fft.rfft(torch.randn(n, L, generator=g))
        f = torch.fft.rfftfreq(L, 1 / SAMPLE_RATE).clamp_min(20)
        pinkness = U(0, 1)[:, None]
        bg = _unit_rms(torch.fft.irfft(spec * (1 - pinkness + pinkness * (1000 / f).sqrt()), n=L))
        speech = speech + bg * 0.1 * noise * 10 ** U(-0.25, 0.25)[:, None]

    wave_out = (speech * 10 ** (U(-20, 0)[:, None] / 20)).float()
    if return_segments:
        return wave_out, torch.stack([start, stop], dim=-1)
    return wave_out


def generate_keywords(n: int, classes: int, seed: int, split: str, *,
                      seconds: float = _KEYWORD_SECONDS, noise: float = 0.5,
                      chunk: int = 64):
    """``n`` balanced, shuffled utterances of the first ``classes`` keywords ->
    (waveforms ``[n, L]``, labels ``int64 [n]``).

    Each split has its own generator (seeded by ``seed`` and the split name), so the test set
    does not change when ``n_train`` does; clips are made in fixed-size chunks so the result
    does not depend on memory settings.
    """
    g = torch_generator(seed, 'audio_keywords', split)
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    waves = [synthesize_keywords([KEYWORDS[c] for c in y[i:i + chunk].tolist()], g,
                                 seconds=seconds, noise=noise)
             for i in range(0, n, chunk)]
    L = int(round(seconds * SAMPLE_RATE))
    return (torch.cat(waves) if waves else torch.zeros(0, L)), y.long()


@functools.lru_cache(maxsize=8)
def _keyword_features(split: str, count: int, classes: int, data_seed: int, seconds: float,
                      noise: float, cfg: FeatureConfig):
    """Features of one generated split, cached in-process: synthesis takes seconds, and a
    compare builds the same task once per run. Callers must not modify the returned tensors."""
    wave_, y = generate_keywords(count, classes, data_seed, split, seconds=seconds, noise=noise)
    return waveform_features(wave_, cfg), y


def build_audio_keywords(*, data_dir=None, download=False, seed=0, **options) -> TaskData:
    """The procedural keyword task (see :func:`synthesize_keywords`).

    Options (defaults): ``n_train`` (2000, validation included), ``n_test`` (500),
    ``val_fraction`` (0.1, carved from the training part with the run ``seed``), ``data_seed``
    (0: the generator's seed, fixed by default so that every run sees the same data),
    ``classes`` (10, at most 12), ``noise`` (0.5: background RMS relative to the speech),
    ``seconds`` (0.8), ``n_mels`` (40), ``hop_ms`` (16), ``win_ms`` (32), ``features``
    ('mel' | 'mfcc'), ``n_mfcc`` (20, for 'mfcc'). ``data_dir``/``download`` are unused.

    Generated sets are class-balanced (the validation carve makes train/val nearly so). Features
    are standardised per band with the statistics of the training split.

    Difficulty at the defaults (measured, data_seed 0, test set): a bag-of-frames classifier
    (per-band mean and std over time -> MLP, 30 epochs) reaches ~37 %, near its 40 % ceiling
    when only the order separates classes; a GRU-64 (Adam 3e-3, batch 64, loss at the last step)
    ~77 % after 6 epochs and ~89 % after 10. ``noise=0`` is easy (GRU 100 % in 6 epochs, bag
    46 %); ``noise=1`` harder (GRU ~58 % in 6 epochs).
    """
    name = 'audio_keywords'
    o = _check_options(name, options, dict(
        n_train=2000, n_test=500, val_fraction=0.1, data_seed=0, classes=10, noise=0.5,
        seconds=_KEYWORD_SECONDS, n_mels=_DEFAULT_N_MELS, hop_ms=_DEFAULT_HOP_MS,
        win_ms=_DEFAULT_WIN_MS, features='mel', n_mfcc=20))
    n_train = _int_option(name, 'n_train', o['n_train'], 2)
    n_test = _int_option(name, 'n_test', o['n_test'], 0)
    val_fraction = _float_option(name, 'val_fraction', o['val_fraction'], 0.0, 0.9)
    data_seed = _int_option(name, 'data_seed', o['data_seed'], 0)
    classes = _int_option(name, 'classes', o['classes'], 2, len(KEYWORDS))
    noise = _float_option(name, 'noise', o['noise'], 0.0, 100.0)
    seconds = _float_option(name, 'seconds', o['seconds'], 0.4, 10.0)
    cfg = FeatureConfig(n_mels=_int_option(name, 'n_mels', o['n_mels'], 4, 256),
                        hop_ms=_float_option(name, 'hop_ms', o['hop_ms'], 1.0, 100.0),
                        win_ms=_float_option(name, 'win_ms', o['win_ms'], 1.0, 200.0),
                        kind=o['features'], n_mfcc=_int_option(name, 'n_mfcc', o['n_mfcc'], 1))

    def generate() -> dict:
        out = {}
        for split, count in (('train', n_train), ('test', n_test)):
            out[f'{split}_x'], out[f'{split}_y'] = _keyword_features(
                split, count, classes, data_seed, seconds, noise, cfg)
        return out

    # Synthesis and feature extraction take seconds; the features depend on these options only
    # (the run seed picks the validation carve below), so one cache entry serves every seed.
    arrays = cached_tensors(name, dict(n_train=n_train, n_test=n_test, data_seed=data_seed,
                                       classes=classes, noise=noise, seconds=seconds,
                                       features=asdict(cfg)),
                            generate, sources=(__file__,), packages=('torchaudio',))
    feats = {split: (arrays[f'{split}_x'], arrays[f'{split}_y']) for split in ('train', 'test')}
    train, val = split_off(*feats['train'], val_fraction, (int(seed), name, 'val'))
    xs = normalise_splits(train[0], val[0], feats['test'][0])
    ys = (train[1], val[1], feats['test'][1])
    ds = [TensorDataset(x, y) for x, y in zip(xs, ys)]
    words = ', '.join('-'.join(KEYWORDS[c]) for c in range(classes))
    return TaskData(
        name=name, kind='audio', input_shape=tuple(xs[0].shape[1:]), num_classes=classes,
        label_kind='sequence', train=ds[0], val=ds[1], test=ds[2],
        description=f'{AUDIO_TASK_INFO[name]["description"]} Words: {words}. noise={noise}.',
        source='offline',
        info=dict(words=[list(KEYWORDS[c]) for c in range(classes)], noise=noise,
                  seconds=seconds, data_seed=data_seed, val_fraction=val_fraction,
                  features=asdict(cfg)))


# --------------------------------------------------------------------------------------------
# 2. speech_commands: Google Speech Commands v2
# --------------------------------------------------------------------------------------------

def _read_wav_pcm16(path: str, sample_rate: int = SAMPLE_RATE,
                    length: int = SAMPLE_RATE) -> np.ndarray:
    """A mono 16-bit PCM WAV -> float32 ``[length]`` in [-1, 1), zero-padded or trimmed at the end.

    Standard library only (``torchaudio.load`` needs torchcodec/FFmpeg in torchaudio 2.11). A file
    that is missing, not a WAV, not PCM16, or at another sample rate is a DataError naming it.
    """
    try:
        with wave.open(path, 'rb') as f:
            if f.getcomptype() != 'NONE' or f.getsampwidth() != 2:
                raise DataError(f'{path}: expected an uncompressed 16-bit PCM WAV, got '
                                f'compression {f.getcomptype()!r}, {8 * f.getsampwidth()}-bit; '
                                f'replace the file (re-extract the dataset archive)')
            if f.getframerate() != sample_rate:
                raise DataError(f'{path}: sample rate {f.getframerate()} Hz, expected '
                                f'{sample_rate} Hz')
            channels = f.getnchannels()
            raw = f.readframes(f.getnframes())
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f'{path}: file listed by the dataset is missing; re-extract the '
                        f'dataset archive') from None
    except (wave.Error, EOFError, OSError) as e:
        raise DataError(f'{path}: not a readable 16-bit PCM WAV ({e}); replace the file '
                        f'(re-extract the dataset archive)') from None
    audio = np.frombuffer(raw[:len(raw) // (2 * channels) * 2 * channels], dtype='<i2')
    audio = audio.reshape(-1, channels).mean(axis=1) / 32768.0  # mix down extra channels
    out = np.zeros(length, dtype=np.float32)
    out[:min(length, len(audio))] = audio[:length]
    return out


def _speech_commands_walker(root: Path, subset: str, download: bool) -> list:
    """The official file list of one split, from torchaudio's SPEECHCOMMANDS (no audio loaded)."""
    folder = root / 'SpeechCommands' / 'speech_commands_v0.02'
    how = (f'download and extract {SPEECH_COMMANDS_URL} into {folder} '
           f'(mkdir -p {folder} && tar -xzf speech_commands_v0.02.tar.gz -C {folder}), '
           f'or rerun with --download (data dir {root})')
    if not folder.is_dir() and not download:
        raise DataError(f'Speech Commands v2 not found: expected the folder {folder} '
                        f'(with <word>/<file>.wav, validation_list.txt, testing_list.txt). '
                        f'To fix: {how}')
    for lst in ('validation_list.txt', 'testing_list.txt'):
        if folder.is_dir() and not (folder / lst).is_file():
            raise DataError(f'Speech Commands v2: {folder / lst} is missing (it defines the '
                            f'official splits). To fix: {how}')
    load_torchaudio()  # a clear error if it cannot load, before the import below
    from torchaudio.datasets import SPEECHCOMMANDS
    try:
        root.mkdir(parents=True, exist_ok=True)
        ds = SPEECHCOMMANDS(str(root), download=download, subset=subset)
    except (OSError, RuntimeError) as e:  # network failure, bad archive, ...
        raise DataError(f'Speech Commands v2 could not be prepared in {folder}: {e}. '
                        f'To fix: {how}') from None
    return list(ds._walker)


def _speech_commands_split(root: Path, subset: str, cfg: FeatureConfig, download: bool):
    """Features ``[N, T, F]`` and labels of one official split, cached on disk.

    The cache file is keyed by the FeatureConfig hash, the split and a hash of the file list, so
    changing a setting (or the data) rebuilds it; it is written to a temporary file and renamed,
    so an interrupted build never leaves a half-written cache.
    """
    walker = _speech_commands_walker(root, subset, download)
    base = root / 'SpeechCommands' / 'speech_commands_v0.02'
    rel = [os.path.relpath(p, base) for p in walker]
    files_key = hashlib.sha256('\n'.join(rel).encode()).hexdigest()[:12]
    cache_dir = root / 'SpeechCommands' / 'tsp_cache'
    cache = cache_dir / f'{subset}-{cfg.key()}-{files_key}.pt'
    if cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            return blob['x'], blob['y']
        except Exception:  # unreadable cache: rebuild it below
            pass

    index = {w: i for i, w in enumerate(SPEECH_COMMANDS_WORDS)}
    labels = []
    for r in rel:
        word = os.path.basename(os.path.dirname(r))
        if word not in index:
            raise DataError(f'Speech Commands v2: {base / r} is in folder {word!r}, which is not '
                            f'one of the 35 v2 words ({", ".join(SPEECH_COMMANDS_WORDS)})')
        labels.append(index[word])
    y = torch.tensor(labels, dtype=torch.long)
    feats, chunk = [], 1024
    for i in range(0, len(walker), chunk):  # read and featurise in chunks: bounded memory
        wav = np.stack([_read_wav_pcm16(p) for p in walker[i:i + chunk]])
        feats.append(waveform_features(torch.from_numpy(wav), cfg))
    x = torch.cat(feats) if feats else torch.zeros(0, cfg.num_frames(SAMPLE_RATE), cfg.feature_dim)

    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f'.{subset}-', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save({'x': x, 'y': y, 'files': rel, 'config': asdict(cfg)}, f)
        os.replace(tmp, cache)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return x, y


def build_speech_commands(*, data_dir=None, download=False, seed=0, **options) -> TaskData:
    """Google Speech Commands v2: 35 words, the official training/validation/testing lists.

    Expects ``<data_dir>/SpeechCommands/speech_commands_v0.02/`` (torchaudio's layout); with
    ``download=True`` torchaudio fetches and extracts the 2.3 GB archive there. Clips are padded
    or trimmed to 1 s and featurised by :func:`waveform_features`, normalised with training
    statistics. Labels index the 35 words sorted alphabetically.

    Options: ``n_mels`` (40), ``hop_ms`` (16), ``win_ms`` (32), ``features`` ('mel'|'mfcc'),
    ``n_mfcc`` (20), and ``n_train``/``n_val``/``n_test`` (None = all; else a random subset drawn
    with ``data_seed`` (0), for quick runs). The run ``seed`` is unused: the splits are official.
    """
    name = 'speech_commands'
    o = _check_options(name, options, dict(
        n_mels=_DEFAULT_N_MELS, hop_ms=_DEFAULT_HOP_MS, win_ms=_DEFAULT_WIN_MS, features='mel',
        n_mfcc=20, n_train=None, n_val=None, n_test=None, data_seed=0))
    cfg = FeatureConfig(n_mels=_int_option(name, 'n_mels', o['n_mels'], 4, 256),
                        hop_ms=_float_option(name, 'hop_ms', o['hop_ms'], 1.0, 100.0),
                        win_ms=_float_option(name, 'win_ms', o['win_ms'], 1.0, 200.0),
                        kind=o['features'], n_mfcc=_int_option(name, 'n_mfcc', o['n_mfcc'], 1))
    caps = {s: _int_option(name, f'n_{s}', o[f'n_{s}'], 1, allow_none=True)
            for s in ('train', 'val', 'test')}
    data_seed = _int_option(name, 'data_seed', o['data_seed'], 0)
    root = data_root(data_dir)

    data = {}
    for salt, (split, subset) in enumerate((('train', 'training'), ('val', 'validation'),
                                            ('test', 'testing'))):
        x, y = _speech_commands_split(root, subset, cfg, download)
        data[split] = _subsample(x, y, caps[split], data_seed, salt)
    if len(data['train'][1]) == 0:
        raise DataError(f'Speech Commands v2: no training WAVs found under '
                        f'{root / "SpeechCommands" / "speech_commands_v0.02"}')
    xs = normalise_splits(data['train'][0], data['val'][0], data['test'][0])
    ds = [TensorDataset(x, data[s][1]) for x, s in zip(xs, ('train', 'val', 'test'))]
    return TaskData(
        name=name, kind='audio', input_shape=tuple(xs[0].shape[1:]),
        num_classes=len(SPEECH_COMMANDS_WORDS), label_kind='sequence',
        train=ds[0], val=ds[1], test=ds[2],
        description=AUDIO_TASK_INFO[name]['description'], source='download',
        info=dict(words=list(SPEECH_COMMANDS_WORDS), features=asdict(cfg),
                  folder=str(root / 'SpeechCommands' / 'speech_commands_v0.02')))


# --------------------------------------------------------------------------------------------
# 3. shd: Spiking Heidelberg Digits
# --------------------------------------------------------------------------------------------

def _shd_fetch(folder: Path, split: str) -> Path:
    """Make ``shd_<split>.h5`` from ``shd_<split>.h5.gz``, downloading the archive from the Zenke
    lab unless it is already in ``folder``. Temporary files + rename: never a partial .h5."""
    folder.mkdir(parents=True, exist_ok=True)
    url = f'{SHD_URL}shd_{split}.h5.gz'
    gz = folder / f'shd_{split}.h5.gz'
    tmp_gz, tmp_h5 = None, None
    try:
        if not gz.is_file():
            fd, tmp_gz = tempfile.mkstemp(dir=folder, suffix='.gz.tmp')
            os.close(fd)
            urllib.request.urlretrieve(url, tmp_gz)
        fd, tmp_h5 = tempfile.mkstemp(dir=folder, suffix='.h5.tmp')
        with gzip.open(tmp_gz or gz, 'rb') as src, os.fdopen(fd, 'wb') as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp_h5, folder / f'shd_{split}.h5')
    except (OSError, EOFError) as e:
        raise DataError(f'SHD: could not make {folder / f"shd_{split}.h5"} from {url} ({e}); '
                        f'download the archive by hand into {folder} and gunzip it') from None
    finally:
        for p in (tmp_gz, tmp_h5):
            if p and os.path.exists(p):
                os.unlink(p)
    return folder / f'shd_{split}.h5'


def _shd_file(root: Path, split: str, download: bool) -> Path:
    """The path of ``shd_<split>.h5`` under ``<root>/shd``, fetched with ``download``."""
    folder = root / 'shd'
    path = folder / f'shd_{split}.h5'
    if path.is_file():
        return path
    if download:
        return _shd_fetch(folder, split)
    gz = folder / f'shd_{split}.h5.gz'
    hint = (f'found {gz}: run `gunzip {gz}` (or rerun with --download)' if gz.is_file() else
            f'download shd_train.h5.gz and shd_test.h5.gz from {SHD_URL} into {folder} and '
            f'gunzip them (e.g. `wget {SHD_URL}shd_{split}.h5.gz -P {folder} && gunzip '
            f'{folder}/shd_{split}.h5.gz`), or rerun with --download')
    raise DataError(f'SHD: {path} not found (expected shd_train.h5 and shd_test.h5 in {folder}). '
                    f'To fix: {hint}')


def _shd_open(path: Path):
    """Open an SHD file and check its schema -> (h5py.File, labels int64 [N])."""
    import h5py

    try:
        f = h5py.File(path, 'r')
    except OSError as e:
        raise DataError(f'SHD: {path} is not a readable HDF5 file ({e}); '
                        f'download it again') from None
    for key in ('spikes/times', 'spikes/units', 'labels'):
        if key not in f:
            f.close()
            raise DataError(f"SHD: {path} has no dataset '{key}' (expected the SHD schema: "
                            f"spikes/times, spikes/units, labels); download the file again")
    labels = np.asarray(f['labels'][:]).astype(np.int64).reshape(-1)
    n = len(labels)
    lens = {k: len(f[k]) for k in ('spikes/times', 'spikes/units')}
    for k, m in lens.items():
        if m != n:
            f.close()
            raise DataError(f"SHD: {path}: '{k}' has {m} entries but 'labels' has {n}; "
                            f'the file is truncated or not SHD, download it again')
    if n and (labels.min() < 0 or labels.max() >= SHD_CLASSES):
        f.close()
        raise DataError(f"SHD: {path}: 'labels' must be in [0, {SHD_CLASSES}), got "
                        f'[{labels.min()}, {labels.max()}]')
    return f, labels


def read_shd(path, bin_ms: float = 10.0, max_time: float = 1.0, index=None, chunk: int = 512):
    """An SHD HDF5 file -> (counts ``float32 [n, T, 700]``, labels ``int64 [n]``).

    Schema: ``spikes/times`` (vlen float, seconds), ``spikes/units`` (vlen int, 0..699), ``labels``.
    A spike at time t falls in frame ``floor(t / bin)``, ``T = ceil(max_time / bin)``; spikes
    at or after ``max_time`` are dropped. Times are rounded to microseconds first, so frame edges
    are exact (0.03 s with 10 ms bins is frame 3, not 2). ``index`` (a sequence of sample numbers)
    selects and orders the samples to read; None reads all. Dense counts are large (8156 SHD
    training samples are 2.3 GB at the defaults), so only the selected samples are binned.
    """
    path = Path(path)
    bin_us = int(round(bin_ms * 1000))
    max_us = int(round(max_time * 1e6))
    if bin_us < 1:
        raise DataError(f'SHD: bin_ms={bin_ms} is below the 1 us time resolution')
    T = -(-max_us // bin_us)
    f, labels = _shd_open(path)
    with f:
        times, units = f['spikes/times'][:], f['spikes/units'][:]
    index = np.arange(len(labels)) if index is None else np.asarray(index, dtype=np.int64)
    n = len(index)

    x = torch.zeros(n, T, SHD_UNITS)
    flat = x.view(-1)
    for s in range(0, n, chunk):  # chunks bound the size of the index arrays
        idx = []
        for row in range(s, min(n, s + chunk)):
            i = int(index[row])
            t = np.asarray(times[i], dtype=np.float64).reshape(-1)
            u = np.asarray(units[i]).astype(np.int64).reshape(-1)
            if len(t) != len(u):
                raise DataError(f"SHD: {path}: sample {i} has {len(t)} entries in 'spikes/times' "
                                f"but {len(u)} in 'spikes/units'")
            if len(u) and (u.min() < 0 or u.max() >= SHD_UNITS):
                raise DataError(f"SHD: {path}: 'spikes/units' of sample {i} must be in "
                                f'[0, {SHD_UNITS})')
            frame = np.round(t * 1e6).astype(np.int64) // bin_us
            keep = (frame >= 0) & (frame < T)
            idx.append((row * T + frame[keep]) * SHD_UNITS + u[keep])
        idx = torch.from_numpy(np.concatenate(idx)) if idx else torch.zeros(0, dtype=torch.long)
        flat.index_put_((idx,), torch.ones(len(idx)), accumulate=True)
    return x, torch.from_numpy(labels[index])


def _pick(n: int, cap: Optional[int], seed: int, what: str) -> torch.Tensor:
    """Indices ``0..n-1``, or a seeded random subset of ``cap`` of them, in increasing order."""
    if cap is None or cap >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch_generator(seed, 'shd', what))[:cap].sort().values


def build_shd(*, data_dir=None, download=False, seed=0, **options) -> TaskData:
    """Spiking Heidelberg Digits: ``<data_dir>/shd/shd_train.h5`` and ``shd_test.h5``.

    Options: ``bin_ms`` (10), ``max_time`` (1.0 s), ``val_fraction`` (0.1: the validation split is
    a random part of the training file chosen by the run ``seed``; the test file is the official
    test set) and ``n_train``/``n_val``/``n_test`` (None = all; else a random subset drawn with
    ``data_seed`` (0), for quick runs). Full size is
    about 2.1 GB (train) + 0.23 GB (val) + 0.6 GB (test) of dense float32 counts at the defaults.
    Counts are not normalised (they are spike counts; a spiking model wants them as they are).
    """
    name = 'shd'
    o = _check_options(name, options, dict(bin_ms=10.0, max_time=1.0, val_fraction=0.1,
                                           n_train=None, n_val=None, n_test=None, data_seed=0))
    bin_ms = _float_option(name, 'bin_ms', o['bin_ms'], 0.001, 10000.0)
    max_time = _float_option(name, 'max_time', o['max_time'], 0.001, 100.0)
    val_fraction = _float_option(name, 'val_fraction', o['val_fraction'], 0.0, 0.9)
    caps = {s: _int_option(name, f'n_{s}', o[f'n_{s}'], 1, allow_none=True)
            for s in ('train', 'val', 'test')}
    data_seed = _int_option(name, 'data_seed', o['data_seed'], 0)
    root = data_root(data_dir)
    seed = int(seed)

    train_path, test_path = _shd_file(root, 'train', download), _shd_file(root, 'test', download)
    f, labels = _shd_open(train_path)
    f.close()
    n = len(labels)
    n_val = int(round(val_fraction * n))
    if n - n_val < 1:
        raise DataError(f'SHD: {train_path} has {n} samples, too few for '
                        f'val_fraction={val_fraction}')
    perm = torch.randperm(n, generator=torch_generator(seed, 'shd', 'val'))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    train_idx = train_idx[_pick(len(train_idx), caps['train'], data_seed, 'train')]
    val_idx = val_idx[_pick(len(val_idx), caps['val'], data_seed, 'val_cap')]
    f, test_labels = _shd_open(test_path)
    f.close()
    test_idx = _pick(len(test_labels), caps['test'], data_seed, 'test')

    data = {'train': read_shd(train_path, bin_ms, max_time, train_idx.numpy()),
            'val': read_shd(train_path, bin_ms, max_time, val_idx.numpy()),
            'test': read_shd(test_path, bin_ms, max_time, test_idx.numpy())}
    ds = [TensorDataset(*data[s]) for s in ('train', 'val', 'test')]
    return TaskData(
        name=name, kind='audio', input_shape=tuple(data['train'][0].shape[1:]),
        num_classes=SHD_CLASSES, label_kind='sequence', train=ds[0], val=ds[1], test=ds[2],
        description=f'Spiking Heidelberg Digits, {bin_ms:g} ms bins over {max_time:g} s, '
                    f'700 channels of spike counts, 20 classes.', source='download',
        info=dict(bin_ms=bin_ms, max_time=max_time, val_fraction=val_fraction,
                  files=[str(train_path), str(test_path)]))
