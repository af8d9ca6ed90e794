"""Mixing clean speech with noise at a target SNR, and an on-the-fly mixing dataset.

SNR convention (the same as the devset's ``pairs/``): the power of the *active* speech (20 ms
frames within 40 dB of the loudest frame) over the power of the whole noise excerpt. If the
mixture would clip (peak above ``peak``), noisy and clean are scaled together, so the clean signal
is always the exact reference contained in the noisy one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from sb_mal.audio import audio_info, list_audio_files, read_audio

logger = logging.getLogger(__name__)

__all__ = ["OnTheFlyMixer", "active_speech_power", "mix_at_snr"]


def active_speech_power(speech: np.ndarray, sample_rate: int = 16000, frame_ms: float = 20.0, floor_db: float = 40.0) -> float:
    """Mean power of the frames within ``floor_db`` of the loudest non-overlapping frame.

    Example
    -------
    >>> x = np.concatenate([np.zeros(16000), np.ones(16000)])  # 1 s silence, 1 s of ones
    >>> active_speech_power(x)
    1.0
    """
    x = np.asarray(speech, dtype=np.float64).reshape(-1)
    n = max(1, int(sample_rate * frame_ms / 1000))
    usable = (len(x) // n) * n
    if usable == 0:
        return float(np.mean(x**2)) if len(x) else 0.0
    energy = np.mean(x[:usable].reshape(-1, n) ** 2, axis=1)
    peak = energy.max()
    if peak <= 0:
        return 0.0
    active = energy[energy >= peak * 10 ** (-floor_db / 10)]
    return float(active.mean())


def mix_at_snr(
    clean: np.ndarray,
    noise: np.ndarray,
    snr_db: float,
    sample_rate: int = 16000,
    peak: float = 0.99,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Scale ``noise`` to ``snr_db`` against the active speech of ``clean`` and add it.

    Returns ``(noisy, clean, gain)``; ``gain`` < 1 when both were scaled down to avoid clipping.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> s, n = rng.standard_normal(16000) * 0.1, rng.standard_normal(16000)
    >>> noisy, ref, gain = mix_at_snr(s, n, 10.0)
    >>> float(round(10 * np.log10(active_speech_power(ref) / np.mean((noisy - ref) ** 2)), 3))
    10.0
    """
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if clean.shape != noise.shape:
        raise ValueError(f"clean and noise must have the same shape, got {clean.shape} and {noise.shape}")
    p_speech = active_speech_power(clean, sample_rate)
    p_noise = float(np.mean(noise**2))
    if p_speech <= 0:
        raise ValueError("clean signal is silent; SNR undefined")
    if p_noise <= 0:
        raise ValueError("noise excerpt is silent; SNR undefined")
    k = math.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    noisy = clean + k * noise
    top = float(np.max(np.abs(noisy)))
    gain = 1.0
    if top > peak:
        gain = peak / top
        noisy, clean = noisy * gain, clean * gain
    return noisy.astype(np.float32), clean.astype(np.float32), gain


class _Index:
    """Files of some folders with their durations (frames at the file's rate)."""

    def __init__(self, folders: Sequence[str], what: str):
        if isinstance(folders, (str, os.PathLike)):
            folders = [folders]
        if not folders:
            raise ValueError(f"{what}: give at least one folder")
        self.files, self.frames, self.rates = [], [], []
        for folder in folders:
            for path in list_audio_files(folder):
                info = audio_info(path)
                self.files.append(path)
                self.frames.append(info.frames)
                self.rates.append(info.sample_rate)
        logger.info("%s: %d files in %s", what, len(self.files), ", ".join(map(str, folders)))


