"""Chunked enhancement of long signals and files: overlap-add with cross-fades, bounded memory.

Long signals are enhanced in overlapping chunks (``chunk_seconds``, default 10 s, overlapping by
``overlap_seconds``, default 0.5 s). Each chunk is weighted by a window that is 1 in its middle and
rises/falls as a half Hann (sin^2) ramp over the overlaps with its neighbours; the output is the
weighted sum divided by the summed weights, so where two chunks overlap the result cross-fades from
one to the other without a click. The last chunk is aligned with the end of the signal, so every
chunk has full context.

:class:`FileReader` reads long files piece by piece (downmixed, resampled to the model rate with
margins so the result equals resampling the whole file), so memory stays bounded for files of any
length.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import soundfile as sf
import torch

from sb_mal.audio import AudioError, resample

__all__ = ["DEFAULT_CHUNK_SECONDS", "DEFAULT_OVERLAP_SECONDS", "FileReader", "chunk_starts", "overlap_add"]

DEFAULT_CHUNK_SECONDS = 10.0
DEFAULT_OVERLAP_SECONDS = 0.5


def chunk_starts(total: int, chunk: int, overlap: int) -> list[int]:
    """Start samples of the chunks covering ``total`` samples (regular hop, last chunk end-aligned).

    Example
    -------
    >>> chunk_starts(25, 10, 2)
    [0, 8, 15]
    >>> chunk_starts(7, 10, 2)
    [0]
    """
    if chunk <= 0 or not 0 <= overlap <= chunk // 2:
        raise ValueError(f"need chunk > 0 and 0 <= overlap <= chunk/2, got chunk={chunk}, overlap={overlap}")
    if total <= chunk:
        return [0]
    starts = list(range(0, total - chunk, chunk - overlap))
    return starts + [total - chunk]


def _ramp(n: int, device) -> torch.Tensor:
    """Fade-in of ``n`` samples, strictly inside (0, 1); reversed it is its complement."""
    return torch.sin(0.5 * math.pi * (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n) ** 2


def overlap_add(total, chunk, overlap, read: Callable, process: Callable, emit: Callable, device) -> int:
    """Run ``process`` on overlapping chunks from ``read(start, stop)``; ``emit(start, samples)`` in order.

    Only about two chunks are ever held in memory. Returns the number of chunks.
    """
    starts = chunk_starts(total, chunk, overlap)
    fade_in = _ramp(overlap, device) if overlap else None
    num = den = None
    base = 0
    for k, start in enumerate(starts):
        stop = min(start + chunk, total)
        y = process(read(start, stop), start, stop)
        w = torch.ones(stop - start, device=y.device)
        if overlap and k > 0:
            w[:overlap] = fade_in
        if overlap and k < len(starts) - 1:
            w[-overlap:] = fade_in.flip(0)
        if num is None:
            num, den = y.new_zeros(y.shape[0], 0), y.new_zeros(0)
        grow = stop - base - den.shape[0]
        if grow > 0:
            num = torch.cat([num, num.new_zeros(num.shape[0], grow)], 1)
            den = torch.cat([den, den.new_zeros(grow)])
        num[:, start - base:stop - base] += w * y
        den[start - base:stop - base] += w
        final = (starts[k + 1] if k + 1 < len(starts) else total) - base  # nothing later touches these
        emit(base, num[:, :final] / den[:final])
        num, den, base = num[:, final:], den[final:], base + final
    return len(starts)


class FileReader:
    """Read ``[start, stop)`` of a file in *model-rate* samples, mono, without decoding the rest.

    Resampling runs on the piece plus margins of whole resampler periods, so every sample equals
    what resampling the whole file would give (up to float rounding).
    """

    def __init__(self, path: str, frames: int, file_rate: int, rate: int):
        self.path, self.frames, self.file_rate, self.rate = path, frames, file_rate, rate
        g = math.gcd(file_rate, rate)
        self.of, self.nf = file_rate // g, rate // g  # one period: `of` file samples -> `nf` model samples
        width = math.ceil(6 * self.of / (0.99 * min(self.of, self.nf)))  # torchaudio's sinc kernel half-width
        self.margin = math.ceil(width / self.of) + 2  # periods
        self.total = frames if file_rate == rate else math.ceil(frames * self.nf / self.of)
        self._file = sf.SoundFile(path)

    def close(self) -> None:
        self._file.close()

    def _read_frames(self, a: int, b: int) -> np.ndarray:
        self._file.seek(a)
        data = self._file.read(b - a, dtype="float32", always_2d=True)
        data = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        if not np.isfinite(data).all():
            raise AudioError(f"{self.path}: audio contains NaN/Inf sample(s) between frames {a} and {b}")
        return np.ascontiguousarray(data, dtype=np.float32)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        if self.file_rate == self.rate:
            return torch.from_numpy(self._read_frames(start, stop))[None]
        p0 = max(0, start // self.nf - self.margin)
        p1 = -(-stop // self.nf) + self.margin
        piece = resample(self._read_frames(p0 * self.of, min(p1 * self.of, self.frames)), self.file_rate, self.rate)
        offset = p0 * self.nf
        return torch.from_numpy(np.ascontiguousarray(piece[start - offset:stop - offset]))[None]
