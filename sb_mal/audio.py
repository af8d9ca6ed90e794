"""Audio input/output for sb_mal: read, validate, resample and write atomically.

Everything goes through ``soundfile`` (WAV, FLAC, OGG/Vorbis, MP3 and the other formats of the
bundled libsndfile), never ``torchaudio.load``/``save`` (which need torchcodec). Resampling uses
``torchaudio.functional.resample``.

Errors are :class:`AudioError` (a ``ValueError``) and always name the file and what was wrong.

Example
-------
>>> import numpy as np, tempfile, os
>>> tmp = tempfile.mkdtemp()
>>> path = os.path.join(tmp, "tone.flac")
>>> tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
>>> write_audio(path, tone, 8000)
>>> wav, sr = read_audio(path, sample_rate=16000)
>>> sr, tuple(wav.shape)
(16000, (16000,))
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from sb_mal.fileio import WriteError, temporary_path

__all__ = ["AUDIO_EXTENSIONS", "MAX_CHANNELS", "MAX_SECONDS", "RATE_RANGE", "AudioError", "AudioInfo", "audio_format",
           "audio_info", "audio_writer", "list_audio_files", "read_audio", "resample", "validate_waveform",
           "write_audio"]

#: File extensions treated as audio when scanning folders (lower case, with the dot).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus")

_FORMAT_BY_EXT = {
    ".wav": "WAV",
    ".flac": "FLAC",
    ".ogg": "OGG",
    ".opus": "OGG",
    ".mp3": "MP3",
    ".aiff": "AIFF",
    ".aif": "AIFF",
    ".au": "AU",
}


#: Plausible header values: a file outside them is refused from its header, before any decoding,
#: resampling or allocation (a 244-byte WAV claiming 2,147,483,647 Hz would otherwise build a
#: resampling kernel of many gigabytes).
RATE_RANGE = (1_000, 768_000)
MAX_CHANNELS = 64
MAX_SECONDS = 24 * 3600.0


class AudioError(ValueError):
    """Raised for unreadable, empty, non-finite or otherwise unusable audio (names the file)."""


def _check_header(path: str, rate: int, channels: int, frames: int | None) -> None:
    if not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
        raise AudioError(f"{path}: header claims a sample rate of {rate} Hz, outside the plausible "
                         f"{RATE_RANGE[0]}-{RATE_RANGE[1]} Hz; refused (a damaged or hostile file?)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"{path}: header claims {channels} channels, outside the plausible 1-{MAX_CHANNELS}; refused")
    if frames is not None and frames / rate > MAX_SECONDS:
        raise AudioError(f"{path}: header claims {frames} frames ({frames / rate / 3600:.1f} h at {rate} Hz), more "
                         f"than {MAX_SECONDS / 3600:g} h; refused")


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file."""

    path: str
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        """Duration in seconds."""
        return self.frames / self.sample_rate


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header of ``path`` (rate, frames, channels) without decoding the audio."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such audio file")
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises RuntimeError/LibsndfileError/TypeError
        raise AudioError(f"{path}: unreadable audio file ({err})") from err
    frames = info.frames
    _check_header(path, int(info.samplerate), int(info.channels), frames if 0 < frames <= 2**62 else None)
    if frames <= 0 or frames > 2**62:
        # MP3 headers can lack a frame count; decode to find it.
        try:
            frames = len(sf.read(path, dtype="float32", always_2d=True)[0])
        except Exception as err:
            raise AudioError(f"{path}: unreadable audio file ({err})") from err
    return AudioInfo(path, int(info.samplerate), int(frames), int(info.channels))


def validate_waveform(wav, name: str = "waveform", min_samples: int = 1):
    """Check that ``wav`` is non-empty and finite; return it unchanged.

    Arguments
    ---------
    wav : numpy.ndarray or torch.Tensor
        Audio samples (any shape).
    name : str
        What to call the signal in the error message (usually its file path).
    min_samples : int
        Minimum number of samples along the last axis.

    Example
    -------
    >>> validate_waveform(np.array([0.0, float("nan")]), "x.wav")
    Traceback (most recent call last):
    ...
    sb_mal.audio.AudioError: x.wav: audio contains 1 NaN/Inf sample(s)
    """
    n = wav.shape[-1] if len(wav.shape) else 0
    if n < min_samples:
        what = "empty audio (0 samples)" if n == 0 else f"too short: {n} samples"
        raise AudioError(f"{name}: {what}, at least {min_samples} needed")
    if hasattr(wav, "detach"):
        bad = int((~wav.detach().isfinite()).sum())
    else:
        bad = int(np.size(wav) - np.isfinite(wav).sum())
    if bad:
        raise AudioError(f"{name}: audio contains {bad} NaN/Inf sample(s)")
    return wav


