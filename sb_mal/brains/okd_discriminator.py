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
(never a crash, never a hang). Every update goes through the Brain's ``training_ctx`` and
``scaler`` (mixed precision) and its non-finite check, and clips to ``max_grad_norm``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from sb_mal.brains.ddp import unwrap
from sb_mal.metrics import evaluate as evaluate_metrics
from sb_mal.metrics.targets import normalize_scores

__all__ = ["DiscriminatorPhase", "Scored", "distributed"]


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


class DiscriminatorPhase:
    """The discriminator phase of a :class:`~sb_mal.brains.MetricGANOKDBrain` (module docstring)."""

    def __init__(self, brain):
        self.brain = brain

    # -- sub-steps ---------------------------------------------------------------------------------
    def enhance(self, generator: int, utterances: list) -> list[np.ndarray]:
        """Enhance ``(id, noisy, clean)`` utterances with one generator (eval mode, no gradient); in
        listening enhancement, the clean speech modified by it plus the noise."""
        b = self.brain
        gen = unwrap(b.modules[b.gen_names[generator]])
        gen.eval()
        try:
            with torch.no_grad():
                return [b._enhance(generator, x[None].to(b.device), c[None].to(b.device))[0].float().cpu().numpy()
                        for _, x, c in utterances]
        finally:
            gen.train()

    def score(self, signals: list, cleans: list, ids: list) -> list[list[float]]:
        """Normalised targets ``[utt][metric]`` (NaN where a metric failed); the time is counted."""
        b = self.brain
        t0 = time.monotonic()
        result = evaluate_metrics(signals, cleans, b.rate, metrics=b.targets, n_jobs=b.hparams.n_jobs, ids=ids,
                                  timeout=b.hparams.metric_timeout)
        b.totals.add("metric_seconds", time.monotonic() - t0)
        return [normalize_scores(b.targets, row, b.pesq_mapping) for row in result.rows]

    def update(self, pairs: list[tuple[np.ndarray, np.ndarray, list]]) -> list[float]:
        """One discriminator step per (reference, degraded, targets); NaN targets and too-short pairs skipped."""
        b = self.brain
        disc, opt = b.modules.discriminator, b.optimizers_dict["discriminator"]
        min_frames = getattr(unwrap(disc), "min_frames", 1)
        losses = []
        for ref_wav, deg_wav, target in pairs:
            if any(math.isnan(t) for t in target):
                continue
            n = min(len(ref_wav), len(deg_wav))
            ref = torch.as_tensor(np.asarray(ref_wav[:n]), dtype=torch.float32, device=b.device)[None]
            deg = torch.as_tensor(np.asarray(deg_wav[:n]), dtype=torch.float32, device=b.device)[None]
            with b.training_ctx:
                r, d = b.log1p(ref), b.log1p(deg)
                if r.shape[1] < min_frames:
                    continue
                pred = disc(r, d)
                loss = torch.mean((pred.float() - torch.tensor([target], device=b.device)) ** 2)
            opt.zero_grad(set_to_none=True)
            scaled = b.scaler.scale(loss)
            b.check_loss_isfinite(scaled)
            scaled.backward()
            b.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(disc.parameters(), b.max_grad_norm)
            b.scaler.step(opt)
            b.scaler.update()
            losses.append(float(loss.detach()))
        return losses

    def replay(self, rng: np.random.Generator) -> list[tuple]:
        """``history_portion`` of the history's (clean, enhanced, targets), drawn with ``rng``."""
        history = self.brain.history
        return [(*history.load_audio(entry), entry["targets"])
                for entry in history.sample(self.brain.hparams.history_portion, rng)]

    def update_history(self, current: list[Scored], epoch: int) -> None:
        """Add the epoch's enhanced utterances (not those whose targets failed) to the history."""
        rank, world = distributed()
        for item in current:
            if not item.failed:
                self.brain.history.add(item.uid, epoch, item.enhanced, item.clean, item.enhanced_targets,
                                       write=rank == 0)
        if world > 1:
            torch.distributed.barrier()  # history files are on disk before anyone reads them

    # -- the phase ---------------------------------------------------------------------------------
    def collect(self, utterances: list, generator: int) -> list[Scored]:
        """Steps 1 and 2: enhance and score this rank's share, then gather the whole set on every rank."""
        history = self.brain.history
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
        if getattr(self.brain, "listening", False):  # per-epoch keys (uid@epochN) are never looked up again
            keep = {item.uid for item in current}
            history.noisy_targets = {k: v for k, v in history.noisy_targets.items() if k in keep or "@epoch" not in k}
        return current

    def run(self, epoch: int, utterances: list) -> dict:
        """The whole phase for the epoch's ``(id, noisy, clean)`` utterances; returns its log stats."""
        b = self.brain
        rng = np.random.default_rng([b.hparams.seed, int(epoch)])
        generator = int(rng.integers(b.n))
        current = self.collect(utterances, generator)
        ones = [1.0] * b.n
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
        for k, metric in enumerate(b.targets):
            values = [item.enhanced_targets[k] for item in current]
            stats[f"d_target_{metric}"] = float(np.nanmean(values)) if not all(map(math.isnan, values)) else math.nan
        return stats
