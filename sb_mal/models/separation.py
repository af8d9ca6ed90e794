"""Small magnitude-mask U-Nets for source separation: the capacity ladder P1..P5.

The codec-approximation paper trains five U-Nets "of increasing capacity" without giving their
sizes; its sample paths hint at (depth, width) pairs. Ours vary the same two things, depth (number
of stride-2 levels) and base width (channels of the first level, doubled at every level):

=====  =====  ==========  ================
name   depth  base width  parameters
=====  =====  ==========  ================
P1     1      4           see ``LADDER``
P2     2      4
P3     2      8
P4     3      8
P5     4      16
=====  =====  ==========  ================

(:func:`ladder_table` prints the parameter counts; the README lists them.)

Signal path: waveform -> STFT (n_fft 1024, hop 256 by default) -> log1p magnitude -> U-Net over
(frequency, time) with 3x3 convolutions, stride 2 in frequency and time at every level, BatchNorm and
LeakyReLU, transposed convolutions and skip connections -> sigmoid mask -> mask x mixture STFT
(mixture phase) -> iSTFT. Padded frames of shorter items in a batch are zeroed before and after the
network, so an item's output does not depend on what it was batched with (up to BatchNorm's batch
statistics in training).

Example
-------
>>> net = SeparationUNet.from_capacity("P2")
>>> wav = torch.randn(2, 16000)
>>> net(wav, torch.tensor([1.0, 0.5])).shape
torch.Size([2, 16000])
>>> [n for n, _ in sorted(LADDER.items())]
['P1', 'P2', 'P3', 'P4', 'P5']
"""

from __future__ import annotations

import torch
from torch import nn

from sb_mal.models.config import RecordsConfig

from sb_mal.dsp import StftConfig, frame_mask, istft, stft

__all__ = ["LADDER", "SeparationUNet", "ladder_table"]

#: capacity name -> (depth, base width)
LADDER: dict[str, tuple[int, int]] = {"P1": (1, 4), "P2": (2, 4), "P3": (2, 8), "P4": (3, 8), "P5": (4, 16)}


def _block(cin: int, cout: int, down: bool) -> nn.Sequential:
    conv = (nn.Conv2d(cin, cout, 3, stride=2, padding=1) if down
            else nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1))
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


class SeparationUNet(RecordsConfig, nn.Module):
    """Magnitude-mask U-Net separator (see the module docstring).

    Arguments
    ---------
    depth : int
        Number of stride-2 encoder levels (>= 1).
    width : int
        Channels of the first level; level ``k`` has ``width * 2**k``.
    n_fft, hop : int
        STFT of the mixture.
    mask_floor : float
        Lower bound of the mask (0: none).
    """

    def __init__(self, depth: int = 2, width: int = 8, n_fft: int = 1024, hop: int = 256, mask_floor: float = 0.0):
        super().__init__()
        if int(depth) < 1 or int(width) < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        if not 0.0 <= float(mask_floor) < 1.0:
            raise ValueError(f"mask_floor must be in [0, 1), got {mask_floor}")
        self.stft_cfg = StftConfig(n_fft, hop)
        self.mask_floor = float(mask_floor)
        chans = [1] + [width * 2**k for k in range(depth)]
        self.down = nn.ModuleList(_block(chans[k], chans[k + 1], True) for k in range(depth))
        # decoder level k takes the deeper output (chans[k+1]) plus, except at the bottom, the skip (chans[k+1])
        self.up = nn.ModuleList(
            _block(chans[k + 1] * (1 if k == depth - 1 else 2), chans[k] if k else width, False) for k in range(depth)
        )
        self.head = nn.Conv2d(width + 1, 1, 1)  # last decoder output + the input magnitude -> mask logits

    @classmethod
    def from_capacity(cls, name: str, **kwargs) -> SeparationUNet:
        """The ladder network ``name`` (``"P1"`` .. ``"P5"``); ``kwargs`` set the STFT and mask floor."""
        if name not in LADDER:
            raise ValueError(f"unknown capacity {name!r}; choose from {sorted(LADDER)}")
        depth, width = LADDER[name]
        return cls(depth=depth, width=width, **kwargs)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Separated source ``[B, T]`` from mixtures ``[B, T]`` (relative ``lengths``)."""
        if wav.dim() != 2:
            raise ValueError(f"SeparationUNet expects [batch, samples], got shape {tuple(wav.shape)}")
        samples = wav.shape[1]
        spec = stft(wav, self.stft_cfg)  # [B, F, T]
        valid = frame_mask(lengths, samples, spec.shape[2], self.stft_cfg.hop, wav.shape[0], wav.device)
        mag = torch.log1p(spec.abs()) * valid[:, None, :]
        x = mag[:, None]  # [B, 1, F, T]
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        for k in reversed(range(len(self.up))):
            if k != len(self.up) - 1:  # a transposed conv may overshoot an odd size by one: crop to the skip
                x = torch.cat((x[:, :, : skips[k].shape[2], : skips[k].shape[3]], skips[k]), dim=1)
            x = self.up[k](x)
        x = x[:, :, : mag.shape[1], : mag.shape[2]]
        x = nn.functional.pad(x, (0, mag.shape[2] - x.shape[3], 0, mag.shape[1] - x.shape[2]))
        mask = torch.sigmoid(self.head(torch.cat((x, mag[:, None]), dim=1)))[:, 0]
        if self.mask_floor:
            mask = self.mask_floor + (1 - self.mask_floor) * mask
        out = istft(spec * (mask * valid[:, None, :]), self.stft_cfg, samples)
        return out.to(wav.dtype)


def ladder_table(**kwargs) -> list[dict]:
    """``[{"name", "depth", "width", "parameters"}]`` for P1..P5 (``kwargs`` as for the constructor).

    Example
    -------
    >>> rows = ladder_table()
    >>> all(a["parameters"] < b["parameters"] for a, b in zip(rows, rows[1:]))
    True
    """
    rows = []
    for name, (depth, width) in sorted(LADDER.items()):
        net = SeparationUNet(depth, width, **kwargs)
        rows.append({"name": name, "depth": depth, "width": width,
                     "parameters": sum(p.numel() for p in net.parameters())})
    return rows
