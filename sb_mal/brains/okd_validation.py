"""MetricGAN-OKD validation scored while the next epoch trains (``valid_overlap``).

Validation enhances a few hundred utterances with every generator (milliseconds each on a GPU) and
scores them with several metrics (a tenth of a second and more each, on the CPU). Without overlap
the device waits for the scores. With it:

1. at the end of a validating epoch ``e`` that another epoch follows, the generators' outputs go to
   the metric workers as one evaluation and the epoch's checkpoint is written at once, its
   validation keys ``-inf`` (never the best) and ``valid_pending: e`` in its meta; the epoch's log
   line is kept in the checkpoint, marked pending;
2. the Brain polls the workers between the generator steps of epoch ``e + 1`` (never waiting);
3. before the discriminator phase of epoch ``e + 1`` takes the workers (and before the end of the
   fit and any test), the scores are taken: the log line is written, then the checkpoint's meta
   completed. Nothing else changes: the same checkpoints, meta and log lines as when scoring waits.

A run killed between 1 and 3 resumes from that checkpoint (the latest), whose weights are the ones
validated: the validation is run again there, before training goes on, and its line is written once.

:class:`ValidationScores` is the one scoring path of both modes: all generators' outputs in one
evaluation, sorted by utterance id within each generator, means taken per generator.
"""

from __future__ import annotations

import logging
import math

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import ckpt_recency
from torch.utils.data import DataLoader

from sb_mal.metrics.pool import MetricPool, get_pool
from sb_mal.metrics.results import EvalResult

logger = logging.getLogger(__name__)

__all__ = ["PENDING", "OverlappedValidation", "ValidationScores", "checkpoint_meta"]

#: meta key of a checkpoint whose validation scores are still being computed (its epoch)
PENDING = "valid_pending"


def checkpoint_meta(stats: dict) -> dict:
    """Validation stats as checkpoint meta: a missing or NaN score is ``-inf`` (never preferred)."""
    return {k: (-math.inf if v is None or math.isnan(v) else v) for k, v in stats.items()}


class ValidationScores:
    """The validation outputs of every generator (``{i: [(id, enhanced, clean), ...]}``) scored as one
    evaluation on the metric workers of ``n_jobs`` (0: in this process, when :meth:`stats` is asked).

    Example
    -------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(8000) * 0.1
    >>> n = np.random.default_rng(1).standard_normal(8000) * 0.01
    >>> outputs = {0: [("b", x + n, x), ("a", x + 2 * n, x)], 1: [("a", x + n, x)]}  # SI-SDR 20 dB and 14 dB
    >>> stats = ValidationScores(outputs, 16000, ["si_sdr"], n_jobs=0).stats()
    >>> {k: round(v) for k, v in stats.items()}  # generator 0: the mean of its two utterances
    {'g0_si_sdr': 17, 'g1_si_sdr': 20}
    """

    def __init__(self, outputs: dict, rate: int, metrics: list[str], n_jobs: int, timeout: float = 120.0):
        self.groups = []  # (generator, number of utterances)
        ids, enhanced, clean = [], [], []
        for i in sorted(outputs):
            outs = sorted(outputs[i], key=lambda t: t[0])
            self.groups.append((i, len(outs)))
            for uid, e, c in outs:
                ids.append(f"g{i}/{uid}")
                enhanced.append(e)
                clean.append(c)
        pool = MetricPool(n_jobs=0) if n_jobs == 0 else get_pool(n_jobs, timeout)
        self._pending = pool.submit(enhanced, clean, rate, metrics, ids)
        self._stats: dict | None = None

    def poll(self) -> None:
        """Give idle workers their next utterances (never waits)."""
        self._pending.poll()

    @property
    def size(self) -> int:
        return sum(count for _, count in self.groups)

    def stats(self) -> dict:
        """``{"g<i>_<metric>": mean}`` for every generator, waiting for the scores still being computed
        (:attr:`scored_before` says how many were in when it was asked)."""
        if self._stats is None:
            self.scored_before = self._pending.scored()
            result = self._pending.result()
            self._stats, start = {}, 0
            for i, count in self.groups:
                rows = result.rows[start:start + count]
                start += count
                means = EvalResult.from_rows([r["id"] for r in rows], rows, result.metrics).means
                self._stats.update({f"g{i}_{m}": v for m, v in means.items()})
        return self._stats


