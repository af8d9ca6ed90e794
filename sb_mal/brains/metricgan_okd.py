"""MetricGANOKDBrain: N generators, one metric each, online knowledge distillation (Shin et al. 2023).

Modules (see :func:`sb_mal.models.metricgan.okd_modules`): ``generator_0 .. generator_{N-1}`` and a
``discriminator`` with N outputs (v2) or N single-output discriminators (v1). Generator ``i`` is
paired with ``target_metrics[i]``.

One epoch (the MetricGAN+ schedule, in the order of the OKD code):

1. the training loader draws ``samples_per_epoch`` utterances (a new draw every epoch);
2. generator step (from epoch 2), per batch: the peers' outputs ``G_j(x)`` are computed without
   gradient; then for each ``i``:
   ``L_Gi = MSE(D(y, G_i(x))[:, i], 1) + alpha * sum_{j != i} MSE(G_i(x), G_j(x).detach())``
   (log1p magnitudes, valid frames only), one optimiser step per generator;
3. discriminator step (end of the training stage): one generator drawn at random enhances the
   epoch's utterances; all N target metrics are computed by the metric pool (noisy-input scores
   are computed once and cached; clean-vs-clean is 1); D is trained on (clean, enhanced),
   (clean, noisy) and (clean, clean) of the current set, then on a ``history_portion`` replay of
   earlier epochs plus the current set, then the current set is added to the history and D sees it
   once more. An utterance whose metrics fail (e.g. PESQ errors) is skipped for that step;
4. validation (every ``valid_every`` epochs): every generator enhances the validation split; the
   checkpointer keeps, for each generator ``i``, the checkpoint with its best validation
   ``target_metrics[i]`` (meta keys ``g<i>_<metric>``). ``evaluate`` tests each generator from its
   own best checkpoint.

With one generator and ``alpha = 0`` this is MetricGAN+ (our baseline, same code).

Mixed precision (``--precision``) goes through ``training_ctx`` / ``scaler``; gradient clipping
uses ``max_grad_norm``. Under DDP each generator is its own DDP module (gradients synchronised),
the metric work of the discriminator step is split across ranks and gathered, and every rank then
runs the same discriminator updates on the same data, so the history stays identical everywhere.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.sampler import ReproducibleWeightedRandomSampler

from sb_mal.brains.ddp import GlooFriendlyDDP, unwrap
from sb_mal.brains.hparams import REQUIRED, HParam, HParams, HParamsError
from sb_mal.brains.metric_history import MetricHistory
from sb_mal.brains.recoverables import RunningTotals, register
from sb_mal.dsp import stft
from sb_mal.fileio import atomic_write_text
from sb_mal.metrics import evaluate as evaluate_metrics
from sb_mal.metrics.targets import TARGET_METRICS, normalize_scores
from sb_mal.models.metricgan import log1p_magnitude

logger = logging.getLogger(__name__)

__all__ = ["MetricGANOKDBrain"]


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_gather(obj) -> list:
    rank, world = _distributed()
    if world == 1:
        return [obj]
    parts = [None] * world
    torch.distributed.all_gather_object(parts, obj)
    return parts


class MetricGANOKDBrain(GlooFriendlyDDP, sb.Brain):
    """MetricGAN+ / MetricGAN-OKD training (see the module docstring).

    Its hyperparameters are declared in ``MetricGANOKDBrain.HPARAMS`` (docs/hparams.md).
    """

    HPARAMS = HParams("MetricGANOKDBrain", [
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
        HParam("valid_metrics", "list", None, "validation metrics (default: the targets and stoi)"),
        HParam("test_metrics", "list", ["intrusive"], "test metrics"),
        HParam("n_jobs", "int", 2, "metric worker processes (0: in the training process)", low=0),
        HParam("metric_timeout", "float", 120.0, "seconds per utterance before a metric worker is replaced", low=1),
        HParam("sample_rate", "int", 16000, "rate of the audio", low=1),
        HParam("seed", "int", 0, "seed of the utterance draws and the generator choice"),
        HParam("train_logger", "any", None, "a SpeechBrain train logger"),
    ])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h = self.HPARAMS.apply(self.hparams)
        self.targets = list(h.target_metrics)
        bad = [m for m in self.targets if m not in TARGET_METRICS]
        if bad:
            raise HParamsError(f"unknown target metric(s) {bad}; choose from {TARGET_METRICS}")
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
        # generators and discriminator, whatever N is; the history and the running totals
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

    def _step(self, loss: torch.Tensor, name: str) -> None:
        opt = self.optimizers_dict[name]
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(self.modules[name].parameters(), self.max_grad_norm)
        self.scaler.step(opt)

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
    def _log1p(self, wav: torch.Tensor, lengths=None) -> torch.Tensor:
        gen = unwrap(self.modules[self.gen_names[0]])
        feats, _, valid = gen.features(wav, lengths)
        return feats * valid[:, :, None].to(feats.dtype)

    def _enhance(self, i: int, wav, lengths=None, output="wav"):
        return self.modules[self.gen_names[i]](wav, lengths, output=output)

    # -- generator step ----------------------------------------------------------------------
    def on_stage_start(self, stage, epoch=None):
        """Reset per-epoch state; the sampler draws a new set of utterances every epoch."""
        self._current = []  # (id, noisy, clean) of this epoch's training utterances
        self._valid_outputs = {i: [] for i in range(self.n)}
        self._g_losses = {name: [] for name in self.gen_names}
        if stage == sb.Stage.TRAIN:
            self._epoch_clock = (time.monotonic(), self.metric_seconds)
            if epoch is not None and getattr(self, "_sampler", None) is not None:
                self._sampler.set_epoch(epoch)

    def fit_batch(self, batch):
        """Remember the batch for the D step; from epoch 2, update every generator (OKD loss)."""
        batch = batch.to(self.device)
        noisy, lens = batch.noisy_sig
        clean, _ = batch.clean_sig
        n_samples = noisy.shape[1]
        for uid, x, y, rel in zip(batch.id, noisy, clean, lens):
            k = int(round(float(rel) * n_samples))
            self._current.append((uid, x[:k].detach().cpu(), y[:k].detach().cpu()))
        if self.hparams.epoch_counter.current < 2:
            return torch.tensor(0.0)
        disc = self.modules.discriminator  # stays in train mode, as it was trained (BatchNorm on batch statistics)
        total = 0.0
        with self.training_ctx:
            ref = self._log1p(clean, lens)
            with torch.no_grad():
                peers = [self._enhance(j, noisy, lens, output="features")[0].detach() for j in range(self.n)]
        for i, name in enumerate(self.gen_names):
            with self.training_ctx:
                enh, _, valid = self._enhance(i, noisy, lens, output="features")
                score = disc(ref, enh)[:, i]
                adv = torch.mean((score.float() - 1.0) ** 2)
                kd = torch.zeros((), device=self.device)
                if self.alpha and self.n > 1:
                    m = valid[:, :, None].to(enh.dtype)
                    count = (m.sum() * enh.shape[2]).clamp(min=1)
                    for j in range(self.n):
                        if j != i:
                            kd = kd + (((enh - peers[j]) ** 2) * m).sum() / count
                loss = adv + self.alpha * kd
            self._step(loss, name)
            with torch.no_grad():
                unwrap(self.modules[name]).sigmoid.slope.clamp_(max=3.5)  # as MetricGAN+: keep the slope bounded
            self._g_losses[name].append(float(loss.detach()))
            total += float(loss.detach())
        self.scaler.update()
        self.optimizer_step += 1
        return torch.tensor(total / self.n)

    # -- discriminator step ------------------------------------------------------------------
    def _score(self, enhanced: list, clean: list, ids: list) -> list[list[float]]:
        """Normalised targets [utt][metric] (NaN where a metric failed)."""
        t0 = time.monotonic()
        result = evaluate_metrics(enhanced, clean, self.rate, metrics=self.targets,
                                  n_jobs=int(self.hparams.n_jobs), ids=ids,
                                  timeout=float(self.hparams.metric_timeout))
        self.totals.add("metric_seconds", time.monotonic() - t0)
        return [normalize_scores(self.targets, row, self.pesq_mapping) for row in result.rows]

    def _d_update(self, pairs: list[tuple[np.ndarray, np.ndarray, list[float]]]) -> list[float]:
        """One D step per (reference, degraded, targets); pairs with a NaN target are skipped."""
        disc = self.modules.discriminator
        losses = []
        for ref_wav, deg_wav, target in pairs:
            if any(math.isnan(t) for t in target):
                continue
            n = min(len(ref_wav), len(deg_wav))
            ref = torch.as_tensor(np.asarray(ref_wav[:n]), dtype=torch.float32, device=self.device)[None]
            deg = torch.as_tensor(np.asarray(deg_wav[:n]), dtype=torch.float32, device=self.device)[None]
            with self.training_ctx:
                r, d = self._log1p(ref), self._log1p(deg)
                if r.shape[1] < getattr(unwrap(disc), "min_frames", 1):
                    continue
                pred = disc(r, d)
                loss = torch.mean((pred.float() - torch.tensor([target], device=self.device)) ** 2)
            self._step(loss, "discriminator")
            self.scaler.update()
            losses.append(float(loss.detach()))
        return losses

    def _train_discriminator(self, epoch: int) -> dict:
        rank, world = _distributed()
        rng = np.random.default_rng([int(self.hparams.seed), int(epoch)])
        chooser = int(rng.integers(self.n))
        mine = self._current
        # enhance this rank's share with the chosen generator
        gen = unwrap(self.modules[self.gen_names[chooser]])
        gen.eval()
        enhanced = []
        with torch.no_grad():
            for _, x, _ in mine:
                enhanced.append(gen(x[None].to(self.device))[0].float().cpu().numpy())
        gen.train()
        ids = [u for u, _, _ in mine]
        cleans = [c.numpy() for _, _, c in mine]
        noisies = [x.numpy() for _, x, _ in mine]
        enh_targets = self._score(enhanced, cleans, ids)
        missing = [i for i, u in enumerate(ids) if u not in self.history.noisy_targets]
        if missing:
            noisy_t = self._score([noisies[i] for i in missing], [cleans[i] for i in missing], [ids[i] for i in missing])
            for i, t in zip(missing, noisy_t):
                self.history.noisy_targets[ids[i]] = t
        # every rank gets the whole epoch's set: identical D updates, identical history
        gathered = _all_gather([(ids[i], noisies[i], cleans[i], enhanced[i], enh_targets[i],
                                 self.history.noisy_targets[ids[i]]) for i in range(len(ids))])
        current = [item for part in gathered for item in part]
        for uid, _, _, _, _, noisy_t in current:
            self.history.noisy_targets[uid] = noisy_t
        ones = [1.0] * self.n
        stats = {"d_loss_current": [], "d_loss_history": []}
        triple = [p for uid, noisy, clean, enh, t_enh, t_noisy in current
                  for p in ((clean, enh, t_enh), (clean, noisy, t_noisy), (clean, clean, ones))]
        stats["d_loss_current"] += self._d_update(triple)
        replay = self.history.sample(float(self.hparams.history_portion), rng)
        hist_pairs = [(*self.history.load_audio(entry), entry["targets"]) for entry in replay]
        hist_pairs += [(clean, enh, t_enh) for _, _, clean, enh, t_enh, _ in current]
        stats["d_loss_history"] += self._d_update(hist_pairs)
        for uid, _, clean, enh, t_enh, _ in current:
            if not any(math.isnan(t) for t in t_enh):
                self.history.add(uid, epoch, enh, clean, t_enh, write=rank == 0)
        if world > 1:
            torch.distributed.barrier()  # history files are on disk before anyone reads them
        stats["d_loss_current"] += self._d_update(triple)
        skipped = sum(any(math.isnan(t) for t in item[4]) for item in current)
        out = {k: float(np.mean(v)) if v else math.nan for k, v in stats.items()}
        out.update({"d_generator": chooser, "d_skipped": skipped,
                    **{f"d_target_{m}": float(np.nanmean([item[4][k] for item in current])) for k, m in enumerate(self.targets)}})
        return out

    def on_fit_start(self):
        """Usual start (DDP, optimisers, recovery) plus the generator config for ``sb-mal export``."""
        super().on_fit_start()
        folder = self.hparams.output_folder
        if folder and sb.utils.distributed.if_main_process():
            gen = unwrap(self.modules[self.gen_names[0]])
            cfg = {"class": f"{type(gen).__module__}.{type(gen).__qualname__}", "kwargs": gen.config,
                   "sample_rate": self.rate, "recoverables": {m: name for m, name in zip(self.targets, self.gen_names)}}
            atomic_write_text(os.path.join(folder, "model_config.json"), json.dumps(cfg, indent=2) + "\n")

    # -- validation / test -------------------------------------------------------------------
    def evaluate_batch(self, batch, stage):
        """Enhance the batch with every generator and keep the outputs for the metric pool."""
        batch = batch.to(self.device)
        noisy, lens = batch.noisy_sig
        clean, _ = batch.clean_sig
        n_samples = noisy.shape[1]
        gens = self._eval_generators if stage == sb.Stage.TEST else range(self.n)
        with torch.no_grad():
            for i in gens:
                enhanced = self._enhance(i, noisy, lens)
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
            self.train_stats = {f"{n}_loss": float(np.mean(v)) for n, v in self._g_losses.items() if v}
            self.train_stats.update(self._train_discriminator(epoch))
            started, metric_before = self._epoch_clock
            # wall time of the training stage (generator steps + metric targets + D step) and its metric share
            self.train_stats["epoch_seconds"] = time.monotonic() - started
            self.train_stats["metric_seconds"] = self.metric_seconds - metric_before
            self.train_stats["metric_seconds_total"] = self.metric_seconds
            return
        if stage == sb.Stage.VALID:
            names = list(self.hparams.valid_metrics or dict.fromkeys([*self.targets, "stoi"]))
            stats = {}
            for i in range(self.n):
                means = self._eval_metrics(i, names).means
                stats.update({f"g{i}_{m}": v for m, v in means.items()})
            meta = {k: (-math.inf if v is None or math.isnan(v) else v) for k, v in stats.items()}
            keys = [f"g{i}_{m}" for i, m in enumerate(self.targets)]
            if self.hparams.train_logger is not None:
                self.hparams.train_logger.log_stats({"epoch": epoch}, train_stats=self.train_stats, valid_stats=stats)
            self.checkpointer.save_and_keep_only(meta=meta, max_keys=keys)
        elif stage == sb.Stage.TEST:
            i = self._eval_generators[0]
            names = list(self.hparams.test_metrics)
            result = self._eval_metrics(i, names)
            folder = self.hparams.output_folder
            if folder and sb.utils.distributed.if_main_process():
                result.to_csv(os.path.join(folder, f"test_scores_g{i}.csv"))
                result.to_json(os.path.join(folder, f"test_summary_g{i}.json"))
            if self.hparams.train_logger is not None:
                self.hparams.train_logger.log_stats({"generator": i, "target": self.targets[i],
                                                     "epoch loaded": self.hparams.epoch_counter.current},
                                                    test_stats=result.means)
            self.test_stats = getattr(self, "test_stats", {})
            self.test_stats[i] = result.means

    def _fit_valid(self, valid_set, epoch, enable):
        every = int(self.hparams.valid_every)
        last = epoch == self.hparams.epoch_counter.limit
        if valid_set is not None and (epoch % every == 0 or last):
            return super()._fit_valid(valid_set, epoch, enable)
        # no validation this epoch: still save a (recent) checkpoint so a kill loses at most one epoch
        if self.checkpointer is not None and sb.utils.distributed.if_main_process():
            self.checkpointer.save_and_keep_only(meta={"end_of_epoch": True},
                                                 max_keys=[f"g{i}_{m}" for i, m in enumerate(self.targets)])
        return None

    def evaluate(self, test_set, max_key=None, min_key=None, progressbar=None, test_loader_kwargs={}):
        """Test every generator from its own best checkpoint (by its target metric)."""
        results = {}
        for i, metric in enumerate(self.targets):
            self._eval_generators = [i]
            super().evaluate(test_set, max_key=f"g{i}_{metric}", progressbar=progressbar,
                             test_loader_kwargs=dict(test_loader_kwargs))
            results[i] = self.test_stats[i]
        return results
