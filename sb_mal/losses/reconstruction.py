"""Reconstruction losses on waveforms, with SpeechBrain's loss signature.

Every loss is an ``nn.Module`` called as ``loss(predictions, targets, length=None,
reduction="mean")`` on ``[B, T]`` waveforms with relative lengths ``[B]``. Padded samples (and
STFT frames centred in padding) never contribute. ``reduction="batch"`` returns one value per
item; ``"mean"`` averages those.

They work unchanged as ``compute_cost`` in stock SpeechBrain recipes::

    compute_cost: !new:sb_mal.losses.MultiResolutionSTFTLoss
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sb_mal.dsp import StftConfig, frame_mask, length_mask, stft

__all__ = [
    "loss_and_terms",
    "part",
    "ReturnsTerms",
    "MagnitudeL1",
    "MultiResolutionSTFTLoss",
    "SISDRLoss",
    "STFTLoss",
    "WaveformL1",
    "WaveformMSE",
    "WeightedSum",
    "check_waveforms",
    "reduce",
    "terms_to_floats",
]


def terms_to_floats(terms: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Named scalar tensors (any device) as floats, with a single host-device synchronisation.

    Example
    -------
    >>> terms_to_floats({"l1": torch.tensor(0.5), "mse": 0.25})
    {'l1': 0.5, 'mse': 0.25}
    """
    names = list(terms)
    tensors = [v for v in terms.values() if isinstance(v, torch.Tensor)]
    if not tensors:
        return {k: float(v) for k, v in terms.items()}
    device = tensors[0].device
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32).to(device).reshape(()) for v in terms.values()])
    return dict(zip(names, stacked.tolist()))


class ReturnsTerms:
    """Mark of the sb_mal losses that can return their named parts along with their value.

    ``loss(predictions, targets, length, terms=True)`` gives ``(value, parts)``: ``parts`` maps each
    named part (a WeightedSum's terms, a codec loss's L1 / codec / feature terms, Model as Loss's
    taps, an SSL loss's layers) to its batch mean as a detached tensor on the loss's device, so a
    Brain can log them without a host-device synchronisation per step; without ``terms`` the value
    alone, SpeechBrain's signature. Nothing is kept on the module between calls.
    """


def part(value: torch.Tensor) -> torch.Tensor:
    """A part for logging: the batch mean of ``value``, detached, float32 (stays on its device)."""
    return value.detach().float().mean()


def loss_and_terms(loss_fn, *args, **kwargs) -> tuple[torch.Tensor, dict]:
    """``(value, parts)`` of any loss: its named parts where it offers them (:class:`ReturnsTerms`),
    none otherwise (a plain SpeechBrain loss function).

    Example
    -------
    >>> value, parts = loss_and_terms(WeightedSum({"l1": WaveformL1()}), torch.zeros(1, 2), torch.ones(1, 2))
    >>> float(value), sorted(parts)
    (1.0, ['l1'])
    >>> loss_and_terms(WaveformL1(), torch.zeros(1, 2), torch.ones(1, 2))[1]
    {}
    """
    if isinstance(loss_fn, ReturnsTerms):
        return loss_fn(*args, terms=True, **kwargs)
    return loss_fn(*args, **kwargs), {}