class OverlappedValidation:
    """Brain mixin of MetricGAN-OKD's validation, overlapped or not (module docstring). The Brain keeps
    ``self._valid_outputs`` (generator -> outputs), ``self._pending_valid`` (None) and ``self._valid_source``
    (None), and has ``targets``, ``rate``, ``epoch_log``, ``checkpointer`` and ``end_epoch``."""

    def fit(self, epoch_counter, train_set, valid_set=None, progressbar=None, train_loader_kwargs={},  # noqa: B006
            valid_loader_kwargs={}):  # noqa: B006
        """SpeechBrain's fit; the validation set is kept (a validation a kill left pending is redone from
        it) and the last pending scores are taken before returning."""
        self._valid_source = (valid_set, dict(valid_loader_kwargs))
        try:
            super().fit(epoch_counter, train_set, valid_set, progressbar, train_loader_kwargs, valid_loader_kwargs)
        except BaseException:
            self.drop_validation()  # the checkpoint stays pending: a resumed run validates it again
            raise
        self.finish_validation()

    def on_fit_start(self):
        """The usual start (recovery included); then, if the recovered checkpoint's validation was still
        being scored when the run stopped, that validation again (its weights are the ones loaded)."""
        self.drop_validation()
        super().on_fit_start()
        if not hasattr(self.checkpointer, "update_meta"):  # no AtomicCheckpointer: validation never overlaps
            return
        recovered = getattr(self.checkpointer, "recovered", None)
        for ckpt in self.checkpointer.list_checkpoints():
            if PENDING in ckpt.meta and (recovered is None or ckpt.path != recovered.path):
                logger.warning("checkpoint %s: its validation (epoch %s) was never scored and cannot be now (the "
                               "weights loaded are another checkpoint's); it is never chosen as the best",
                               ckpt.path, ckpt.meta[PENDING])
        if recovered is None or PENDING not in recovered.meta:
            return
        epoch = int(recovered.meta[PENDING])
        entry = self.epoch_log.recovered_pending or {"meta": {"epoch": epoch}, "stats": {}}
        logger.info("epoch %d's validation was being scored when the run stopped; validating its checkpoint again",
                    epoch)
        keys = self.checkpoint_keys()
        rng = torch.get_rng_state()  # the validation again must not change the training that follows
        try:
            stats = self._validate_again(epoch)
        finally:
            torch.set_rng_state(rng)
        self._complete(epoch, stats, entry, keys)

    def checkpoint_keys(self) -> list[str]:
        """The meta key each generator's best checkpoint is chosen by: ``g<i>_<its target metric>``."""
        return [f"g{i}_{m}" for i, m in enumerate(self.targets)]

    def validation_scores(self) -> ValidationScores:
        """This validation's outputs, handed to the metric workers."""
        h = self.hparams
        names = list(h.valid_metrics or dict.fromkeys([*self.targets, "stoi"]))
        return ValidationScores(self._valid_outputs, self.rate, names, int(h.n_jobs), float(h.metric_timeout))

    def overlaps(self, epoch) -> bool:
        """Whether epoch ``epoch``'s validation is scored while the next epoch trains: ``valid_overlap``,
        metric workers (``n_jobs`` > 0), one process, and another epoch to come."""
        h = self.hparams
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        return (bool(h.valid_overlap) and int(h.n_jobs) > 0 and world == 1 and epoch is not None
                and epoch < h.epoch_counter.limit and hasattr(self.checkpointer, "update_meta"))

    def end_validation(self, epoch, keys: list[str]) -> None:
        """The end of a validating epoch: checkpoint and log line now (scores waited for) or pending."""
        scores = self.validation_scores()
        if self.overlaps(epoch):
            self.end_epoch(epoch, {**dict.fromkeys(keys, -math.inf), PENDING: epoch}, max_keys=keys, log_pending=True,
                           train_stats=self.train_stats)
            self._pending_valid = (epoch, scores, dict(self.epoch_log.entry), list(keys))
            scores.poll()
            return
        stats = scores.stats()
        self.end_epoch(epoch, checkpoint_meta(stats), max_keys=keys, train_stats=self.train_stats, valid_stats=stats)

    def poll_validation(self) -> None:
        """Between steps: give the metric workers their next validation utterances (never waits)."""
        if self._pending_valid is not None:
            self._pending_valid[1].poll()

    def finish_validation(self) -> None:
        """Take the pending validation's scores (waiting for the rest): its log line, then its meta."""
        if self._pending_valid is None:
            return
        epoch, scores, entry, keys = self._pending_valid
        self._pending_valid = None
        stats = scores.stats()
        logger.info("epoch %d's validation: %d of %d utterances scored while the next epoch trained", epoch,
                    scores.scored_before, scores.size)
        self._complete(epoch, stats, entry, keys)

    def drop_validation(self) -> None:
        """Forget a pending validation without its scores (the metric workers on it are replaced)."""
        if self._pending_valid is not None:
            self._pending_valid[1].cancel()
            self._pending_valid = None

    def _save_intra_epoch_ckpt(self):
        """An intra-epoch checkpoint (``ckpt_interval_*``) would be recovered before a pending one: the
        pending scores are taken first."""
        self.finish_validation()
        super()._save_intra_epoch_ckpt()

    def _complete(self, epoch: int, stats: dict, entry: dict, keys: list[str]) -> None:
        """The log line, then the checkpoint's meta as waiting for the scores would have written it (keys
        the validation did not score removed), then the pruning that the scores now allow."""
        stats_all = {**entry.get("stats", {}), "valid_stats": dict(stats)}
        self.epoch_log.write_once({"meta": entry.get("meta", {"epoch": epoch}), "stats": stats_all})
        ckpt = self.checkpointer.find_checkpoint(ckpt_predicate=lambda c: c.meta.get(PENDING) == epoch)
        if ckpt is None:
            logger.warning("epoch %d's validation scores have no checkpoint to go to (it was removed); they are in "
                           "the log only", epoch)
            return
        unscored = [k for k in keys if k not in stats]
        self.checkpointer.update_meta(ckpt, checkpoint_meta(stats), remove=(PENDING, *unscored))
        self.checkpointer.delete_checkpoints(num_to_keep=1, max_keys=keys, importance_keys=[ckpt_recency])

    def _validate_again(self, epoch: int) -> dict:
        valid_set, kwargs = self._valid_source or (None, {})
        if valid_set is None:
            logger.warning("epoch %d: no validation set to score its checkpoint again; it keeps no scores", epoch)
            return {}
        if not isinstance(valid_set, DataLoader):
            valid_set = self.make_dataloader(valid_set, stage=sb.Stage.VALID, ckpt_prefix=None, **kwargs)
        self.on_stage_start(sb.Stage.VALID, epoch)
        self.modules.eval()
        with torch.no_grad():
            for batch in valid_set:
                self.evaluate_batch(batch, sb.Stage.VALID)
        return self.validation_scores().stats()
