"""Model as Loss (MAL): the encoder of the enhancement model itself is the loss.

``L_mal = sum over taps t of mean |E_t(clean) - E_t(enhanced)|`` where ``E`` is the encoder of an
encoder-decoder model (anything with ``encode(wav, lengths) -> Encoding``, see
:class:`sb_mal.models.SpectralUNetSE`). Each tap's term is the mean over its valid (unpadded)
frames and feature elements, so taps of different sizes weigh alike.

Which weights define ``E`` (a design decision the paper leaves open; see ARCHITECTURE.md):

``encoder="snapshot"``
    a frozen copy of the model, taken by :meth:`ModelAsLoss.take_snapshot` (MALBrain does this at
    the end of phase 1). The copy is part of the loss's ``state_dict``, so it is checkpointed.
``encoder="live"``
    the current weights of the model being trained, re-read at every call.

In both cases the loss never sends gradient into the weights that define it: the loss encoder is a
separate module with ``requires_grad=False`` (for ``live`` a mirror whose weights are copied from
the model before every call, a few milliseconds), so only the enhanced signal receives gradient. Without that, the
encoder could collapse to a constant and make the loss zero. ``E(clean)`` is computed without
gradient. The loss encoder always runs in eval mode (no dropout; running statistics untouched).

Use in a stock SpeechBrain recipe (waveform-domain ``compute_cost``), with the live encoder of a
model that follows the encode protocol::

    compute_cost: !new:sb_mal.losses.ModelAsLoss
        model: !ref <model>
        encoder: live

or with the frozen encoder of a model trained and exported earlier::

    compute_cost: !apply:sb_mal.losses.ModelAsLoss.from_pretrained [my_exported_model]
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from torch import nn

from sb_mal.losses.reconstruction import check_waveforms, reduce

logger = logging.getLogger(__name__)

__all__ = ["ModelAsLoss"]


class _Taps(nn.Module):
    """Wraps a model so that ``forward`` returns the requested encoder taps and the frame mask."""

    def __init__(self, model: nn.Module, taps: Sequence[str]):
        super().__init__()
        self.model = model
        self.taps = list(taps)

    def forward(self, wav, lengths):
        enc = self.model.encode(wav, lengths)
        missing = [t for t in self.taps if t not in enc.taps]
        if missing:
            raise KeyError(f"encoder taps {missing} not available; the model offers {sorted(enc.taps)}")
        return [enc.taps[t] for t in self.taps], enc.frame_mask


def _tap_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-item mean |a - b| over valid frames; ``a``/``b`` are [B, T, D] or [B, C, T, F]."""
    diff = (a - b).abs()
    if diff.dim() == 3:  # [B, T, D]
        m = mask[:, :, None].to(diff.dtype)
        per_frame = diff.shape[2]
    elif diff.dim() == 4:  # [B, C, T, F]
        m = mask[:, None, :, None].to(diff.dtype)
        per_frame = diff.shape[1] * diff.shape[3]
    else:
        raise ValueError(f"encoder taps must be [B, T, D] or [B, C, T, F], got {tuple(diff.shape)}")
    return (diff * m).flatten(1).sum(1) / (mask.sum(1).clamp(min=1) * per_frame)


