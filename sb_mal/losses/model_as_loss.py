"""Model as Loss (MAL): the encoder of the enhancement model itself is the loss, for any model.

``L_mal = mean over taps t of mean |E_t(clean) - E_t(enhanced)|`` where ``E_t`` is an activation of
the model ("tap") computed on the loss's waveforms. Each tap's term is the mean over its valid
(unpadded) frames and all feature elements, so taps of different sizes weigh alike; the taps are
combined by their *mean* (optionally weighted: ``tap_weights``, normalised to sum to 1), so the
choice of taps and the loss weight (``lambda_mal``) are separate decisions: adding taps does not
scale the loss. (Before December 2026 the taps were summed, so four taps also meant four times the
weight; a summed configuration ``lambda, k taps`` equals ``lambda * k`` with the mean.)

Taps
    Module paths from ``model.named_modules()`` (``conv2``, ``blstm``, ``masknet.dual_mdl.0``...),
    captured with forward hooks; the forward pass is abandoned as soon as every tap has fired, so
    no decoder compute is spent on the loss. A tap whose output is a tuple or list (RNNs return
    ``(output, hidden)``) gives its first element; a ``PackedSequence`` is unpacked. Models with the
    encode protocol (:class:`sb_mal.models.SpectralUNetSE`: ``encode(wav, lengths)`` with named
    ``taps``) also accept their tap names (``bottleneck``, ``enc1`` ..), computed by ``encode``
    (the fast path; default tap ``bottleneck``).
Inputs
    The loss receives waveforms ``[B, T]``; ``input_fn`` turns them into the model's input:
    ``torch.unsqueeze(dim=-1)`` for SpeechBrain's FCN (``[B, T, 1]``), :class:`Log1pMagnitude` for
    spectral-mask models (log1p magnitude ``[B, frames, F]``, as SpeechBrain's spectral-mask
    recipes compute it). The model is called as ``model(x, lengths)`` when its ``forward`` has a
    ``lengths`` argument (as SpeechBrain's ``SpectralMaskEnhancement`` decides), else ``model(x)``;
    ``pass_lengths`` overrides the choice.
Padding
    Frames beyond each item's relative length are left out. Tap outputs are taken as batch-first
    with time on ``time_axis`` (1 by default: SpeechBrain's ``[B, T, ...]`` convention; give -1 for
    PyTorch's channels-first ``[B, C, T]``); item ``b`` has ``round(length_b * frames)`` valid frames.
    A ``[B, D]`` tap has no time axis and is compared whole.

Which weights define ``E`` (a decision the paper leaves open; docs/design.md, "Model as Loss"):

``encoder="snapshot"``
    a frozen copy of the model, taken at construction (``snapshot_now=True``) or by
    :meth:`ModelAsLoss.take_snapshot` (MALBrain does it when phase 2 starts). The copy is part of
    the loss's ``state_dict``, so it is checkpointed.
``encoder="live"``
    the current weights of the model being trained. They are read in place, as constants of the
    loss's graph (:func:`~sb_mal.losses.model_taps.constant_weights`: the weights' ``requires_grad``
    is off for the length of the loss's forward pass), so nothing is copied, the loss always sees
    the weights of the moment, and it can be called any number of times before ``backward()``
    (SpeechBrain's templates compute the cost twice per step: for the loss and for ``MetricStats``).

In both cases no gradient reaches the weights that define the loss (the snapshot is frozen; the
live weights enter detached), so the encoder cannot collapse to a constant to make the loss vanish;
only the enhanced signal receives gradient. ``E(clean)`` is computed without gradient. The loss
encoder runs in eval mode (no dropout; BatchNorm running statistics used and left untouched).

``train_encoder=False`` (the paper's frozen_fe variant) freezes the encoder part of the live model,
named by ``encoder_prefixes`` (module paths; the backbone's ``encoder_modules()`` by default for
models with the encode protocol), when the snapshot is taken, so only the rest learns.

Device and dtype follow the inputs (:class:`sb_mal.models.frozen.FrozenNetworks`), whether or not
the recipe lists the loss in ``modules``.

Use in a stock SpeechBrain recipe: see the README section "sb_mal's losses in SpeechBrain's own recipes".
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence

import torch
from speechbrain.utils.callchains import lengths_arg_exists
from torch import nn

from sb_mal.losses.model_taps import (
    Log1pMagnitude,
    ModelAsLossError,
    TapEncoder,
    constant_weights,
    describe,
    listing,
    loss_mode,
    tap_tensor,
    unwrap_model,
)
from sb_mal.losses.reconstruction import ReturnsTerms, check_waveforms, part, reduce
from sb_mal.models.frozen import FrozenNetworks

logger = logging.getLogger(__name__)

__all__ = ["Log1pMagnitude", "ModelAsLoss", "ModelAsLossError"]  # the first and last from model_taps


class ModelAsLoss(ReturnsTerms, FrozenNetworks):
    """L1 distance between a model's activations on clean and enhanced audio (module docstring).

    Arguments
    ---------
    model : nn.Module
        The enhancement model (any ``nn.Module``; a DDP wrapper is looked through).
    taps : str or sequence of str, optional
        Module paths (``model.named_modules()``) or, for encode-protocol models, their tap names.
        Default: ``["bottleneck"]`` for encode-protocol models; required otherwise.
    encoder : str
        ``"snapshot"`` (frozen copy) or ``"live"`` (the model's current weights).
    input_fn : callable, optional
        Maps the loss's waveforms ``[B, T]`` to the model's input (default: identity).
    pass_lengths : bool, optional
        Call ``model(x, lengths)`` (True) or ``model(x)`` (False); default: whether ``forward``
        has a ``lengths`` argument. Encode-protocol models always get the lengths.
    time_axis : int or mapping of tap -> int
        Time axis of the tap outputs (default 1, batch first).
    train_encoder : bool
        False freezes ``encoder_prefixes`` of the live model when the snapshot is taken (frozen_fe).
    encoder_prefixes : sequence of str, optional
        Module paths that make up the encoder (for ``train_encoder=False``).
    tap_weights : sequence or mapping of float, optional
        Relative weight of each tap (default: equal); normalised to sum to 1, so ``L_mal`` is a
        weighted mean of the per-tap terms whatever the number of taps.
    snapshot_now : bool or "first_call"
        With ``encoder="snapshot"``: take the snapshot at construction (True, e.g. for a
        pretrained model), at the first call (``"first_call"``: in a stock recipe, after the
        recipe has loaded or recovered the model's weights) or leave it to :meth:`take_snapshot`
        (False; MALBrain's phase 2).

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

    Any model, through forward hooks on module paths (here a waveform-in, waveform-out conv net
    that takes ``[B, T, 1]``):

    >>> from speechbrain.nnet.containers import Sequential
    >>> from speechbrain.nnet.CNN import Conv1d
    >>> fcn = Sequential(input_shape=[None, None, 1])
    >>> fcn.append(Conv1d, out_channels=8, kernel_size=9, layer_name="conv1")
    >>> fcn.append(torch.nn.LeakyReLU(0.3), layer_name="act1")
    >>> fcn.append(Conv1d, out_channels=1, kernel_size=9, layer_name="conv_out")
    >>> mal = ModelAsLoss(fcn, taps=["act1"], encoder="live", input_fn=lambda w: w.unsqueeze(-1))
    >>> mal(enhanced, clean, torch.tensor([1.0, 0.5]), reduction="batch").shape
    torch.Size([2])
    """

    def __init__(self, model: nn.Module, taps: str | Sequence[str] | None = None, encoder: str = "snapshot",
                 input_fn: Callable | None = None, *, pass_lengths: bool | None = None,
                 time_axis: int | Mapping[str, int] = 1, train_encoder: bool = True,
                 encoder_prefixes: Sequence[str] | None = None, snapshot_now: bool | str = True,
                 tap_weights: Sequence[float] | Mapping[str, float] | None = None):
        super().__init__()
        if encoder not in ("snapshot", "live"):
            raise ValueError(f"encoder must be 'snapshot' or 'live', got {encoder!r}")
        if snapshot_now not in (True, False, "first_call"):
            raise ValueError(f"snapshot_now must be True, False or 'first_call', got {snapshot_now!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"ModelAsLoss: model must be a torch.nn.Module, got {type(model).__name__}")
        if input_fn is not None and not callable(input_fn):
            raise TypeError(f"ModelAsLoss: input_fn must be callable, got {type(input_fn).__name__}")
        model = unwrap_model(model)
        self.model_name = type(model).__name__
        self.encoder = encoder
        self.taps, self.protocol = self._resolve_taps(model, taps)
        self.tap_weights = self._resolve_tap_weights(tap_weights)
        self.time_axis = time_axis
        if isinstance(input_fn, nn.Module) and not any(p.requires_grad for p in input_fn.parameters()):
            self.freeze("input_fn", input_fn)  # a fixed feature computation: follows the inputs' device
        else:  # a plain function, or part of a trained model (placed with that model)
            self.input_fn = input_fn
        self.pass_lengths = True if self.protocol else (lengths_arg_exists(model.forward) if pass_lengths is None
                                                        else bool(pass_lengths))
        self.train_encoder = bool(train_encoder)
        self.encoder_prefixes = self._resolve_prefixes(model, encoder_prefixes)
        self._live = [TapEncoder(model)]  # a list: not a registered submodule (no duplicate state)
        if encoder == "snapshot":
            self.freeze("snapshot", TapEncoder(copy.deepcopy(model)))  # in state_dict: checkpointed
            self.register_buffer("snapshot_taken", torch.tensor(False))
            self._snapshot_ready = False  # the buffer's value on the host: no device read per step
            self.register_load_state_dict_post_hook(_refresh_snapshot_flag)
            if snapshot_now is True:
                self.take_snapshot()
        self.snapshot_on_first_call = encoder == "snapshot" and snapshot_now == "first_call"

    # -- configuration ---------------------------------------------------------------------------
    @staticmethod
    def _resolve_taps(model: nn.Module, taps) -> tuple[list[str], bool]:
        name = type(model).__name__
        protocol = callable(getattr(model, "encode", None))
        protocol_taps = list(getattr(model, "tap_names", []) or [])
        modules = [n for n, _ in model.named_modules() if n]
        if taps is None:
            if protocol:
                return ["bottleneck"], True
            raise ValueError(f"ModelAsLoss: {name} has no encode() method, so give `taps`: module paths of its "
                             f"encoder from model.named_modules(), e.g. {listing(modules)}")
        taps = [taps] if isinstance(taps, str) else list(taps)
        if not taps or not all(isinstance(t, str) for t in taps):
            raise ValueError(f"ModelAsLoss: taps must be a non-empty list of names, got {taps!r}")
        if len(set(taps)) != len(taps):
            raise ValueError(f"ModelAsLoss: taps listed twice in {taps}")
        if protocol and (not protocol_taps or all(t in protocol_taps for t in taps)):
            return taps, True
        unknown = [t for t in taps if t not in modules]
        if unknown:
            offered = f"encoder taps {protocol_taps} or module paths " if protocol_taps else "module paths "
            raise ValueError(f"ModelAsLoss: tap(s) {unknown} not found in {name}; it offers {offered}"
                             f"{listing(modules)}")
        return taps, False

    def _resolve_tap_weights(self, weights) -> list[float]:
        """One weight per tap, normalised to sum to 1 (equal weights by default)."""
        if weights is None:
            raw = [1.0] * len(self.taps)
        elif isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(self.taps))
            if unknown:
                raise ValueError(f"ModelAsLoss: tap_weights for {unknown}, which are not among the taps {self.taps}")
            raw = [float(weights.get(t, 1.0)) for t in self.taps]
        else:
            raw = [float(w) for w in weights]
            if len(raw) != len(self.taps):
                raise ValueError(f"ModelAsLoss: {len(raw)} tap_weights for {len(self.taps)} taps {self.taps}")
        if any(not w >= 0 for w in raw) or sum(raw) <= 0:
            raise ValueError(f"ModelAsLoss: tap_weights must be >= 0 with a positive sum, got {raw}")
        total = sum(raw)
        return [w / total for w in raw]

    def _resolve_prefixes(self, model: nn.Module, prefixes) -> list[str]:
        modules = [n for n, _ in model.named_modules() if n]
        if prefixes is None:
            if self.protocol and hasattr(model, "encoder_modules"):
                ids = {id(m) for m in model.encoder_modules()}
                return [n for n, m in model.named_modules() if id(m) in ids]
            if not self.train_encoder:
                raise ValueError(f"ModelAsLoss: train_encoder=False (frozen_fe) on {self.model_name} needs "
                                 f"encoder_prefixes, the module paths of its encoder, e.g. {listing(modules)}")
            return []
        prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
        unknown = [p for p in prefixes if p not in modules]
        if unknown:
            raise ValueError(f"ModelAsLoss: encoder_prefixes {unknown} are not modules of {self.model_name}; "
                             f"it has {listing(modules)}")
        return prefixes

    def extra_repr(self) -> str:
        return (f"model={self.model_name}, taps={self.taps}, tap_weights={[round(w, 4) for w in self.tap_weights]}, "
                f"encoder={self.encoder!r}, "
                f"path={'encode' if self.protocol else 'hooks'}")

    # -- snapshot and frozen encoder ---------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str, taps: Sequence[str] | None = None, savedir: str | None = None,
                        run_opts: dict | None = None, trust_code: bool = False, **kwargs) -> ModelAsLoss:
        """A frozen MAL loss from a trained model: a run folder, a checkpoint, an exported folder, a
        SpeechBrain enhancement folder or a hub id (:func:`sb_mal.checkpoints.load_pretrained`).

        For a spectral-mask folder, ``input_fn`` defaults to the folder's own feature computation.
        ``run_opts`` is accepted for compatibility and not needed: the loss follows its inputs.
        ``trust_code`` lets a model folder call what is outside :data:`sb_mal.trust.ALLOWED`.
        """
        from sb_mal.checkpoints import load_pretrained

        del run_opts
        found = load_pretrained(source, savedir=savedir, trust_code=trust_code)
        if found.input_fn is not None:
            kwargs.setdefault("input_fn", found.input_fn)
        return cls(found.model, taps=taps, encoder="snapshot", snapshot_now=True, **kwargs)

    @property
    def model(self) -> nn.Module:
        """The model the loss was built on (for ``encoder="live"``, the one being trained)."""
        return self._live[0].model

    @property
    def ready(self) -> bool:
        """Whether the loss encoder is defined (always for live; after a snapshot otherwise)."""
        return self.encoder == "live" or self._snapshot_ready

    def take_snapshot(self, model: nn.Module | None = None) -> None:
        """Freeze a copy of ``model``'s current weights (default: the model given at construction)."""
        if self.encoder != "snapshot":
            raise RuntimeError("take_snapshot() only applies to encoder='snapshot'")
        source = unwrap_model(model if model is not None else self._live[0].model)
        self.snapshot.model.load_state_dict(source.state_dict())
        self.snapshot.requires_grad_(False).eval()
        for m in self.snapshot.modules():  # a deep copy on the GPU is not cuDNN's flat buffer: make it one, once
            if isinstance(m, nn.RNNBase):
                m.flatten_parameters()
        self.snapshot_taken.fill_(True)
        self._snapshot_ready = True
        if not self.train_encoder:
            self.freeze_encoder(source)
        logger.info("ModelAsLoss: encoder snapshot taken (%s)", self.model_name)

    def freeze_encoder(self, model: nn.Module | None = None) -> int:
        """Stop training the encoder part (``encoder_prefixes``) of the live model; returns the tensors frozen."""
        model = unwrap_model(model if model is not None else self._live[0].model)
        frozen = 0
        for prefix in self.encoder_prefixes:
            for p in model.get_submodule(prefix).parameters():
                if p.requires_grad:
                    p.requires_grad_(False)
                    frozen += 1
        return frozen

    # -- loss --------------------------------------------------------------------------------------
    def _tap_tensor(self, tap: str, output) -> torch.Tensor:
        tensor = tap_tensor(output)
        if tensor is None:
            raise ModelAsLossError(f"ModelAsLoss: tap {tap!r} of {self.model_name} produced a "
                                   f"{type(output).__name__}, not a tensor; choose a module that outputs a tensor "
                                   "(sb-mal taps lists them)")
        return tensor

    def _axis(self, tap: str) -> int:
        if isinstance(self.time_axis, Mapping):
            return int(self.time_axis.get(tap, 1))
        return int(self.time_axis)

    def _model_input(self, wav: torch.Tensor) -> torch.Tensor:
        if self.input_fn is None:
            return wav
        x = self.input_fn(wav)
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] != wav.shape[0]:
            raise ModelAsLossError(f"ModelAsLoss: input_fn returned {describe(x)} for waveforms of shape "
                                   f"{tuple(wav.shape)}; it must return {self.model_name}'s input with the batch "
                                   "first")
        return x

    def _features(self, wav, lengths):
        x = self._model_input(wav)
        if self.encoder == "snapshot":
            with loss_mode(self.snapshot):
                return self.snapshot(x, lengths, self)
        live = self._live[0]
        # the live weights enter as constants (no copy, cuDNN's flat RNN weights used as they are)
        with loss_mode(live.model), constant_weights(live.model):
            return live(x, lengths, self)

    def _flatten(self, tap: str, feats: torch.Tensor, lengths, protocol_mask):
        """``(feats as [B, frames, D], valid frames [B, frames] or None)``."""
        if self.protocol:
            axis, mask = (2 if feats.dim() == 4 else 1), protocol_mask
        else:
            if feats.dim() < 3:
                return feats.reshape(feats.shape[0], 1, -1), None
            axis = self._axis(tap) % feats.dim()
            if axis == 0:
                raise ModelAsLossError(f"ModelAsLoss: time_axis of tap {tap!r} cannot be the batch axis")
            mask = None
            if lengths is not None:
                frames = feats.shape[axis]
                valid = torch.round(lengths.to(feats.device).float() * frames).clamp(1, frames)
                mask = torch.arange(frames, device=feats.device)[None, :] < valid[:, None]
        feats = feats.movedim(axis, 1)
        return feats.reshape(feats.shape[0], feats.shape[1], -1), mask

    def forward(self, predictions, targets, length=None, reduction: str = "mean", terms: bool = False):
        if not self.ready and self.snapshot_on_first_call:
            self.take_snapshot()
        if not self.ready:
            raise RuntimeError("ModelAsLoss: no encoder snapshot yet; call take_snapshot() (MALBrain does at phase 2) "
                               "or construct with snapshot_now='first_call'")
        predictions, targets = check_waveforms(predictions, targets, "ModelAsLoss")
        if self.frozen_networks():  # the snapshot and/or a module input_fn
            predictions = self.follow(predictions)
        if self.encoder == "live":
            first = next(self._live[0].model.parameters(), None)
            if first is not None:
                predictions = predictions.to(first.dtype if first.is_floating_point() else predictions.dtype)
        targets = targets.to(predictions)
        with torch.no_grad():
            ref, _ = self._features(targets, length)
        est, protocol_mask = self._features(predictions, length)
        parts, per_item = {}, 0
        batch = predictions.shape[0]
        for name, weight, a, b in zip(self.taps, self.tap_weights, est, ref):
            if a.shape != b.shape or a.dim() == 0 or a.shape[0] != batch:
                raise ModelAsLossError(f"ModelAsLoss: tap {name!r} of {self.model_name} gave shapes {tuple(a.shape)} "
                                       f"and {tuple(b.shape)} for the enhanced and clean batches of {batch}; "
                                       "expected equal shapes with the batch first")
            a, mask = self._flatten(name, a, length, protocol_mask)
            b, _ = self._flatten(name, b.detach(), length, protocol_mask)
            diff = (a - b).abs()
            if mask is None:
                term = diff.flatten(1).mean(1)
            else:
                m = mask[:, :, None].to(diff.dtype)
                term = (diff * m).flatten(1).sum(1) / (mask.sum(1).clamp(min=1) * diff.shape[2])
            parts[f"mal_{name}"] = part(term)
            per_item = per_item + weight * term
        return (reduce(per_item, reduction), parts) if terms else reduce(per_item, reduction)


def _refresh_snapshot_flag(module: ModelAsLoss, incompatible_keys) -> None:
    """After a state dict is loaded: read the snapshot flag once, on the host."""
    module._snapshot_ready = bool(module.snapshot_taken)
