"""Signal-processing helpers shared by models and losses: STFT/iSTFT, length masks, time stretch.

One implementation of each idea: every model and loss in sb_mal gets its STFT and its
padding masks from here.

Lengths follow SpeechBrain: ``lengths`` are *relative* (0..1] per batch item, so
``round(lengths * T)`` valid samples (or frames) sit at the start of each row.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["Log1pMagnitude", "StftConfig", "frame_mask", "istft", "length_mask", "relative_to_samples", "stft", "time_stretch"]


_WINDOWS = {"hann": torch.hann_window, "hamming": torch.hamming_window}


class StftConfig:
    """STFT parameters with a cached window.

    Arguments
    ---------
    n_fft : int
        FFT size.
    hop : int
        Hop in samples.
    win_length : int, optional
        Window length (default ``n_fft``).
    window : str
        ``"hann"`` (default) or ``"hamming"`` (periodic).

    Example
    -------
    >>> cfg = StftConfig(512, 128)
    >>> x = torch.randn(2, 16000)
    >>> spec = stft(x, cfg)
    >>> spec.shape, spec.dtype
    (torch.Size([2, 257, 126]), torch.complex64)
    >>> torch.allclose(istft(spec, cfg, 16000), x, atol=1e-5)
    True
    """

    def __init__(self, n_fft: int = 512, hop: int = 128, win_length: int | None = None, window: str = "hann"):
        if window not in _WINDOWS:
            raise ValueError(f"window must be one of {sorted(_WINDOWS)}, got {window!r}")
        self.window_name = window
        if n_fft <= 0 or hop <= 0:
            raise ValueError(f"n_fft and hop must be positive, got n_fft={n_fft}, hop={hop}")
        self.n_fft, self.hop = int(n_fft), int(hop)
        self.win_length = int(win_length or n_fft)
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        self._windows: dict = {}

    @property
    def bins(self) -> int:
        """Number of frequency bins (``n_fft // 2 + 1``)."""
        return self.n_fft // 2 + 1

    def window(self, device, dtype=torch.float32) -> torch.Tensor:
        key = (str(device), dtype)
        if key not in self._windows:
            self._windows[key] = _WINDOWS[self.window_name](self.win_length, periodic=True, device=device, dtype=dtype)
        return self._windows[key]

    def frames(self, samples: int) -> int:
        """Number of STFT frames for ``samples`` samples (centred framing)."""
        return samples // self.hop + 1

    def __repr__(self) -> str:
        return f"StftConfig(n_fft={self.n_fft}, hop={self.hop}, win_length={self.win_length}, window={self.window_name!r})"


def stft(wav: torch.Tensor, cfg: StftConfig) -> torch.Tensor:
    """Complex STFT ``[B, F, T]`` of ``[B, samples]`` waveforms (centred, zero padding)."""
    if wav.dim() != 2:
        raise ValueError(f"stft expects [batch, samples], got shape {tuple(wav.shape)}")
    dtype = torch.float32 if wav.dtype in (torch.float16, torch.bfloat16) else wav.dtype
    return torch.stft(
        wav.to(dtype),
        cfg.n_fft,
        cfg.hop,
        cfg.win_length,
        window=cfg.window(wav.device, dtype),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )


def istft(spec: torch.Tensor, cfg: StftConfig, length: int) -> torch.Tensor:
    """Inverse of :func:`stft`: ``[B, F, T]`` complex -> ``[B, length]``."""
    return torch.istft(
        spec,
        cfg.n_fft,
        cfg.hop,
        cfg.win_length,
        window=cfg.window(spec.device, spec.real.dtype),
        center=True,
        length=length,
    )


def relative_to_samples(lengths: torch.Tensor | None, total: int, batch: int, device=None) -> torch.Tensor:
    """Relative lengths -> integer counts (all ``total`` when ``lengths`` is None)."""
    if lengths is None:
        return torch.full((batch,), total, dtype=torch.long, device=device)
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths must have shape [{batch}], got {tuple(lengths.shape)}")
    return torch.round(lengths.float() * total).long().clamp(1, total).to(device)


def length_mask(lengths: torch.Tensor | None, total: int, batch: int, device=None) -> torch.Tensor:
    """Boolean mask ``[B, total]``: True on valid positions.

    Example
    -------
    >>> length_mask(torch.tensor([1.0, 0.5]), 4, 2).int()
    tensor([[1, 1, 1, 1],
            [1, 1, 0, 0]], dtype=torch.int32)
    """
    counts = relative_to_samples(lengths, total, batch, device)
    return torch.arange(total, device=device)[None, :] < counts[:, None]


def frame_mask(lengths: torch.Tensor | None, samples: int, frames: int, hop: int, batch: int, device=None) -> torch.Tensor:
    """Mask ``[B, frames]`` of STFT frames whose centre lies inside the valid samples."""
    counts = relative_to_samples(lengths, samples, batch, device)
    valid_frames = counts // hop + 1
    return torch.arange(frames, device=device)[None, :] < valid_frames[:, None]


def time_stretch(wav: torch.Tensor, rate: float, sample_rate: int = 16000, n_fft: int | None = None,
                 hop: int | None = None) -> torch.Tensor:
    """Play ``wav`` ``rate`` times faster *without changing its pitch* (phase vocoder).

    ``wav`` is ``[T]`` or ``[..., T]`` (e.g. a batch ``[B, T]``); the result has
    ``round(T / rate)`` samples. The STFT (Hann window, 75 % overlap; by default 32 ms frames, 512
    samples at 16 kHz) is resampled in time: output frame ``k`` reads the analysis frames around
    position ``k * rate``, with their magnitudes interpolated linearly and the phase advanced, bin by
    bin, by the measured phase difference of the two analysis frames (its deviation from the bin's
    nominal advance wrapped to [-pi, pi], i.e. the bin's true frequency); the frames are then
    overlap-added at the analysis hop. Frequencies (the pitch) are kept; durations scale by
    ``1 / rate``. ``rate == 1`` returns the input itself.

    This is the pitch-preserving counterpart of resampling (which changes tempo and pitch together;
    :func:`sb_mal.brains.pift.speed_perturb` offers both).

    Example
    -------
    >>> t = torch.arange(32000) / 16000
    >>> tone = torch.sin(2 * math.pi * 200 * t)
    >>> out = time_stretch(tone, 1.25)
    >>> out.shape, time_stretch(tone[None].repeat(3, 1), 0.8).shape
    (torch.Size([25600]), torch.Size([3, 40000]))
    >>> spectrum = torch.fft.rfft(out[4000:-4000] * torch.hann_window(out.shape[0] - 8000)).abs()
    >>> round(float(spectrum.argmax()) * 16000 / (out.shape[0] - 8000))  # the pitch stays at 200 Hz
    200
    """
    rate = float(rate)
    if not 0.25 <= rate <= 4.0:
        raise ValueError(f"time_stretch: rate must be in [0.25, 4], got {rate}")
    if wav.dim() == 0 or wav.shape[-1] == 0:
        raise ValueError(f"time_stretch: expected a waveform [..., T], got shape {tuple(wav.shape)}")
    if rate == 1.0:
        return wav
    n_fft = int(n_fft or 2 ** round(math.log2(0.032 * sample_rate)))
    hop = int(hop or n_fft // 4)
    cfg = StftConfig(n_fft, hop)
    lead, total = wav.shape[:-1], wav.shape[-1]
    flat = wav.reshape(-1, total)
    dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
    spec = stft(flat.to(dtype), cfg)  # [B, F, N]
    frames = spec.shape[-1]
    steps = torch.arange(0, frames, rate, device=spec.device, dtype=torch.float64)
    base = steps.floor().long()
    frac = (steps - base).to(dtype)
    padded = torch.nn.functional.pad(spec, (0, 2))  # two silent frames past the end
    left, right = padded[..., base], padded[..., base + 1]
    nominal = torch.linspace(0, math.pi * hop, spec.shape[-2], device=spec.device, dtype=dtype)[:, None]
    advance = torch.angle(right) - torch.angle(left) - nominal
    advance = advance - 2 * math.pi * torch.round(advance / (2 * math.pi)) + nominal
    phase = torch.cat([torch.angle(spec[..., :1]), advance[..., :-1]], dim=-1).cumsum(-1)
    magnitude = (1 - frac) * left.abs() + frac * right.abs()
    out = istft(torch.polar(magnitude, phase), cfg, int(round(total / rate)))
    return out.reshape(*lead, out.shape[-1]).to(wav.dtype)


class Log1pMagnitude(nn.Module):
    """``log1p(|STFT(wav)|)`` ``[B, frames, F]``: the input of SpeechBrain's spectral-mask models.

    Arguments
    ---------
    compute_stft : callable, optional
        A SpeechBrain ``STFT`` (e.g. the recipe's ``compute_STFT``, through ``!ref``). Default:
        ``STFT(sample_rate, win_length=32, hop_length=16, n_fft=512, window_fn=hamming)``, the
        Voicebank recipes' settings.
    power : float
        Passed to ``spectral_magnitude`` (0.5 = magnitude, as in those recipes).
    spectral_magnitude : callable, optional
        Instead of ``power``: a model folder's own ``spectral_magnitude`` (a ``!name:`` partial).

    Example
    -------
    >>> Log1pMagnitude()(torch.randn(2, 16000)).shape
    torch.Size([2, 63, 257])
    """

    def __init__(self, compute_stft: Callable | None = None, power: float = 0.5, sample_rate: int = 16000,
                 spectral_magnitude: Callable | None = None):
        super().__init__()
        if compute_stft is None:
            from speechbrain.processing.features import STFT

            compute_stft = STFT(sample_rate=sample_rate, win_length=32, hop_length=16, n_fft=512,
                                window_fn=torch.hamming_window)
        if spectral_magnitude is None:
            from speechbrain.processing.features import spectral_magnitude as magnitude

            spectral_magnitude = functools.partial(magnitude, power=float(power))
        self.compute_stft, self.spectral_magnitude = compute_stft, spectral_magnitude

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.spectral_magnitude(self.compute_stft(wav)))