class OnTheFlyMixer(torch.utils.data.Dataset):
    """Deterministic noisy/clean pairs mixed on the fly from clean-speech and noise folders.

    Item ``i`` of epoch ``e`` depends only on ``(seed, e, i)`` (or ``(seed, i)`` when
    ``epoch_dependent=False``), so runs are reproducible with any number of loader workers.

    Arguments
    ---------
    clean_dirs, noise_dirs : path or list of paths
        Folders (searched recursively) of clean speech and of noise.
    snr_range : (float, float)
        SNRs in dB are drawn uniformly from this range.
    segment_seconds : float or None
        Length of each example. Shorter utterances are concatenated (with short pauses) until
        the segment is full; longer ones are cropped at random. None: one whole utterance.
    num_items : int
        Examples per epoch.
    sample_rate : int
        Output rate (files at other rates are resampled).
    seed : int
        Base seed.
    epoch_dependent : bool
        Draw new mixtures every epoch (call :meth:`set_epoch`, the Brains do).
    babble_prob : float
        Probability that the noise is babble (a sum of ``babble_talkers`` other utterances
        from the clean folders) instead of a noise file.
    babble_talkers : (int, int)
        Range of talkers in a babble.
    gain_db_range : (float, float)
        Random level of the clean speech (dB relative to its file level) before mixing.

    Example
    -------
    >>> import tempfile, os
    >>> from sb_mal.audio import write_audio
    >>> d = tempfile.mkdtemp(); rng = np.random.default_rng(0)
    >>> write_audio(os.path.join(d, "speech", "a.wav"), 0.1 * rng.standard_normal(8000), 16000)
    >>> write_audio(os.path.join(d, "noise", "n.wav"), 0.1 * rng.standard_normal(32000), 16000)
    >>> mixer = OnTheFlyMixer(os.path.join(d, "speech"), os.path.join(d, "noise"), segment_seconds=1.0, num_items=4)
    >>> item = mixer[0]
    >>> item["noisy_sig"].shape, item["clean_sig"].shape
    (torch.Size([16000]), torch.Size([16000]))
    """

    def __init__(
        self,
        clean_dirs,
        noise_dirs,
        *,
        snr_range: tuple[float, float] = (-5.0, 15.0),
        segment_seconds: float | None = 3.0,
        num_items: int = 1000,
        sample_rate: int = 16000,
        seed: int = 0,
        epoch_dependent: bool = True,
        babble_prob: float = 0.0,
        babble_talkers: tuple[int, int] = (3, 6),
        gain_db_range: tuple[float, float] = (0.0, 0.0),
        gap_seconds: tuple[float, float] = (0.05, 0.3),
    ):
        if snr_range[0] > snr_range[1]:
            raise ValueError(f"snr_range must be (low, high), got {snr_range}")
        if segment_seconds is not None and segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be positive or None, got {segment_seconds}")
        if num_items <= 0:
            raise ValueError(f"num_items must be positive, got {num_items}")
        if not 0.0 <= babble_prob <= 1.0:
            raise ValueError(f"babble_prob must be in [0, 1], got {babble_prob}")
        self.speech = _Index(clean_dirs, "clean speech")
        self.noise = _Index(noise_dirs, "noise") if babble_prob < 1.0 else None
        self.snr_range = tuple(float(v) for v in snr_range)
        self.segment = None if segment_seconds is None else int(round(segment_seconds * sample_rate))
        self.num_items = int(num_items)
        self.sample_rate = int(sample_rate)
        self.seed = int(seed)
        self.epoch_dependent = epoch_dependent
        self.babble_prob = float(babble_prob)
        self.babble_talkers = babble_talkers
        self.gain_db_range = gain_db_range
        self.gap_seconds = gap_seconds
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose mixtures ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_items

    # -- reading -----------------------------------------------------------------------------
    def _read(self, index: _Index, k: int, start: int = 0, frames: int | None = None) -> np.ndarray:
        stop = None if frames is None else start + frames
        wav, _ = read_audio(index.files[k], self.sample_rate, start=start, stop=stop, as_numpy=True, validate=False)
        return wav.astype(np.float64)

    def _speech(self, rng: np.random.Generator, length: int | None) -> np.ndarray:
        k = int(rng.integers(len(self.speech.files)))
        wav = self._read(self.speech, k)
        if length is None:
            return wav
        parts, total = [wav], len(wav)
        while total < length:
            gap = int(rng.uniform(*self.gap_seconds) * self.sample_rate)
            nxt = self._read(self.speech, int(rng.integers(len(self.speech.files))))
            parts += [np.zeros(gap), nxt]
            total += gap + len(nxt)
        wav = np.concatenate(parts)
        start = int(rng.integers(0, len(wav) - length + 1))
        return wav[start : start + length]

    def _noise(self, rng: np.random.Generator, length: int) -> np.ndarray:
        for _ in range(5):  # redraw near-silent excerpts
            k = int(rng.integers(len(self.noise.files)))
            file_sr = self.noise.rates[k]
            need = int(math.ceil(length * file_sr / self.sample_rate)) + 1
            total = self.noise.frames[k]
            if total > need:
                start = int(rng.integers(0, total - need))
                wav = self._read(self.noise, k, start, need)
            else:  # short file: loop it
                wav = self._read(self.noise, k)
                wav = np.tile(wav, int(math.ceil(length / max(1, len(wav)))) + 1)
                start = int(rng.integers(0, len(wav) - length + 1))
                wav = wav[start:]
            wav = wav[:length]
            if len(wav) < length:
                wav = np.pad(wav, (0, length - len(wav)), mode="wrap")
            if np.mean(wav**2) > 10 ** (-55 / 10):
                return wav
        return wav

    def _babble(self, rng: np.random.Generator, length: int) -> np.ndarray:
        talkers = int(rng.integers(self.babble_talkers[0], self.babble_talkers[1] + 1))
        out = np.zeros(length)
        for _ in range(talkers):
            s = self._speech(rng, length)
            out += s / math.sqrt(max(active_speech_power(s, self.sample_rate), 1e-12))
        return out

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_items:
            raise IndexError(f"item {i} out of range for {self.num_items} items")
        epoch = self.epoch if self.epoch_dependent else 0
        rng = np.random.default_rng([self.seed, epoch, int(i)])
        clean = self._speech(rng, self.segment)
        if active_speech_power(clean) <= 0:  # all-silent draw: take another utterance
            clean = self._speech(np.random.default_rng([self.seed, epoch, int(i), 1]), self.segment)
        clean = clean * 10 ** (rng.uniform(*self.gain_db_range) / 20)
        babble = rng.random() < self.babble_prob
        noise = self._babble(rng, len(clean)) if babble else self._noise(rng, len(clean))
        snr = float(rng.uniform(*self.snr_range))
        noisy, clean, _ = mix_at_snr(clean, noise, snr, self.sample_rate)
        return {
            "id": f"mix_e{epoch}_{i:06d}",
            "noisy_sig": torch.from_numpy(noisy),
            "clean_sig": torch.from_numpy(clean),
            "snr_db": snr,
            "noise_type": "babble" if babble else "file",
        }
