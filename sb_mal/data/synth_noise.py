"""Seeded synthetic noises for the mini corpus (mix with :func:`sb_mal.data.mixing.mix_at_snr`).

Noise kinds (:data:`NOISE_TYPES`):

* ``white``, ``pink``, ``brown``: Gaussian noise with a 0, -3 or -6 dB/octave power slope
  (shaped in the frequency domain, flat below 20 Hz, no DC);
* ``bandpass``: white or pink noise limited to a random band (raised-cosine edges);
* ``hum``: 50 or 60 Hz mains hum with 4-12 harmonics and slow amplitude modulation;
* ``babble``: 3-6 other talkers (clips you pass in, looped and offset);
* ``transient``: clicks, knocks and door-slam-like decaying bursts at random times over a
  faint pink floor (impulsive: high crest factor);
* ``combo``: two of the above together.

Every generator returns float64 noise with unit RMS and a short description.

Example
-------
>>> rng = np.random.default_rng(0)
>>> noise, detail = make_noise("hum", 16000, rng)
>>> round(float(np.sqrt(np.mean(noise ** 2))), 6), detail.split()[0]
(1.0, 'hum')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.fft import next_fast_len

from sb_mal.data.mixing import active_speech_power

__all__ = ["NOISE_TYPES", "colored_noise", "make_noise"]

#: Noise kinds that :func:`make_noise` knows.
NOISE_TYPES = ("white", "pink", "brown", "bandpass", "hum", "babble", "transient", "combo")

_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x))))
    if rms == 0.0:
        raise ValueError("cannot normalise an all-zero noise")
    return x / rms


def colored_noise(
    n: int,
    rng: np.random.Generator,
    exponent: float = 0.0,
    sample_rate: int = 16000,
    band: tuple[float, float] | None = None,
) -> np.ndarray:
    """Gaussian noise whose power falls as ``f ** -exponent`` (0 white, 1 pink, 2 brown).

    Arguments
    ---------
    n : int
        Number of samples.
    rng : numpy.random.Generator
        Source of randomness.
    exponent : float
        Power-spectrum slope exponent; frequencies below 20 Hz get the 20 Hz level, DC is 0.
    sample_rate : int
        Rate in Hz (for the 20 Hz floor and ``band``).
    band : (low, high), optional
        Keep only this band in Hz, with raised-cosine edges a fifth of an octave wide.

    Example
    -------
    >>> x = colored_noise(16000, np.random.default_rng(0), exponent=1.0)
    >>> x.shape, round(float(np.std(x)), 3)
    ((16000,), 1.0)
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    size = next_fast_len(n, real=True)  # arbitrary lengths can make the FFT 10x slower
    spec = np.fft.rfft(rng.standard_normal(size))
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    gain = np.maximum(freqs, 20.0) ** (-exponent / 2.0)
    gain[0] = 0.0
    if band is not None:
        low, high = band
        if not 0 < low < high <= sample_rate / 2:
            raise ValueError(f"band must satisfy 0 < low < high <= {sample_rate / 2}, got {band}")
        octaves = np.log2(np.maximum(freqs, 1e-3))
        edge = 0.2
        up = np.clip((octaves - np.log2(low)) / edge + 0.5, 0.0, 1.0)
        down = np.clip((np.log2(high) - octaves) / edge + 0.5, 0.0, 1.0)
        gain *= np.sin(0.5 * np.pi * up) ** 2 * np.sin(0.5 * np.pi * down) ** 2
    x = np.fft.irfft(spec * gain, size)[:n]
    return _unit_rms(x - x.mean())


