"""MALBrain: two-phase Model-as-Loss training.

Phase 1 (epochs ``1 .. phase1_epochs``) trains the whole model with the reconstruction loss
``rec_cost``; or the model starts from a trained checkpoint (``init_from``) and ``phase1_epochs``
is 0. Phase 2 trains with ``lambda_rec * rec_cost + lambda_mal * L_mal`` where ``L_mal`` is
:class:`sb_mal.losses.ModelAsLoss` on the model's own encoder.

A variant is two switches (docs/design.md, "Model as Loss"):

============  ================  ==============
variant       loss_encoder      train_encoder
============  ================  ==============
frozen        snapshot          True
frozen_fe     snapshot          False
dynamic       live              True
============  ================  ==============

``snapshot`` is a frozen copy of the encoder taken when phase 2 starts; it is a recoverable of the
checkpointer (name ``mal_loss``), so a run killed in phase 2 resumes in phase 2 with the same
snapshot. ``train_encoder: False`` freezes the encoder for phase 2 (only the decoder learns);
under DDP this needs ``--find_unused_parameters=True``.

The same two-phase schedule serves the deep-feature baseline of the MAL paper: with
``variant: ssl_l1`` and a ``feature_loss`` (e.g. :class:`sb_mal.losses.SSLL1Loss` on a frozen WavLM),
phase 2 adds ``lambda_mal * feature_loss`` instead of the model's own encoder.

Taps are combined by their (weighted) mean, not their sum (:class:`sb_mal.losses.ModelAsLoss`), so
choosing more taps does not raise the weight of ``L_mal``; ``lambda_mal`` alone sets it.

Gradient share. At the first training step of phase 2 the Brain measures, on that batch, the norms
of the gradients of ``lambda_mal * L_mal`` and of ``lambda_rec * L_rec`` (``lambda_rec`` is 1 by default) with respect to the decoder's parameters
(:func:`gradient_share`) and logs ``share = ||lambda_mal * grad L_mal|| / ||grad L_rec||`` once; it
is written to ``<output_folder>/mal_gradient_share.json`` (with the norms and the share per unit of
lambda), so an experiment can read how much of the phase-2 update the MAL term drives. A resumed
run that finds the file does not measure again. (Skipped with ``lambda_mal: 0``.)

Hparams: everything EnhanceBrain reads, plus ``rec_cost``, ``variant`` (or ``loss_encoder`` +
``train_encoder``), ``mal_taps`` (["bottleneck"]), ``mal_tap_weights`` (equal), ``lambda_mal`` (1.0), ``lambda_rec`` (1.0),
``phase1_epochs`` (0), ``init_from`` (optional run folder / CKPT folder / model.ckpt),
``feature_loss`` (with ``variant: ssl_l1``). For a model without the encode protocol (any
``nn.Module``): ``mal_taps`` are module paths, ``mal_input_fn`` maps waveforms to its input and
``encoder_prefixes`` names its encoder (needed by frozen_fe); see :class:`sb_mal.losses.ModelAsLoss`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable

import speechbrain as sb
import torch

from sb_mal.brains.ddp import unwrap
from sb_mal.brains.enhance import ENHANCE_HPARAMS, EnhanceBrain
from sb_mal.brains.hparams import REQUIRED, HParam, HParamsError
from sb_mal.brains.recoverables import register
from sb_mal.losses.reconstruction import loss_and_terms
from sb_mal.losses.model_as_loss import ModelAsLoss

logger = logging.getLogger(__name__)

__all__ = ["GRADIENT_SHARE_FILE", "MAL_VARIANTS", "MALBrain", "decoder_parameters", "gradient_share"]

#: Where MALBrain writes the gradient share measured at the start of phase 2 (in the output folder).
GRADIENT_SHARE_FILE = "mal_gradient_share.json"


def decoder_parameters(model: torch.nn.Module, encoder_prefixes: Iterable[str] = ()) -> list[torch.nn.Parameter]:
    """The trainable parameters of ``model``'s decoder: ``decoder_modules()`` for sb_mal's backbone,
    else every trainable parameter outside the modules named by ``encoder_prefixes``.

    Example
    -------
    >>> from sb_mal.models import SpectralUNetSE
    >>> model = SpectralUNetSE(channels=(4,), bottleneck_dim=8, rnn_layers=1)
    >>> ids = {id(p) for m in model.decoder_modules() for p in m.parameters()}
    >>> all(id(p) in ids for p in decoder_parameters(model)), len(decoder_parameters(model)) > 0
    (True, True)
    """
    model = unwrap(model)
    if hasattr(model, "decoder_modules"):
        return [p for m in model.decoder_modules() for p in m.parameters() if p.requires_grad]
    prefixes = tuple(f"{p}." for p in encoder_prefixes)
    return [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith(prefixes)]


def gradient_share(rec: torch.Tensor, mal: torch.Tensor, params: Iterable[torch.nn.Parameter],
                   lambda_mal: float = 1.0) -> dict[str, float]:
    """``||lambda_mal * grad mal|| / ||grad rec||`` over ``params`` (the graph is kept for the step).

    Returns the two gradient norms (``rec_grad_norm``, ``mal_grad_norm``, the latter at lambda 1),
    ``share_per_lambda`` (their ratio) and ``share`` (times ``lambda_mal``). Parameters that a loss
    does not reach count as zero gradient.

    Example
    -------
    >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    >>> out = gradient_share((w ** 2).sum(), w.sum(), [w], lambda_mal=2.0)
    >>> round(out["share_per_lambda"], 4), round(out["share"], 4)  # |(1, 1)| / |(2, 4)|, times 2
    (0.3162, 0.6325)
    """
    params = list(params)
    if not params:
        raise ValueError("gradient_share: no parameters to measure on")

    def norm(loss: torch.Tensor) -> float:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return float(torch.sqrt(sum((g.detach().float() ** 2).sum() for g in grads if g is not None)
                                + torch.zeros(())))

    rec_norm, mal_norm = norm(rec), norm(mal)
    per_lambda = mal_norm / rec_norm if rec_norm > 0 else float("inf")
    return {"rec_grad_norm": rec_norm, "mal_grad_norm": mal_norm, "share_per_lambda": per_lambda,
            "lambda_mal": float(lambda_mal), "share": float(lambda_mal) * per_lambda}

#: variant -> (loss_encoder, train_encoder)
MAL_VARIANTS = {"frozen": ("snapshot", True), "frozen_fe": ("snapshot", False), "dynamic": ("live", True)}


class MALBrain(EnhanceBrain):
    """Model-as-Loss training (see the module docstring)."""

    HPARAMS = ENHANCE_HPARAMS.extend("MALBrain", [
        HParam("epoch_counter", "any", REQUIRED, "speechbrain.utils.epoch_loop.EpochCounter (the one given to fit)"),
        HParam("rec_cost", "callable", REQUIRED, "the reconstruction loss L_rec"),
        HParam("variant", "str", None, "a preset of loss_encoder and train_encoder",
               choices=(*MAL_VARIANTS, "ssl_l1")),
        HParam("loss_encoder", "str", None, "overrides the variant's loss encoder", choices=("snapshot", "live")),
        HParam("train_encoder", "bool", None, "overrides whether the variant trains the encoder in phase 2"),
        HParam("mal_taps", "list", None, "taps of L_mal (default: the bottleneck of an encode-protocol model)"),
        HParam("mal_input_fn", "callable", None, "maps waveforms to the model's input (models without encode())"),
        HParam("encoder_prefixes", "list", None, "module paths of the encoder (frozen_fe on a model without "
                                                 "encoder_modules())"),
        HParam("mal_tap_weights", "list", None, "relative weight of each tap (default equal); L_mal is the "
                                                "weighted mean over the taps"),
        HParam("lambda_mal", "float", 1.0, "weight of L_mal in phase 2", low=0),
        HParam("lambda_rec", "float", 1.0, "weight of L_rec in phase 2", low=0),
        HParam("phase1_epochs", "int", 0, "epochs of reconstruction-only training before phase 2", low=0),
        HParam("init_from", "str", None, "a run folder, CKPT+* folder or model.ckpt to start from"),
        HParam("trust_code", "bool", False, "let init_from's folder name a model class outside sb_mal's allow-list"),
        HParam("feature_loss", "callable", None, "the frozen deep-feature loss of variant ssl_l1"),
    ], drop=["compute_cost"])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h = self.hparams
        variant, feature_loss = h.variant, h.feature_loss
        if (variant == "ssl_l1") != (feature_loss is not None):
            raise HParamsError("variant 'ssl_l1' needs a `feature_loss` in the hparams, and `feature_loss` needs "
                               "variant 'ssl_l1'")
        default_encoder, default_train = MAL_VARIANTS.get(variant, ("snapshot", True))
        self.loss_encoder = h.loss_encoder or default_encoder
        self.train_encoder = default_train if h.train_encoder is None else h.train_encoder
        self.phase1_epochs = h.phase1_epochs
        self.lambda_mal, self.lambda_rec = h.lambda_mal, h.lambda_rec
        if feature_loss is not None:  # deep-feature baseline: an external frozen network
            self.loss_encoder = "external"
            self.mal_loss = feature_loss  # its frozen network follows the inputs
        else:
            self.mal_loss = ModelAsLoss(self.modules.model, taps=h.mal_taps, encoder=self.loss_encoder,
                                        input_fn=h.mal_input_fn, train_encoder=self.train_encoder,
                                        encoder_prefixes=h.encoder_prefixes, snapshot_now=False,
                                        tap_weights=h.mal_tap_weights)  # the snapshot follows the inputs
            register(self.checkpointer, {"mal_loss": self.mal_loss}, "MALBrain")  # the snapshot, once taken
        self._phase2_ready = False
        self.grad_share: dict | None = None
        logger.info("MAL: loss encoder %s, encoder %s in phase 2, phase 1 = %d epoch(s)", self.loss_encoder,
                    "trained" if self.train_encoder else "frozen", self.phase1_epochs)

    # -- phases ------------------------------------------------------------------------------
    def in_phase2(self, epoch=None) -> bool:
        """Whether ``epoch`` (default: the current one) belongs to phase 2."""
        epoch = self.hparams.epoch_counter.current if epoch is None else epoch
        return epoch > self.phase1_epochs

    def on_fit_start(self):
        """Recover (or initialise from ``init_from``), then re-enter phase 2 if resuming there."""
        super().on_fit_start()
        init_from = self.hparams.init_from
        if init_from and self.hparams.epoch_counter.current == 0:
            from sb_mal.checkpoints import load_pretrained

            found = load_pretrained(init_from, trust_code=self.hparams.trust_code)
            unwrap(self.modules.model).load_state_dict(found.model.state_dict())
            logger.info("MAL: model initialised from %s (%s)", found.where,
                        ", ".join(f"{k}={v:.3f}" for k, v in found.meta.items() if isinstance(v, float)))
        if not self.train_encoder and self.distributed_launch and not getattr(self, "find_unused_parameters", False):
            raise ValueError("MAL variant frozen_fe (train_encoder: False) under DDP needs --find_unused_parameters=True")

    def _enter_phase2(self):
        model = unwrap(self.modules.model)
        if self.loss_encoder == "snapshot" and not self._loss_ready():
            self.mal_loss.take_snapshot(model)
        if not self.train_encoder:  # also after a resume, when the snapshot came from the checkpoint
            self.mal_loss.freeze_encoder(model)
        self._phase2_ready = True

    def on_stage_start(self, stage, epoch=None):
        """Switch to phase 2 at the first epoch past ``phase1_epochs``."""
        super().on_stage_start(stage, epoch)
        if self.in_phase2(epoch) and not self._phase2_ready:
            self._enter_phase2()

    def _loss_ready(self) -> bool:
        return bool(getattr(self.mal_loss, "ready", True))

    # -- objective ---------------------------------------------------------------------------
    def compute_loss(self, predictions, clean, lens, stage):
        """Reconstruction in phase 1; ``lambda_rec * rec + lambda_mal * L_mal`` in phase 2."""
        rec, parts = loss_and_terms(self.hparams.rec_cost, predictions, clean, lens)
        terms = {f"rec_{k}": v for k, v in parts.items()}
        terms["rec"] = rec.detach()
        if self.lambda_mal == 0 or not self.in_phase2() or not self._loss_ready():
            return rec, terms
        mal, parts = loss_and_terms(self.mal_loss, predictions, clean, lens)
        if stage == sb.Stage.TRAIN and self.grad_share is None and torch.is_grad_enabled():
            self._measure_grad_share(rec, mal)
        terms.update(parts)
        terms["mal"] = mal.detach()
        return self.lambda_rec * rec + self.lambda_mal * mal, terms

    # -- gradient share --------------------------------------------------------------------------
    def _share_file(self) -> str | None:
        folder = self.hparams.output_folder
        return os.path.join(folder, GRADIENT_SHARE_FILE) if folder else None

    def _measure_grad_share(self, rec, mal) -> None:
        """Measure and log the MAL gradient share once per run (see the module docstring)."""
        path = self._share_file()
        if path and os.path.exists(path):  # measured before a resume: keep that value
            with open(path, encoding="utf-8") as fin:
                self.grad_share = json.load(fin)
            return
        prefixes = getattr(self.mal_loss, "encoder_prefixes", ())
        share = gradient_share(self.lambda_rec * rec, mal, decoder_parameters(self.modules.model, prefixes),
                               self.lambda_mal)
        share.update(epoch=self.hparams.epoch_counter.current, taps=list(getattr(self.mal_loss, "taps", [])),
                     variant=self.hparams.variant, lambda_rec=self.lambda_rec)
        self.grad_share = share
        logger.info("MAL gradient share at the start of phase 2 (decoder parameters): ||lambda_mal * grad L_mal|| / "
                    "||grad L_rec|| = %.4f (lambda_mal %g; %.4f per unit of lambda)", share["share"],
                    self.lambda_mal, share["share_per_lambda"])
        if path and sb.utils.distributed.if_main_process():
            from sb_mal.fileio import atomic_write_text

            atomic_write_text(path, json.dumps(share, indent=2) + "\n")
