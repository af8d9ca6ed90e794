"""Codec-approximation networks: U-Nets trained to imitate MP3 coding (Ananthabhotla et al., MM'19).

Two variants, each with ``forward`` (the codec imitation), ``features`` (per-layer activations for
the feature loss, in the fixed order ``enc1..encL, dec1..decL``), ``prepare`` (waveform -> network
input), ``fit_loss`` (the L1 training objective on (original, coded) pairs) and ``config`` (the
constructor arguments, for ``model_config.json``).

:class:`SpectralCodecNet` (the paper's better variant) works on magnitude spectrograms
(``n_fft`` 1024, hop 512, Nyquist bin dropped -> 512 bins), 5 levels of 5x5 stride-2 convolutions
with BatchNorm + LeakyReLU(0.2), 5 transposed-convolution levels with skips, BatchNorm + ReLU,
dropout 0.5 on the first three up layers, and a sigmoid output that *is* the predicted coded
magnitude (not a mask: MP3 also adds energy, e.g. quantisation noise, that a mask <= 1 cannot).

Normalisation (the paper is silent; sigmoid output needs targets in [0, 1]):
``S = (|STFT| / scale) ** compress`` with ``scale`` per item = the largest magnitude over the
item's valid frames (``norm="max"``, floored at 1e-3 of the window sum so silence stays 0), or
a fixed number (``norm=<float>``; 512, the Hann window sum at n_fft 1024, bounds any signal in
[-1, 1]). The *same* scale normalises the input and its target (the target is then clamped to
[0, 1]); the loss normalises a prediction with its reference's scale, so it stays level-sensitive.

``compress`` defaults to 0.3 (the paper does not say whether its magnitudes were linear). On
linear normalised magnitudes almost every bin is near 0 (median 0.0000, mean 0.006 on devset
music) and MP3's changes are tiny (L1 between original and coded 0.0013): a tiny net trained for
80 steps stayed 3x worse than the identity map. At 0.3 the low-level bins where MP3 removes
content (above its ~5.5 kHz low-pass, masked components) become visible (identity L1 0.060) and
the same tiny net beat the identity map on held-out music within 50 steps (0.048 after 80).

:class:`TimeCodecNet` (the paper's time-domain variant) works on waveforms: 8 levels of Conv1d
(kernel 15, stride 1) + LeakyReLU + decimation by 2, 8 levels of ConvTranspose1d (kernel 9,
stride 2) + LeakyReLU on the concatenated skips, no BatchNorm or dropout, tanh output.
Channels grow linearly, ``filters * level`` (32, 64, ..., 256; Wave-U-Net's rule: doubling
over 8 levels would mean 4096 channels).

Any number of frames (samples) is accepted: the time axis is zero-padded to a multiple of
``2 ** levels`` and cropped back. Given the valid length of each item (``valid``, absolute
frames/samples), every activation beyond it is zeroed after each layer, so the output and
features on valid positions do not depend on padding.
"""

from __future__ import annotations


import torch
from torch import nn

from sb_mal.models.config import RecordsConfig

from sb_mal.dsp import StftConfig, istft, length_mask, relative_to_samples, stft

__all__ = ["SpectralCodecNet", "TimeCodecNet", "masked_l1", "valid_at_level"]


def valid_at_level(valid: torch.Tensor, level: int) -> torch.Tensor:
    """Valid time steps after ``level`` halvings: ``ceil(valid / 2**level)``.

    Example
    -------
    >>> valid_at_level(torch.tensor([128, 100, 1]), 3).tolist()
    [16, 13, 1]
    """
    return (valid + (1 << level) - 1) >> level


_POW_FLOOR = 1e-20  # (1e-20) ** 0.3 = 1e-6; the gradient there, 0.3 * 1e14, is finite in float32


