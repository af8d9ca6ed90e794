"""DNSMOS P.835 (SIG/BAK/OVRL) and P.808 with the ONNX models shipped in the ``speechmos`` wheel.

Needs the ``dnsmos`` extra (``pip install "sb_mal[dnsmos]"``: onnxruntime and speechmos).
The models run fully offline from site-packages, on the CPU, one thread per session.

Scoring follows Microsoft's DNSMOS script exactly (checked against ``speechmos.dnsmos.run`` in the
tests): a clip shorter than 9.01 s is doubled until it is long enough, then 9.01 s windows with a
1 s hop are scored and averaged; the raw P.835 outputs go through the non-personalised polynomial
mapping; P.808 sees a 120-band log-mel spectrogram (computed here with numpy, so workers need
neither librosa nor its numba start-up). Cost: about 0.3-0.5 s per window on one CPU thread.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

__all__ = ["DNSMOS", "dnsmos_scores"]

_RATE = 16000
_WINDOW = 9.01
_P_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
_P_BAK = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
_P_OVR = np.poly1d([-0.06766283, 1.11546468, 0.04602535])


def _model_dir() -> Path:
    spec = importlib.util.find_spec("speechmos")  # locate without importing (speechmos imports requests)
    if spec is None or spec.origin is None:
        raise ImportError('DNSMOS needs the speechmos models: pip install "sb_mal[dnsmos]"')
    return Path(spec.origin).parent / "dnsmos_models"


class DNSMOS:
    """DNSMOS scorer (loads the two ONNX models once).

    Arguments
    ---------
    threads : int
        onnxruntime intra-op threads per session.

    Example
    -------
    >>> import numpy as np
    >>> scorer = DNSMOS()  # doctest: +SKIP
    >>> scorer(np.zeros(16000, dtype="float32"))["ovrl"]  # doctest: +SKIP
    """

    def __init__(self, threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError('DNSMOS needs onnxruntime: pip install "sb_mal[dnsmos]"') from err
        folder = _model_dir()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self._p835 = ort.InferenceSession(str(folder / "sig_bak_ovr.onnx"), opts, providers=providers)
        self._p808 = ort.InferenceSession(str(folder / "model_v8.onnx"), opts, providers=providers)
        self._mel_basis = None

    def _log_mel(self, segment: np.ndarray) -> np.ndarray:
        """120-band log-mel features of the P.808 model ([frames, 120], scaled as in DNSMOS).

        Same numbers as ``librosa.feature.melspectrogram(n_fft=321, hop_length=160, n_mels=120)``
        followed by ``power_to_db(ref=max)`` (checked in the tests), computed with numpy so that
        workers need neither librosa nor its numba start-up.
        """
        n_fft, hop = 321, 160
        if self._mel_basis is None:
            self._mel_basis = _slaney_mel_basis(_RATE, n_fft, 120)
            self._window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
        padded = np.pad(segment.astype(np.float64), n_fft // 2)
        n_frames = 1 + (len(padded) - n_fft) // hop
        idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
        power = np.abs(np.fft.rfft(padded[idx] * self._window, axis=1)) ** 2  # [frames, 161]
        mel = power @ self._mel_basis.T  # [frames, 120]
        db = 10.0 * np.log10(np.maximum(mel, 1e-10))
        db -= 10.0 * np.log10(max(mel.max(), 1e-10))
        db = np.maximum(db, db.max() - 80.0)
        return (db + 40.0) / 40.0

    def _windows(self, audio: np.ndarray) -> list[np.ndarray]:
        length = int(_WINDOW * _RATE)
        while len(audio) < length:
            audio = np.concatenate([audio, audio])
        hops = int(np.floor(len(audio) / _RATE) - _WINDOW) + 1
        out = [audio[i * _RATE : i * _RATE + length] for i in range(hops)]
        return [w for w in out if len(w) == length]

    def __call__(self, audio: np.ndarray, sample_rate: int = _RATE) -> dict:
        """Scores of one clip: dict with ``sig``, ``bak``, ``ovrl``, ``p808``."""
        if sample_rate != _RATE:
            raise ValueError(f"DNSMOS needs 16 kHz audio, got {sample_rate} Hz")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size < _RATE // 4:
            raise ValueError(f"clip too short for DNSMOS: {audio.size} samples (need at least 0.25 s)")
        if not np.isfinite(audio).all():
            raise ValueError("clip contains NaN/Inf")
        sig, bak, ovr, p808 = [], [], [], []
        for seg in self._windows(audio):
            raw = self._p835.run(None, {"input_1": seg[None, :].astype(np.float32)})[0][0]
            mel = self._log_mel(seg[:-160]).astype(np.float32)[None]
            p808.append(float(self._p808.run(None, {"input_1": mel})[0][0][0]))
            sig.append(_P_SIG(raw[0]))
            bak.append(_P_BAK(raw[1]))
            ovr.append(_P_OVR(raw[2]))
        return {
            "sig": float(np.mean(sig)),
            "bak": float(np.mean(bak)),
            "ovrl": float(np.mean(ovr)),
            "p808": float(np.mean(p808)),
        }


def _slaney_mel_basis(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Mel filterbank [n_mels, n_fft//2+1] on the Slaney mel scale with Slaney area normalisation."""
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, np.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2.0), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


_SCORER: DNSMOS | None = None
_LOCK = threading.Lock()


def dnsmos_scores(audio: np.ndarray, sample_rate: int = _RATE) -> dict:
    """Score one clip with a process-wide :class:`DNSMOS` (created on first use)."""
    global _SCORER
    with _LOCK:
        if _SCORER is None:
            _SCORER = DNSMOS()
        return _SCORER(audio, sample_rate)
