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

In one process (no DDP) steps 1, 2 and the first update of step 3 run as a pipeline
(:meth:`~DiscriminatorPhase.stream_current`, ``d_pipeline``): the generator enhances utterance
k + 1 and the metric workers score the next ones while the discriminator learns on utterance k,
with the same updates in the same order as one step after the other (a test checks the weights).
The replay keeps its place after the current set's updates (MetricGAN+'s order). The noisy inputs'
targets are computed once per utterance for the run (in the history, checkpointed) and, through a
:class:`~sb_mal.metrics.cache.ScoreCache` keyed by content, once for every run on the same data.

An utterance whose targets contain NaN is skipped by every update and never enters the history
(never a crash, never a hang).

The phase talks to its Brain through :class:`DiscriminatorHost` only: the history and running
totals, the generators' outputs, the discriminator's loss on one pair and one update step (the
Brain's, through SpeechBrain's ``optimizers_step``); its settings come as a :class:`PhaseSettings`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from sb_mal.brains.metric_history import MetricHistory
from sb_mal.brains.recoverables import RunningTotals
from sb_mal.metrics import evaluate as evaluate_metrics
from sb_mal.metrics.cache import ScoreCache
from sb_mal.metrics.pool import MetricPool, get_pool
from sb_mal.metrics.stream import ScoreStream
from sb_mal.metrics.targets import normalize_scores

