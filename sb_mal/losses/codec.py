"""Codec-approximation loss (Ananthabhotla, Ewert & Paradiso, MM'19 / 2020): a frozen network that
imitates MP3 coding is the loss.

::

    L = la * base(x, x_hat)                                 base term: waveform L1 or magnitude L1
      + lb * L1(C(S), C(S_hat))                             prediction term (codec-imitation outputs)
      + lc * sum_m lm * L1(phi_m(S), phi_m(S_hat))          feature term (codec-net activations)

``x``/``x_hat`` are the target and predicted waveforms; the base term is their waveform L1
(``base="waveform"``, the default, logged as ``wave_l1``) or the L1 between their linear magnitude
spectrograms (``base="magnitude"``, :class:`~sb_mal.losses.MagnitudeL1` at n_fft 1024 / hop 256,
logged as ``mag_l1``; the paper's baseline loss, so a codec arm with this base differs from that
baseline by the codec terms only), or any loss module with SpeechBrain's signature (``base``); ``S``/``S_hat`` their normalised magnitude
spectrograms (:meth:`sb_mal.models.codec_net.SpectralCodecNet.prepare`, n_fft 1024 / hop 512; the
prediction is normalised with the *target's* scale, so a level error is not hidden); ``C`` the
frozen codec net and ``phi_m`` its layer activations. With a
:class:`~sb_mal.models.codec_net.TimeCodecNet` the prediction and feature terms are
waveform-domain: ``S``/``S_hat`` are the (unnormalised) waveforms themselves and ``C`` the
time-domain network.

Every L1 is a mean over the valid (unpadded) elements of each item, so each layer term is
normalised by its size and layers of different sizes weigh alike before ``lm``.

Layer sets, the loss-layer configurations "Model A-F" of the 2020 paper (its figure shows six
encoder layers, a bottleneck and six decoder layers; our nets have ``L`` encoder layers, the last
being the bottleneck, and ``L`` decoder layers ``dec1`` (deepest) .. ``decL`` (the output of the
spectral net)). The encoder splits into a shallow half ``enc1..enc{ceil(L/2)}`` and a deep rest,
the decoder mirrors it by resolution. For the default spectral net (``L = 5``), ``LAYER_SETS``:

====  ===========================  ===================================
set   paper's description          layers (L = 5)
====  ===========================  ===================================
A     all encoder layers           enc1 enc2 enc3 enc4 enc5
B     all decoder layers           dec1 dec2 dec3 dec4 dec5
C     deepest, around bottleneck   enc4 enc5 dec1 dec2
D     shallow, both sides          enc1 enc2 enc3 dec3 dec4 dec5
E     deeper encoder layers        enc4 enc5
F     shallow encoder (~3)         enc1 enc2 enc3   (default)
====  ===========================  ===================================

(for the 8-level time net: F = enc1-4, E = enc5-8, C = enc5-8 + dec1-4, D = enc1-4 + dec5-8).
The paper's listening test preferred F (0.92) and D (0.88); F is also the cheapest (only the first
three encoder layers run when ``lb == 0``).

The codec net is frozen *in place* (``requires_grad=False``) and always runs in eval mode
(BatchNorm running statistics and dropout never change, whatever ``.train()`` the Brain calls);
gradient reaches the prediction only. It follows the predictions to their device and computes in
float32 (:class:`sb_mal.models.frozen.FrozenNetworks`).

Stock SpeechBrain recipe::

    codec_net: !new:sb_mal.models.codec_net.SpectralCodecNet
    compute_cost: !new:sb_mal.losses.CodecApproximationLoss
        codec_net: !ref <codec_net>

or, from a trained codec-net run: ``!apply:sb_mal.losses.CodecApproximationLoss.from_pretrained [<run>]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sb_mal.losses.reconstruction import MagnitudeL1, ReturnsTerms, WaveformL1, check_waveforms, part, reduce
from sb_mal.models.codec_net import masked_l1, valid_at_level
from sb_mal.models.frozen import FrozenNetworks

logger = logging.getLogger(__name__)

__all__ = ["LAYER_SETS", "CodecApproximationLoss", "layer_set"]

_SET_NAMES = ("A", "B", "C", "D", "E", "F")

#: ``base`` name -> (logged term name, loss factory)
BASE_TERMS = {"waveform": ("wave_l1", WaveformL1), "magnitude": ("mag_l1", MagnitudeL1)}


def layer_set(name: str, levels: int = 5) -> list[str]:
    """Layer names of loss configuration ``name`` (A-F) for a codec net with ``levels`` levels.

    Example
    -------
    >>> layer_set("F"), layer_set("c")
    (['enc1', 'enc2', 'enc3'], ['enc4', 'enc5', 'dec1', 'dec2'])
    >>> layer_set("F", levels=8)
    ['enc1', 'enc2', 'enc3', 'enc4']
    """
    key = str(name).upper()
    if key not in _SET_NAMES:
        raise ValueError(f"unknown layer set {name!r}; use one of {list(_SET_NAMES)} or a list of layer names")
    shallow = (levels + 1) // 2
    enc = [f"enc{i + 1}" for i in range(levels)]
    dec = [f"dec{i + 1}" for i in range(levels)]
    deep_dec, shallow_dec = dec[: levels - shallow], dec[levels - shallow :]
    return {"A": enc, "B": dec, "C": enc[shallow:] + deep_dec, "D": enc[:shallow] + shallow_dec,
            "E": enc[shallow:], "F": enc[:shallow]}[key]


#: The layer sets A-F for the default 5-level spectral codec net (see the module docstring).
LAYER_SETS: dict[str, tuple[str, ...]] = {name: tuple(layer_set(name, 5)) for name in _SET_NAMES}


class CodecApproximationLoss(ReturnsTerms, FrozenNetworks):
    """Waveform L1 + codec-imitation L1 + codec-net feature L1 (see the module docstring).

    Arguments
    ---------
    codec_net : SpectralCodecNet or TimeCodecNet
        The trained codec-imitation network; frozen in place.
    layers : str or sequence of str
        A layer set ("A" .. "F", default "F") or explicit layer names (``codec_net.layer_names``).
    la, lb, lc : float
        Weights of the base, prediction and feature terms (a zero weight skips the term).
    base : str or nn.Module
        The base term: ``"waveform"`` (L1 between waveforms, default), ``"magnitude"`` (L1 between
        magnitude spectrograms) or a loss module.
    layer_weights : float, sequence or mapping, optional
        ``lm`` per selected layer (default 1.0 each).

    With ``terms=True`` the call also returns each term's batch mean (:class:`~sb_mal.losses.reconstruction.ReturnsTerms`).

    Example
    -------
    >>> from sb_mal.models.codec_net import SpectralCodecNet
    >>> loss = CodecApproximationLoss(SpectralCodecNet(filters=4), layers="F")
    >>> clean = torch.randn(2, 8000)
    >>> float(loss(clean, clean))
    0.0
    >>> enhanced = (clean + 0.1 * torch.randn(2, 8000)).requires_grad_(True)
    >>> value, parts = loss(enhanced, clean, torch.tensor([1.0, 0.6]), terms=True)
    >>> value.backward()
    >>> sorted(parts), bool(enhanced.grad.abs().sum() > 0)
    (['codec_l1', 'feat_enc1', 'feat_enc2', 'feat_enc3', 'features', 'wave_l1'], True)
    """

    def __init__(self, codec_net: nn.Module, layers: str | Sequence[str] = "F", la: float = 1.0, lb: float = 1.0,
                 lc: float = 1.0, layer_weights: float | Sequence[float] | Mapping[str, float] | None = None,
                 base: str | nn.Module = "waveform"):
        super().__init__()
        for attr in ("prepare", "forward_features", "layer_names", "levels"):
            if not hasattr(codec_net, attr):
                raise TypeError(f"codec_net must be a sb_mal.models.codec_net network (SpectralCodecNet or "
                                f"TimeCodecNet); {type(codec_net).__name__} has no {attr!r}")
        for name, w in (("la", la), ("lb", lb), ("lc", lc)):
            if not float(w) >= 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        self.freeze("codec_net", codec_net)
        self.layers = self._resolve_layers(layers)
        self.layer_weights = self._resolve_weights(layer_weights)
        self.la, self.lb, self.lc = float(la), float(lb), float(lc)
        if self.la == 0 and self.lb == 0 and (self.lc == 0 or not self.layers):
            raise ValueError("all terms of CodecApproximationLoss have zero weight (la, lb, lc or no layers)")
        if isinstance(base, nn.Module):
            self.base_loss, self.base_name = base, "base"
        elif base in BASE_TERMS:
            self.base_name, factory = BASE_TERMS[base]
            self.base_loss = factory()
        else:
            raise ValueError(f"base must be one of {sorted(BASE_TERMS)} or a loss module, got {base!r}")

    def _resolve_layers(self, layers) -> list[str]:
        names = self.codec_net.layer_names
        if isinstance(layers, str):
            if layers.upper() in _SET_NAMES:
                return layer_set(layers, self.codec_net.levels)
            if layers in names:
                return [layers]
            raise ValueError(f"unknown layer set {layers!r}; use one of {list(_SET_NAMES)} or layer names from "
                             f"{names}")
        layers = list(layers)
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"unknown codec-net layers {unknown}; {type(self.codec_net).__name__} has {names}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers listed twice in {layers}")
        return sorted(layers, key=names.index)

    def _resolve_weights(self, weights) -> list[float]:
        if weights is None:
            return [1.0] * len(self.layers)
        if isinstance(weights, (int, float)):
            return [float(weights)] * len(self.layers)
        if isinstance(weights, Mapping):
            unknown = set(weights) - set(self.layers)
            if unknown:
                raise ValueError(f"layer_weights for unselected layers {sorted(unknown)}; selected: {self.layers}")
            return [float(weights.get(n, 1.0)) for n in self.layers]
        weights = [float(w) for w in weights]
        if len(weights) != len(self.layers):
            raise ValueError(f"{len(weights)} layer_weights for {len(self.layers)} layers {self.layers}")
        return weights

    @classmethod
    def from_pretrained(cls, source, key: str = "loss", mode: str = "min", checkpoint=None,
                        recoverable: str = "model", trust_code: bool = False, **kwargs) -> CodecApproximationLoss:
        """The loss around a codec net trained by an sb_mal run.

        ``source`` is a run folder (``model_config.json`` + ``save/CKPT+*/``; the checkpoint with the
        best ``key`` is used), a ``CKPT+*`` folder in one or its ``<recoverable>.ckpt`` file (see
        :func:`sb_mal.checkpoints.load_pretrained`; ``trust_code`` as there). ``kwargs`` go to the constructor.
        """
        from sb_mal.checkpoints import ExportError, load_pretrained

        if source is None:
            raise ValueError("CodecApproximationLoss.from_pretrained: no codec-net run given (set `codec_run` to a "
                             "run of recipes/codec/train_codec_net.py)")
        found = load_pretrained(source, key=key, mode=mode, checkpoint=checkpoint, recoverable=recoverable,
                                trust_code=trust_code)
        net = found.model
        if not hasattr(net, "forward_features"):
            raise ExportError(f"{source}: the run's model is a {type(net).__name__}, not a codec net "
                              "(SpectralCodecNet or TimeCodecNet)")
        logger.info("CodecApproximationLoss: codec net %s from %s", type(net).__name__, found.where)
        return cls(net, **kwargs)

    def _upto(self) -> str | None:
        """Deepest layer the forward pass must reach (None: the whole net, for the prediction term)."""
        if self.lb > 0 or self.lc == 0:
            return None
        names = self.codec_net.layer_names
        return max(self.layers, key=names.index)

    def forward(self, predictions, targets, length=None, reduction: str = "mean", terms: bool = False):
        predictions, targets = check_waveforms(predictions, targets, "CodecApproximationLoss")
        predictions = self.follow(predictions)
        targets = targets.to(predictions)
        net = self.codec_net
        if net.training:  # someone switched it on directly
            net.eval()
        parts: dict[str, torch.Tensor] = {}
        total = predictions.new_zeros(predictions.shape[0])
        if self.la > 0:
            parts[self.base_name] = self.base_loss(predictions, targets, length, reduction="batch")
            total = total + self.la * parts[self.base_name]
        if self.lb > 0 or (self.lc > 0 and self.layers):
            upto = self._upto()
            with torch.no_grad():
                ref_in, scale, valid = net.prepare(targets, length)
                ref_feats, ref_out = net.forward_features(ref_in, valid, upto)
            est_in = net.prepare(predictions, length, scale=scale)[0]
            est_feats, est_out = net.forward_features(est_in, valid, upto)
            if self.lb > 0:
                parts["codec_l1"] = masked_l1(est_out, ref_out, valid)
                total = total + self.lb * parts["codec_l1"]
            if self.lc > 0 and self.layers:
                names = net.layer_names
                feat = 0
                for name, w in zip(self.layers, self.layer_weights):
                    k = names.index(name)
                    term = masked_l1(est_feats[k], ref_feats[k], valid_at_level(valid, net.layer_level(name)))
                    parts[f"feat_{name}"] = term
                    feat = feat + w * term
                parts["features"] = feat
                total = total + self.lc * feat
        value = reduce(total, reduction)
        return (value, {name: part(v) for name, v in parts.items()}) if terms else value
