"""Per-utterance intrusive metrics on numpy arrays: PESQ, STOI/ESTOI, SI-SDR.

These functions raise on failure (e.g. PESQ's "no utterances detected"); the worker pool in
:mod:`sb_mal.metrics.pool` turns a failure into NaN plus a warning. They import only numpy and
the metric packages, so pool workers start fast.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal(16000).astype("float32")
>>> round(si_sdr(x, x + 0.1 * rng.standard_normal(16000)), 1)
20.0
"""

from __future__ import annotations

import numpy as np

__all__ = ["pesq_wb", "pesq_nb", "stoi", "estoi", "si_sdr", "haspi", "HASPI_REFERENCE_SPL"]

#: Level (dB SPL) at which the clean reference is presented to HASPI's auditory model.
HASPI_REFERENCE_SPL = 65.0


def _pesq(clean: np.ndarray, enhanced: np.ndarray, sample_rate: int, mode: str) -> float:
    from pesq import pesq

    if sample_rate not in (8000, 16000):
        raise ValueError(f"PESQ needs 8 or 16 kHz audio, got {sample_rate} Hz")
    if mode == "wb" and sample_rate != 16000:
        raise ValueError("wide-band PESQ needs 16 kHz audio")
    return float(pesq(sample_rate, clean.astype(np.float64), enhanced.astype(np.float64), mode))


def pesq_wb(clean: np.ndarray, enhanced: np.ndarray, sample_rate: int = 16000) -> float:
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO, range about 1.04-4.64)."""
    return _pesq(clean, enhanced, sample_rate, "wb")


def pesq_nb(clean: np.ndarray, enhanced: np.ndarray, sample_rate: int = 16000) -> float:
    """Narrow-band PESQ (ITU-T P.862 with the P.862.1 MOS-LQO mapping)."""
    return _pesq(clean, enhanced, sample_rate, "nb")


def _stoi(clean: np.ndarray, enhanced: np.ndarray, sample_rate: int, extended: bool) -> float:
    import warnings

    from pystoi import stoi as pystoi_stoi

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(pystoi_stoi(clean, enhanced, sample_rate, extended=extended))
    for w in caught:
        if "Not enough STFT frames" in str(w.message):
            # pystoi returns a placeholder 1e-5 here; report a failure instead of a fake score
            raise ValueError("signal too short for STOI after removing silent frames")
    return value


def stoi(clean: np.ndarray, enhanced: np.ndarray, sample_rate: int = 16000) -> float:
    """Short-time objective intelligibility (Taal et al. 2011), via pystoi.

    Raises ``ValueError`` where pystoi would return its 1e-5 placeholder (too few speech frames).
    """
    return _stoi(clean, enhanced, sample_rate, extended=False)


def estoi(clean: np.ndarray, enhanced: np.ndarray, sample_rate: int = 16000) -> float:
    """Extended STOI (Jensen and Taal 2016), via pystoi (same failure handling as :func:`stoi`)."""
    return _stoi(clean, enhanced, sample_rate, extended=True)


def si_sdr(clean: np.ndarray, enhanced: np.ndarray, sample_rate: int = 16000, eps: float = 1e-8) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), zero-mean signals."""
    s = np.asarray(clean, dtype=np.float64)
    e = np.asarray(enhanced, dtype=np.float64)
    s = s - s.mean()
    e = e - e.mean()
    energy = np.dot(s, s)
    if energy <= eps:
        raise ValueError("SI-SDR is undefined for a silent reference")
    target = (np.dot(e, s) / energy) * s
    noise = e - target
    return float(10.0 * np.log10((np.dot(target, target) + eps) / (np.dot(noise, noise) + eps)))


def haspi(clean: np.ndarray, enhanced: np.ndarray, sample_rate: int = 16000) -> float:
    """HASPI v2 (Kates and Arehart 2021) for a normal-hearing listener, via the Clarity tools
    (``pip install "sb_mal[haspi]"``), in [0, 1].

    Calibration (the metric depends on the presentation level): the clean reference plays at
    :data:`HASPI_REFERENCE_SPL` (65 dB SPL, a conversational level) and the processed signal with
    the same calibration, so a louder or quieter output is heard louder or quieter. Audiogram: 0 dB
    HL at every frequency.
    """
    from clarity.evaluator.haspi import haspi_v2
    from clarity.utils.audiogram import AUDIOGRAM_REF

    rms = float(np.sqrt(np.mean(np.asarray(clean, dtype=np.float64) ** 2)))
    if not rms > 0:
        raise ValueError("HASPI: the clean reference is silent")
    level = HASPI_REFERENCE_SPL - 20 * np.log10(rms)  # dB SPL of an RMS of 1
    value, _ = haspi_v2(np.asarray(clean, dtype=np.float64), sample_rate, np.asarray(enhanced, dtype=np.float64),
                        sample_rate, AUDIOGRAM_REF, level1=float(level))
    return float(value)