logger = logging.getLogger(__name__)

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
    pipelined: bool = True  #: stream the current set's targets (see :meth:`DiscriminatorPhase.stream_current`)
    score_cache: str | None = None  #: SQLite file of the noisy inputs' scores across runs (None: none)


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
        self._cache: ScoreCache | None = None
        if settings.score_cache:
            try:
                self._cache = ScoreCache(settings.score_cache)
            except OSError as err:
                logger.warning("%s: the noisy inputs are scored in every run", err)

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
        return [self._normalised(row) for row in self._scores(signals, cleans, ids)]

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
        """Steps 1 and 2 one after the other: enhance and score this rank's share, then gather the
        whole set on every rank."""
        history = self.host.history
        enhanced = self.enhance(generator, utterances)
        ids = [u for u, _, _ in utterances]
        cleans = [c.numpy() for _, _, c in utterances]
        noisies = [x.numpy() for _, x, _ in utterances]
        enh_targets = self.score(enhanced, cleans, ids)
        cached = self._cached_noisy(utterances)
        missing = [i for i, u in enumerate(ids) if u not in history.noisy_targets and i not in cached]
        for i, scores in cached.items():
            history.noisy_targets[ids[i]] = self._normalised(scores)
        if missing:
            rows = self._scores([noisies[i] for i in missing], [cleans[i] for i in missing], [ids[i] for i in missing])
            for i, row in zip(missing, rows):
                self._remember_noisy(utterances[i], row)
        mine = [Scored(ids[i], noisies[i], cleans[i], enhanced[i], enh_targets[i], history.noisy_targets[ids[i]])
                for i in range(len(ids))]
        current = [item for part in _all_gather(mine) for item in part]  # identical updates on every rank
        for item in current:
            history.noisy_targets[item.uid] = item.noisy_targets
        self._forget_old_epochs(current)
        return current

    def stream_current(self, utterances: list, generator: int) -> tuple[list[Scored], list[float]]:
        """Steps 1-3a as a pipeline (one process): the generator enhances the utterances one by one
        as the metric pool asks for work, the pool scores them on every worker, and the
        discriminator's first updates on each utterance run as soon as its targets are in, while the
        pool goes on with the next ones. The updates, their order and the targets are those of
        :meth:`collect` followed by :meth:`update`, so the weights are the same; the time counted as
        metric time is the time spent waiting for targets. Returns the scored set and the losses."""
        cfg, history = self.settings, self.host.history
        names = list(cfg.targets)
        cached = self._cached_noisy(utterances)
        needed = {i for i, (uid, _, _) in enumerate(utterances) if uid not in history.noisy_targets and i not in cached}
        enhanced: dict[int, np.ndarray] = {}

        def feed():
            for i, (uid, x, c) in enumerate(utterances):
                clean = c.numpy()
                if i in needed:
                    yield ("noisy", i), x.numpy(), clean
                enhanced[i] = self.enhance(generator, [utterances[i]])[0]
                yield ("enhanced", i), enhanced[i], clean

        pool = MetricPool(n_jobs=0) if cfg.n_jobs == 0 else get_pool(cfg.n_jobs, cfg.metric_timeout)
        stream = ScoreStream(pool, feed(), cfg.rate, names)
        current, losses, waited = [], [], 0.0
        for i, (uid, x, c) in enumerate(utterances):
            t0 = time.monotonic()
            row = self._logged(uid, *stream.get(("enhanced", i)))
            if i in needed:
                self._remember_noisy(utterances[i], self._logged(uid, *stream.get(("noisy", i))))
            elif i in cached:
                history.noisy_targets[uid] = self._normalised(cached[i])
            waited += time.monotonic() - t0
            item = Scored(uid, x.numpy(), c.numpy(), enhanced.pop(i), self._normalised(row), history.noisy_targets[uid])
            losses += self.update(self._triples([item]))
            current.append(item)
        self.host.totals.add("metric_seconds", waited)
        self._forget_old_epochs(current)
        return current, losses

    # -- targets -------------------------------------------------------------------------------
    def _normalised(self, row: dict) -> list[float]:
        return normalize_scores(list(self.settings.targets), row, self.settings.pesq_mapping)

    def _scores(self, signals: list, cleans: list, ids: list) -> list[dict]:
        cfg = self.settings
        t0 = time.monotonic()
        result = evaluate_metrics(signals, cleans, cfg.rate, metrics=list(cfg.targets), n_jobs=cfg.n_jobs, ids=ids,
                                  timeout=cfg.metric_timeout)
        self.host.totals.add("metric_seconds", time.monotonic() - t0)
        return result.rows

    @staticmethod
    def _logged(uid: str, scores: dict, problems: list) -> dict:
        for msg in problems:
            logger.warning("metrics: utterance %s: %s", uid, msg)
        return scores

    def _cached_noisy(self, utterances: list) -> dict[int, dict]:
        """The cross-run cache's scores of the noisy inputs not yet in this run's history, by position."""
        if self._cache is None:
            return {}
        found, history = {}, self.host.history
        for i, (uid, x, c) in enumerate(utterances):
            if uid not in history.noisy_targets:
                scores = self._cache.get(self._cache.key(x.numpy(), c.numpy(), self.settings.rate),
                                         list(self.settings.targets))
                if scores is not None:
                    found[i] = scores
        return found

    def _remember_noisy(self, utterance, row: dict) -> None:
        uid, x, c = utterance
        self.host.history.noisy_targets[uid] = self._normalised(row)
        if self._cache is not None:
            self._cache.put(self._cache.key(x.numpy(), c.numpy(), self.settings.rate),
                            {m: row[m] for m in self.settings.targets if m in row})

    def _forget_old_epochs(self, current: list[Scored]) -> None:
        """Listening enhancement: per-epoch keys (uid@epochN) are never looked up again."""
        if self.settings.listening:
            history, keep = self.host.history, {item.uid for item in current}
            history.noisy_targets = {k: v for k, v in history.noisy_targets.items() if k in keep or "@epoch" not in k}

    def _triples(self, items: list[Scored]) -> list[tuple]:
        ones = [1.0] * self.n
        return [pair for item in items for pair in ((item.clean, item.enhanced, item.enhanced_targets),
                                                    (item.clean, item.noisy, item.noisy_targets),
                                                    (item.clean, item.clean, ones))]

    def run(self, epoch: int, utterances: list) -> dict:
        """The whole phase for the epoch's ``(id, noisy, clean)`` utterances; returns its log stats."""
        rng = np.random.default_rng([self.settings.seed, int(epoch)])
        generator = int(rng.integers(self.n))
        if self.settings.pipelined and distributed()[1] == 1:
            current, d_current = self.stream_current(utterances, generator)
        else:  # under DDP every rank needs the whole set before the first update
            current = self.collect(utterances, generator)
            d_current = self.update(self._triples(current))
        d_history = self.update(self.replay(rng) + [(i.clean, i.enhanced, i.enhanced_targets) for i in current])
        self.update_history(current, epoch)
        d_current += self.update(self._triples(current))
        stats = {"d_loss_current": float(np.mean(d_current)) if d_current else math.nan,
                 "d_loss_history": float(np.mean(d_history)) if d_history else math.nan,
                 "d_generator": generator, "d_skipped": sum(item.failed for item in current)}
        for k, metric in enumerate(self.settings.targets):
            values = [item.enhanced_targets[k] for item in current]
            stats[f"d_target_{metric}"] = float(np.nanmean(values)) if not all(map(math.isnan, values)) else math.nan
        return stats
