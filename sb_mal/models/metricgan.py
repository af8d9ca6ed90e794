"""MetricGAN+ generator and metric discriminator, every size from the constructor, N outputs.

Generator (Fu et al. 2021, as in MetricGAN-OKD): log1p STFT magnitude (512-point, 256 hop,
Hamming) -> (B)LSTM -> Linear + LeakyReLU -> Linear -> learnable sigmoid (``beta * sigmoid(a_f x)``
with one slope per frequency) -> mask, floored at ``min_mask``; the enhanced log1p magnitude is
``mask * log1p(|X|)``, resynthesised with the noisy phase. :class:`MetricGANGenerator` maps
waveforms to waveforms, so it trains in any sb_mal Brain and exports like the other models.

Discriminator: a metric surrogate on the stacked (reference, degraded) log1p magnitudes: BatchNorm,
4 spectral-norm Conv2d layers with LeakyReLU, global average pooling, 3 spectral-norm linear layers
to ``num_outputs`` scores. v2 of MetricGAN-OKD is one discriminator with N outputs;
:class:`MultiDiscriminator` is v1 (N single-output discriminators, same interface).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sb_mal.models.config import RecordsConfig
from torch.nn.utils.parametrizations import spectral_norm

from sb_mal.dsp import StftConfig, frame_mask, istft, length_mask, stft

__all__ = [
    "LearnableSigmoid",
    "MaskGenerator",
    "MetricDiscriminator",
    "MetricGANGenerator",
    "MultiDiscriminator",
    "log1p_magnitude",
]


def log1p_magnitude(spec: torch.Tensor) -> torch.Tensor:
    """``log1p(|X|)`` of a complex STFT ``[B, F, T]`` -> ``[B, T, F]`` (MetricGAN's feature)."""
    return torch.log1p(spec.abs()).transpose(1, 2)


def check_pair(reference: torch.Tensor, degraded: torch.Tensor, min_frames: int) -> None:
    """A discriminator's inputs: two ``[B, T, F]`` log1p magnitudes of one shape, ``T >= min_frames``."""
    if reference.shape != degraded.shape or reference.dim() != 3:
        raise ValueError(f"expected two [B, T, F] inputs of one shape, got {tuple(reference.shape)} and "
                         f"{tuple(degraded.shape)}")
    if reference.shape[1] < min_frames:
        raise ValueError(f"need at least {min_frames} frames, got {reference.shape[1]}")


class LearnableSigmoid(nn.Module):
    """``beta * sigmoid(slope * x)`` with one learnable slope per feature (init 1)."""

    def __init__(self, features: int, beta: float = 1.2):
        super().__init__()
        self.beta = beta
        self.slope = nn.Parameter(torch.ones(features))

    def forward(self, x):
        return self.beta * torch.sigmoid(self.slope * x)


class MaskGenerator(RecordsConfig, nn.Module):
    """Waveform-to-waveform frame of a MetricGAN generator; subclasses define :meth:`mask`.

    log1p STFT magnitude (Hamming window) -> ``mask(features, valid frames)`` -> masked log1p
    magnitude, resynthesised with the noisy phase. The OKD Brain uses :meth:`features`,
    :meth:`enhance_features` and ``forward(..., output="features")``; ``sigmoid.slope`` is the
    learnable sigmoid it keeps bounded.
    """

    def _init_stft(self, n_fft: int, hop: int, min_mask: float) -> None:
        self.stft_cfg = StftConfig(n_fft, hop, window="hamming")
        self.bins, self.min_mask = n_fft // 2 + 1, min_mask

    def features(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        """``(log1p magnitude [B, T, F], complex STFT [B, F, T], frame mask [B, T])`` of waveforms."""
        if wav.dim() != 2:
            raise ValueError(f"{type(self).__name__} expects waveforms [batch, samples], got {tuple(wav.shape)}")
        if lengths is not None:
            wav = wav * length_mask(lengths, wav.shape[1], wav.shape[0], wav.device).to(wav.dtype)
        spec = stft(wav, self.stft_cfg)
        mask = frame_mask(lengths, wav.shape[1], spec.shape[-1], self.stft_cfg.hop, wav.shape[0], wav.device)
        return log1p_magnitude(spec), spec, mask

    def mask(self, feats: torch.Tensor, frame_valid: torch.Tensor | None = None) -> torch.Tensor:
        """The mask ``[B, T, F]`` for log1p-magnitude features."""
        raise NotImplementedError

    def enhance_features(self, wav, lengths=None):
        """``(enhanced log1p magnitude [B, T, F], noisy STFT, frame mask)`` (what the discriminator scores)."""
        feats, spec, valid = self.features(wav, lengths)
        enhanced = self.mask(feats, valid) * feats * valid[:, :, None].to(feats.dtype)
        return enhanced, spec, valid

    def resynthesize(self, enhanced_log1p: torch.Tensor, spec: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Waveform from an enhanced log1p magnitude and the noisy phase."""
        mag = torch.expm1(enhanced_log1p).transpose(1, 2)  # [B, F, T]
        phase = spec / spec.abs().clamp(min=1e-8)
        return istft(mag * phase, self.stft_cfg, num_samples)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None, output: str = "wav"):
        """Enhance ``[B, samples]`` waveforms.

        ``output="features"`` returns :meth:`enhance_features` instead (through ``forward``, so that
        a DDP wrapper synchronises the gradients).
        """
        enhanced, spec, valid = self.enhance_features(wav, lengths)
        if output == "features":
            return enhanced, spec, valid
        if output != "wav":
            raise ValueError(f"output must be 'wav' or 'features', got {output!r}")
        return self.resynthesize(enhanced, spec, wav.shape[1])


class MetricGANGenerator(MaskGenerator):
    """MetricGAN+ mask generator on waveforms.

    Arguments
    ---------
    n_fft, hop : int
        STFT (default 512 / 256 at 16 kHz).
    hidden_size, num_layers : int
        LSTM size (200, 2).
    lin_dim : int
        Width of the hidden linear layer (300).
    causal : bool
        Unidirectional LSTM (streamable).
    dropout : float
        LSTM dropout between layers.
    min_mask : float
        Floor of the mask (0.05).
    beta : float
        Upper bound of the learnable sigmoid (1.2).

    Example
    -------
    >>> g = MetricGANGenerator(hidden_size=16, num_layers=1, lin_dim=20)
    >>> wav = torch.randn(2, 8000)
    >>> g(wav, torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 8000])
    """

    def __init__(self, n_fft: int = 512, hop: int = 256, hidden_size: int = 200, num_layers: int = 2,
                 lin_dim: int = 300, causal: bool = False, dropout: float = 0.0, min_mask: float = 0.05,
                 beta: float = 1.2):
        super().__init__()
        self._init_stft(n_fft, hop, min_mask)
        bins = self.bins
        self.lstm = nn.LSTM(bins, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=not causal,
                            dropout=dropout if num_layers > 1 else 0.0)
        out = hidden_size * (1 if causal else 2)
        self.linear1 = nn.Linear(out, lin_dim)
        self.act = nn.LeakyReLU(0.3)
        self.linear2 = nn.Linear(lin_dim, bins)
        self.sigmoid = LearnableSigmoid(bins, beta)
        for name, p in self.lstm.named_parameters():
            if "weight_ih" in name:
                nn.init.xavier_uniform_(p)
            elif "weight_hh" in name:
                nn.init.orthogonal_(p)
            elif "bias" in name:
                nn.init.zeros_(p)
        for lin in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def mask(self, feats: torch.Tensor, frame_valid: torch.Tensor | None = None) -> torch.Tensor:
        """The mask ``[B, T, F]`` for log1p-magnitude features."""
        if frame_valid is not None and not bool(frame_valid.all()):
            n = frame_valid.sum(1)
            packed = nn.utils.rnn.pack_padded_sequence(feats, n.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=feats.shape[1])
        else:
            out, _ = self.lstm(feats)
        m = self.sigmoid(self.linear2(self.act(self.linear1(out))))
        return m.clamp(min=self.min_mask)


class MetricDiscriminator(RecordsConfig, nn.Module):
    """Metric surrogate ``D(reference, degraded) -> [B, num_outputs]`` on log1p magnitudes.

    Arguments
    ---------
    num_outputs : int
        Scores predicted (one per target metric; MetricGAN-OKD v2).
    channels : sequence of int
        Output channels of the 4 conv layers (MetricGAN-OKD: 16, 32, 64, 128; SpeechBrain: 15 x 4).
    kernel_size : int
        Convolution kernel (5).
    lin_dims : sequence of int
        Hidden linear widths (50, 10).

    Example
    -------
    >>> d = MetricDiscriminator(num_outputs=2, channels=(4, 4, 4, 4))
    >>> ref, deg = torch.rand(3, 40, 257), torch.rand(3, 40, 257)
    >>> d(ref, deg).shape
    torch.Size([3, 2])
    """

    def __init__(self, num_outputs: int = 1, channels: Sequence[int] = (16, 32, 64, 128), kernel_size: int = 5,
                 lin_dims: Sequence[int] = (50, 10), negative_slope: float = 0.3):
        super().__init__()
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        self.num_outputs = num_outputs
        self.norm = nn.BatchNorm2d(2, momentum=0.01)
        layers, cin = [], 2
        for cout in channels:
            layers += [spectral_norm(nn.Conv2d(cin, cout, kernel_size)), nn.LeakyReLU(negative_slope)]
            cin = cout
        self.convs = nn.Sequential(*layers)
        lin, width = [], cin
        for d in lin_dims:
            lin += [spectral_norm(nn.Linear(width, d)), nn.LeakyReLU(negative_slope)]
            width = d
        lin.append(spectral_norm(nn.Linear(width, num_outputs)))
        self.head = nn.Sequential(*lin)
        self.min_frames = 1 + len(channels) * (kernel_size - 1)

    def forward(self, reference: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, num_outputs]`` for ``[B, T, F]`` log1p magnitudes (T >= ``min_frames``)."""
        check_pair(reference, degraded, self.min_frames)
        x = self.norm(torch.stack([reference, degraded], dim=1))
        x = self.convs(x).mean(dim=(2, 3))
        return self.head(x)


class MultiDiscriminator(RecordsConfig, nn.Module):
    """MetricGAN-OKD v1: N single-output discriminators behind the interface of one N-output D.

    Example
    -------
    >>> d = MultiDiscriminator(num_outputs=3, channels=(4, 4, 4, 4))
    >>> d(torch.rand(2, 30, 65), torch.rand(2, 30, 65)).shape
    torch.Size([2, 3])
    """

    def __init__(self, num_outputs: int = 2, **kwargs):
        super().__init__()
        self.num_outputs = num_outputs
        self.discriminators = nn.ModuleList(MetricDiscriminator(1, **kwargs) for _ in range(num_outputs))
        self.min_frames = self.discriminators[0].min_frames

    def forward(self, reference: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        return torch.cat([d(reference, degraded) for d in self.discriminators], dim=1)
