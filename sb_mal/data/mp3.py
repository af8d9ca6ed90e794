"""MP3 round trips and (lossless, MP3-coded) training pairs for the codec-approximation loss net.

Encoding uses LAME through ``lameenc`` at a constant bit rate; decoding uses ``soundfile``
(libsndfile with mpg123), from memory. The decoded signal is shifted by the codec delay and
padded to whole MP3 frames; :func:`mp3_roundtrip` removes both, so its output is sample-aligned
with its input and has the same length.

Codec delay. Without a gapless (Xing/LAME) tag the decoder output starts
``576 (encoder) + 529 (decoder) = 1105`` samples late; with one it starts on time. ``lameenc``
writes no tag, so at every rate and bit rate we measured 1105 samples (at 16 kbps / 16 kHz a
72-byte CBR frame has no room for a tag anyway). Rather than trust that, :func:`codec_delay`
measures the delay by cross-correlation on a fixed probe signal once per
``(sample_rate, bitrate, quality)`` and caches it.

Pairs. :class:`Mp3PairDataset` codes each *whole source file* once and cuts aligned segments
from the pair, as the MM'19 paper did (tracks coded whole, patches cut afterwards):

* MP3 is not shift-invariant: coding a segment on its own puts the MP3 frame grid (576 samples)
  at the segment start and adds encoder warm-up and flush padding, so an isolated segment codes
  differently from the same stretch in context (about 21 % relative difference on devset music,
  against 17 % coding error). Cutting from the coded file gives the codec's normal behaviour.
* It is cheaper: LAME runs at roughly 300x real time on one core here, so coding a corpus is one
  pass over it (about 12 s per hour of audio); afterwards a segment costs a slice.

The coded files live in an in-memory LRU, and optionally in an on-disk cache folder (``.npy``,
``[2, samples]`` float32: original at the dataset rate, then coded; written atomically; keyed by
the source path, size and modification time, the sample rate, bit rate and LAME quality), memory
mapped when read. :meth:`Mp3PairDataset.prepare` fills the cache ahead of training.

Items use the enhancement keys so EnhanceBrain-style Brains can train the codec net as if it were
an enhancer: ``noisy_sig`` is the **original** (network input) and ``clean_sig`` the **MP3-coded**
signal (network target).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
from collections import OrderedDict

import numpy as np
import soundfile as sf
import torch

from sb_mal.audio import audio_info, list_audio_files, read_audio
from sb_mal.fileio import temporary_path

logger = logging.getLogger(__name__)

__all__ = ["LAME_DELAY", "Mp3Error", "Mp3PairDataset", "codec_delay", "mp3_roundtrip"]

#: Decoder output delay of LAME-coded MP3 without a gapless tag (576 encoder + 529 decoder).
LAME_DELAY = 1105

_MPEG1_RATES = (32000, 44100, 48000)
_MPEG1_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MPEG2_RATES = (16000, 22050, 24000)
_MPEG2_BITRATES = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_MPEG25_RATES = (8000, 11025, 12000)
_MPEG25_BITRATES = (8, 16, 24, 32, 40, 48, 56, 64)


class Mp3Error(RuntimeError):
    """The MP3 round trip failed (no MP3 decoder, unmeasurable delay, truncated decode)."""


def _check_rate_bitrate(sample_rate: int, bitrate_kbps: int) -> None:
    for rates, bitrates in ((_MPEG1_RATES, _MPEG1_BITRATES), (_MPEG2_RATES, _MPEG2_BITRATES),
                            (_MPEG25_RATES, _MPEG25_BITRATES)):
        if sample_rate in rates:
            if bitrate_kbps not in bitrates:
                raise ValueError(f"bitrate_kbps={bitrate_kbps} is not an MP3 bit rate at {sample_rate} Hz; "
                                 f"use one of {list(bitrates)}")
            return
    raise ValueError(f"sample_rate={sample_rate} Hz is not an MP3 rate; use one of "
                     f"{sorted(_MPEG1_RATES + _MPEG2_RATES + _MPEG25_RATES)}")


def _encode_decode(wav: np.ndarray, sample_rate: int, bitrate_kbps: int, quality: int) -> np.ndarray:
    """LAME CBR encode + libsndfile decode; the raw decoder output (delayed, frame padded)."""
    try:
        import lameenc
    except ImportError as err:  # pragma: no cover - lameenc is a declared dependency
        raise ImportError("MP3 pairs need the `lameenc` package: pip install lameenc") from err
    enc = lameenc.Encoder()
    enc.set_bit_rate(int(bitrate_kbps))
    enc.set_in_sample_rate(int(sample_rate))
    enc.set_out_sample_rate(int(sample_rate))  # otherwise LAME may resample at low bit rates
    enc.set_channels(1)
    enc.set_quality(int(quality))
    enc.silence()
    pcm = (np.clip(wav, -1.0, 1.0) * 32767.0).round().astype("<i2")
    mp3 = bytes(enc.encode(pcm.tobytes())) + bytes(enc.flush())
    try:
        out, rate = sf.read(io.BytesIO(mp3), dtype="float32", always_2d=True)
    except Exception as err:
        raise Mp3Error(f"soundfile could not decode the MP3 stream ({err}); libsndfile >= 1.1 with MP3 support "
                       f"is needed (found {sf.__libsndfile_version__})") from err
    if rate != sample_rate:
        raise Mp3Error(f"MP3 decoded at {rate} Hz, expected {sample_rate} Hz")
    return out.mean(axis=1)


def _probe(sample_rate: int) -> np.ndarray:
    """Fixed 2 s probe: noise low-passed at 1 kHz (inside every MP3 low-pass), with a 4 Hz envelope."""
    n = 2 * sample_rate
    rng = np.random.default_rng(1105)
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[np.fft.rfftfreq(n, 1.0 / sample_rate) > 1000.0] = 0
    x = np.fft.irfft(spec, n)
    x *= 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * 4 * np.arange(n) / sample_rate))
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


@functools.lru_cache(maxsize=None)
def codec_delay(sample_rate: int = 16000, bitrate_kbps: int = 16, quality: int = 2) -> int:
    """Delay (samples) of the decoded MP3 relative to its input, measured once and cached.

    Cross-correlates the round trip of a fixed probe with the probe over lags 0..4 frames.
    Raises :class:`Mp3Error` when the correlation peak is weak (the measurement is unreliable).

    Example
    -------
    >>> codec_delay(16000, 16)
    1105
    """
    _check_rate_bitrate(int(sample_rate), int(bitrate_kbps))
    x = _probe(int(sample_rate))
    y = _encode_decode(x, sample_rate, bitrate_kbps, quality)
    max_lag = 4 * 1152
    n = len(x)
    if len(y) < n:
        raise Mp3Error(f"MP3 decode returned {len(y)} samples for a {n}-sample probe")
    size = 1 << int(np.ceil(np.log2(len(y) + n)))
    corr = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(x, size)), size)[: max_lag + 1]
    lag = int(np.argmax(corr))
    seg = y[lag : lag + n]
    if len(seg) < n:
        seg = np.pad(seg, (0, n - len(seg)))
    peak = float(np.dot(seg, x) / (np.linalg.norm(seg) * np.linalg.norm(x) + 1e-12))
    if peak < 0.5:
        raise Mp3Error(f"cannot measure the MP3 delay at {sample_rate} Hz / {bitrate_kbps} kbps: best lag {lag} "
                       f"has normalised correlation {peak:.2f} (< 0.5)")
    if lag not in (0, LAME_DELAY):
        logger.warning("MP3 delay at %d Hz / %d kbps measured as %d samples (expected %d or 0)", sample_rate,
                       bitrate_kbps, lag, LAME_DELAY)
    logger.debug("MP3 delay at %d Hz / %d kbps (q%d): %d samples (correlation %.3f)", sample_rate, bitrate_kbps,
                 quality, lag, peak)
    return lag


def mp3_roundtrip(wav, sample_rate: int = 16000, bitrate_kbps: int = 16, quality: int = 2) -> np.ndarray:
    """Code ``wav`` as CBR MP3 and decode it, aligned with the input and of the same length.

    Arguments
    ---------
    wav : array or tensor, shape ``[T]``
        Mono float samples; values outside [-1, 1] are clipped (16-bit PCM goes into LAME).
    sample_rate : int
        Rate of ``wav`` (an MP3 rate: 8000 ... 48000 Hz); the output has the same rate.
    bitrate_kbps : int
        Constant bit rate (must exist at that rate, e.g. 8-160 kbps at 16 kHz).
    quality : int
        LAME algorithm quality, 0 (best) .. 9 (fastest); 2 is LAME's "high quality".

    Returns
    -------
    numpy.ndarray
        float32 ``[T]``, sample-aligned with ``wav``.

    Example
    -------
    >>> t = np.arange(16000) / 16000
    >>> x = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 6000 * t)
    >>> y = mp3_roundtrip(x)
    >>> y.shape, y.dtype
    ((16000,), dtype('float32'))
    >>> spec = np.abs(np.fft.rfft(y))  # the 6 kHz tone is gone: 16 kbps MP3 low-passes at ~3.5 kHz
    >>> bool(spec[6000] < 0.01 * spec[440])
    True
    """
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    x = np.asarray(wav, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"mp3_roundtrip expects a mono waveform [samples], got shape {x.shape}")
    if x.size == 0:
        raise ValueError("mp3_roundtrip: empty waveform")
    if not np.isfinite(x).all():
        raise ValueError(f"mp3_roundtrip: waveform has {int((~np.isfinite(x)).sum())} NaN/Inf sample(s)")
    if not 0 <= int(quality) <= 9:
        raise ValueError(f"quality must be in 0..9, got {quality}")
    delay = codec_delay(int(sample_rate), int(bitrate_kbps), int(quality))
    y = _encode_decode(x, int(sample_rate), int(bitrate_kbps), int(quality))[delay : delay + len(x)]
    if len(y) < len(x):
        missing = len(x) - len(y)
        if missing > 1152:
            raise Mp3Error(f"MP3 decode is {missing} samples short of the {len(x)}-sample input")
        y = np.pad(y, (0, missing))
    return np.ascontiguousarray(y, dtype=np.float32)


class Mp3PairDataset(torch.utils.data.Dataset):
    """(original, MP3-coded) segments of the audio files in some folders, for the codec loss net.

    Item ``i`` of epoch ``e`` depends only on ``(seed, e, i)`` (or ``(seed, i)`` with
    ``epoch_dependent=False``), whatever the number of loader workers. A segment starts at a
    uniformly drawn position of a file drawn with probability proportional to its duration (so
    every second of audio is equally likely); a file shorter than what is left of the segment is
    followed by further drawn files (each pair is aligned on its own, so the concatenation is
    too). Near-silent draws (RMS below ``min_level_db`` dBFS) are redrawn up to 4 times.

    Arguments
    ---------
    folders : path or list of paths
        Folders searched recursively for audio (music and/or speech; any rate, resampled).
    segment_samples : int or None
        Segment length. The default 65024 samples gives exactly 128 STFT frames at hop 512 (the
        paper's 128 x 512 patches). None: item ``i`` is the whole ``i``-th file (validation).
    num_items : int, optional
        Items per epoch (default: total duration / segment, i.e. about one pass).
    sample_rate, bitrate_kbps, quality : int
        Passed to :func:`mp3_roundtrip`.
    seed : int
        Base seed.
    epoch_dependent : bool
        New segments every epoch (call :meth:`set_epoch`; the Brains do).
    cache_dir : path, optional
        Folder for the coded files (see the module docstring); shared safely between processes.
    memory_cache_files : int
        Coded files kept in memory per process.
    min_level_db : float
        Redraw segments quieter than this (dBFS RMS).

    Items: ``{"id", "noisy_sig": original [T], "clean_sig": MP3-coded [T], "source", "start"}``
    (``noisy_sig`` is the network *input*, ``clean_sig`` its *target*).

    Example
    -------
    >>> import tempfile, os
    >>> from sb_mal.audio import write_audio
    >>> d = tempfile.mkdtemp()
    >>> write_audio(os.path.join(d, "a.wav"), 0.1 * np.random.default_rng(0).standard_normal(32000), 16000)
    >>> ds = Mp3PairDataset(d, segment_samples=8000, num_items=3, seed=1)
    >>> item = ds[0]
    >>> item["noisy_sig"].shape, item["clean_sig"].shape, len(ds)
    (torch.Size([8000]), torch.Size([8000]), 3)
    """

    def __init__(
        self,
        folders,
        *,
        segment_samples: int | None = 65024,
        num_items: int | None = None,
        sample_rate: int = 16000,
        bitrate_kbps: int = 16,
        quality: int = 2,
        seed: int = 0,
        epoch_dependent: bool = True,
        cache_dir: str | os.PathLike | None = None,
        memory_cache_files: int = 8,
        min_level_db: float = -60.0,
    ):
        if isinstance(folders, (str, os.PathLike)):
            folders = [folders]
        if not folders:
            raise ValueError("Mp3PairDataset: give at least one folder of audio")
        if segment_samples is not None and int(segment_samples) <= 0:
            raise ValueError(f"segment_samples must be positive or None, got {segment_samples}")
        if num_items is not None and int(num_items) <= 0:
            raise ValueError(f"num_items must be positive, got {num_items}")
        _check_rate_bitrate(int(sample_rate), int(bitrate_kbps))
        self.sample_rate, self.bitrate_kbps, self.quality = int(sample_rate), int(bitrate_kbps), int(quality)
        self.files: list[str] = []
        self.samples: list[int] = []  # duration at self.sample_rate
        for folder in folders:
            for path in list_audio_files(folder):
                info = audio_info(path)
                self.files.append(path)
                self.samples.append(int(round(info.frames * self.sample_rate / info.sample_rate)))
        total = sum(self.samples)
        self.segment = None if segment_samples is None else int(segment_samples)
        if num_items is None:
            num_items = len(self.files) if self.segment is None else max(1, total // self.segment)
        if self.segment is None and int(num_items) > len(self.files):
            raise ValueError(f"num_items={num_items} but only {len(self.files)} files (segment_samples=None "
                             "gives one item per file)")
        self.num_items = int(num_items)
        self.weights = np.asarray(self.samples, dtype=np.float64) / total
        self.seed, self.epoch_dependent, self.epoch = int(seed), bool(epoch_dependent), 0
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        self.memory_cache_files = int(memory_cache_files)
        self.min_level_db = float(min_level_db)
        self._memory: OrderedDict[int, np.ndarray] = OrderedDict()
        logger.info("Mp3PairDataset: %d files, %.1f min, %d items of %s samples, %d kbps", len(self.files),
                    total / self.sample_rate / 60, self.num_items, self.segment, self.bitrate_kbps)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose segments ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_memory"] = OrderedDict()  # loader workers start with an empty LRU
        return state

    def __len__(self) -> int:
        return self.num_items

    # -- coded files ---------------------------------------------------------------------------
    def cache_path(self, k: int) -> str | None:
        """Cache file of source file ``k`` (None without ``cache_dir``)."""
        if self.cache_dir is None:
            return None
        path = os.path.abspath(self.files[k])
        st = os.stat(path)
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{self.sample_rate}|{self.bitrate_kbps}|{self.quality}|v1"
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in os.path.splitext(os.path.basename(path))[0])
        return os.path.join(self.cache_dir, f"{stem[:40]}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npy")

    def _code_file(self, k: int) -> np.ndarray:
        wav, _ = read_audio(self.files[k], self.sample_rate, as_numpy=True)
        return np.stack([wav, mp3_roundtrip(wav, self.sample_rate, self.bitrate_kbps, self.quality)])

    def pair(self, k: int) -> np.ndarray:
        """``[2, samples]`` float32: source file ``k`` (original, MP3-coded), aligned."""
        if k in self._memory:
            self._memory.move_to_end(k)
            return self._memory[k]
        path = self.cache_path(k)
        pair = None
        if path is not None and os.path.isfile(path):
            try:
                pair = np.load(path, mmap_mode="r")
                if pair.ndim != 2 or pair.shape[0] != 2 or pair.dtype != np.float32:
                    raise ValueError(f"expected a [2, samples] float32 array, found {pair.shape} {pair.dtype}")
            except (OSError, ValueError) as err:
                logger.warning("%s: unusable cache file (%s); coding %s again", path, err, self.files[k])
                pair = None
        if pair is None:
            pair = self._code_file(k)
            if path is not None:
                tmp = temporary_path(path, suffix=".npy")
                try:
                    with open(tmp, "wb") as fout:
                        np.save(fout, pair)
                    os.replace(tmp, path)
                except BaseException:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                    raise
        self._memory[k] = pair
        while len(self._memory) > max(1, self.memory_cache_files):
            self._memory.popitem(last=False)
        return pair

    def prepare(self, progress: bool = True) -> None:
        """Code every source file into ``cache_dir`` now (files already cached are skipped)."""
        if self.cache_dir is None:
            raise ValueError("Mp3PairDataset.prepare() needs cache_dir (without it coded files live in memory only)")
        from tqdm import tqdm

        for k in tqdm(range(len(self.files)), desc="MP3 coding", disable=not progress):
            path = self.cache_path(k)
            if not os.path.isfile(path):
                self.pair(k)
                self._memory.pop(k, None)

    # -- items -----------------------------------------------------------------------------------
    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, str, int]:
        """One segment: (pair [2, segment], first source file, start in it)."""
        k = int(rng.choice(len(self.files), p=self.weights))
        pair = self.pair(k)
        first, first_start = self.files[k], int(rng.integers(0, max(1, pair.shape[1] - self.segment + 1)))
        parts, got, start = [], 0, first_start
        while True:
            take = np.asarray(pair[:, start : start + self.segment - got])
            parts.append(take)
            got += take.shape[1]
            if got >= self.segment:
                return np.concatenate(parts, axis=1), first, first_start
            pair, start = self.pair(int(rng.choice(len(self.files), p=self.weights))), 0

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_items:
            raise IndexError(f"item {i} out of range for {self.num_items} items")
        if self.segment is None:
            seg, source, start, uid = np.asarray(self.pair(i)), self.files[i], 0, f"mp3_{i:06d}"
        else:
            epoch = self.epoch if self.epoch_dependent else 0
            rng = np.random.default_rng([self.seed, epoch, int(i)])
            for _ in range(5):
                seg, source, start = self._draw(rng)
                if 10 * np.log10(np.mean(seg[0].astype(np.float64) ** 2) + 1e-20) >= self.min_level_db:
                    break
            uid = f"mp3_e{epoch}_{i:06d}"
        return {
            "id": uid,
            "noisy_sig": torch.from_numpy(np.array(seg[0], dtype=np.float32)),
            "clean_sig": torch.from_numpy(np.array(seg[1], dtype=np.float32)),
            "source": source,
            "start": start,
        }