def resample(wav, orig_sr: int, new_sr: int):
    """Resample ``wav`` (tensor or array, time on the last axis) from ``orig_sr`` to ``new_sr``.

    Returns the same type it was given. Uses torchaudio's windowed-sinc resampler; the kernel of
    each rate pair is built once and cached (building it costs far more than applying it to a
    few seconds of audio).

    Example
    -------
    >>> resample(np.zeros(480), 48000, 16000).shape
    (160,)
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return wav
    import torch

    is_numpy = not isinstance(wav, torch.Tensor)
    tensor = torch.as_tensor(np.asarray(wav, dtype=np.float32)) if is_numpy else wav
    resampler = _resampler(int(orig_sr), int(new_sr), tensor.dtype if tensor.is_floating_point() else torch.float32)
    with torch.no_grad() if is_numpy else contextlib.nullcontext():
        out = resampler.to(tensor.device)(tensor.float() if not tensor.is_floating_point() else tensor)
    return out.numpy() if is_numpy else out


@functools.lru_cache(maxsize=16)
def _resampler(orig_sr: int, new_sr: int, dtype):
    import torchaudio

    return torchaudio.transforms.Resample(orig_sr, new_sr, dtype=dtype)


def read_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    *,
    mono: bool = True,
    strict_rate: bool = False,
    start: int = 0,
    stop: int | None = None,
    as_numpy: bool = False,
    validate: bool = True,
):
    """Read an audio file as float32, downmixed to mono and resampled if asked.

    Arguments
    ---------
    path : str or PathLike
        Any format soundfile reads (WAV, FLAC, OGG, MP3, ...).
    sample_rate : int, optional
        Target rate. The file is resampled to it unless ``strict_rate``, in which case a file at
        another rate is an error.
    mono : bool
        Average the channels (``[T]`` output); otherwise return ``[C, T]``.
    strict_rate : bool
        Refuse files whose rate differs from ``sample_rate``.
    start, stop : int
        Frame range to read, in samples at the *file's* rate.
    as_numpy : bool
        Return a numpy array instead of a torch tensor.
    validate : bool
        Reject empty and non-finite audio.

    Returns
    -------
    (wav, rate)
        ``wav`` is ``[T]`` (mono) or ``[C, T]``; ``rate`` the rate of ``wav``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such audio file")
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises RuntimeError/LibsndfileError/TypeError
        raise AudioError(f"{path}: unreadable audio file ({err})") from err
    _check_header(path, int(info.samplerate), int(info.channels), info.frames if 0 < info.frames <= 2**62 else None)
    try:
        data, file_sr = sf.read(path, dtype="float32", always_2d=True, start=start, stop=stop)
    except Exception as err:
        raise AudioError(f"{path}: unreadable audio file ({err})") from err
    if sample_rate is not None and strict_rate and file_sr != sample_rate:
        raise AudioError(f"{path}: sample rate is {file_sr} Hz, expected {sample_rate} Hz")
    data = data.T  # [C, T]
    if mono:
        data = data.mean(axis=0) if data.shape[0] > 1 else data[0]
    data = np.ascontiguousarray(data, dtype=np.float32)
    if validate:
        validate_waveform(data, path)
    rate = file_sr
    if sample_rate is not None and sample_rate != file_sr:
        data = resample(data, file_sr, sample_rate)
        rate = sample_rate
    if as_numpy:
        return data, rate
    import torch

    return torch.from_numpy(np.ascontiguousarray(data)), rate


def audio_format(path: str | os.PathLike) -> str:
    """soundfile format name for the extension of ``path`` (error naming the file if unknown).

    Example
    -------
    >>> audio_format("x/y.flac")
    'FLAC'
    """
    ext = os.path.splitext(os.fspath(path))[1].lower()
    fmt = _FORMAT_BY_EXT.get(ext)
    if fmt is None:
        raise AudioError(f"{os.fspath(path)}: unknown audio extension {ext!r}; use one of {sorted(_FORMAT_BY_EXT)}")
    return fmt


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def write_audio(
    path: str | os.PathLike,
    wav,
    sample_rate: int,
    *,
    protect: Iterable[str | os.PathLike] = (),
    subtype: str | None = None,
    overwrite: bool = True,
) -> None:
    """Write ``wav`` to ``path`` atomically (temporary file in the same folder, then rename).

    Arguments
    ---------
    path : str or PathLike
        Output file; the format comes from its extension (wav, flac, ogg, mp3, ...).
    wav : array or tensor
        ``[T]`` or ``[C, T]`` samples, float in [-1, 1].
    sample_rate : int
        Rate of ``wav``.
    protect : iterable of paths
        Input files that must never be overwritten; writing onto one is an error.
    subtype : str, optional
        soundfile subtype (default: PCM_16 for WAV/FLAC, the format default otherwise).
    overwrite : bool
        If False, an existing ``path`` is an error.
    """
    path = os.fspath(path)
    for other in protect:
        other = os.fspath(other)
        if os.path.exists(other) and os.path.exists(path) and _same_file(path, other):
            raise AudioError(f"{path}: refusing to overwrite an input file")
        if os.path.abspath(path) == os.path.abspath(other):
            raise AudioError(f"{path}: refusing to overwrite an input file")
    if not overwrite and os.path.exists(path):
        raise AudioError(f"{path}: file exists and overwrite=False")
    audio_format(path)  # an unknown extension fails here, naming the file
    if hasattr(wav, "detach"):
        wav = wav.detach().cpu().float().numpy()
    data = np.asarray(wav, dtype=np.float32)
    if data.ndim == 2:
        data = data.T  # soundfile wants [T, C]
    elif data.ndim != 1:
        raise AudioError(f"{path}: expected [T] or [C, T] audio, got shape {tuple(data.shape)}")
    validate_waveform(data.T if data.ndim == 2 else data, path)
    with audio_writer(path, int(sample_rate), data.shape[1] if data.ndim == 2 else 1, subtype=subtype) as out:
        out.write(np.clip(data, -1.0, 1.0))


