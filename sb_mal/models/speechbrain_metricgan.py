"""SpeechBrain's own MetricGAN+ modules behind sb_mal's generator / discriminator interfaces.

A SpeechBrain MetricGAN+ configuration names ``speechbrain.lobes.models.MetricGAN.EnhancementGenerator``
and ``MetricDiscriminator``. Naming the same classes as ``generator_class`` / ``discriminator_class``
in an sb_mal MetricGAN+ / OKD YAML builds them inside these adapters, so the configuration becomes
MetricGAN-OKD by changing the Brain and the generator count:

:class:`SpeechBrainGenerator`
    SpeechBrain's ``EnhancementGenerator`` (BLSTM 2 x 200, Linear 400-300-257, learnable sigmoid)
    as the mask network of a :class:`~sb_mal.models.metricgan.MaskGenerator`: log1p magnitude of a
    512-point Hamming STFT with a 256-sample hop (SpeechBrain's 32 ms / 16 ms at 16 kHz), the mask
    floored at ``min_mask`` (SpeechBrain's recipe: 0.05), noisy-phase resynthesis. SpeechBrain's
    class fixes its linear layers to 400/300/257, so ``n_fft`` must be 512 and ``hidden_size`` 200.
:class:`SpeechBrainDiscriminator`
    one SpeechBrain ``MetricDiscriminator`` per target metric (it has a single output), fed as
    SpeechBrain's recipe feeds it: ``[degraded, reference]`` stacked on the channel axis.

Both record their constructor arguments in ``config``, so runs export and load like sb_mal's own.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch
from torch import nn

from sb_mal.models.config import RecordsConfig

from sb_mal.models.metricgan import MaskGenerator, check_pair

__all__ = ["SpeechBrainDiscriminator", "SpeechBrainGenerator", "is_speechbrain_class"]


def is_speechbrain_class(factory, name: str) -> bool:
    """Whether ``factory`` (a class, or a ``!name:`` partial of one) is ``speechbrain.lobes.models.MetricGAN.<name>``.

    Example
    -------
    >>> from speechbrain.lobes.models.MetricGAN import EnhancementGenerator
    >>> is_speechbrain_class(functools.partial(EnhancementGenerator, hidden_size=200), "EnhancementGenerator")
    True
    """
    target = factory.func if isinstance(factory, functools.partial) else factory
    return (inspect.isclass(target) and target.__name__ == name
            and target.__module__ == "speechbrain.lobes.models.MetricGAN")


def factory_kwargs(factory) -> dict:
    """The keyword arguments a ``!name:`` partial carries (empty for a bare class)."""
    return dict(factory.keywords) if isinstance(factory, functools.partial) else {}


class SpeechBrainGenerator(MaskGenerator):
    """SpeechBrain's ``EnhancementGenerator`` as an sb_mal waveform-to-waveform generator.

    Arguments
    ---------
    n_fft, hop : int
        STFT (512 / 256 at 16 kHz; SpeechBrain's class needs 257 bins).
    hidden_size, num_layers, dropout
        Passed to ``EnhancementGenerator`` (hidden_size must be 200: its linear layers are fixed).
    min_mask : float
        Floor of the mask.

    Example
    -------
    >>> g = SpeechBrainGenerator(num_layers=1)
    >>> g(torch.randn(2, 8000), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 8000])
    >>> type(g.net).__module__, g.sigmoid is g.net.Learnable_sigmoid
    ('speechbrain.lobes.models.MetricGAN', True)
    """

    def __init__(self, n_fft: int = 512, hop: int = 256, hidden_size: int = 200, num_layers: int = 2,
                 dropout: float = 0.0, min_mask: float = 0.05):
        super().__init__()
        from speechbrain.lobes.models.MetricGAN import EnhancementGenerator

        if n_fft != 512 or hidden_size != 200:
            raise ValueError(f"SpeechBrain's EnhancementGenerator fixes its linear layers to 400-300-257, so it needs "
                             f"n_fft=512 and hidden_size=200 (got n_fft={n_fft}, hidden_size={hidden_size}); use "
                             "sb_mal.models.MetricGANGenerator for other sizes")
        self._init_stft(n_fft, hop, min_mask)
        self.net = EnhancementGenerator(input_size=self.bins, hidden_size=hidden_size, num_layers=num_layers,
                                        dropout=dropout)

    @property
    def sigmoid(self) -> nn.Module:
        """The learnable sigmoid whose slope the OKD Brain keeps bounded."""
        return self.net.Learnable_sigmoid

    def mask(self, feats: torch.Tensor, frame_valid: torch.Tensor | None = None) -> torch.Tensor:
        if frame_valid is None:
            rel = torch.ones(feats.shape[0], device=feats.device)
        else:
            rel = frame_valid.sum(1).to(feats.dtype) / feats.shape[1]
        mask = self.net(feats, rel)
        if mask.shape[1] < feats.shape[1]:  # SpeechBrain's LSTM unpacks to the longest valid length only
            mask = nn.functional.pad(mask, (0, 0, 0, feats.shape[1] - mask.shape[1]))
        return mask.clamp(min=self.min_mask)


class SpeechBrainDiscriminator(RecordsConfig, nn.Module):
    """One SpeechBrain ``MetricDiscriminator`` per target metric, behind ``D(reference, degraded) -> [B, N]``.

    Arguments
    ---------
    num_outputs : int
        Target metrics (one discriminator each).
    channels : sequence of int
        Channels of the four convolutions; SpeechBrain's class uses one ``base_channels`` for all.
    kernel_size : int
        Square convolution kernel (5).

    Example
    -------
    >>> d = SpeechBrainDiscriminator(num_outputs=2, channels=(4, 4, 4, 4))
    >>> d(torch.rand(3, 40, 257), torch.rand(3, 40, 257)).shape
    torch.Size([3, 2])
    """

    def __init__(self, num_outputs: int = 1, channels: Sequence[int] = (15, 15, 15, 15), kernel_size: int = 5,
                 lin_dims: Sequence[int] = (50, 10), negative_slope: float = 0.3):
        super().__init__()
        from speechbrain.lobes.models.MetricGAN import MetricDiscriminator as SBDiscriminator

        channels = list(channels)
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        if len(channels) != 4 or len(set(channels)) != 1:
            raise ValueError(f"SpeechBrain's MetricDiscriminator has four convolutions of one width (base_channels); "
                             f"got channels={channels}")
        if list(lin_dims) != [50, 10] or negative_slope != 0.3:
            raise ValueError("SpeechBrain's MetricDiscriminator fixes lin_dims (50, 10) and a LeakyReLU slope of 0.3; "
                             "use sb_mal.models.MetricDiscriminator for other sizes")
        self.num_outputs = num_outputs
        self.discriminators = nn.ModuleList(
            SBDiscriminator(kernel_size=(kernel_size, kernel_size), base_channels=channels[0])
            for _ in range(num_outputs))
        self.min_frames = 1 + 4 * (kernel_size - 1)

    def forward(self, reference: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, num_outputs]`` for ``[B, T, F]`` log1p magnitudes (T >= ``min_frames``)."""
        check_pair(reference, degraded, self.min_frames)
        x = torch.stack([degraded, reference], dim=1)  # SpeechBrain's order: degraded, then clean
        return torch.cat([d(x) for d in self.discriminators], dim=1)
