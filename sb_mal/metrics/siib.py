"""Speech intelligibility in bits with a Gaussian channel (SIIB^Gauss), in bits per second.

SIIB (Van Kuyk, Kleijn and Hendriks, IEEE SPL 2018) estimates the information rate between the
auditory representations of the clean and the degraded speech; SIIB^Gauss (Van Kuyk et al.,
IEEE/ACM TASLP 2018, eq. (1)) replaces the non-parametric mutual-information estimator by the
capacity of a Gaussian channel. The steps, as published:

1. both signals divided by the standard deviation of the clean one, at 16 kHz;
2. power spectra of 25 ms periodic-Hann frames with 50 % overlap (R = 80 frames per second);
3. frames of the *clean* signal more than 40 dB below its 99.9th-percentile frame power are
   dropped from both (voice activity);
4. J = 28 fourth-order gammatone (ERB) bands between 100 Hz and 6.5 kHz, log band energies;
5. forward temporal masking over 200 ms (Rhebergen et al. 2006): each frame's level decays
   logarithmically to the band's minimum clean level and the running maximum is kept;
6. per-band mean removed; K = 15 consecutive frames stacked into J*K-dim vectors; a
   Karhunen-Loeve transform estimated on the clean vectors is applied to both;
7. I = -(R / 2K) * sum_i log2(1 - rho_p^2 rho_i^2), with rho_i the correlation of component i
   and rho_p = 0.75 the production-noise correlation; clipped at 0.

So ``siib_gauss(x, x) = (R J / 2) * -log2(1 - 0.75^2) = 1335.8`` b/s, the largest possible value
(:data:`SIIB_MAX`), and independent noise gives about 0.

One deliberate difference from the reference code: the published algorithm needs long stimuli
(its authors recommend at least 20 s of speech; short ones can be concatenated). With fewer
stacked vectors than J*K = 420 dimensions (about 5.5 s of active speech) the clean covariance
is rank-deficient, and the reference implementation then correlates rounding noise along the
null-space directions. Here only the components inside the clean vectors' span are used, and
their sum is scaled by J*K / (their number): the mean information per component, estimated where
it can be, times the number of components. So the clean signal still scores :data:`SIIB_MAX`
whatever its length, and with enough speech (full rank) the value is the reference's. Below
:data:`MIN_SPEECH_SECONDS` of active speech the value is an error (NaN in the metric pool, with a
warning).

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> t = np.arange(3 * 16000) / 16000
>>> x = np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.1 * rng.standard_normal(t.size)
>>> round(siib_gauss(x, x), 1) == round(SIIB_MAX, 1)
True
>>> siib_gauss(x, x + 3 * rng.standard_normal(t.size)) < siib_gauss(x, x + 0.3 * rng.standard_normal(t.size))
True
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MIN_SPEECH_SECONDS", "SIIB_MAX", "siib_gauss"]

RATE = 16000
WINDOW = 400  # 25 ms
HOP = 200  # 50 % overlap
FRAMES_PER_SECOND = RATE / HOP  # R
VAD_RANGE_DB = 40.0
BAND_LOW, BAND_HIGH = 100.0, 6500.0
STACK = 15  # K
MASKING_SECONDS = 0.2
RHO_PRODUCTION = 0.75
#: Active speech (after voice activity) below which SIIB^Gauss is not computed.
MIN_SPEECH_SECONDS = 1.0


def _erb(f_hz):
    return 21.4 * np.log10(1.0 + 0.00437 * np.asarray(f_hz, dtype=np.float64))


BANDS = int(round(float(_erb(BAND_HIGH) - _erb(BAND_LOW))))  # J = 28
#: SIIB^Gauss of the clean signal against itself (b/s): the largest value the metric takes.
SIIB_MAX = -0.5 * FRAMES_PER_SECOND * BANDS * math.log2(1.0 - RHO_PRODUCTION**2)


def _gammatone_power_weights() -> np.ndarray:
    """``[J, WINDOW // 2 + 1]`` squared magnitude responses of the ERB-spaced gammatone bands."""
    erb = np.linspace(_erb(BAND_LOW), _erb(BAND_HIGH), BANDS)
    centres = (10 ** (erb / 21.4) - 1.0) / 4.37 * 1000.0
    order = 4
    # normalisation giving the filter its nominal ERB (Holdsworth and Patterson 1988)
    a = math.factorial(order - 1) ** 2 / (math.pi * math.factorial(2 * order - 2) * 2.0 ** -(2 * order - 2))
    bandwidth = a * 24.7 * (4.37 * centres / 1000.0 + 1.0)
    freqs = np.arange(WINDOW // 2 + 1) * RATE / WINDOW
    response = (bandwidth[:, None] ** 2 + (freqs[None, :] - centres[:, None]) ** 2) ** (-order / 2)
    response /= response.max(axis=1, keepdims=True)
    response[response < 1e-3] = 0.0
    return response**2


_WEIGHTS = _gammatone_power_weights()
_HANN = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic


def _frames(sig: np.ndarray) -> np.ndarray:
    starts = np.arange(0, sig.size - WINDOW, HOP)
    return sig[starts[:, None] + np.arange(WINDOW)[None, :]] * _HANN


def _forward_masking(levels: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Running max of each frame's masking curve: a level decays from its value to ``floor`` over
    the masking time, logarithmically in frames (``levels``: ``[frames, J]``)."""
    span = int(math.floor(MASKING_SECONDS * FRAMES_PER_SECOND))  # 16 frames
    decay = np.log(np.arange(1, span + 1)) / math.log(span)  # 0 at the frame itself, 1 at the end
    out = levels.copy()
    for lag in range(1, span):
        source = levels[:-lag]
        np.maximum(out[lag:], source - decay[lag] * (source - floor), out=out[lag:])
    return out


def siib_gauss(clean, degraded, sample_rate: int = RATE) -> float:
    """SIIB^Gauss (bits per second) of ``degraded`` against the time-aligned ``clean`` speech.

    Raises ``ValueError`` for signals of different lengths, several channels, NaN/Inf samples, a
    silent reference, or less than
    :data:`MIN_SPEECH_SECONDS` of active speech (the metric pool turns it into NaN and a warning).
    """
    x, y = np.asarray(clean, dtype=np.float64), np.asarray(degraded, dtype=np.float64)
    for name, sig in (("clean", x), ("degraded", y)):
        if sig.ndim > 1 and max(sig.shape) != sig.size:
            raise ValueError(f"SIIB: the {name} signal has shape {sig.shape}; expected one channel")
        if not np.isfinite(sig).all():
            raise ValueError(f"SIIB: the {name} signal contains NaN or Inf samples")
    x, y = x.ravel(), y.ravel()
    if x.size != y.size:
        raise ValueError(f"SIIB: clean and degraded lengths differ ({x.size} vs {y.size} samples)")
    if int(sample_rate) != RATE:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(RATE, int(sample_rate))
        x, y = (resample_poly(s, RATE // g, int(sample_rate) // g) for s in (x, y))
    scale = x.std()
    if not scale > 0:
        raise ValueError("SIIB: the clean reference is silent")
    x, y = x / scale, y / scale
    fx, fy = _frames(x), _frames(y)
    if fx.shape[0] == 0:
        raise ValueError(f"SIIB: shorter than one {1000 * WINDOW / RATE:.0f} ms frame")
    power_db = 10 * np.log10(np.mean(fx**2, axis=1) + np.finfo(np.float64).eps)
    ranked = np.sort(power_db)
    top = ranked[max(int(math.floor(ranked.size * 0.999 + 0.5)) - 1, 0)]
    active = power_db > top - VAD_RANGE_DB
    frames = int(active.sum())
    if frames / FRAMES_PER_SECOND < MIN_SPEECH_SECONDS or frames <= STACK + 1:
        raise ValueError(f"SIIB: {frames / FRAMES_PER_SECOND:.2f} s of active speech, fewer than "
                         f"{MIN_SPEECH_SECONDS:g} s (concatenate short utterances)")
    eps = np.finfo(np.float64).eps
    spec_x = np.abs(np.fft.rfft(fx[active], axis=1)) ** 2
    spec_y = np.abs(np.fft.rfft(fy[active], axis=1)) ** 2
    lx = np.log(spec_x @ _WEIGHTS.T + eps)  # [frames, J]
    ly = np.log(spec_y @ _WEIGHTS.T + eps)
    floor = lx.min(axis=0)  # the clean band minimum stands in for the hearing threshold, for both
    lx, ly = _forward_masking(lx, floor), _forward_masking(ly, floor)
    lx -= lx.mean(axis=0)
    ly -= ly.mean(axis=0)
    # stacked vectors: frames s .. s+K-1 concatenated, for s = 0 .. frames-K-1
    count = frames - STACK
    index = np.arange(count)[:, None] + np.arange(STACK)[None, :]
    sx = lx[index].reshape(count, STACK * BANDS)
    sy = ly[index].reshape(count, STACK * BANDS)
    cov = np.cov(sx, rowvar=False)
    eigval, eigvec = np.linalg.eigh(cov)
    keep = eigval > eigval.max() * 1e-10  # the clean vectors' span; other directions carry no speech
    px, py = sx @ eigvec[:, keep], sy @ eigvec[:, keep]
    num = np.mean(px * py, axis=0) ** 2
    den = np.mean(px**2, axis=0) * np.mean(py**2, axis=0)
    rho2 = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    per_component = -np.log2(1.0 - RHO_PRODUCTION**2 * rho2)
    info = 0.5 * FRAMES_PER_SECOND / STACK * per_component.mean() * (STACK * BANDS)
    return float(max(0.0, info))
