"""The default speech-enhancement backbone: a spectral encoder-decoder (U-Net with a recurrent bottleneck).

Signal path::

    wav -> STFT -> |X|^0.3 -> [conv encoder, stride 2 in frequency] x N -> linear -> GRU  = encoder
        -> linear -> [conv decoder with skip connections, x2 in frequency] x N -> sigmoid mask
        -> mask * X (noisy phase kept) -> iSTFT -> wav                                      = decoder

It implements the encode/decode protocol that Model-as-Loss relies on::

    enc = model.encode(wav, lengths)      # Encoding: bottleneck [B, T, D], taps, skips, noisy STFT
    wav_hat = model.decode(enc)           # model(wav, lengths) == model.decode(model.encode(wav, lengths))

Normalisation is a per-frame LayerNorm over (channels, frequency): no running statistics, so
train and eval mode compute the same function (important when the encoder serves as a loss) and
the causal variant stays causal. With ``causal=True`` convolutions only look at past frames and
the GRU is unidirectional.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sb_mal.models.config import RecordsConfig
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sb_mal.dsp import StftConfig, frame_mask, istft, length_mask, stft

__all__ = ["Encoding", "SpectralUNetSE"]


@dataclass
class Encoding:
    """What :meth:`SpectralUNetSE.encode` returns.

    Attributes
    ----------
    bottleneck : Tensor
        ``[B, frames, bottleneck_dim]``, the representation the decoder starts from.
    taps : dict
        Encoder activations by name: ``enc1`` .. ``encN`` (``[B, C, frames, F]``) and ``bottleneck``.
    skips : list of Tensor
        Encoder outputs used by the decoder's skip connections.
    spec : Tensor
        Complex noisy STFT ``[B, F, frames]`` (its phase is reused).
    frame_mask : Tensor
        ``[B, frames]`` boolean, True on frames inside the valid (unpadded) signal.
    num_samples : int
        Length of the input waveform.
    """

    bottleneck: torch.Tensor
    taps: dict = field(default_factory=dict)
    skips: list = field(default_factory=list)
    spec: torch.Tensor | None = None
    frame_mask: torch.Tensor | None = None
    num_samples: int = 0


class _FrameNorm(nn.Module):
    """LayerNorm over (channels, freq) of each frame of a ``[B, C, T, F]`` tensor."""

    def __init__(self, channels: int, freqs: int):
        super().__init__()
        self.norm = nn.LayerNorm([channels, freqs])

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class _ConvBlock(nn.Module):
    """Conv2d over (time, freq) with causal or centred time padding, frame norm, ELU."""

    def __init__(self, cin, cout, kernel, freq_stride, freqs_out, causal):
        super().__init__()
        kt, kf = kernel
        self.time_pad = (kt - 1, 0) if causal else ((kt - 1) // 2, kt // 2)
        self.conv = nn.Conv2d(cin, cout, (kt, kf), stride=(1, freq_stride), padding=(0, kf // 2))
        self.norm = _FrameNorm(cout, freqs_out)
        self.act = nn.ELU()

    def forward(self, x):
        x = nn.functional.pad(x, (0, 0, *self.time_pad))
        return self.act(self.norm(self.conv(x)))


class SpectralUNetSE(RecordsConfig, nn.Module):
    """Spectral U-Net speech enhancer with a GRU bottleneck.

    Arguments
    ---------
    n_fft, hop : int
        STFT size and hop (samples). Defaults: 512 / 256 (32 / 16 ms at 16 kHz).
    channels : sequence of int
        Channels of the encoder blocks (the decoder mirrors them); each halves the frequency axis.
    kernel : (int, int)
        Convolution kernel (time, frequency).
    bottleneck_dim : int
        Width of the bottleneck (the MAL feature space).
    rnn_layers : int
        GRU layers in the bottleneck.
    causal : bool
        Causal convolutions and a unidirectional GRU (streamable).
    compress : float
        Magnitude compression exponent of the input features.
    mask_max : float
        Upper bound of the magnitude mask (sigmoid scaled).

    Example
    -------
    >>> model = SpectralUNetSE(channels=(8, 16), bottleneck_dim=32)
    >>> wav = torch.randn(2, 8000)
    >>> enc = model.encode(wav, torch.tensor([1.0, 0.5]))
    >>> enc.bottleneck.shape
    torch.Size([2, 32, 32])
    >>> model.decode(enc).shape
    torch.Size([2, 8000])
    """

    def __init__(
        self,
        n_fft: int = 512,
        hop: int = 256,
        channels: tuple[int, ...] = (16, 32, 48, 64),
        kernel: tuple[int, int] = (3, 3),
        bottleneck_dim: int = 256,
        rnn_layers: int = 2,
        causal: bool = False,
        compress: float = 0.3,
        mask_max: float = 1.0,
    ):
        super().__init__()
        if not channels:
            raise ValueError("channels must list at least one encoder block")
        if bottleneck_dim % 2 and not causal:
            raise ValueError(f"bottleneck_dim must be even for the bidirectional GRU, got {bottleneck_dim}")
        self.stft_cfg = StftConfig(n_fft, hop)
        self.compress, self.mask_max, self.causal = compress, mask_max, causal
        freqs = [self.stft_cfg.bins]
        for _ in channels:
            freqs.append((freqs[-1] - 1) // 2 + 1)
        self.freqs = freqs
        cins = [1, *channels[:-1]]
        self.encoder_blocks = nn.ModuleList(
            _ConvBlock(cin, cout, kernel, 2, f, causal) for cin, cout, f in zip(cins, channels, freqs[1:])
        )
        flat = channels[-1] * freqs[-1]
        self.enc_proj = nn.Linear(flat, bottleneck_dim)
        hidden = bottleneck_dim if causal else bottleneck_dim // 2
        self.rnn = nn.GRU(bottleneck_dim, hidden, num_layers=rnn_layers, batch_first=True, bidirectional=not causal)
        self.dec_proj = nn.Linear(bottleneck_dim, flat)
        self.decoder_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i in reversed(range(len(channels))):
            cout = channels[i - 1] if i > 0 else channels[0]
            self.decoder_blocks.append(_ConvBlock(2 * channels[i], channels[i], kernel, 1, freqs[i + 1], causal))
            self.upsamplers.append(nn.ConvTranspose2d(channels[i], cout, (1, 3), stride=(1, 2), padding=(0, 1)))
        self.mask_conv = nn.Conv2d(channels[0], 1, (1, 1))

    # -- protocol ----------------------------------------------------------------------------
    def encoder_modules(self) -> list[nn.Module]:
        """Modules that make up the encoder (for freezing or snapshotting)."""
        return [self.encoder_blocks, self.enc_proj, self.rnn]

    def decoder_modules(self) -> list[nn.Module]:
        """Modules that make up the decoder."""
        return [self.dec_proj, self.decoder_blocks, self.upsamplers, self.mask_conv]

    @property
    def tap_names(self) -> list[str]:
        """Names of the encoder activations available as MAL taps."""
        return [f"enc{i + 1}" for i in range(len(self.encoder_blocks))] + ["bottleneck"]

    def encode(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> Encoding:
        """Run the encoder on ``[B, samples]`` waveforms with relative ``lengths``."""
        if wav.dim() == 3 and wav.shape[-1] == 1:
            wav = wav.squeeze(-1)
        if wav.dim() != 2:
            raise ValueError(f"SpectralUNetSE expects waveforms [batch, samples], got {tuple(wav.shape)}")
        if lengths is not None:  # whatever sits in the padding must not leak into valid frames
            wav = wav * length_mask(lengths, wav.shape[1], wav.shape[0], wav.device).to(wav.dtype)
        spec = stft(wav, self.stft_cfg)  # [B, F, T]
        B, _, T = spec.shape
        mask = frame_mask(lengths, wav.shape[1], T, self.stft_cfg.hop, B, wav.device)
        feats = spec.abs().clamp(min=1e-8).pow(self.compress)
        x = (feats * mask[:, None, :]).transpose(1, 2).unsqueeze(1)  # [B, 1, T, F]
        taps, skips = {}, []
        keep = mask[:, None, :, None].to(x.dtype)  # zero padded frames after every block
        for i, block in enumerate(self.encoder_blocks):
            x = block(x) * keep
            taps[f"enc{i + 1}"] = x
            skips.append(x)
        z = self.enc_proj(x.permute(0, 2, 1, 3).reshape(B, T, -1))
        n_valid = mask.sum(1)
        if lengths is not None and bool((n_valid < T).any()):
            packed = pack_padded_sequence(z, n_valid.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            z, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        else:
            z, _ = self.rnn(z)
        taps["bottleneck"] = z
        return Encoding(bottleneck=z, taps=taps, skips=skips, spec=spec, frame_mask=mask, num_samples=wav.shape[1])

    def decode(self, enc: Encoding) -> torch.Tensor:
        """Decoder: bottleneck + skips -> mask -> enhanced waveform ``[B, samples]``."""
        B, T, _ = enc.bottleneck.shape
        x = self.dec_proj(enc.bottleneck).reshape(B, T, enc.skips[-1].shape[1], -1).permute(0, 2, 1, 3)
        keep = enc.frame_mask[:, None, :, None].to(x.dtype)
        x = x * keep
        for block, up, skip in zip(self.decoder_blocks, self.upsamplers, reversed(enc.skips)):
            x = up(block(torch.cat([x, skip], dim=1))) * keep
        m = self.mask_max * torch.sigmoid(self.mask_conv(x)).squeeze(1).transpose(1, 2)  # [B, F, T]
        m = m * enc.frame_mask[:, None, :].to(m.dtype)
        return istft(enc.spec * m, self.stft_cfg, enc.num_samples)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Enhance ``[B, samples]`` waveforms."""
        return self.decode(self.encode(wav, lengths))