class _RecordingFile:
    """A binary file for soundfile's virtual I/O that keeps the ``OSError`` of a failed write
    (libsndfile itself only reports "System error.")."""

    def __init__(self, fileobj):
        self._f, self.error = fileobj, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            return 0

    def read(self, *args):
        return self._f.read(*args)

    def seek(self, *args):
        return self._f.seek(*args)

    def tell(self):
        return self._f.tell()


class audio_writer:  # noqa: N801 - used as a context manager, like open()
    """Write ``path`` progressively and atomically: ``with audio_writer(p, 16000) as out: out.write(x)``.

    Samples go to a hidden temporary file in the same folder, renamed to ``path`` when the block
    ends without error (and removed otherwise). A failed write, e.g. a full disk, is an ``OSError``
    naming ``path`` and its cause. ``x`` is ``[T]`` or ``[T, C]`` float32.
    """

    def __init__(self, path, sample_rate: int, channels: int = 1, subtype: str | None = None):
        self.path = os.fspath(path)
        self.format = audio_format(self.path)
        if subtype is None and self.format in ("WAV", "FLAC"):
            subtype = "PCM_16"
        self.sample_rate, self.channels, self.subtype = int(sample_rate), int(channels), subtype

    def __enter__(self):
        self.tmp = temporary_path(self.path, suffix=os.path.splitext(self.path)[1].lower())
        self._file = open(self.tmp, "w+b")  # noqa: SIM115 - closed in __exit__
        self._rec = _RecordingFile(self._file)
        try:
            self._sf = sf.SoundFile(self._rec, "w", samplerate=self.sample_rate, channels=self.channels,
                                    format=self.format, subtype=self.subtype)
        except BaseException as err:
            self._abort()
            raise self._cause(err) from err
        return self

    def write(self, data) -> None:
        try:
            self._sf.write(data)
        except Exception as err:  # noqa: BLE001 - libsndfile's own error hides the cause
            raise self._cause(err) from err
        if self._rec.error is not None:
            raise self._cause(self._rec.error)

    def _cause(self, err: BaseException) -> BaseException:
        recorded = self._rec.error if hasattr(self, "_rec") else None
        found = recorded or err
        if not isinstance(found, OSError):
            return err
        if str(found.strerror or "").startswith("cannot write"):
            return found
        return WriteError(found.errno, f"cannot write {self.path}: {found.strerror or found}")

    def _abort(self) -> None:
        for closer in (getattr(self, "_sf", None), self._file):
            try:
                if closer is not None:
                    closer.close()
            except Exception:  # noqa: BLE001 - already failing; the first error is the one reported
                pass
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._abort()
            return False
        try:
            self._sf.close()
            if self._rec.error is not None:
                raise self._cause(self._rec.error)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp, self.path)
        except Exception as err:  # noqa: BLE001 - name the output and the cause
            cause = self._cause(err)
            self._abort()
            if cause is err:
                raise
            raise cause from err
        except BaseException:
            self._abort()
            raise
        return False


def list_audio_files(
    folder: str | os.PathLike,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    recursive: bool = True,
) -> list[str]:
    """Sorted list of audio files under ``folder`` (errors if the folder is missing or empty).

    Hidden files (names starting with ``.``, e.g. our own temporary files) are skipped.
    """
    root = Path(folder)
    if not root.is_dir():
        raise AudioError(f"{folder}: not a folder")
    exts = {e.lower() for e in extensions}
    pattern = "**/*" if recursive else "*"
    files = sorted(
        str(p)
        for p in root.glob(pattern)
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
    )
    if not files:
        raise AudioError(f"{folder}: no audio files ({', '.join(sorted(exts))}) found")
    return files
