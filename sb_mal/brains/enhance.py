"""EnhanceBrain: the base Brain of every sb_mal enhancement recipe.

What it does beyond ``speechbrain.Brain``:

* trains ``modules.model`` (any ``nn.Module`` mapping noisy ``[B, T]`` + relative lengths to
  enhanced ``[B, T]``) with ``hparams.compute_cost``, any loss with SpeechBrain's signature (use
  :class:`sb_mal.losses.WeightedSum` for a weighted sum; its terms are logged separately);
* validation and test metrics through the persistent :mod:`sb_mal.metrics` pool (the work is split
  across DDP ranks and gathered, so every rank takes the same checkpoint decision);
* keeps the checkpoint with the best validation PESQ (``hparams.ckpt_key``, default ``pesq``);
* writes test-set enhanced audio and per-utterance scores;
* writes ``model_config.json`` (class and constructor arguments of the model) so that
  ``sb-mal export`` can build an inference folder without the training YAML;
* calls ``set_epoch`` on training sets that draw new data every epoch (on-the-fly mixing);
* keeps the default ``fit_batch``, so ``--precision``, gradient accumulation, gradient clipping and
  DDP work as in any SpeechBrain recipe.

The hyperparameters it reads are declared once, in ``EnhanceBrain.HPARAMS`` (types, defaults,
ranges; listed in docs/hparams.md) and checked when the Brain is built.
"""

from __future__ import annotations

import json
import logging
import math
import os
from types import SimpleNamespace

import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from sb_mal.audio import write_audio
from sb_mal.brains.budget import TrainingBudget
from sb_mal.brains.ddp import GlooFriendlyDDP, unwrap
from sb_mal.brains.hparams import REQUIRED, HParam, HParams
from sb_mal.brains.recoverables import EpochLog, register
from sb_mal.metrics import evaluate as evaluate_metrics
from sb_mal.fileio import atomic_write_text
from sb_mal.losses.reconstruction import loss_and_terms, terms_to_floats
from sb_mal.metrics.results import EvalResult

logger = logging.getLogger(__name__)

__all__ = ["ENHANCE_HPARAMS", "EnhanceBrain", "StageTerms", "model_config"]

#: What every enhancement Brain reads (the paradigms' Brains extend it).
ENHANCE_HPARAMS = HParams("EnhanceBrain", [
    HParam("compute_cost", "callable", REQUIRED, "the training loss, SpeechBrain's signature"),
    HParam("epoch_counter", "any", None, "speechbrain.utils.epoch_loop.EpochCounter (the one given to fit)"),
    HParam("sample_rate", "int", 16000, "rate of the audio", low=1),
    HParam("valid_metrics", "metrics", ["pesq", "stoi"], "metrics (or groups) computed on the validation split"),
    HParam("test_metrics", "metrics", ["intrusive"], "metrics (or groups) computed on the test split"),
    HParam("n_jobs", "int", 2, "metric worker processes (0: in the training process)", low=0),
    HParam("metric_timeout", "float", 120.0, "seconds per utterance before a metric worker is replaced", low=1),
    HParam("ckpt_key", "str", "pesq", "validation metric that picks the best checkpoint (`loss`: the lowest)"),
    HParam("keep_checkpoints", "int", 1, "checkpoints kept (the best by ckpt_key)", low=1),
    HParam("max_train_minutes", "float", None, "wall-clock budget: training stops at the first step past it (the "
                                               "epoch ends there: validation, checkpoint)", low=0),
    HParam("output_folder", "str", None, "run folder (model_config.json, test scores)"),
    HParam("enhanced_folder", "str", None, "where the test set's enhanced audio is written"),
    HParam("train_logger", "any", None, "a SpeechBrain train logger"),
    HParam("tensorboard_logger", "any", None, "speechbrain.utils.train_logger.TensorboardLogger"),
])


def model_config(model: torch.nn.Module) -> dict:
    """Class path and constructor arguments of ``model`` (needs a ``config`` dict attribute)."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, dict):
        raise TypeError(
            f"{type(model).__name__} has no `config` dict of constructor arguments; sb_mal models record theirs"
        )
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}", "kwargs": cfg}


class StageTerms:
    """The named loss terms of one stage, summed on their device and turned into numbers once.

    Example
    -------
    >>> terms = StageTerms()
    >>> terms.add({"l1": torch.tensor(1.0)}); terms.add({"l1": torch.tensor(3.0)})
    >>> terms.means()
    {'l1': 2.0}
    """

    def __init__(self):
        self.sums: dict = {}
        self.count = 0

    def add(self, terms: dict) -> None:
        """One step's terms (detached tensors or numbers; no host-device synchronisation)."""
        if not terms:
            return
        for name, value in terms.items():
            value = value.detach() if isinstance(value, torch.Tensor) else value
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def means(self) -> dict[str, float]:
        """Each term's mean over the steps (one synchronisation for all of them)."""
        return {k: v / self.count for k, v in terms_to_floats(self.sums).items()} if self.count else {}