def _hum(n: int, rng: np.random.Generator, sample_rate: int) -> tuple[np.ndarray, str]:
    mains = 50 if rng.random() < 0.5 else 60
    block = sample_rate // math.gcd(sample_rate, mains)  # samples of a whole number of cycles
    t = np.arange(block) / sample_rate
    harmonics = int(rng.integers(4, 13))
    slope = rng.uniform(0.5, 1.5)
    cycle = np.zeros(block)
    for k in range(1, harmonics + 1):
        if k * mains >= 0.45 * sample_rate:
            break
        amp = k**-slope * (1.5 if k % 2 else rng.uniform(0.3, 1.0))
        cycle += amp * np.sin(2 * np.pi * k * mains * t + rng.uniform(0, 2 * np.pi))
    x = np.tile(cycle, n // block + 1)[:n]
    depth, rate = rng.uniform(0.1, 0.5), rng.uniform(0.1, 1.5)
    x *= 1.0 + depth * np.sin(
        2 * np.pi * rate * np.arange(n) / sample_rate + rng.uniform(0, 2 * np.pi)
    )
    x = _unit_rms(x) + 10 ** (-45 / 20) * rng.standard_normal(n)
    return _unit_rms(x), f"hum {mains} Hz, {harmonics} harmonics, AM {rate:.2f} Hz"


def _decay(length: int, tau_s: float, sample_rate: int) -> np.ndarray:
    return np.exp(-np.arange(length) / (tau_s * sample_rate))


def _lowpass(x: np.ndarray, cutoff: float, sample_rate: int) -> np.ndarray:
    """One-pole low-pass (simple, stable, used to darken bursts)."""
    from scipy.signal import lfilter

    a = np.exp(-2 * np.pi * cutoff / sample_rate)
    return lfilter([1 - a], [1, -a], x)


def _event(kind: str, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    sr = sample_rate
    if kind == "click":
        length = int(rng.uniform(0.001, 0.004) * sr) + 1
        return rng.standard_normal(length) * _decay(length, rng.uniform(0.0003, 0.001), sr)
    if kind == "knock":
        length = int(0.15 * sr)
        t = np.arange(length) / sr
        x = np.zeros(length)
        for _ in range(int(rng.integers(2, 4))):
            x += np.sin(2 * np.pi * rng.uniform(80, 600) * t) * _decay(
                length, rng.uniform(0.01, 0.04), sr
            )
        attack = int(0.003 * sr)
        x[:attack] += 0.5 * rng.standard_normal(attack)
        if rng.random() < 0.5:  # a second knock shortly after
            gap = int(rng.uniform(0.12, 0.25) * sr)
            x = np.concatenate([x, np.zeros(gap)])
            x[gap:] += 0.8 * x[: len(x) - gap]
        return x
    # door slam: dark noise burst with a low thump
    length = int(rng.uniform(0.3, 0.6) * sr)
    burst = _lowpass(rng.standard_normal(length), rng.uniform(300, 1500), sr)
    burst = burst / (np.abs(burst).max() + 1e-12) * _decay(length, rng.uniform(0.08, 0.3), sr)
    t = np.arange(length) / sr
    thump = np.sin(2 * np.pi * rng.uniform(40, 90) * t) * _decay(length, 0.1, sr)
    return burst + 0.8 * thump


def _transients(n: int, rng: np.random.Generator, sample_rate: int) -> tuple[np.ndarray, str]:
    x = 10 ** (-40 / 20) * colored_noise(n, rng, 1.0, sample_rate)
    count = max(1, int(rng.poisson(rng.uniform(0.7, 3.0) * n / sample_rate)))
    kinds = []
    for _ in range(count):
        kind = str(rng.choice(["click", "knock", "slam"]))
        kinds.append(kind)
        ev = _event(kind, rng, sample_rate)
        ev = rng.uniform(0.3, 1.0) * ev / (np.abs(ev).max() + 1e-12)
        start = int(rng.integers(0, max(1, n - len(ev) // 4)))
        stop = min(n, start + len(ev))
        x[start:stop] += ev[: stop - start]
    names = ", ".join(f"{kinds.count(k)} {k}" for k in ("click", "knock", "slam") if k in kinds)
    return _unit_rms(x), f"transients: {names}"


def _babble(
    n: int, rng: np.random.Generator, talkers: Sequence[np.ndarray], sample_rate: int
) -> tuple[np.ndarray, str]:
    if not talkers:
        raise ValueError("babble noise needs talker clips (babble_talkers), got none")
    count = int(rng.integers(3, 7))
    chosen = rng.choice(len(talkers), size=count, replace=len(talkers) < count)
    x = np.zeros(n)
    for index in chosen:
        clip = np.asarray(talkers[int(index)], dtype=np.float64)
        clip = clip / np.sqrt(max(active_speech_power(clip, sample_rate), 1e-20))
        pieces, total = [], 0
        while total < n + len(clip):
            gap = np.zeros(int(rng.uniform(0.05, 0.4) * sample_rate))
            pieces += [clip, gap]
            total += len(clip) + len(gap)
        loop = np.concatenate(pieces)
        start = int(rng.integers(0, len(loop) - n + 1))
        x += 10 ** (rng.uniform(-4, 4) / 20) * loop[start : start + n]
    return _unit_rms(x), f"babble of {count} talkers"


def make_noise(
    kind: str,
    n: int,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    babble_talkers: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, str]:
    """Generate ``n`` samples of noise of ``kind`` (see :data:`NOISE_TYPES`), unit RMS.

    Arguments
    ---------
    kind : str
        One of :data:`NOISE_TYPES`.
    n : int
        Length in samples.
    rng : numpy.random.Generator
        Source of randomness (same state, same noise).
    sample_rate : int
        Rate in Hz.
    babble_talkers : sequence of arrays, optional
        Speech clips at ``sample_rate`` for ``babble`` (and for ``combo`` to include babble).

    Returns
    -------
    (noise, detail)
        float64 array with RMS 1, and a short description (e.g. ``"hum 60 Hz, 7 harmonics, ..."``).

    Example
    -------
    >>> x, detail = make_noise("bandpass", 8000, np.random.default_rng(1))
    >>> detail.startswith("bandpass"), x.shape
    (True, (8000,))
    """
    if kind not in NOISE_TYPES:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISE_TYPES}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if kind in _EXPONENT:
        return colored_noise(n, rng, _EXPONENT[kind], sample_rate), kind
    if kind == "bandpass":
        colour = "pink" if rng.random() < 0.5 else "white"
        nyquist = sample_rate / 2
        low = float(np.exp(rng.uniform(np.log(100), np.log(min(1000, nyquist / 4)))))
        high = float(min(0.95 * nyquist, low * 2 ** rng.uniform(1.5, 5)))
        x = colored_noise(n, rng, _EXPONENT[colour], sample_rate, band=(low, high))
        return x, f"bandpass {colour} {low:.0f}-{high:.0f} Hz"
    if kind == "hum":
        return _hum(n, rng, sample_rate)
    if kind == "transient":
        return _transients(n, rng, sample_rate)
    if kind == "babble":
        return _babble(n, rng, babble_talkers or (), sample_rate)
    parts = ["pink", "brown", "white", "hum", "transient"] + (["babble"] if babble_talkers else [])
    first, second = (str(k) for k in rng.choice(parts, size=2, replace=False))
    a, detail_a = make_noise(first, n, rng, sample_rate, babble_talkers)
    b, detail_b = make_noise(second, n, rng, sample_rate, babble_talkers)
    level = rng.uniform(-10, 0)
    return _unit_rms(a + 10 ** (level / 20) * b), f"combo {detail_a} + {detail_b} at {level:.1f} dB"
