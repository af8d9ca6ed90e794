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

Hparams: everything EnhanceBrain reads, plus ``rec_cost``, ``variant`` (or ``loss_encoder`` +
``train_encoder``), ``mal_taps`` (["bottleneck"]), ``lambda_mal`` (1.0), ``lambda_rec`` (1.0),
``phase1_epochs`` (0), ``init_from`` (optional run folder / CKPT folder / model.ckpt),
``feature_loss`` (with ``variant: ssl_l1``). For a model without the encode protocol (any
``nn.Module``): ``mal_taps`` are module paths, ``mal_input_fn`` maps waveforms to its input and
``encoder_prefixes`` names its encoder (needed by frozen_fe); see :class:`sb_mal.losses.ModelAsLoss`.
"""

from __future__ import annotations

import logging

from sb_mal.brains.ddp import unwrap
from sb_mal.brains.enhance import EnhanceBrain, loss_terms
from sb_mal.losses.model_as_loss import ModelAsLoss

logger = logging.getLogger(__name__)

__all__ = ["MAL_VARIANTS", "MALBrain"]

#: variant -> (loss_encoder, train_encoder)
MAL_VARIANTS = {"frozen": ("snapshot", True), "frozen_fe": ("snapshot", False), "dynamic": ("live", True)}


class MALBrain(EnhanceBrain):
    """Model-as-Loss training (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h = self.hparams
        variant = getattr(h, "variant", None)
        if variant is not None and variant not in (*MAL_VARIANTS, "ssl_l1"):
            raise ValueError(f"variant must be one of {sorted(MAL_VARIANTS) + ['ssl_l1']}, got {variant!r}")
        feature_loss = getattr(h, "feature_loss", None)
        if (variant == "ssl_l1") != (feature_loss is not None):
            raise ValueError("variant 'ssl_l1' needs a `feature_loss` in the hparams, and `feature_loss` needs variant 'ssl_l1'")
        default_encoder, default_train = MAL_VARIANTS.get(variant, ("snapshot", True))
        self.loss_encoder = getattr(h, "loss_encoder", None) or default_encoder
        train_encoder = getattr(h, "train_encoder", None)
        self.train_encoder = default_train if train_encoder is None else bool(train_encoder)
        if not hasattr(h, "rec_cost"):
            raise ValueError("MALBrain needs a `rec_cost` (reconstruction loss) in the hparams")
        self.phase1_epochs = int(getattr(h, "phase1_epochs", 0) or 0)
        self.lambda_mal = float(getattr(h, "lambda_mal", 1.0))
        self.lambda_rec = float(getattr(h, "lambda_rec", 1.0))
        if feature_loss is not None:  # deep-feature baseline: an external frozen network
            self.loss_encoder = "external"
            self.mal_loss = feature_loss.to(self.device)
        else:
            taps = getattr(h, "mal_taps", None)
            self.mal_loss = ModelAsLoss(self.modules.model, taps=None if taps is None else list(taps),
                                        encoder=self.loss_encoder, input_fn=getattr(h, "mal_input_fn", None),
                                        train_encoder=self.train_encoder,
                                        encoder_prefixes=getattr(h, "encoder_prefixes", None),
                                        snapshot_now=False).to(self.device)
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable("mal_loss", self.mal_loss)
        self._phase2_ready = False
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
        init_from = getattr(self.hparams, "init_from", None)
        if init_from and self.hparams.epoch_counter.current == 0:
            from sb_mal.checkpoints import load_run_model

            loaded, ckpt, meta = load_run_model(init_from)
            unwrap(self.modules.model).load_state_dict(loaded.state_dict())
            logger.info("MAL: model initialised from %s (%s)", ckpt,
                        ", ".join(f"{k}={v:.3f}" for k, v in meta.items() if isinstance(v, float)))
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
        rec_cost = self.hparams.rec_cost
        rec = rec_cost(predictions, clean, lens)
        terms = loss_terms(rec_cost, "rec_")
        terms["rec"] = rec.detach()
        if self.lambda_mal == 0 or not self.in_phase2() or not self._loss_ready():
            return rec, terms
        mal = self.mal_loss(predictions, clean, lens)
        terms.update(loss_terms(self.mal_loss))
        terms["mal"] = mal.detach()
        return self.lambda_rec * rec + self.lambda_mal * mal, terms
