"""How far a codec-approximation network is from its codec, in its own training domain.

:func:`imitation_l1` is the training objective of the codec recipe (``CodecNetBrain``) and the
reference point of its evaluation: the network's L1 to the coded signal beside the **identity
map**'s (a network that returns its input unchanged), in the domain of the network's ``fit_loss``.
:func:`imitate` gives the network's imitation as waveforms (either network type).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sb_mal.models.codec_net import masked_l1

__all__ = ["imitate", "imitation_l1"]


def _check_net(codec_net) -> None:
    for attr in ("prepare", "out_min", "fit_loss"):
        if not hasattr(codec_net, attr):
            raise TypeError(f"codec_net must be a SpectralCodecNet or TimeCodecNet; {type(codec_net).__name__} has "
                            f"no {attr!r}")


def imitation_l1(codec_net: torch.nn.Module, original: torch.Tensor, coded: torch.Tensor,
                 lengths: torch.Tensor | None = None, forward: Callable | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item ``(network L1, identity L1)`` ``[B]`` in the network's training domain.

    The network L1 is exactly ``codec_net.fit_loss(original, coded, lengths)``; the identity L1
    is the same distance with the network replaced by the identity map (its prepared input).

    Arguments
    ---------
    codec_net : SpectralCodecNet or TimeCodecNet
        Provides ``prepare`` (and the forward pass unless ``forward`` is given).
    original, coded : torch.Tensor
        ``[B, samples]`` waveforms: network input and codec output.
    lengths : torch.Tensor, optional
        Relative lengths ``[B]``; padding does not count.
    forward : callable, optional
        What runs the network (e.g. its DDP wrapper); default ``codec_net`` itself.

    Example
    -------
    >>> from sb_mal.models.codec_net import SpectralCodecNet
    >>> net = SpectralCodecNet(filters=4, levels=2).eval()
    >>> x = torch.randn(2, 8000)
    >>> net_l1, identity = imitation_l1(net, x, 0.5 * x, torch.tensor([1.0, 0.5]))
    >>> bool(torch.allclose(net_l1, net.fit_loss(x, 0.5 * x, torch.tensor([1.0, 0.5]))))
    True
    >>> float(imitation_l1(net, x, x)[1].max())  # the identity map is perfect when nothing is coded
    0.0
    """
    net_l1, identity, _ = _imitation(codec_net, original, coded, lengths, forward)
    return net_l1, identity


def _imitation(codec_net, original, coded, lengths=None, forward=None):
    """``(network L1, identity L1, network output waveform-maker)`` from one forward pass."""
    _check_net(codec_net)
    if original.shape != coded.shape or original.dim() != 2:
        raise ValueError(f"original and coded must be [batch, samples] of the same shape, got {tuple(original.shape)} "
                         f"and {tuple(coded.shape)}")
    x, scale, valid = codec_net.prepare(original, lengths)
    target = codec_net.prepare(coded, lengths, scale=scale)[0].clamp(codec_net.out_min, 1.0)
    out = (forward or codec_net)(x, valid)

    def waveform():  # what imitate() returns, without a second pass
        return codec_net.to_waveform(out, scale, original) if hasattr(codec_net, "to_waveform") else out

    return masked_l1(out, target, valid), masked_l1(x, target, valid), waveform


def imitate(codec_net: torch.nn.Module, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The network's imitation of the codec as waveforms ``[B, samples]`` (either network type).

    Example
    -------
    >>> from sb_mal.models.codec_net import TimeCodecNet
    >>> imitate(TimeCodecNet(filters=2, levels=2), torch.randn(1, 1000)).shape
    torch.Size([1, 1000])
    """
    _check_net(codec_net)
    if hasattr(codec_net, "imitate"):
        return codec_net.imitate(wav, lengths)
    x, _, valid = codec_net.prepare(wav, lengths)
    return codec_net(x, valid)
