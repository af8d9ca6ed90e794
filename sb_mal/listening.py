"""Listening enhancement (near-end listening enhancement): the signal rules, in one place.

In listening enhancement the model does not see noisy speech: it modifies *clean* speech ``s``
before it is played into a place with noise ``n``, so that a listener there understands it
better, at unchanged loudness. For an utterance:

1. **The noise.** From a noisy/clean pair, ``n = noisy - clean`` (every sb_mal and devset pair is
   an additive mixture, peak scaling included), rescaled so that ``10 log10(P_s / P_n)`` is the
   utterance's SNR: drawn uniformly from ``snr_range`` (training; a function of the seed, the epoch
   and the utterance id) or one of ``eval_snrs`` (validation and test: a function of the id only).
   ``P`` is the mean power over the valid samples.
2. **The equal-power rule.** The generator's output ``m'`` is rescaled to the power of ``s`` over
   the valid samples: ``m = m' * ||s|| / ||m'||`` (Euclidean norms over the valid samples; an
   all-zero ``m'`` stays zero). So ``sum m^2 = sum s^2`` up to rounding, and ``m`` plays at the
   loudness ``s`` would have.
3. **What is scored.** The intelligibility metrics compare ``s`` with ``m + n``; the unprocessed
   reference is ``s + n``.

Example
-------
>>> s = torch.randn(2, 1600)
>>> m = equal_power(3 * torch.randn(2, 1600), s)
>>> torch.allclose(m.pow(2).sum(1), s.pow(2).sum(1))
True
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

from sb_mal.dsp import relative_to_samples

__all__ = ["INTELLIGIBILITY_TARGETS", "equal_power", "noise_at_snr", "utterance_snr"]

#: Target metrics a listening-enhancement generator may be driven by.
INTELLIGIBILITY_TARGETS = ("siib", "estoi", "stoi", "haspi")


def _valid(x: torch.Tensor, lengths) -> torch.Tensor:
    counts = relative_to_samples(lengths, x.shape[1], x.shape[0], x.device)
    return (torch.arange(x.shape[1], device=x.device)[None, :] < counts[:, None]).to(x.dtype)


def equal_power(modified: torch.Tensor, reference: torch.Tensor, lengths=None, eps: float = 1e-12) -> torch.Tensor:
    """``modified`` rescaled per item to the power of ``reference`` over the valid samples (padding zeroed).

    Differentiable (the gradient flows through the scale too). ``[B, T]`` tensors; ``lengths`` are
    SpeechBrain relative lengths.
    """
    if modified.shape != reference.shape:
        raise ValueError(f"equal_power: shapes differ, {tuple(modified.shape)} vs {tuple(reference.shape)}")
    mask = _valid(reference, lengths)
    modified = modified * mask
    ref_norm = torch.sqrt((reference * mask).pow(2).sum(1, keepdim=True))
    mod_norm = torch.sqrt(modified.pow(2).sum(1, keepdim=True))
    return modified * (ref_norm / mod_norm.clamp(min=eps))


def noise_at_snr(noise: torch.Tensor, speech: torch.Tensor, snr_db, lengths=None) -> torch.Tensor:
    """``noise`` rescaled per item so that speech-to-noise power over the valid samples is ``snr_db``."""
    mask = _valid(speech, lengths)
    snr = torch.as_tensor(snr_db, dtype=speech.dtype, device=speech.device).reshape(-1, 1)
    p_s = (speech * mask).pow(2).sum(1, keepdim=True)
    p_n = (noise * mask).pow(2).sum(1, keepdim=True).clamp(min=1e-20)
    return noise * mask * torch.sqrt(p_s / (p_n * 10 ** (snr / 10)))


def utterance_snr(uid: str, snr_range: Sequence[float], eval_snrs: Sequence[float], seed: int = 0,
                  epoch: int | None = None) -> float:
    """The SNR of utterance ``uid``: uniform in ``snr_range`` for training (``epoch`` given; depends
    on seed, epoch and id), else one of ``eval_snrs`` chosen by the id alone (fixed for a split).

    Example
    -------
    >>> utterance_snr("a", (-10, 5), (-5, 0, 5)) == utterance_snr("a", (-10, 5), (-5, 0, 5))
    True
    >>> -10 <= utterance_snr("a", (-10, 5), (-5, 0, 5), seed=1, epoch=3) <= 5
    True
    """
    key = zlib.crc32(uid.encode())
    if epoch is None:
        return float(eval_snrs[key % len(eval_snrs)])
    rng = np.random.default_rng([int(seed), int(epoch), key])
    low, high = (float(v) for v in snr_range)
    return float(rng.uniform(low, high))
