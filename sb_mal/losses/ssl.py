"""Losses on the features of a frozen self-supervised speech model (WavLM by default).

All follow SpeechBrain's signature ``loss(predictions, targets, length=None, reduction="mean")``
on ``[B, T]`` 16 kHz waveforms (``predictions`` = enhanced, ``targets`` = clean) and compare
``F(enhanced)`` with ``F(clean)``, where ``F`` is an :class:`~sb_mal.models.ssl.SSLFeatureExtractor`
(frozen; gradient reaches the enhanced waveform only; ``F(clean)`` is computed without gradient;
float32 inside autocast). Only valid frames count (frame counts from the model's conv arithmetic);
each item's value is a mean over its valid frames, so ``reduction="batch"`` gives ``[B]``. With a
list of layers, the per-layer values are averaged; ``terms=True`` returns each of them too.

``ssl_l1`` (:class:`SSLL1Loss`)
    mean ``|F(clean) - F(enhanced)|``, the deep-feature baseline of the Model-as-Loss paper.
``ssl_mse`` (:class:`SSLMSELoss`)
    frame-aligned mean squared error, the baseline of the position-invariant fine-tuning paper.
``ssl_mse_pad`` (:class:`SSLMSEPadLoss`)
    as ``ssl_mse``, but the clean reference is zero-padded by ``p ~ U[0.02, 0.05]`` of its length,
    rounded to whole SSL frames (320 samples), before the SSL model sees it; the padded frames are
    then dropped from its feature sequence, so frame ``i`` of both sequences covers the same
    samples while their positions in the transformer's context differ.

Feature reduction: ``dim_reduction="mean"`` (default) averages over the feature dimension too, as
``torch.nn.MSELoss`` does; ``"sum"`` gives the paper's ``(1/m) sum_i ||x_i - x'_i||^2``, which is
``D`` times larger (D = 768 for base models).

``ssl_softdtw`` (:class:`SSLSoftDTWLoss`)
    soft-DTW divergence (:mod:`sb_mal.losses.soft_dtw`) between the two feature sequences, which
    may differ in length (the noisy input speed-perturbed), divided by the sum of their lengths.
    Its smoothing ``gamma`` is in cost units (default 0.1), or, with ``gamma_relative=k``, ``k`` times
    the median frame-pair cost measured on the first batch(es) (:class:`RelativeGamma`, checkpointed).

Use in a stock SpeechBrain recipe::

    compute_cost: !new:sb_mal.losses.SSLMSEPadLoss
        source: microsoft/wavlm-base-plus
        layers: last
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from sb_mal.dsp import relative_to_samples
from sb_mal.losses.gamma import RelativeGamma
from sb_mal.losses.reconstruction import ReturnsTerms, check_waveforms, part, reduce
from sb_mal.losses.soft_dtw import DISTANCES, pairwise_cost, soft_dtw_divergence
from sb_mal.models.extractors import build_frame_extractor
from sb_mal.models.frame_features import FrameFeatureExtractor
from sb_mal.models.ssl import DEFAULT_SSL_SOURCE

__all__ = ["RelativeGamma", "SSLFeatureLoss", "SSLL1Loss", "SSLMSELoss", "SSLMSEPadLoss", "SSLSoftDTWLoss",
           "pad_frames"]

logger = logging.getLogger(__name__)

PAD_SIDES = ("start", "end", "both")


def pad_frames(length_samples: int | torch.Tensor, p: float | torch.Tensor, hop: int = 320) -> int | torch.Tensor:
    """Whole frames of padding for a fraction ``p`` of ``length_samples``: ``round(p * length / hop)``.

    Halves round up. Works elementwise on tensors (returns ``long``); on numbers returns an int.

    Example
    -------
    >>> pad_frames(32000, 0.05), pad_frames(16000, 0.02), pad_frames(16000, 0.03)
    (5, 1, 2)
    >>> pad_frames(torch.tensor([32000, 64000]), torch.tensor([0.02, 0.05])).tolist()
    [2, 10]
    """
    if hop <= 0:
        raise ValueError(f"hop must be positive, got {hop}")
    if isinstance(length_samples, torch.Tensor) or isinstance(p, torch.Tensor):
        length = torch.as_tensor(length_samples, dtype=torch.float64)
        return torch.floor(torch.as_tensor(p, dtype=torch.float64) * length / hop + 0.5).long()
    return int((float(p) * float(length_samples) / hop) + 0.5)


class SSLFeatureLoss(ReturnsTerms, nn.Module):
    """Base of the SSL feature losses: features, masks, reduction, logging.

    Arguments
    ---------
    extractor : FrameFeatureExtractor, optional
        The frozen feature model; if omitted, one is built by
        :func:`~sb_mal.models.frame_features.build_frame_extractor` from ``source``, ``layers`` and
        ``extractor_kwargs`` (the extractor's own arguments).
    source, layers
        A speech SSL model (hub id or ``save_pretrained`` folder, default ``microsoft/wavlm-base-plus``),
        or ``"torchfcpe"`` / ``"resemblyzer"`` for the pretrained encoders inside those wheels;
        ``layers`` default ``"last"``.
    dim_reduction : str
        ``"mean"`` or ``"sum"`` over the feature dimension (see module docstring).
    """

    name = "ssl"

    def __init__(self, extractor: FrameFeatureExtractor | None = None, *, source=None,
                 layers: str | int | Sequence[int] | None = None, dim_reduction: str = "mean",
                 **extractor_kwargs):
        super().__init__()
        if extractor is None:
            extractor = build_frame_extractor(DEFAULT_SSL_SOURCE if source is None else source, layers,
                                              **extractor_kwargs)
        elif source is not None or layers is not None or extractor_kwargs:
            raise ValueError(f"{type(self).__name__}: give either an extractor or source/layers/extractor "
                             "arguments, not both")
        if not isinstance(extractor, FrameFeatureExtractor):
            raise TypeError(f"{type(self).__name__}: extractor must be a FrameFeatureExtractor (SSLFeatureExtractor, "
                            "FCPEFeatureExtractor, ResemblyzerFeatureExtractor), "
                            f"got {type(extractor).__name__}")
        if dim_reduction not in ("mean", "sum"):
            raise ValueError(f"dim_reduction must be 'mean' or 'sum', got {dim_reduction!r}")
        self.extractor = extractor
        self.dim_reduction = dim_reduction

    def _features(self, wav, counts, grad: bool):
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            feats, frames = self.extractor.extract(wav, counts)
        return (feats if feats.dim() == 4 else feats[None]), frames

    def _reference(self, targets: torch.Tensor, counts: torch.Tensor):
        """Features ``[L, B, F, D]`` of the clean reference (no gradient) and its valid frames."""
        return self._features(targets, counts, grad=False)

    def _elementwise(self, diff: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _distance(self, est, est_frames, ref, ref_frames) -> torch.Tensor:
        """Per-item distance ``[B]`` between one layer's ``[B, F, D]`` features over valid frames."""
        if est.shape != ref.shape:
            raise RuntimeError(f"{type(self).__name__}: feature shapes differ: {tuple(est.shape)} vs {tuple(ref.shape)}")
        mask = torch.arange(est.shape[1], device=est.device)[None, :] < est_frames[:, None]
        err = self._elementwise(est - ref.detach()) * mask[..., None].to(est.dtype)
        per_frame = est.shape[2] if self.dim_reduction == "mean" else 1
        return err.flatten(1).sum(1) / (est_frames.clamp(min=1) * per_frame)

    def forward(self, predictions, targets, length=None, reduction: str = "mean", terms: bool = False):
        predictions, targets = check_waveforms(predictions, targets, type(self).__name__)
        batch, total = targets.shape
        counts = relative_to_samples(length, total, batch, targets.device)
        return self._compare(predictions, counts, targets, counts, reduction, terms)

    def _compare(self, predictions, pred_counts, targets, target_counts, reduction: str, terms: bool = False):
        """Features of both sides (valid samples given as counts), per-layer ``_distance``, logging."""
        with torch.no_grad():
            ref, ref_frames = self._reference(targets, target_counts)
        est, est_frames = self._features(predictions, pred_counts, grad=True)
        layer_names = self._layer_names()
        per_item, parts = 0, {}
        for name, e, r in zip(layer_names, est, ref):
            term = self._distance(e, est_frames, r, ref_frames)
            if len(layer_names) > 1:
                parts[f"{self.name}_{name}"] = part(term)
            per_item = per_item + term
        value = reduce(per_item / len(layer_names), reduction)
        return (value, parts) if terms else value

    def _layer_names(self) -> list[str]:
        layers = self.extractor.layers
        return [f"layer{i}" for i in layers] if isinstance(layers, list) else [str(layers)]


class SSLL1Loss(SSLFeatureLoss):
    """Deep-feature L1 ("ssl_l1"): mean ``|F(clean) - F(enhanced)|`` over valid frames.

    Example
    -------
    >>> from sb_mal.models.ssl import SSLFeatureExtractor, build_tiny_wavlm
    >>> loss = SSLL1Loss(SSLFeatureExtractor(build_tiny_wavlm()))
    >>> clean = torch.randn(2, 8000)
    >>> float(loss(clean, clean))
    0.0
    >>> bool(loss(clean + 0.5 * torch.randn(2, 8000), clean) > 0)
    True
    """

    name = "ssl_l1"

    def _elementwise(self, diff):
        return diff.abs()


class SSLMSELoss(SSLFeatureLoss):
    """Frame-aligned feature MSE ("ssl_mse") over valid frames.

    Example
    -------
    >>> from sb_mal.models.ssl import SSLFeatureExtractor, build_tiny_wavlm
    >>> loss = SSLMSELoss(SSLFeatureExtractor(build_tiny_wavlm(), layers=[1, 2]))
    >>> clean = torch.randn(2, 8000)
    >>> loss(clean + 0.5 * torch.randn(2, 8000), clean, reduction="batch").shape
    torch.Size([2])
    >>> sorted(loss(clean, clean, terms=True)[1])  # the value of each layer
    ['ssl_mse_layer1', 'ssl_mse_layer2']
    """

    name = "ssl_mse"

    def _elementwise(self, diff):
        return diff.pow(2)


class SSLMSEPadLoss(SSLMSELoss):
    """Feature MSE against a zero-padded clean reference ("ssl_mse_pad"), padded frames dropped.

    For each item, ``k = max(min_pad_frames, pad_frames(n, p, hop))`` frames of zeros
    (``p ~ U[p_range]``, ``n`` valid samples, ``hop`` the SSL frame hop) are added to the clean
    reference (after input normalisation, so the zeros sit at its mean), at the ``side`` chosen:
    ``"start"`` (default: every frame shifts by ``k`` positions), ``"end"``, or ``"both"``
    (``k // 2`` before, the rest after). The clean features of the ``k`` padded frames are then
    dropped, so frame ``i`` of both sequences covers the same samples, and the MSE is frame-aligned.

    Arguments
    ---------
    extractor, source, layers, dim_reduction, extractor_kwargs
        See :class:`SSLFeatureLoss`.
    p_range : (float, float)
        Bounds of the uniform padding fraction (default 0.02 .. 0.05).
    side : str
        ``"start"``, ``"end"`` or ``"both"``.
    min_pad_frames : int
        Lower bound on ``k`` (default 1, so short utterances are shifted too).
    seed : int, optional
        Seed of a private ``torch.Generator`` for the padding draws (default: torch's global RNG,
        so ``torch.manual_seed``, e.g. SpeechBrain's ``seed`` hparam, makes runs reproducible).
    generator : torch.Generator, optional
        A CPU generator to draw from instead (overrides ``seed``).

    The draws of the last call are in ``last_pad_frames`` (``[B]``, long).

    Example
    -------
    >>> from sb_mal.models.ssl import SSLFeatureExtractor, build_tiny_wavlm
    >>> loss = SSLMSEPadLoss(SSLFeatureExtractor(build_tiny_wavlm()), seed=0)
    >>> clean = torch.randn(2, 16000)
    >>> value = loss(clean, clean)
    >>> loss.last_pad_frames.tolist()  # 2-5 % of 16000 samples = 1 to 2.5 frames of 320, rounded
    [2, 2]
    """

    name = "ssl_mse_pad"

    def __init__(self, extractor: FrameFeatureExtractor | None = None, *, p_range: Sequence[float] = (0.02, 0.05),
                 side: str = "start", min_pad_frames: int = 1, seed: int | None = None,
                 generator: torch.Generator | None = None, **kwargs):
        super().__init__(extractor, **kwargs)
        low, high = (float(v) for v in p_range)
        if not 0 <= low <= high < 1:
            raise ValueError(f"p_range must satisfy 0 <= low <= high < 1, got {tuple(p_range)}")
        if side not in PAD_SIDES:
            raise ValueError(f"side must be one of {PAD_SIDES}, got {side!r}")
        if min_pad_frames < 0:
            raise ValueError(f"min_pad_frames must be >= 0, got {min_pad_frames}")
        self.p_range, self.side, self.min_pad_frames = (low, high), side, int(min_pad_frames)
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self.generator = generator
        self.last_pad_frames = torch.zeros(0, dtype=torch.long)

    def sample_pad_frames(self, sample_counts: torch.Tensor) -> torch.Tensor:
        """Draw ``k`` (frames of padding, ``[B]`` long, on CPU) for items of ``sample_counts`` samples."""
        low, high = self.p_range
        p = low + (high - low) * torch.rand(sample_counts.shape[0], generator=self.generator, dtype=torch.float64)
        frames = pad_frames(sample_counts.detach().cpu(), p, self.extractor.frame_hop)
        return frames.clamp(min=self.min_pad_frames)

    def _reference(self, targets, counts):
        ext, hop = self.extractor, self.extractor.frame_hop
        k = self.sample_pad_frames(counts)
        self.last_pad_frames = k
        k = k.to(targets.device)
        before = {"start": k, "end": torch.zeros_like(k), "both": k // 2}[self.side]
        wav = targets.float()
        if ext.normalize_input:
            wav = ext.normalize_waveform(wav, counts)
        # place item b's valid samples at offset before[b] * hop of a zero row of counts[b] + k[b] * hop samples
        padded_counts = counts + k * hop
        width = max(int(padded_counts.max()), ext.receptive)
        src = torch.arange(width, device=wav.device)[None, :] - (before * hop)[:, None]
        inside = (src >= 0) & (src < counts[:, None])
        padded = torch.where(inside, wav.gather(1, src.clamp(0, wav.shape[1] - 1)), wav.new_zeros(()))
        feats, frames = ext.extract(padded, padded_counts, normalize=False)
        feats = feats if feats.dim() == 4 else feats[None]
        est_frames = ext.frames(counts)
        if not torch.equal(frames, est_frames + k):  # holds for conv stacks whose total stride is the hop
            raise RuntimeError(f"SSLMSEPadLoss: padded reference has {frames.tolist()} frames, expected "
                               f"{(est_frames + k).tolist()}")
        # drop the padded frames: aligned[b, i] = feats[b, before[b] + i]
        aligned_width = int(ext.frames(targets.shape[1]))
        index = torch.arange(aligned_width, device=wav.device)[None, :] + before[:, None]
        index = index.clamp(max=feats.shape[2] - 1)
        index = index[None, :, :, None].expand(feats.shape[0], -1, -1, feats.shape[3])
        return feats.gather(2, index), est_frames


class SSLSoftDTWLoss(SSLFeatureLoss):
    """Soft-DTW divergence between SSL feature sequences ("ssl_softdtw"); lengths may differ.

    Item ``b``'s value is ``div(F(enhanced)[:n_b], F(clean)[:m_b]) / (n_b + m_b)``, where ``div`` is
    :func:`~sb_mal.losses.soft_dtw.soft_dtw_divergence` (zero for identical sequences, >= 0) and
    ``n_b``, ``m_b`` are the valid frame counts of the two sides. Dividing by ``n_b + m_b`` (the
    longest monotone alignment path has ``n_b + m_b - 1`` cells) turns the divergence, a sum of
    costs along the soft alignment, into a per-frame quantity, so its scale does not grow with the
    duration. (An item shorter than one frame's receptive field counts as one zero frame.)

    The enhanced output and the clean reference may have different lengths, e.g. when the trainer
    speed-perturbs the noisy input: no equal-length check is made. ``length`` holds the relative
    lengths of the *predictions*, ``target_length`` those of the *targets* (default: ``length``,
    which is right when both batches are padded alike, as with SpeechBrain's ``SpeedPerturb``,
    which resamples a whole batch by one factor and so keeps the relative lengths).

    Arguments
    ---------
    extractor, source, layers, extractor_kwargs
        See :class:`SSLFeatureLoss`.
    gamma : float
        Soft-min smoothing (default 0.1, as in the prior soft-DTW fine-tuning code), in cost units.
    gamma_relative : float, optional
        Instead of ``gamma``: this factor times the median frame-pair cost (the frame cost below,
        over the valid frame pairs of the enhanced and clean sequences, first layer listed) of the
        first ``gamma_batches`` calls, then fixed (:class:`RelativeGamma`, in ``gamma_state``). The
        raw costs differ by an order of magnitude between feature models (per-frame noisy-vs-clean
        divergence 0.28 through FCPE, 0.026 through Resemblyzer), so one absolute ``gamma`` is a sharp
        soft-min for one and almost an average for another.
    gamma_batches : int
        Calls (batches) measured for ``gamma_relative`` (default 1).
    distance : str
        Frame cost: ``"sqeuclidean"`` (default) or ``"cosine"`` (``1 - cos``, in ``[0, 2]``).
    dim_reduction : str
        For ``"sqeuclidean"``: ``"mean"`` (default) divides the squared distance by the feature size
        ``D``, so a frame pair costs what it adds to ``ssl_mse``; ``"sum"`` keeps ``|x - y|^2``.
        Ignored by ``"cosine"``.

    Example
    -------
    >>> from sb_mal.models.ssl import SSLFeatureExtractor, build_tiny_wavlm
    >>> loss = SSLSoftDTWLoss(SSLFeatureExtractor(build_tiny_wavlm()))
    >>> clean = torch.randn(2, 8000)
    >>> float(loss(clean, clean).abs()) < 1e-5
    True
    >>> longer = torch.randn(2, 9600)  # 20 % longer than the reference: accepted
    >>> loss(longer, clean, torch.tensor([1.0, 0.8]), reduction="batch").shape
    torch.Size([2])
    """

    name = "ssl_softdtw"

    def __init__(self, extractor: FrameFeatureExtractor | None = None, *, gamma: float = 0.1,
                 distance: str = "sqeuclidean", gamma_relative: float | None = None, gamma_batches: int = 1,
                 **kwargs):
        super().__init__(extractor, **kwargs)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if not float(gamma) > 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        self.gamma, self.distance = float(gamma), distance
        self.gamma_state = None if gamma_relative is None else RelativeGamma(gamma_relative, gamma_batches)
        self._first_layer = True

    @property
    def current_gamma(self) -> float:
        """The gamma in use: the absolute one, or the relative one measured so far."""
        return self.gamma if self.gamma_state is None else self.gamma_state.gamma

    def forward(self, predictions, targets, length=None, reduction: str = "mean", target_length=None,
                terms: bool = False):
        name = type(self).__name__
        predictions = predictions.squeeze(-1) if predictions.dim() == 3 and predictions.shape[-1] == 1 else predictions
        targets = targets.squeeze(-1) if targets.dim() == 3 and targets.shape[-1] == 1 else targets
        if predictions.dim() != 2 or targets.dim() != 2:
            raise ValueError(f"{name}: expected waveforms [batch, samples], got predictions "
                             f"{tuple(predictions.shape)} and targets {tuple(targets.shape)}")
        if predictions.shape[0] != targets.shape[0]:
            raise ValueError(f"{name}: batch sizes differ ({predictions.shape[0]} vs {targets.shape[0]})")
        batch, device = targets.shape[0], targets.device
        pred_counts = relative_to_samples(length, predictions.shape[1], batch, device)
        target_counts = relative_to_samples(length if target_length is None else target_length,
                                            targets.shape[1], batch, device)
        self._first_layer = True
        return self._compare(predictions, pred_counts, targets, target_counts, reduction, terms)

    def _gamma(self, est, ref, n, m) -> float:
        """The gamma of this layer; a relative gamma still being measured observes the first layer's costs."""
        state = self.gamma_state
        if state is None:
            return self.gamma
        if not state.measured and self._first_layer:
            with torch.no_grad():
                cost = pairwise_cost(est.detach().float(), ref.float(), self.distance)
                rows = torch.arange(cost.shape[1], device=cost.device)[None, :, None] < n[:, None, None]
                cols = torch.arange(cost.shape[2], device=cost.device)[None, None, :] < m[:, None, None]
                state.observe(cost[rows & cols])
        self._first_layer = False
        return state.gamma

    def _distance(self, est, est_frames, ref, ref_frames):
        n, m = est_frames.clamp(min=1), ref_frames.clamp(min=1)
        ref = ref.detach()
        if self.distance == "sqeuclidean" and self.dim_reduction == "mean":
            scale = est.shape[-1] ** -0.5
            est, ref = est * scale, ref * scale
        div = soft_dtw_divergence(est, ref, n, m, gamma=self._gamma(est, ref, n, m), distance=self.distance)
        return div / (n + m).to(div.dtype)
