"""The discriminator phase of one MetricGAN+ / MetricGAN-OKD epoch, one method per sub-step.

:meth:`DiscriminatorPhase.run` is called by :class:`~sb_mal.brains.MetricGANOKDBrain` at the end of
each training stage with the epoch's utterances:

1. :meth:`~DiscriminatorPhase.enhance`: one generator, drawn with a generator seeded by
   ``(seed, epoch)``, enhances this rank's utterances;
2. :meth:`~DiscriminatorPhase.score`: the metric pool computes the N normalised targets of the
   enhanced and (once per utterance, cached in the history) of the noisy signals; a failed metric
   gives NaN; under DDP every rank then holds the whole epoch's set (:func:`_all_gather`);
3. :meth:`~DiscriminatorPhase.update` on (clean, enhanced), (clean, noisy), (clean, clean); then on
   a :meth:`~DiscriminatorPhase.replay` of ``history_portion`` of earlier epochs plus the current
   set; :meth:`~DiscriminatorPhase.update_history` adds the current set; one more update on it.

An utterance whose targets contain NaN is skipped by every update and never enters the history
(never a crash, never a hang).

The phase talks to its Brain through :class:`DiscriminatorHost` only: the history and running
totals, the generators' outputs, the discriminator's loss on one pair and one update step (the
Brain's, through SpeechBrain's ``optimizers_step``); its settings come as a :class:`PhaseSettings`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from sb_mal.brains.metric_history import MetricHistory
from sb_mal.brains.recoverables import RunningTotals
from sb_mal.metrics import evaluate as evaluate_metrics
from sb_mal.metrics.targets import normalize_scores

__all__ = ["DiscriminatorHost", "DiscriminatorPhase", "PhaseSettings", "Scored", "distributed"]


def distributed() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without DDP."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_gather(obj) -> list:
    rank, world = distributed()
    if world == 1:
        return [obj]
    parts = [None] * world
    torch.distributed.all_gather_object(parts, obj)
    return parts


@dataclass
class Scored:
    """One utterance of the epoch with its audio and normalised targets."""

    uid: str
    noisy: np.ndarray
    clean: np.ndarray
    enhanced: np.ndarray
    enhanced_targets: list
    noisy_targets: list

    @property
    def failed(self) -> bool:
        return any(math.isnan(t) for t in self.enhanced_targets)


@dataclass(frozen=True)
class PhaseSettings:
    """What the phase is configured with (the Brain's hparams, read once)."""

    targets: tuple  #: one target metric per generator
    rate: int
    pesq_mapping: str
    seed: int  #: with the epoch, seeds the generator choice and the history replay
    history_portion: float
    n_jobs: int
    metric_timeout: float
    listening: bool = False  #: per-epoch noisy targets (the noise level changes every epoch)


class DiscriminatorHost(Protocol):
    """What :class:`DiscriminatorPhase` needs from its Brain (:class:`~sb_mal.brains.MetricGANOKDBrain`)."""

    history: MetricHistory
    totals: RunningTotals

    def enhance_for_discriminator(self, generator: int, utterances: list) -> list[np.ndarray]:
        """One generator's output for each ``(id, noisy, clean)`` utterance (eval mode, no gradient)."""

    def discriminator_loss(self, reference: np.ndarray, degraded: np.ndarray, target) -> torch.Tensor | None:
        """The discriminator's loss on one pair with its targets (None: too short to score)."""

    def discriminator_step(self, loss: torch.Tensor) -> None:
        """One update of the discriminator from ``loss``."""


class DiscriminatorPhase:
    """The discriminator phase of a :class:`~sb_mal.brains.MetricGANOKDBrain` (module docstring)."""

    def __init__(self, host: DiscriminatorHost, settings: PhaseSettings):
        self.host, self.settings = host, settings

    @property
    def n(self) -> int:
        return len(self.settings.targets)

    # -- sub-steps ---------------------------------------------------------------------------------
    def enhance(self, generator: int, utterances: list) -> list[np.ndarray]:
        """Enhance ``(id, noisy, clean)`` utterances with one generator (eval mode, no gradient); in
        listening enhancement, the clean speech modified by it plus the noise."""
        return self.host.enhance_for_discriminator(generator, utterances)

    def score(self, signals: list, cleans: list, ids: list) -> list[list[float]]:
        """Normalised targets ``[utt][metric]`` (NaN where a metric failed); the time is counted."""
        cfg = self.settings
        t0 = time.monotonic()
        result = evaluate_metrics(signals, cleans, cfg.rate, metrics=list(cfg.targets), n_jobs=cfg.n_jobs, ids=ids,
                                  timeout=cfg.metric_timeout)
        self.host.totals.add("metric_seconds", time.monotonic() - t0)
        return [normalize_scores(list(cfg.targets), row, cfg.pesq_mapping) for row in result.rows]

    def update(self, pairs: list[tuple[np.ndarray, np.ndarray, list]]) -> list[float]:
        """One discriminator step per (reference, degraded, targets); NaN targets and too-short pairs skipped."""
        losses = []
        for ref_wav, deg_wav, target in pairs:
            if any(math.isnan(t) for t in target):
                continue
            loss = self.host.discriminator_loss(ref_wav, deg_wav, target)
            if loss is None:
                continue
            self.host.discriminator_step(loss)
            losses.append(float(loss.detach()))
        return losses

    def replay(self, rng: np.random.Generator) -> list[tuple]:
        """``history_portion`` of the history's (clean, enhanced, targets), drawn with ``rng``."""
        history = self.host.history
        return [(*history.load_audio(entry), entry["targets"])
                for entry in history.sample(self.settings.history_portion, rng)]

    def update_history(self, current: list[Scored], epoch: int) -> None:
        """Add the epoch's enhanced utterances (not those whose targets failed) to the history."""
        rank, world = distributed()
        for item in current:
            if not item.failed:
                self.host.history.add(item.uid, epoch, item.enhanced, item.clean, item.enhanced_targets,
                                       write=rank == 0)
        if world > 1:
            torch.distributed.barrier()  # history files are on disk before anyone reads them

    # -- the phase ---------------------------------------------------------------------------------
    def collect(self, utterances: list, generator: int) -> list[Scored]:
        """Steps 1 and 2: enhance and score this rank's share, then gather the whole set on every rank."""
        history = self.host.history
        enhanced = self.enhance(generator, utterances)
        ids = [u for u, _, _ in utterances]
        cleans = [c.numpy() for _, _, c in utterances]
        noisies = [x.numpy() for _, x, _ in utterances]
        enh_targets = self.score(enhanced, cleans, ids)
        missing = [i for i, u in enumerate(ids) if u not in history.noisy_targets]
        if missing:
            targets = self.score([noisies[i] for i in missing], [cleans[i] for i in missing], [ids[i] for i in missing])
            for i, t in zip(missing, targets):
                history.noisy_targets[ids[i]] = t
        mine = [Scored(ids[i], noisies[i], cleans[i], enhanced[i], enh_targets[i], history.noisy_targets[ids[i]])
                for i in range(len(ids))]
        current = [item for part in _all_gather(mine) for item in part]  # identical updates on every rank
        for item in current:
            history.noisy_targets[item.uid] = item.noisy_targets
        if self.settings.listening:  # per-epoch keys (uid@epochN) are never looked up again
            keep = {item.uid for item in current}
            history.noisy_targets = {k: v for k, v in history.noisy_targets.items() if k in keep or "@epoch" not in k}
        return current

    def run(self, epoch: int, utterances: list) -> dict:
        """The whole phase for the epoch's ``(id, noisy, clean)`` utterances; returns its log stats."""
        rng = np.random.default_rng([self.settings.seed, int(epoch)])
        generator = int(rng.integers(self.n))
        current = self.collect(utterances, generator)
        ones = [1.0] * self.n
        triple = [pair for item in current for pair in ((item.clean, item.enhanced, item.enhanced_targets),
                                                        (item.clean, item.noisy, item.noisy_targets),
                                                        (item.clean, item.clean, ones))]
        d_current = self.update(triple)
        d_history = self.update(self.replay(rng) + [(i.clean, i.enhanced, i.enhanced_targets) for i in current])
        self.update_history(current, epoch)
        d_current += self.update(triple)
        stats = {"d_loss_current": float(np.mean(d_current)) if d_current else math.nan,
                 "d_loss_history": float(np.mean(d_history)) if d_history else math.nan,
                 "d_generator": generator, "d_skipped": sum(item.failed for item in current)}
        for k, metric in enumerate(self.settings.targets):
            values = [item.enhanced_targets[k] for item in current]
            stats[f"d_target_{metric}"] = float(np.nanmean(values)) if not all(map(math.isnan, values)) else math.nan
        return stats