class ModelAsLoss(nn.Module):
    """L1 distance between encoder features of clean and enhanced audio (see module docstring).

    Arguments
    ---------
    model : nn.Module
        The enhancement model (encode/decode protocol).
    taps : sequence of str
        Encoder activations to compare (default: the bottleneck; the backbone also offers
        ``enc1`` .. ``encN``).
    encoder : str
        ``"snapshot"`` (frozen copy) or ``"live"`` (the model's current weights).
    snapshot_now : bool
        With ``encoder="snapshot"``: take the snapshot at construction (True, e.g. for a
        pretrained model) or leave it to :meth:`take_snapshot` (False; MALBrain's phase 2).

    Example
    -------
    >>> from sb_mal.models import SpectralUNetSE
    >>> model = SpectralUNetSE(channels=(8, 16), bottleneck_dim=32, rnn_layers=1)
    >>> mal = ModelAsLoss(model, encoder="live")
    >>> clean = torch.randn(2, 8000)
    >>> float(mal(clean, clean))
    0.0
    >>> enhanced = (clean + 0.1 * torch.randn(2, 8000)).requires_grad_(True)
    >>> mal(enhanced, clean).backward()
    >>> enhanced.grad.abs().sum() > 0, all(p.grad is None for p in model.parameters())
    (tensor(True), True)
    """

    def __init__(self, model: nn.Module, taps: Sequence[str] = ("bottleneck",), encoder: str = "snapshot",
                 snapshot_now: bool = True):
        super().__init__()
        if encoder not in ("snapshot", "live"):
            raise ValueError(f"encoder must be 'snapshot' or 'live', got {encoder!r}")
        if not hasattr(model, "encode"):
            raise TypeError(f"{type(model).__name__} has no encode(wav, lengths) method; ModelAsLoss needs the "
                            "encoder-decoder protocol (see sb_mal.models.SpectralUNetSE)")
        if isinstance(taps, str):
            taps = [taps]
        if not taps:
            raise ValueError("give at least one encoder tap")
        self.encoder = encoder
        self.taps = list(taps)
        self._live = [_Taps(model, self.taps)]  # lists: not registered submodules (no duplicate state)
        frozen_copy = _Taps(copy.deepcopy(model), self.taps)
        frozen_copy.requires_grad_(False).eval()
        if encoder == "snapshot":
            self.snapshot = frozen_copy  # part of state_dict: checkpointed
            self.register_buffer("snapshot_taken", torch.tensor(bool(snapshot_now)))
        else:
            self._mirror = [frozen_copy]  # refreshed from the live weights at every call
        self.last_terms: dict[str, float] = {}

    @classmethod
    def from_pretrained(cls, source: str, taps: Sequence[str] = ("bottleneck",), savedir: str | None = None,
                        run_opts: dict | None = None) -> ModelAsLoss:
        """A frozen MAL loss from an exported model folder or hub id (``sb-mal export`` output)."""
        from sb_mal.inference import Enhancer

        enhancer = Enhancer.from_hparams(source=source, savedir=savedir, run_opts=run_opts or {})
        return cls(enhancer.mods.enhance_model, taps=taps, encoder="snapshot", snapshot_now=True)

    # -- snapshot management ---------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether the loss encoder is defined (always for live; after a snapshot otherwise)."""
        return self.encoder == "live" or bool(self.snapshot_taken)

    def take_snapshot(self, model: nn.Module | None = None) -> None:
        """Freeze a copy of ``model``'s current weights (default: the model given at construction)."""
        if self.encoder != "snapshot":
            raise RuntimeError("take_snapshot() only applies to encoder='snapshot'")
        source = model if model is not None else self._live[0].model
        source = source.module if hasattr(source, "module") and not hasattr(source, "encode") else source
        self.snapshot.model.load_state_dict(source.state_dict())
        self.snapshot.requires_grad_(False).eval()
        self.snapshot_taken.fill_(True)
        logger.info("ModelAsLoss: encoder snapshot taken")

    def train(self, mode: bool = True):
        """The loss encoder stays in eval mode whatever the Brain asks."""
        super().train(mode)
        if self.encoder == "snapshot":
            self.snapshot.eval()
        return self

    # -- loss ------------------------------------------------------------------------------------
    def _sync_mirror(self) -> _Taps:
        """Copy the live model's current weights into the frozen mirror (no autograd link)."""
        mirror, live = self._mirror[0], self._live[0]
        with torch.no_grad():
            for dst, src in zip(mirror.parameters(), live.parameters()):
                dst.copy_(src)
            for dst, src in zip(mirror.buffers(), live.buffers()):
                dst.copy_(src)
        return mirror

    def _features(self, wav, lengths, grad: bool):
        module = self.snapshot if self.encoder == "snapshot" else self._mirror[0]
        with torch.set_grad_enabled(grad):
            return module(wav, lengths)

    def _apply(self, fn, *args, **kwargs):
        """Move the (unregistered) live mirror along with the loss (``.to(device)``)."""
        super()._apply(fn, *args, **kwargs)
        if self.encoder == "live":
            self._mirror[0]._apply(fn, *args, **kwargs)
        return self

    def forward(self, predictions, targets, length=None, reduction: str = "mean"):
        if not self.ready:
            raise RuntimeError("ModelAsLoss: no encoder snapshot yet; call take_snapshot() (MALBrain does at phase 2)")
        predictions, targets = check_waveforms(predictions, targets, "ModelAsLoss")
        if self.encoder == "live":
            self._sync_mirror()
        with torch.no_grad():
            ref, _ = self._features(targets, length, grad=False)
        est, mask = self._features(predictions, length, grad=True)
        per_item = 0
        self.last_terms = {}
        for name, a, b in zip(self.taps, est, ref):
            term = _tap_l1(a, b.detach(), mask)
            self.last_terms[f"mal_{name}"] = float(term.detach().mean())
            per_item = per_item + term
        return reduce(per_item, reduction)
