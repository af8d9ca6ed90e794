"""Scoring one utterance with every requested metric (the work a metric worker does).

A metric that raises on one utterance (PESQ "no utterances detected", silence, too short) gives NaN
for that metric plus a reason; the others are still computed. Shared computations run once (PESQ
for CSIG/CBAK/COVL). This module imports no torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from sb_mal.metrics.registry import DNSMOS_METRICS, INTRUSIVE_METRICS, LENGTH_TOLERANCE, METRIC_RATE, SILENT_REFERENCE_DBFS

__all__ = ["score_utterance"]

def _load(item, sample_rate: int, what: str) -> np.ndarray:
    """An array or a file path -> float64 mono array at METRIC_RATE."""
    if isinstance(item, (str, os.PathLike)):
        from sb_mal.audio import read_audio

        wav, sr = read_audio(item, as_numpy=True)
    else:
        if hasattr(item, "detach"):
            item = item.detach().cpu().float().numpy()
        wav, sr = np.asarray(item, dtype=np.float32), sample_rate
        if wav.ndim == 2 and 1 in wav.shape:
            wav = wav.reshape(-1)
        if wav.ndim != 1:
            raise ValueError(f"{what}: expected a 1-D waveform, got shape {wav.shape}")
    if sr != METRIC_RATE:
        from sb_mal.audio import resample

        wav = resample(wav, int(sr), METRIC_RATE)
    wav = np.asarray(wav, dtype=np.float64)
    if wav.size == 0:
        raise ValueError(f"{what}: empty audio")
    if not np.isfinite(wav).all():
        raise ValueError(f"{what}: audio contains NaN/Inf")
    return wav


def _undefined_reason(ref: np.ndarray) -> str | None:
    """Why the intrusive metrics are undefined on this reference (None if they are defined)."""
    rms = float(np.sqrt(np.mean(ref**2)))
    level = 20 * math.log10(rms) if rms > 0 else -math.inf
    if level < SILENT_REFERENCE_DBFS:
        return (f"the clean reference is silent or near-silent (RMS {level:.0f} dBFS < {SILENT_REFERENCE_DBFS:.0f} "
                f"dBFS)")
    return None


def _length_problem(n_ref: int, n_enh: int) -> str | None:
    fraction, seconds = LENGTH_TOLERANCE
    allowed = max(fraction * n_ref, seconds * METRIC_RATE)
    if abs(n_ref - n_enh) <= allowed:
        return None
    return (f"length mismatch: clean {n_ref / METRIC_RATE:.3f} s vs enhanced {n_enh / METRIC_RATE:.3f} s, beyond the "
            f"tolerance of {allowed / METRIC_RATE:.3f} s")


def score_utterance(enhanced, clean, sample_rate: int, metrics: Sequence[str]) -> tuple[dict, list[str]]:
    """Score one utterance; never raises.

    Arguments
    ---------
    enhanced, clean : array, tensor or path
        The processed signal and its reference (``clean`` may be None for DNSMOS-only).
    sample_rate : int
        Rate of array inputs (files carry their own).
    metrics : sequence of str
        Resolved metric names.

    Returns
    -------
    (scores, problems)
        ``scores`` maps every requested metric to a float (NaN on failure); ``problems`` lists
        human-readable failure messages (one for every NaN).

    Policy: lengths within :data:`LENGTH_TOLERANCE` are trimmed to the shorter signal; beyond it,
    and on a reference quieter than :data:`SILENT_REFERENCE_DBFS`, every intrusive metric is NaN
    (undefined, so never averaged) with a problem saying why; DNSMOS, which needs no reference,
    is still computed.
    """
    scores = {m: math.nan for m in metrics}
    problems: list[str] = []
    ref = mismatch = None
    try:
        enh = _load(enhanced, sample_rate, "enhanced")
        if any(m in INTRUSIVE_METRICS for m in metrics):
            if clean is None:
                raise ValueError("intrusive metrics need a clean reference")
            ref = _load(clean, sample_rate, "clean")
            mismatch = _length_problem(len(ref), len(enh))
            n = min(len(ref), len(enh))
            ref, enh_i = ref[:n], enh[:n]
    except Exception as err:
        problems.append(f"could not load audio: {err}")
        return scores, problems
    intrusive = [m for m in metrics if m in INTRUSIVE_METRICS]
    undefined = (mismatch or _undefined_reason(ref)) if ref is not None else None
    if undefined:  # not scored: NaN for every intrusive metric (left out of the means), DNSMOS still runs
        problems.append(f"{'/'.join(intrusive)} not scored: {undefined}")
        metrics = [m for m in metrics if m not in INTRUSIVE_METRICS]

    def attempt(names, fn):
        try:
            values = fn()
        except Exception as err:  # one metric failing never fails the others
            msg = f"{type(err).__name__}: {err}".strip()
            problems.append(f"{'/'.join(names)} failed ({msg})")
            return None
        return values

    import sb_mal.metrics.composite as comp
    import sb_mal.metrics.intrusive as intr

    pesq_value = None
    if any(m in metrics for m in ("pesq", "csig", "cbak", "covl")):
        pesq_value = attempt(["pesq"], lambda: intr.pesq_wb(ref, enh_i, METRIC_RATE))
        if "pesq" in metrics and pesq_value is not None:
            scores["pesq"] = pesq_value
    simple = {
        "pesq_nb": intr.pesq_nb,
        "stoi": intr.stoi,
        "estoi": intr.estoi,
        "si_sdr": intr.si_sdr,
    }
    for name, fn in simple.items():
        if name in metrics:
            value = attempt([name], lambda fn=fn: fn(ref, enh_i, METRIC_RATE))
            if value is not None:
                scores[name] = value
    if "siib" in metrics:
        from sb_mal.metrics.siib import siib_gauss

        value = attempt(["siib"], lambda: siib_gauss(ref, enh_i, METRIC_RATE))
        if value is not None:
            scores["siib"] = value
    if "haspi" in metrics:
        from sb_mal.metrics.intrusive import haspi

        value = attempt(["haspi"], lambda: haspi(ref, enh_i, METRIC_RATE))
        if value is not None:
            scores["haspi"] = value
    if "ssnr" in metrics:
        value = attempt(["ssnr"], lambda: comp.segmental_snr(ref, enh_i, METRIC_RATE))
        if value is not None:
            scores["ssnr"] = value
    wanted = [m for m in ("csig", "cbak", "covl") if m in metrics]
    if wanted:
        if pesq_value is None:
            problems.append(f"{'/'.join(wanted)} need PESQ, which failed")
        else:
            values = attempt(wanted, lambda: comp.composite(ref, enh_i, METRIC_RATE, pesq_score=pesq_value))
            if values is not None:
                for m in wanted:
                    scores[m] = float(values[m])
    wanted = [m for m in DNSMOS_METRICS if m in metrics]
    if wanted:
        from sb_mal.metrics.dnsmos import dnsmos_scores

        values = attempt(wanted, lambda: dnsmos_scores(enh.astype(np.float32), METRIC_RATE))
        if values is not None:
            for m in wanted:
                scores[m] = float(values[m[len("dnsmos_") :]])
    return scores, problems