def _keep(x: torch.Tensor, valid: torch.Tensor, level: int) -> torch.Tensor:
    """Zero the time steps (last axis) of ``x`` beyond the valid length at ``level``."""
    steps = torch.arange(x.shape[-1], device=x.device)
    mask = steps[None, :] < valid_at_level(valid, level)[:, None]
    return x * mask.view(x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1]).to(x.dtype)


def masked_l1(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-item mean ``|a - b|`` over the time steps ``< valid`` (last axis) and all other axes, ``[B]``.

    Example
    -------
    >>> masked_l1(torch.zeros(2, 3, 4), torch.ones(2, 3, 4), torch.tensor([4, 1])).tolist()
    [1.0, 1.0]
    """
    steps = torch.arange(a.shape[-1], device=a.device)
    mask = (steps[None, :] < valid[:, None]).view(a.shape[0], *([1] * (a.dim() - 2)), a.shape[-1])
    per_step = a[0].numel() // a.shape[-1]
    return ((a - b).abs() * mask.to(a.dtype)).flatten(1).sum(1) / (valid.clamp(min=1) * per_step)


def _check_valid(valid: torch.Tensor | None, batch: int, steps: int, device) -> torch.Tensor:
    if valid is None:
        return torch.full((batch,), steps, dtype=torch.long, device=device)
    valid = torch.as_tensor(valid, device=device).long()
    if valid.shape != (batch,):
        raise ValueError(f"valid must be [batch]={batch} absolute lengths, got shape {tuple(valid.shape)}")
    return valid.clamp(1, steps)


class _CodecNetBase(RecordsConfig, nn.Module):
    levels: int

    @property
    def layer_names(self) -> list[str]:
        """Names of the activations :meth:`features` returns, in order."""
        return [f"enc{i + 1}" for i in range(self.levels)] + [f"dec{i + 1}" for i in range(self.levels)]

    def layer_level(self, name: str) -> int:
        """Number of halvings of the time axis at layer ``name`` (for masking)."""
        kind, idx = name[:3], int(name[3:])
        return self._enc_level(idx) if kind == "enc" else self.levels - idx

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The codec imitation of ``x`` (same shape)."""
        return self._run(x, valid)[1]

    def forward_features(self, x: torch.Tensor, valid: torch.Tensor | None = None, upto: str | None = None
                         ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """``(features(x, valid, upto), output)`` from one pass; output is None when stopped early."""
        if upto is not None and upto not in self.layer_names:
            raise ValueError(f"unknown layer {upto!r}; layers are {self.layer_names}")
        return self._run(x, valid, upto)

    def features(self, x: torch.Tensor, valid: torch.Tensor | None = None, upto: str | None = None
                 ) -> list[torch.Tensor]:
        """Activations ``enc1..encL, dec1..decL`` (or up to layer ``upto``), time axis last.

        Each is cropped to ``ceil(T / 2**level)`` steps (``level`` from :meth:`layer_level`).
        SpectralCodecNet: ``[B, C, bins, T']``, ``encI`` after BatchNorm + LeakyReLU, ``decJ`` after
        BatchNorm + ReLU, ``decL`` the sigmoid output ``[B, bins, T]``. TimeCodecNet: ``[B, C, T']``,
        ``encI`` the down convolution's activation before its decimation, ``decJ`` the up layer's.
        """
        return self.forward_features(x, valid, upto)[0]

    def fit_loss(self, original: torch.Tensor, coded: torch.Tensor, lengths: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Per-item L1 between ``self(prepare(original))`` and the prepared coded target ``[B]``.

        ``original``/``coded`` are ``[B, samples]`` waveforms with relative ``lengths``; padded
        frames do not count.
        """
        x, scale, valid = self.prepare(original, lengths)
        target = self.prepare(coded, lengths, scale=scale)[0].clamp(self.out_min, 1.0)
        return masked_l1(self(x, valid), target, valid)


class SpectralCodecNet(_CodecNetBase):
    """Spectrogram U-Net imitating a codec (see the module docstring).

    Arguments
    ---------
    filters : int
        Channels of the first level (doubling per level; the paper's F = 32).
    levels : int
        Down/up levels (5); ``n_fft // 2`` must be divisible by ``2 ** levels``.
    n_fft, hop : int
        STFT of :meth:`prepare` (1024 / 512 as in the paper).
    kernel : int
        Square kernel size (5).
    dropout : float
        Dropout on the first ``dropout_layers`` up layers (0.5, 3).
    leaky_slope : float
        Negative slope of the encoder's LeakyReLU (0.2).
    norm : "max" or float
        Magnitude scale per item (see the module docstring).
    compress : float
        Exponent applied to the normalised magnitudes: 0.3 (default, see the module docstring)
        or 1.0 (linear magnitudes, as in Jansson et al.'s U-Net).

    Example
    -------
    >>> net = SpectralCodecNet(filters=4).eval()
    >>> mag, scale, valid = net.prepare(torch.randn(2, 16000))
    >>> mag.shape, float(mag.max())
    (torch.Size([2, 512, 32]), 1.0)
    >>> net(mag).shape, [f.shape[1:] for f in net.features(mag)][:2]
    (torch.Size([2, 512, 32]), [torch.Size([4, 256, 16]), torch.Size([8, 128, 8])])
    """

    out_min = 0.0

    def __init__(self, filters: int = 32, levels: int = 5, n_fft: int = 1024, hop: int = 512, kernel: int = 5,
                 dropout: float = 0.5, dropout_layers: int = 3, leaky_slope: float = 0.2, norm: str | float = "max",
                 compress: float = 0.3):
        super().__init__()
        bins = n_fft // 2
        if filters < 1 or levels < 1:
            raise ValueError(f"filters and levels must be >= 1, got filters={filters}, levels={levels}")
        if bins % (1 << levels):
            raise ValueError(f"n_fft // 2 = {bins} bins must be divisible by 2**levels = {1 << levels}")
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {kernel}")
        if not (norm == "max" or (isinstance(norm, (int, float)) and norm > 0)):
            raise ValueError(f"norm must be 'max' or a positive number, got {norm!r}")
        if compress <= 0:
            raise ValueError(f"compress must be positive, got {compress}")
        self.levels, self.norm, self.compress = levels, norm, float(compress)
        self.stft_cfg = StftConfig(n_fft, hop)
        chans = [filters << i for i in range(levels)]
        pad = kernel // 2
        self.down = nn.ModuleList()
        for cin, cout in zip([1, *chans[:-1]], chans):
            self.down.append(nn.Sequential(nn.Conv2d(cin, cout, kernel, 2, pad), nn.BatchNorm2d(cout),
                                           nn.LeakyReLU(leaky_slope)))
        self.up = nn.ModuleList()
        for j in range(levels):
            cin = chans[-1] if j == 0 else 2 * chans[levels - 1 - j]
            last = j == levels - 1
            cout = 1 if last else chans[levels - 2 - j]
            layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, kernel, 2, pad, output_padding=1)]
            if not last:
                layers += [nn.BatchNorm2d(cout), nn.ReLU()]
                if j < dropout_layers and dropout > 0:
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        with torch.no_grad():  # start the output near typical normalised magnitudes, not at 0.5
            p0 = 0.3 * 0.01**self.compress  # ~ the median of S: 0.003 linear, 0.075 at compress 0.3
            self.up[-1][0].bias.fill_(float(torch.logit(torch.tensor(p0))))

    def _enc_level(self, idx: int) -> int:
        return idx

    def prepare(self, wav: torch.Tensor, lengths: torch.Tensor | None = None, scale: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Waveforms ``[B, samples]`` -> ``(S [B, n_fft/2, frames], scale [B], valid frames [B])``.

        ``scale`` given: use it (e.g. the reference's) instead of computing one.
        """
        if wav.dim() != 2:
            raise ValueError(f"SpectralCodecNet.prepare expects waveforms [batch, samples], got {tuple(wav.shape)}")
        B, N = wav.shape
        if lengths is not None:
            wav = wav * length_mask(lengths, N, B, wav.device).to(wav.dtype)
        mag = stft(wav, self.stft_cfg).abs()[:, :-1]  # drop the Nyquist bin
        valid = relative_to_samples(lengths, N, B, wav.device) // self.stft_cfg.hop + 1
        valid = valid.clamp(max=mag.shape[-1])
        mag = _keep(mag, valid, 0)
        if scale is None:
            if self.norm == "max":
                floor = 1e-3 * float(self.stft_cfg.window(wav.device).sum())
                scale = mag.detach().flatten(1).amax(1).clamp(min=floor)
            else:
                scale = torch.full((B,), float(self.norm), device=wav.device, dtype=mag.dtype)
        out = mag / scale.to(mag.dtype)[:, None, None]
        if self.compress != 1.0:
            # a floor far below any audible bin keeps the gradient of x ** c finite at exact zeros (padding)
            out = out.clamp(min=_POW_FLOOR).pow(self.compress)
        return out, scale, valid

    def to_waveform(self, mag: torch.Tensor, scale: torch.Tensor, phase_from: torch.Tensor) -> torch.Tensor:
        """Normalised magnitudes ``[B, bins, T]`` -> waveforms, with the phase (and Nyquist bin)
        of ``phase_from`` ``[B, samples]``."""
        spec = stft(phase_from, self.stft_cfg)
        mag = mag.clamp(min=0).pow(1.0 / self.compress) * scale.to(mag.dtype)[:, None, None]
        mag = torch.cat([mag, spec[:, -1:].abs()], dim=1)
        return istft(torch.polar(mag, spec.angle()), self.stft_cfg, phase_from.shape[-1])

    def imitate(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The network's imitation of the codec as a waveform (input phase), ``[B, samples]``."""
        mag, scale, valid = self.prepare(wav, lengths)
        return self.to_waveform(self(mag, valid), scale, wav)

    def _run(self, x, valid, upto=None):
        if x.dim() != 3 or x.shape[1] != self.stft_cfg.n_fft // 2:
            raise ValueError(f"SpectralCodecNet expects magnitudes [batch, {self.stft_cfg.n_fft // 2}, frames], "
                             f"got {tuple(x.shape)}")
        B, _, T = x.shape
        valid = _check_valid(valid, B, T, x.device)
        unit = 1 << self.levels
        h = nn.functional.pad(x, (0, (-T) % unit)).unsqueeze(1)  # [B, 1, F, T_pad]
        h = _keep(h, valid, 0)
        feats, skips = [], []
        for i, block in enumerate(self.down):
            h = _keep(block(h), valid, i + 1)
            feats.append(h)
            skips.append(h)
            if upto == f"enc{i + 1}":
                break
        else:
            for j, block in enumerate(self.up):
                if j > 0:
                    h = torch.cat([h, skips[self.levels - 1 - j]], dim=1)
                h = _keep(block(h), valid, self.levels - 1 - j)
                feats.append(h)
                if upto == f"dec{j + 1}":
                    break
        out = torch.sigmoid(feats[-1]).squeeze(1)[..., :T] if len(feats) == 2 * self.levels else None
        if out is not None:
            feats[-1] = _keep(out, valid, 0)
            out = feats[-1]
        names = self.layer_names
        feats = [f[..., : -(-T // (1 << self.layer_level(n)))] for f, n in zip(feats, names)]
        return feats, out


class TimeCodecNet(_CodecNetBase):
    """Waveform U-Net imitating a codec (the paper's time-domain variant; see the module docstring).

    Arguments
    ---------
    filters : int
        Channels per level step (32): level ``i`` has ``filters * i`` channels.
    levels : int
        Down/up levels (8).
    down_kernel, up_kernel : int
        Kernel of the down convolutions (15, stride 1) and of the up transposed convolutions (9, stride 2).
    leaky_slope : float
        Negative slope of the LeakyReLU activations.

    The output layer is a 1x1 convolution + tanh over ``[decL, enc1, input]`` (not one of the
    :meth:`features`).

    Example
    -------
    >>> net = TimeCodecNet(filters=4, levels=3)
    >>> x = torch.randn(2, 1000)
    >>> net(x).shape, [f.shape for f in net.features(x)][0]
    (torch.Size([2, 1000]), torch.Size([2, 4, 1000]))
    """

    out_min = -1.0

    def __init__(self, filters: int = 32, levels: int = 8, down_kernel: int = 15, up_kernel: int = 9,
                 leaky_slope: float = 0.2):
        super().__init__()
        if filters < 1 or levels < 1:
            raise ValueError(f"filters and levels must be >= 1, got filters={filters}, levels={levels}")
        if down_kernel % 2 == 0 or up_kernel % 2 == 0:
            raise ValueError(f"kernels must be odd, got down_kernel={down_kernel}, up_kernel={up_kernel}")
        self.levels = levels
        chans = [filters * (i + 1) for i in range(levels)]
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv1d(cin, cout, down_kernel, 1, down_kernel // 2), nn.LeakyReLU(leaky_slope))
            for cin, cout in zip([1, *chans[:-1]], chans)
        )
        self.up = nn.ModuleList()
        for j in range(levels):
            # input of up layer j: the previous up output concatenated with the skip of its level
            cin = chans[-1] if j == 0 else 2 * chans[levels - j]
            cout = chans[levels - 1 - j]
            self.up.append(nn.Sequential(
                nn.ConvTranspose1d(cin, cout, up_kernel, 2, up_kernel // 2, output_padding=1),
                nn.LeakyReLU(leaky_slope)))
        self.output = nn.Conv1d(chans[0] * 2 + 1, 1, 1)

    def _enc_level(self, idx: int) -> int:
        return idx - 1  # enc_i is taken before its decimation

    def prepare(self, wav: torch.Tensor, lengths: torch.Tensor | None = None, scale: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Waveforms ``[B, samples]`` -> ``(wav zeroed beyond lengths, scale (ones) [B], valid samples [B])``."""
        if wav.dim() != 2:
            raise ValueError(f"TimeCodecNet.prepare expects waveforms [batch, samples], got {tuple(wav.shape)}")
        B, N = wav.shape
        valid = relative_to_samples(lengths, N, B, wav.device)
        if scale is None:
            scale = torch.ones(B, device=wav.device, dtype=wav.dtype)
        return _keep(wav, valid, 0), scale, valid

    def _run(self, x, valid, upto=None):
        if x.dim() != 2:
            raise ValueError(f"TimeCodecNet expects waveforms [batch, samples], got {tuple(x.shape)}")
        B, T = x.shape
        valid = _check_valid(valid, B, T, x.device)
        inp = _keep(nn.functional.pad(x, (0, (-T) % (1 << self.levels))), valid, 0).unsqueeze(1)
        h, feats, skips = inp, [], []
        for i, block in enumerate(self.down):
            h = _keep(block(h), valid, i)
            feats.append(h)
            skips.append(h)
            h = h[..., ::2]
            if upto == f"enc{i + 1}":
                break
        else:
            for j, block in enumerate(self.up):
                if j > 0:
                    h = torch.cat([h, skips[self.levels - j]], dim=1)
                h = _keep(block(h), valid, self.levels - 1 - j)
                feats.append(h)
                if upto == f"dec{j + 1}":
                    break
        out = None
        if len(feats) == 2 * self.levels:
            out = torch.tanh(self.output(torch.cat([h, skips[0], inp], dim=1))).squeeze(1)[..., :T]
            out = _keep(out, valid, 0)
        feats = [f[..., : -(-T // (1 << self.layer_level(n)))] for f, n in zip(feats, self.layer_names)]
        return feats, out