def _gather_rows(rows: list) -> list:
    """All ranks' rows (every rank gets the full list); identity without DDP."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return rows
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, rows)
    return [r for part in parts for r in part]


class EnhanceBrain(GlooFriendlyDDP, sb.Brain):
    """Brain for waveform-to-waveform speech enhancement (see the module docstring)."""

    HPARAMS = ENHANCE_HPARAMS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not hasattr(self, "hparams"):  # SpeechBrain sets it only when hparams are given
            self.hparams = SimpleNamespace()
        self.HPARAMS.apply(self.hparams)
        # the epoch's log line travels in its checkpoint (a kill between the two loses nothing)
        self.epoch_log = EpochLog(lambda: [self.hparams.train_logger, self.hparams.tensorboard_logger])
        self.budget = TrainingBudget()
        register(self.checkpointer, {"epoch_log": self.epoch_log}, type(self).__name__, optional=["epoch_log"])

    # -- data --------------------------------------------------------------------------------
    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """As SpeechBrain's, plus PaddedBatch collation for any dict dataset and epoch hooks."""
        if not isinstance(dataset, torch.utils.data.DataLoader) and "collate_fn" not in loader_kwargs:
            loader_kwargs["collate_fn"] = PaddedBatch
        if stage == sb.Stage.TRAIN:
            self._train_dataset = dataset
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)

    # -- forward / loss ----------------------------------------------------------------------
    def compute_forward(self, batch, stage):
        """Enhance the noisy batch."""
        batch = batch.to(self.device)
        noisy, lens = batch.noisy_sig
        return self.modules.model(noisy, lens)

    def compute_objectives(self, predictions, batch, stage):
        """Loss (and, outside training, collect outputs for metrics and files)."""
        clean, lens = batch.clean_sig
        loss, terms = self.compute_loss(predictions, clean, lens, stage)
        self.stage_terms.add(terms)
        if stage != sb.Stage.TRAIN:
            self._collect(batch, predictions, clean, lens, stage)
        return loss

    def compute_loss(self, predictions, clean, lens, stage):
        """``(loss, terms)``: the training objective and named parts of it for the logs.

        ``terms`` are detached scalar tensors (or floats), the parts the loss returns
        (:func:`sb_mal.losses.reconstruction.loss_and_terms`); :class:`StageTerms` sums them on the
        device and turns them into numbers once per stage, so logging costs no host-device
        synchronisation per step. Subclasses change the objective here (e.g. MALBrain's phase 2).
        """
        return loss_and_terms(self.hparams.compute_cost, predictions, clean, lens)

    def _collect(self, batch, predictions, clean, lens, stage):
        n = predictions.shape[1]
        for uid, pred, ref, rel in zip(batch.id, predictions.detach(), clean, lens):
            k = int(round(float(rel) * n))
            p = pred[:k].float().cpu().numpy()
            self._outputs.append((uid, p, ref[:k].float().cpu().numpy()))
            if stage == sb.Stage.TEST and self.hparams.enhanced_folder:
                peak = max(1.0, float(abs(p).max()))
                write_audio(os.path.join(self.hparams.enhanced_folder, f"{uid}.wav"), p / peak, self._rate)

    # -- stages ------------------------------------------------------------------------------
    @property
    def _rate(self) -> int:
        return self.hparams.sample_rate

    def fit_batch(self, batch):
        """SpeechBrain's step, then the wall-clock budget: past it, this step is the epoch's last."""
        loss = super().fit_batch(batch)
        if self.budget.expired(self.hparams.max_train_minutes):
            self.optimizer_step_limit = self.optimizer_step  # SpeechBrain ends the epoch and the fit here
        return loss

    def on_fit_start(self):
        """The usual start (DDP, optimisers, recovery), then the epoch log, the budget's clock and
        ``model_config.json`` (what ``sb-mal export`` builds the model from) next to the checkpoints."""
        super().on_fit_start()
        self.epoch_log.restore()
        self.budget.start()
        folder = self.hparams.output_folder
        if folder and sb.utils.distributed.if_main_process():
            cfg = self.run_config()
            if cfg is not None:
                atomic_write_text(os.path.join(folder, "model_config.json"), json.dumps(cfg, indent=2) + "\n")

    def run_config(self) -> dict | None:
        """The content of ``model_config.json``: the trained model's class, arguments and rate (None:
        the model records no arguments, nothing is written)."""
        try:
            cfg = model_config(unwrap(self.modules.model))
        except TypeError as err:
            logger.warning("model_config.json not written: %s", err)
            return None
        cfg["sample_rate"] = self._rate
        return cfg

    def on_stage_start(self, stage, epoch=None):
        """Reset accumulators; tell epoch-aware training sets which epoch it is."""
        self._outputs: list = []
        self.stage_terms = StageTerms()
        if stage == sb.Stage.TRAIN and epoch is not None:
            dataset = getattr(self, "_train_dataset", None)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    def _metrics(self, stage) -> EvalResult | None:
        names = self.hparams.valid_metrics if stage == sb.Stage.VALID else self.hparams.test_metrics
        if not names or not self._outputs:
            return None
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        # Every rank saw the whole valid/test set; each scores a disjoint share, then all gather.
        mine = self._outputs[rank::world]
        result = evaluate_metrics(
            [p for _, p, _ in mine], [c for _, _, c in mine], self._rate, metrics=names,
            n_jobs=self.hparams.n_jobs, ids=[u for u, _, _ in mine], timeout=self.hparams.metric_timeout,
            progress=not getattr(self, "noprogressbar", False) and stage == sb.Stage.TEST,
        )
        rows = sorted(_gather_rows(result.rows), key=lambda r: r["id"])
        failures = _gather_rows(result.failures)
        scores = [{k: v for k, v in r.items() if k != "id"} for r in rows]
        return EvalResult.from_rows([r["id"] for r in rows], scores, result.metrics, failures)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log, checkpoint by the validation key, write test results."""
        stats = {"loss": stage_loss, **self.stage_terms.means()}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        result = self._metrics(stage)
        if result is not None:
            stats.update(result.means)
        if stage == sb.Stage.VALID:
            key = self.hparams.ckpt_key
            meta = dict(stats)
            if key not in meta or meta[key] is None or math.isnan(meta[key]):
                meta[key] = -math.inf if key != "loss" else math.inf  # never preferred
            keys = {"min_keys": ["loss"]} if key == "loss" else {"max_keys": [key]}
            self.end_epoch(epoch, meta, **keys, num_to_keep=self.hparams.keep_checkpoints,
                           train_stats=getattr(self, "train_stats", None), valid_stats=stats)
        elif stage == sb.Stage.TEST:
            counter = self.hparams.epoch_counter
            self._log({"epoch loaded": counter.current if counter is not None else None}, test_stats=stats)
            if result is not None:
                self.write_test_result(result)
            self.test_stats = stats

    def end_epoch(self, epoch, meta: dict, *, max_keys=None, min_keys=None, num_to_keep: int = 1,
                  log_pending: bool = False, **stats) -> None:
        """The end of an epoch: its log line staged, the checkpoint (kept by ``max_keys``/``min_keys``),
        the line committed, then the wall-clock budget checked.

        The line travels in the checkpoint and is written after it, so an epoch redone after a kill
        appears once in the log. ``stats`` are the logger's (``train_stats=``, ``valid_stats=``).
        ``log_pending``: the line waits for stats still being computed (see :class:`EpochLog`).
        """
        self.epoch_log.stage({"epoch": epoch}, pending=log_pending, **stats)
        self.checkpointer.save_and_keep_only(meta=meta, max_keys=list(max_keys or []), min_keys=list(min_keys or []),
                                             num_to_keep=num_to_keep)
        self.epoch_log.commit()
        self.budget.check(self.hparams.max_train_minutes, epoch, self.hparams.epoch_counter)

    def write_test_result(self, result: EvalResult, suffix: str = "") -> None:
        """``test_scores<suffix>.csv`` and ``test_summary<suffix>.json`` in the run folder (main process),
        the summary naming the checkpoint the scores belong to."""
        folder = self.hparams.output_folder
        if folder and sb.utils.distributed.if_main_process():
            result.to_csv(os.path.join(folder, f"test_scores{suffix}.csv"))
            tested = getattr(self.checkpointer, "recovered", None)
            extra = {"checkpoint": os.path.basename(str(tested.path))} if tested is not None else {}
            result.to_json(os.path.join(folder, f"test_summary{suffix}.json"), extra)

    def _log(self, meta, **stats):
        for logger_name in ("train_logger", "tensorboard_logger"):
            target = getattr(self.hparams, logger_name)
            if target is not None:
                target.log_stats(meta, **{k: v for k, v in stats.items() if v is not None})
