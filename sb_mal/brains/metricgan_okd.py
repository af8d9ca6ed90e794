"""MetricGANOKDBrain: N generators, one metric each, online knowledge distillation (Shin et al. 2023).

Modules (see :func:`sb_mal.models.okd_factory.okd_modules`): ``generator_0 .. generator_{N-1}`` and a
``discriminator`` with N outputs (v2) or N single-output discriminators (v1). Generator ``i`` is
paired with ``target_metrics[i]``.

One epoch (the MetricGAN+ schedule, in the order of the OKD code):

1. the training loader draws ``samples_per_epoch`` utterances (a new draw every epoch);
2. generator step (from epoch 2), per batch, through SpeechBrain's ``fit_batch``: every generator
   enhances the batch once, and
   ``L_Gi = MSE(D(y, G_i(x))[:, i], 1) + alpha * sum_{j != i} MSE(G_i(x), G_j(x).detach())``
   (log1p magnitudes, valid frames only); one backward of ``sum_i L_Gi`` gives each generator the
   gradient of its own loss, and ``optimizers_step`` steps the generators' optimisers;
3. the discriminator phase at the end of the training stage
   (:class:`~sb_mal.brains.okd_discriminator.DiscriminatorPhase`: enhance, score, update on the
   current set, replay of the history, update the history, update again). An utterance whose
   metrics fail (e.g. PESQ errors) is skipped (never a crash or a hang);
4. validation (every ``valid_every`` epochs; in the other epochs only a checkpoint is saved):
   every generator enhances the validation split; the
   checkpointer keeps, for each generator ``i``, the checkpoint with its best validation
   ``target_metrics[i]`` (meta keys ``g<i>_<metric>``). ``evaluate`` tests each generator from its
   own best checkpoint.

With one generator and ``alpha = 0`` this is MetricGAN+ (our baseline, same code).

Warm start (``init_generators_from``, a departure from both papers, which train from scratch): a
run folder, ``CKPT+*`` folder or ``model.ckpt`` of a generator of the same architecture trained
beforehand (e.g. with MSE by ``recipes/baseline/train.py hparams/folders/metricgan_pretrain.yaml``);
every generator starts from its weights when a run starts (not when it resumes), so MetricGAN+ and
OKD can be compared from the same, already useful mask generator.

Listening enhancement (``task: listening``, :mod:`sb_mal.listening`): the same loop, with the
generator applied to the *clean* speech ``s`` of each pair; its output is rescaled to the power of
``s`` (the equal-power rule) and the pair's noise ``n = noisy - clean``, rescaled to the
utterance's SNR (``le_snr_range`` in training, one of ``le_eval_snrs`` in validation and test), is
added. Every score, target and discriminator input then compares ``s`` with ``m + n`` (the
unprocessed reference: ``s + n``); the targets must be intelligibility metrics (siib, estoi,
stoi, haspi).

The Brain is an :class:`~sb_mal.brains.EnhanceBrain`: the declarations it shares (rate, metrics,
pool, budget, loggers, run folder), ``model_config.json``, the test files, the wall-clock budget
and the epoch log are that Brain's. Mixed precision (``--precision``), gradient accumulation, the
non-finite checks, ``no_sync`` and clipping (``max_grad_norm``) are SpeechBrain's own, for the
generators; every discriminator update goes through :meth:`MetricGANOKDBrain.discriminator_step`,
which runs SpeechBrain's ``optimizers_step`` with the discriminator's optimiser alone (gradient
check, scaler, clipping, step counter: ``optimizer_step`` counts generator and discriminator
updates). No private method of SpeechBrain's Brain is overridden. Under DDP each generator is its own DDP module (gradients synchronised),
the metric work of the discriminator step is split across ranks and gathered, and every rank then
runs the same discriminator updates on the same data, so the history stays identical everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import numpy as np
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.sampler import ReproducibleWeightedRandomSampler

from sb_mal.brains.ddp import unwrap
from sb_mal.brains.enhance import ENHANCE_HPARAMS, EnhanceBrain
from sb_mal.brains.hparams import REQUIRED, HParam, HParamsError
from sb_mal.brains.metric_history import MetricHistory
from sb_mal.brains.okd_discriminator import DiscriminatorPhase, PhaseSettings
from sb_mal.brains.okd_validation import OverlappedValidation
from sb_mal.brains.recoverables import RunningTotals, register
from sb_mal.listening import INTELLIGIBILITY_TARGETS, equal_power, noise_at_snr, utterance_snr
from sb_mal.metrics import evaluate as evaluate_metrics
from sb_mal.metrics.cache import default_cache_path
from sb_mal.metrics.targets import TARGET_METRICS

logger = logging.getLogger(__name__)

__all__ = ["MetricGANOKDBrain"]


class MetricGANOKDBrain(OverlappedValidation, EnhanceBrain):
    """MetricGAN+ / MetricGAN-OKD training (see the module docstring).

    Its hyperparameters are declared in ``MetricGANOKDBrain.HPARAMS`` (docs/hparams.md): EnhanceBrain's,
    without the single model's loss and checkpoint choice, plus the generators', the discriminator's
    and the schedule's.
    """

    HPARAMS = ENHANCE_HPARAMS.extend("MetricGANOKDBrain", [
        HParam("target_metrics", "list", REQUIRED, "one target metric per generator"),
        HParam("g_opt_class", "callable", REQUIRED, "optimiser of each generator (!name:)"),
        HParam("d_opt_class", "callable", REQUIRED, "optimiser of the discriminator (!name:)"),
        HParam("epoch_counter", "any", REQUIRED, "speechbrain.utils.epoch_loop.EpochCounter"),
        HParam("output_folder", "str", REQUIRED, "run folder"),
        HParam("alpha", "float", 5.0, "weight of the distillation term (0: no OKD)", low=0),
        HParam("pesq_mapping", "str", "sigmoid", "PESQ normalisation of the discriminator target",
               choices=("sigmoid", "linear")),
        HParam("samples_per_epoch", "int", 100, "utterances drawn per epoch", low=1),
        HParam("history_portion", "float", 0.2, "share of the history replayed per epoch", low=0, high=1),
        HParam("history_folder", "str", None, "where the history's audio lives (default: <output_folder>/history)"),
        HParam("valid_every", "int", 1, "validate every this many epochs (and at the last)", low=1),
        HParam("valid_metrics", "metrics", None, "validation metrics (default: the targets and stoi)"),
        HParam("seed", "int", 0, "seed of the utterance draws and the generator choice"),
        HParam("n_jobs", "int", None, "metric worker processes (default: the cores less one; 0: in the training "
               "process)", low=0),
        HParam("d_pipeline", "bool", True, "score the discriminator's targets while the generator enhances and the "
               "discriminator learns (same results as one after the other; off: one after the other)"),
        HParam("valid_overlap", "bool", True, "score validation on the metric workers while the next epoch's "
               "generators train (same checkpoints and log; the epoch's checkpoint gets its scores before the "
               "discriminator phase of the next; off, or n_jobs 0: scoring waits)"),
        HParam("score_cache", "str", None, "SQLite file of the noisy inputs' scores, kept across runs (default: "
               "$SB_MAL_CACHE or ~/.cache/sb_mal/metric_scores.sqlite; `off`: none)"),
        HParam("task", "str", "enhancement", "enhancement (noisy -> clean) or listening (clean speech modified "
               "before noise is added)", choices=("enhancement", "listening")),
        HParam("le_snr_range", "numbers", [-10.0, 5.0], "listening: training SNRs (dB), uniform in [low, high]"),
        HParam("le_eval_snrs", "numbers", [-5.0, 0.0, 5.0], "listening: validation/test SNRs (dB), one per utterance"),
        HParam("init_generators_from", "str", None, "warm start: a pretrained generator (run folder, CKPT+* folder "
               "or model.ckpt) whose weights start every generator (a fresh run only)"),
    ], drop=["compute_cost", "ckpt_key", "keep_checkpoints", "enhanced_folder"])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h = self.hparams
        if h.n_jobs is None:
            h.n_jobs = max(1, (os.cpu_count() or 2) - 1)
        self.targets = list(h.target_metrics)
        bad = [m for m in self.targets if m not in TARGET_METRICS]
        if bad:
            raise HParamsError(f"target_metrics: unknown metric(s) {bad}; choose from {TARGET_METRICS}")
        self.listening = h.task == "listening"
        if self.listening:
            bad = [m for m in self.targets if m not in INTELLIGIBILITY_TARGETS]
            if bad:
                raise HParamsError(f"target_metrics: {bad} not an intelligibility metric; task 'listening' needs "
                                   f"targets from {INTELLIGIBILITY_TARGETS}")
            if len(h.le_snr_range) != 2 or float(h.le_snr_range[0]) > float(h.le_snr_range[1]):
                raise HParamsError(f"le_snr_range must be [low, high] in dB, got {h.le_snr_range!r}")
            if not h.le_eval_snrs:
                raise HParamsError("le_eval_snrs must list at least one SNR (dB)")
        self.gen_names = sorted((k for k in self.modules if k.startswith("generator_")), key=lambda k: int(k.split("_")[1]))
        if len(self.gen_names) != len(self.targets):
            raise HParamsError(f"{len(self.gen_names)} generators but {len(self.targets)} target metrics "
                               f"{self.targets}")
        if "discriminator" not in self.modules:
            raise ValueError("modules need a 'discriminator'")
        self.n = len(self.targets)
        self.alpha = float(h.alpha)
        self.pesq_mapping = h.pesq_mapping
        self.rate = int(h.sample_rate)
        self.history = MetricHistory(h.history_folder or os.path.join(h.output_folder, "history"), self.rate)
        self.totals = RunningTotals(metric_seconds=0.0)
        self._discriminator_stepping = False
        self._pending_valid = None  # (epoch, ValidationScores) scored while the next epoch trains
        self._valid_source = None  # the fit's validation set, to redo a validation a kill left pending
        self.discriminator_phase = DiscriminatorPhase(self, PhaseSettings(
            targets=tuple(self.targets), rate=self.rate, pesq_mapping=self.pesq_mapping, seed=int(h.seed),
            history_portion=float(h.history_portion), n_jobs=int(h.n_jobs), metric_timeout=float(h.metric_timeout),
            listening=self.listening, pipelined=bool(h.d_pipeline),
            score_cache=None if h.score_cache == "off" else (h.score_cache or str(default_cache_path()))))
        # generators and discriminator, whatever N is; the history, the running totals
        register(self.checkpointer, {**self.modules, "history": self.history, "totals": self.totals},
                 type(self).__name__, optional=["totals"])

    @property
    def metric_seconds(self) -> float:
        """Seconds this run (resumes included) has spent computing metric targets."""
        return self.totals["metric_seconds"]

    # -- optimisers --------------------------------------------------------------------------
    def init_optimizers(self):
        """One optimiser per generator and one for the discriminator, all checkpointed."""
        self.optimizers_dict = {}
        for name in self.gen_names:
            self.optimizers_dict[name] = self.hparams.g_opt_class(self.modules[name].parameters())
        self.optimizers_dict["discriminator"] = self.hparams.d_opt_class(self.modules.discriminator.parameters())
        register(self.checkpointer, {f"{name}_opt": opt for name, opt in self.optimizers_dict.items()},
                 type(self).__name__)

    # -- data --------------------------------------------------------------------------------
    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """PaddedBatch collation; in training, ``samples_per_epoch`` draws per epoch."""
        loader_kwargs.setdefault("collate_fn", PaddedBatch)
        if stage == sb.Stage.TRAIN:
            n = min(int(self.hparams.samples_per_epoch), len(dataset))
            self._sampler = ReproducibleWeightedRandomSampler(
                torch.ones(len(dataset)), num_samples=n, replacement=False, seed=int(self.hparams.seed))
            loader_kwargs["sampler"] = self._sampler
            loader_kwargs.pop("shuffle", None)
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)

    # -- features ----------------------------------------------------------------------------
    def log1p(self, wav: torch.Tensor, lengths=None) -> torch.Tensor:
        """log1p magnitudes ``[B, T, F]`` (padding zeroed): what the discriminator scores."""
        gen = unwrap(self.modules[self.gen_names[0]])
        feats, _, valid = gen.features(wav, lengths)
        return feats * valid[:, :, None].to(feats.dtype)

    def _enhance(self, i: int, noisy, clean=None, lengths=None, output="wav"):
        """Generator ``i``'s output for a batch: the enhanced ``noisy`` speech; in listening
        enhancement, ``m + n`` (``clean`` modified, equal power, plus ``n = noisy - clean``)."""
        gen = self.modules[self.gen_names[i]]
        if not self.listening:
            return gen(noisy, lengths, output=output)
        modified = equal_power(gen(clean, lengths, output="wav"), clean, lengths)
        in_noise = modified + (noisy - clean)
        if output == "features":
            return unwrap(gen).features(in_noise, lengths)
        return in_noise

    def _listening_batch(self, batch, stage):
        """Listening enhancement: the batch's noise rescaled to each utterance's SNR (``noisy = s + n``)."""
        if not self.listening:
            return batch
        noisy, lens = batch.noisy_sig
        clean, _ = batch.clean_sig
        h = self.hparams
        epoch = self.hparams.epoch_counter.current if stage == sb.Stage.TRAIN else None
        snrs = [utterance_snr(uid, h.le_snr_range, h.le_eval_snrs, int(h.seed), epoch) for uid in batch.id]
        noise = noise_at_snr(noisy - clean, clean, snrs, lens)
        batch.noisy_sig = type(batch.noisy_sig)(clean + noise, lens)
        return batch

    # -- generator step ----------------------------------------------------------------------
    def on_stage_start(self, stage, epoch=None):
        """Reset per-epoch state; the sampler draws a new set of utterances every epoch."""
        super().on_stage_start(stage, epoch)
        self._current = []  # (id, noisy, clean) of this epoch's training utterances
        self._valid_outputs = {i: [] for i in range(self.n)}
        if stage == sb.Stage.VALID:  # every `valid_every` epochs and at the last one
            self._validating = (epoch is None or epoch % self.hparams.valid_every == 0
                                or epoch == self.hparams.epoch_counter.limit)
        if stage == sb.Stage.TRAIN:
            self._epoch_clock = (time.monotonic(), self.metric_seconds)
            if epoch is not None and getattr(self, "_sampler", None) is not None:
                self._sampler.set_epoch(epoch)

    def fit_batch(self, batch):
        """Remember the batch for the discriminator phase; from epoch 2, SpeechBrain's ``fit_batch``
        updates every generator (mixed precision, gradient accumulation, non-finite checks, ``no_sync``
        and clipping all come from it). In epoch 1 only the discriminator learns, as in MetricGAN+."""
        self.poll_validation()
        batch = self._listening_batch(batch.to(self.device), sb.Stage.TRAIN)
        noisy, lens = batch.noisy_sig
        clean, _ = batch.clean_sig
        n_samples = noisy.shape[1]
        epoch = self.hparams.epoch_counter.current
        for uid, x, y, rel in zip(batch.id, noisy, clean, lens):
            k = int(round(float(rel) * n_samples))
            # listening: the noise level changes every epoch, so the cached unprocessed scores are per epoch
            key = f"{uid}@epoch{epoch}" if self.listening else uid
            self._current.append((key, x[:k].detach().cpu(), y[:k].detach().cpu()))
        if self.hparams.epoch_counter.current < 2:
            return torch.tensor(0.0)
        return super().fit_batch(batch)

    def compute_forward(self, batch, stage):
        """Every generator's enhanced log1p magnitude ``[B, T, F]`` (with gradient) and the frame mask."""
        noisy, lens = batch.noisy_sig
        clean, _ = batch.clean_sig
        outputs = [self._enhance(i, noisy, clean, lens, output="features") for i in range(self.n)]
        return [enh for enh, _, _ in outputs], outputs[0][2]

    def compute_objectives(self, predictions, batch, stage):
        """``sum_i L_Gi``, ``L_Gi = MSE(D(y, G_i(x))_i, 1) + alpha * sum_{j != i} MSE(G_i(x), G_j(x).detach())``.

        The discriminator stays in train mode (BatchNorm on batch statistics), as it was trained.
        Each ``L_Gi`` depends only on generator ``i``'s weights (the peers enter detached), so one
        backward of the sum gives every generator the gradient of its own loss.
        """
        enhanced, valid = predictions
        clean, lens = batch.clean_sig
        ref = self.log1p(clean, lens)
        m = valid[:, :, None].to(enhanced[0].dtype)
        count = (m.sum() * enhanced[0].shape[2]).clamp(min=1)
        total, losses = 0, {}
        for i, enh in enumerate(enhanced):
            score = self.modules.discriminator(ref, enh)[:, i]
            loss = torch.mean((score.float() - 1.0) ** 2)
            if self.alpha and self.n > 1:
                kd = sum((((enh - peer.detach()) ** 2) * m).sum() / count
                         for j, peer in enumerate(enhanced) if j != i)
                loss = loss + self.alpha * kd
            losses[f"{self.gen_names[i]}_loss"] = loss.detach()
            total = total + loss
        self.stage_terms.add(losses)
        return total

    def freeze_optimizers(self, optimizers):
        """The generator steps move the generators only; a discriminator step moves the discriminator only."""
        if self._discriminator_stepping:
            return {"discriminator": optimizers["discriminator"]}
        return {name: optimizers[name] for name in self.gen_names}

    # -- the discriminator phase's interface (okd_discriminator.DiscriminatorHost) ----------------
    def enhance_for_discriminator(self, generator: int, utterances: list) -> list[np.ndarray]:
        """Generator ``generator``'s output for each ``(id, noisy, clean)`` utterance, one at a time, in
        eval mode without gradient (listening: the clean speech modified by it, plus the noise)."""
        gen = unwrap(self.modules[self.gen_names[generator]])
        gen.eval()
        try:
            with torch.no_grad():
                return [self._enhance(generator, x[None].to(self.device), c[None].to(self.device))[0]
                        .float().cpu().numpy() for _, x, c in utterances]
        finally:
            gen.train()

    def discriminator_loss(self, reference: np.ndarray, degraded: np.ndarray, target) -> torch.Tensor | None:
        """The discriminator's squared error on one pair (``training_ctx``: mixed precision as the
        generators); None for a pair too short for the discriminator."""
        disc = self.modules.discriminator
        n = min(len(reference), len(degraded))
        ref = torch.as_tensor(np.asarray(reference[:n]), dtype=torch.float32, device=self.device)[None]
        deg = torch.as_tensor(np.asarray(degraded[:n]), dtype=torch.float32, device=self.device)[None]
        with self.training_ctx:
            r, d = self.log1p(ref), self.log1p(deg)
            if r.shape[1] < getattr(unwrap(disc), "min_frames", 1):
                return None
            pred = disc(r, d)
            return torch.mean((pred.float() - torch.tensor([target], device=self.device)) ** 2)

    def discriminator_step(self, loss: torch.Tensor) -> None:
        """One discriminator update from ``loss``: its gradient alone (the generator steps leave some in
        the discriminator), then SpeechBrain's ``optimizers_step`` with the discriminator's optimiser
        only (unscale, clipping to ``max_grad_norm``, gradient check, step, scaler update, counter)."""
        self.optimizers_dict["discriminator"].zero_grad(set_to_none=True)
        scaled = self.scaler.scale(loss)
        self.check_loss_isfinite(scaled)
        scaled.backward()
        with self._discriminator_only():
            self.optimizers_step()

    @contextlib.contextmanager
    def _discriminator_only(self):
        self._discriminator_stepping = True
        try:
            yield
        finally:
            self._discriminator_stepping = False

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Keep each learnable sigmoid's slope at most 3.5, as MetricGAN+ does."""
        if should_step:
            with torch.no_grad():
                for name in self.gen_names:
                    unwrap(self.modules[name]).sigmoid.slope.clamp_(max=3.5)

    def on_fit_start(self):
        """EnhanceBrain's start (recovery, epoch log, budget, ``model_config.json``), then the warm start
        of a fresh run."""
        super().on_fit_start()
        if self.hparams.init_generators_from and self.hparams.epoch_counter.current == 0:
            self.warm_start(self.hparams.init_generators_from)

    def run_config(self) -> dict:
        """``model_config.json``: the generators' class and arguments, and which generator has which target."""
        gen = unwrap(self.modules[self.gen_names[0]])
        return {"class": f"{type(gen).__module__}.{type(gen).__qualname__}", "kwargs": gen.config,
                "sample_rate": self.rate, "task": self.hparams.task,
                "recoverables": {m: name for m, name in zip(self.targets, self.gen_names)}}

    def warm_start(self, source) -> None:
        """Load the pretrained generator ``source`` into every generator (strictly: same architecture)."""
        from sb_mal.checkpoints import load_pretrained

        found = load_pretrained(source)
        state = found.model.state_dict()
        for name in self.gen_names:
            try:
                unwrap(self.modules[name]).load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise HParamsError(f"init_generators_from={source!r}: the pretrained generator ({found.where}) does "
                                   f"not fit {name}; give both the same generator sizes: {err}") from err
        logger.info("MetricGAN-OKD: %d generator(s) warm-started from %s", self.n, found.where)

    # -- validation / test -------------------------------------------------------------------
    def evaluate_batch(self, batch, stage):
        """Enhance the batch with every generator and keep the outputs for the metric pool."""
        if stage == sb.Stage.VALID and not self._validating:
            return torch.tensor(0.0)
        batch = self._listening_batch(batch.to(self.device), stage)
        noisy, lens = batch.noisy_sig
        clean, _ = batch.clean_sig
        n_samples = noisy.shape[1]
        gens = self._eval_generators if stage == sb.Stage.TEST else range(self.n)
        with torch.no_grad():
            for i in gens:
                enhanced = self._enhance(i, noisy, clean, lens)
                for uid, e, c, rel in zip(batch.id, enhanced, clean, lens):
                    k = int(round(float(rel) * n_samples))
                    self._valid_outputs[i].append((uid, e[:k].float().cpu().numpy(), c[:k].float().cpu().numpy()))
        return torch.tensor(0.0)

    def _eval_metrics(self, i: int, names) -> dict:
        outs = sorted(self._valid_outputs[i], key=lambda t: t[0])
        result = evaluate_metrics([e for _, e, _ in outs], [c for _, _, c in outs], self.rate, metrics=names,
                                  n_jobs=int(self.hparams.n_jobs), ids=[u for u, _, _ in outs],
                                  timeout=float(self.hparams.metric_timeout))
        return result

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """D step after training; per-generator validation and checkpointing; test summaries."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = self.stage_terms.means()
            self.finish_validation()  # the workers are the discriminator phase's from here
            self.train_stats.update(self.discriminator_phase.run(epoch, self._current))
            started, metric_before = self._epoch_clock
            # wall time of the training stage (generator steps + metric targets + D step) and its metric share
            self.train_stats["epoch_seconds"] = time.monotonic() - started
            self.train_stats["metric_seconds"] = self.metric_seconds - metric_before
            self.train_stats["metric_seconds_total"] = self.metric_seconds
            return
        keys = self.checkpoint_keys()
        if stage == sb.Stage.VALID and not self._validating:
            # no validation this epoch: still a (recent) checkpoint, so a kill loses at most one epoch
            self.end_epoch(epoch, {"end_of_epoch": True}, max_keys=keys, train_stats=self.train_stats)
        elif stage == sb.Stage.VALID:
            self.end_validation(epoch, keys)
        elif stage == sb.Stage.TEST:
            i = self._eval_generators[0]
            result = self._eval_metrics(i, list(self.hparams.test_metrics))
            self.write_test_result(result, suffix=f"_g{i}")
            self._log({"generator": i, "target": self.targets[i], "epoch loaded": self.hparams.epoch_counter.current},
                      test_stats=result.means)
            self.test_stats = getattr(self, "test_stats", {})
            self.test_stats[i] = result.means

    def evaluate(self, test_set, max_key=None, min_key=None, progressbar=None, test_loader_kwargs={}):
        """Test every generator from its own best checkpoint (by its target metric)."""
        self.finish_validation()
        results = {}
        for i, metric in enumerate(self.targets):
            self._eval_generators = [i]
            super().evaluate(test_set, max_key=f"g{i}_{metric}", progressbar=progressbar,
                             test_loader_kwargs=dict(test_loader_kwargs))
            results[i] = self.test_stats[i]
        return results