def check_waveforms(predictions: torch.Tensor, targets: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``[B, T]`` inputs (``[B, T, 1]`` is squeezed); trim a small length difference.

    SpeechBrain recipes tolerate a few samples of difference between prediction and target
    (e.g. from STFT framing); so do we, up to the larger of 1024 samples and 1 % of the length.
    """
    if predictions.dim() == 3 and predictions.shape[-1] == 1:
        predictions = predictions.squeeze(-1)
    if targets.dim() == 3 and targets.shape[-1] == 1:
        targets = targets.squeeze(-1)
    if predictions.dim() != 2 or targets.dim() != 2:
        spectra = any(t.dim() == 3 and t.shape[-1] > 1 for t in (predictions, targets))
        hint = ("; spectra? In SpeechBrain's spectral_mask recipe set `waveform_target: True`, so the cost "
                "compares the resynthesised waveforms") if spectra else ""
        raise ValueError(
            f"{name}: expected waveforms [batch, samples], got predictions {tuple(predictions.shape)} "
            f"and targets {tuple(targets.shape)}{hint}"
        )
    if predictions.shape[0] != targets.shape[0]:
        raise ValueError(f"{name}: batch sizes differ ({predictions.shape[0]} vs {targets.shape[0]})")
    tp, tt = predictions.shape[1], targets.shape[1]
    if tp != tt:
        if abs(tp - tt) > max(1024, 0.01 * max(tp, tt)):
            raise ValueError(f"{name}: predictions have {tp} samples but targets {tt}")
        n = min(tp, tt)
        predictions, targets = predictions[:, :n], targets[:, :n]
    return predictions, targets


def reduce(per_item: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` ("mean", "batch" or "sum") to per-item losses ``[B]``.

    Every sb_mal loss first averages each item over its own valid samples or frames, so
    ``"mean"`` is the mean of the per-item means: every utterance weighs the same, whatever its
    length. SpeechBrain's ``reduce_loss`` instead averages over all valid elements of the batch
    (a long utterance weighs more); the two agree when all lengths are equal.
    ``tests/test_losses.py`` pins both facts.
    """
    if reduction == "mean":
        return per_item.mean()
    if reduction == "batch":
        return per_item
    if reduction == "sum":
        return per_item.sum()
    raise ValueError(f"reduction must be 'mean', 'batch' or 'sum', got {reduction!r}")


class _ElementwiseWaveformLoss(nn.Module):
    def _elementwise(self, diff: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, predictions, targets, length=None, reduction: str = "mean"):
        predictions, targets = check_waveforms(predictions, targets, type(self).__name__)
        mask = length_mask(length, targets.shape[1], targets.shape[0], targets.device)
        err = self._elementwise(predictions - targets) * mask
        per_item = err.sum(1) / mask.sum(1).clamp(min=1)
        return reduce(per_item, reduction)


class WaveformL1(_ElementwiseWaveformLoss):
    """Mean absolute error between waveforms, padding ignored.

    Example
    -------
    >>> loss = WaveformL1()
    >>> pred, target = torch.zeros(2, 4), torch.tensor([[1.0, 1, 1, 1], [1, 1, 9, 9]])
    >>> loss(pred, target, torch.tensor([1.0, 0.5]), reduction="batch")
    tensor([1., 1.])
    """

    def _elementwise(self, diff):
        return diff.abs()


class WaveformMSE(_ElementwiseWaveformLoss):
    """Mean squared error between waveforms, padding ignored.

    Example
    -------
    >>> WaveformMSE()(torch.zeros(1, 3), torch.full((1, 3), 2.0))
    tensor(4.)
    """

    def _elementwise(self, diff):
        return diff.pow(2)


class SISDRLoss(nn.Module):
    """Negative scale-invariant SDR (dB) on the valid samples of each item.

    Arguments
    ---------
    eps : float
        Stabiliser.

    Example
    -------
    >>> x = torch.randn(2, 8000)
    >>> bool(SISDRLoss()(x, x) < -60)
    True
    """

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, predictions, targets, length=None, reduction: str = "mean"):
        predictions, targets = check_waveforms(predictions, targets, "SISDRLoss")
        mask = length_mask(length, targets.shape[1], targets.shape[0], targets.device).to(targets.dtype)
        count = mask.sum(1, keepdim=True).clamp(min=1)
        p = predictions.float() * mask
        t = targets.float() * mask
        p = (p - p.sum(1, keepdim=True) / count) * mask
        t = (t - t.sum(1, keepdim=True) / count) * mask
        scale = (p * t).sum(1, keepdim=True) / (t.pow(2).sum(1, keepdim=True) + self.eps)
        target_part = scale * t
        noise = p - target_part
        ratio = (target_part.pow(2).sum(1) + self.eps) / (noise.pow(2).sum(1) + self.eps)
        return reduce(-10 * torch.log10(ratio), reduction)


class STFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1 at one STFT resolution (Yamamoto et al. 2020).

    Arguments
    ---------
    n_fft, hop, win_length : int
        STFT resolution.
    sc_weight, mag_weight : float
        Weights of the spectral-convergence and log-magnitude terms.
    eps : float
        Magnitude floor before the log.

    Example
    -------
    >>> loss = STFTLoss(512, 128)
    >>> x = torch.randn(2, 16000)
    >>> round(float(loss(x, x)), 5)
    0.0
    """

    def __init__(self, n_fft: int = 1024, hop: int = 256, win_length: int | None = None,
                 sc_weight: float = 1.0, mag_weight: float = 1.0, eps: float = 1e-7):
        super().__init__()
        self.cfg = StftConfig(n_fft, hop, win_length)
        self.sc_weight, self.mag_weight, self.eps = sc_weight, mag_weight, eps

    def forward(self, predictions, targets, length=None, reduction: str = "mean"):
        predictions, targets = check_waveforms(predictions, targets, "STFTLoss")
        P = stft(predictions.float(), self.cfg).abs()
        T = stft(targets.float(), self.cfg).abs()
        mask = frame_mask(length, targets.shape[1], T.shape[-1], self.cfg.hop, T.shape[0], T.device)[:, None, :]
        m = mask.to(T.dtype)
        sc = torch.sqrt(((T - P).pow(2) * m).sum((1, 2)) + self.eps) / torch.sqrt((T.pow(2) * m).sum((1, 2)) + self.eps)
        log_l1 = ((torch.log(T + self.eps) - torch.log(P + self.eps)).abs() * m).sum((1, 2))
        log_l1 = log_l1 / (m.sum((1, 2)) * T.shape[1]).clamp(min=1)
        return reduce(self.sc_weight * sc + self.mag_weight * log_l1, reduction)


class MagnitudeL1(nn.Module):
    """Mean absolute error between magnitude spectrograms ``|STFT|`` (linear scale), the baseline loss
    of the codec-approximation paper; frames centred in padding are left out.

    Arguments
    ---------
    n_fft, hop, win_length : int
        STFT resolution (default 1024 / 256, that of the separation ladder's networks).

    Example
    -------
    >>> loss = MagnitudeL1(512, 128)
    >>> x = torch.randn(2, 16000)
    >>> float(loss(x, x)), bool(loss(-x, x) < 1e-4)  # the phase does not count
    (0.0, True)
    >>> bool(loss(0.5 * x, x) > 0)
    True
    """

    def __init__(self, n_fft: int = 1024, hop: int = 256, win_length: int | None = None):
        super().__init__()
        self.cfg = StftConfig(n_fft, hop, win_length)

    def forward(self, predictions, targets, length=None, reduction: str = "mean"):
        predictions, targets = check_waveforms(predictions, targets, "MagnitudeL1")
        P = stft(predictions.float(), self.cfg).abs()
        T = stft(targets.float(), self.cfg).abs()
        mask = frame_mask(length, targets.shape[1], T.shape[-1], self.cfg.hop, T.shape[0], T.device)[:, None, :]
        m = mask.to(T.dtype)
        per_item = ((P - T).abs() * m).sum((1, 2)) / (m.sum((1, 2)) * T.shape[1]).clamp(min=1)
        return reduce(per_item, reduction)


class MultiResolutionSTFTLoss(nn.Module):
    """Mean of :class:`STFTLoss` over several resolutions.

    Arguments
    ---------
    resolutions : sequence of (n_fft, hop, win_length)
        Default: (512, 50, 240), (1024, 120, 600), (2048, 240, 1200), the common choice for
        16-24 kHz speech.

    Example
    -------
    >>> loss = MultiResolutionSTFTLoss()
    >>> x = torch.randn(1, 16000)
    >>> bool(loss(x + 0.1 * torch.randn(1, 16000), x) > loss(x + 0.01 * torch.randn(1, 16000), x))
    True
    """

    def __init__(self, resolutions: Sequence[Sequence[int]] = ((512, 50, 240), (1024, 120, 600), (2048, 240, 1200)),
                 sc_weight: float = 1.0, mag_weight: float = 1.0):
        super().__init__()
        if not resolutions:
            raise ValueError("give at least one STFT resolution")
        self.terms = nn.ModuleList(STFTLoss(*r, sc_weight=sc_weight, mag_weight=mag_weight) for r in resolutions)

    def forward(self, predictions, targets, length=None, reduction: str = "mean"):
        per_item = sum(t(predictions, targets, length, reduction="batch") for t in self.terms) / len(self.terms)
        return reduce(per_item, reduction)


class WeightedSum(ReturnsTerms, nn.Module):
    """A weighted sum of losses that is itself a SpeechBrain-style loss.

    Arguments
    ---------
    terms : mapping of name -> loss module
        Each called as ``loss(predictions, targets, length, reduction="batch")``.
    weights : mapping of name -> float, optional
        Default 1.0 for every term; a weight of 0 skips the term entirely.

    With ``terms=True`` the value of each term comes back too (:class:`ReturnsTerms`).

    Example
    -------
    >>> loss = WeightedSum({"l1": WaveformL1(), "mse": WaveformMSE()}, {"l1": 1.0, "mse": 0.5})
    >>> value, parts = loss(torch.zeros(1, 2), torch.full((1, 2), 2.0), terms=True)
    >>> float(value), {k: float(v) for k, v in parts.items()}
    (4.0, {'l1': 2.0, 'mse': 4.0})
    """

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None):
        super().__init__()
        if not terms:
            raise ValueError("WeightedSum needs at least one loss term")
        weights = dict(weights or {})
        unknown = set(weights) - set(terms)
        if unknown:
            raise ValueError(f"weights given for unknown loss terms {sorted(unknown)}; terms are {sorted(terms)}")
        self.terms = nn.ModuleDict(terms)
        self.weights = {name: float(weights.get(name, 1.0)) for name in terms}

    def forward(self, predictions, targets, length=None, reduction: str = "mean", terms: bool = False):
        total, parts = None, {}
        for name, term in self.terms.items():
            w = self.weights[name]
            if w == 0:
                continue
            value = term(predictions, targets, length, reduction="batch")
            parts[name] = part(value)
            total = w * value if total is None else total + w * value
        if total is None:
            raise ValueError("all loss weights are zero")
        return (reduce(total, reduction), parts) if terms else reduce(total, reduction)
