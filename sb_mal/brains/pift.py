"""PositionInvariantBrain: fine-tune a pretrained enhancer with a loss on frozen SSL features.

The enhancer ``modules.model`` starts from a pretrained SE model (``init_from``) and is trained so
that the features of a frozen self-supervised model (WavLM by default) computed on its output
match those of the clean speech (docs/design.md, "Position-invariant SSL fine-tuning"):

``ssl_mse`` (:class:`~sb_mal.losses.SSLMSELoss`)
    frame-aligned feature MSE, the baseline;
``ssl_mse_pad`` (:class:`~sb_mal.losses.SSLMSEPadLoss`)
    the clean reference zero-padded by 2-5 % (whole SSL frames), padded frames dropped;
``ssl_softdtw`` (:class:`~sb_mal.losses.SSLSoftDTWLoss`)
    the noisy *input* is speed-perturbed, so the enhanced output and the clean reference differ
    in length, and the two feature sequences are compared by the soft-DTW divergence.

The SSL model is frozen and lives inside the loss (``hparams.ssl_loss``), never in ``modules``, so
Brain's ``.train()`` and the optimiser never see it; it stays out of the checkpoints too.

Speed perturbation (implementer's choice where the paper is silent). One factor per training
batch, drawn uniformly from ``speed_factors`` (default 0.80, 0.85, ..., 1.20, the set of the prior
soft-DTW code) by a generator seeded with ``(speed_seed, epoch, step)``, so a resumed run draws
the same factors. A factor ``f`` plays the signal ``f`` times faster. ``speed_perturb_mode``
decides how:

``stretch`` (default)
    a pitch-preserving time stretch (:func:`sb_mal.dsp.time_stretch`, a phase vocoder):
    ``round(T / f)`` samples, the pitch unchanged. The clean reference is left as it is, so a
    perfect enhancement of the perturbed input is the clean speech stretched, which a frozen,
    pitch-sensitive feature model (FCPE) sees as close to the clean speech.
``resample``
    the batch is resampled as if recorded at ``f * sample_rate`` (:func:`sb_mal.audio.resample`,
    windowed sinc; the prior soft-DTW code and torchaudio's ``SpeedPerturbation`` do this):
    ``ceil(T / f)`` samples, and the pitch shifts by ``f`` too. Through a frozen pitch-sensitive
    feature model the target is then out of reach: on 6 devset validation pairs through FCPE, the
    clean speech resampled at 0.8-1.2 scores 0.41-0.78 under soft-DTW against 0.28 for the
    untouched noisy input (tests/test_pift_reachability.py). Kept to reproduce earlier runs.

The whole padded batch is perturbed by one factor, so relative lengths are unchanged and the loss
gets ``length`` (relative to the enhanced output) and ``target_length`` (relative to the clean
reference) equal. Validation and test never perturb.

Reconstruction term (optional: ``rec_cost`` with ``lambda_rec > 0``; default off, as in the
paper, where only the SSL loss fine-tunes). A waveform loss needs frame-aligned signals, which a
speed-perturbed output is not. Decision: when the batch is perturbed, the reconstruction term is
computed on a second forward pass of the *unperturbed* noisy input (the SE model is small next to
the SSL model, so this costs little); the SSL term always uses the perturbed output. Every batch
thus gets both terms with the same weights.

Soft-DTW gamma. ``SSLSoftDTWLoss(gamma_relative=k)`` (YAML ``sdtw_gamma_relative``) sets its gamma
to ``k`` times the median frame-pair cost of the first training batch instead of an absolute value;
the Brain registers that measurement with the checkpointer (``ssl_gamma``), so a resumed run uses
the same gamma and never measures again.

Logged terms: ``ssl`` (the SSL loss; per-layer parts when it uses several layers), ``rec`` (if
on), and in validation/test ``ssl_dtw``: the soft-DTW divergence per frame (gamma ``dtw_gamma``)
between the SSL features of the enhanced and clean signals, a position-insensitive distance
logged for every loss (for ``ssl_softdtw`` it equals the unperturbed loss). Like the other terms
it is a mean over batches.

Hparams: everything :class:`~sb_mal.brains.EnhanceBrain` reads except ``compute_cost``, plus
``ssl_loss`` (required), ``init_from`` (required: a training run folder, a ``CKPT+*`` folder or its
``model.ckpt``, or a folder written by ``sb-mal export``), ``init_key``/``init_mode`` (which
checkpoint of a run: ``pesq``/``max``), ``lambda_ssl`` (1.0), ``rec_cost``, ``lambda_rec`` (0.0),
``speed_perturb`` (default: on iff ``ssl_loss`` accepts ``target_length``), ``speed_perturb_mode``
(``stretch``), ``speed_factors``,
``speed_seed`` (default ``seed``), ``dtw_gamma`` (0.1).
"""

from __future__ import annotations

import inspect
import logging
import math

import numpy as np
import speechbrain as sb
import torch

from sb_mal.audio import resample
from sb_mal.brains.ddp import unwrap
from sb_mal.losses.reconstruction import loss_and_terms
from sb_mal.brains.enhance import ENHANCE_HPARAMS, EnhanceBrain
from sb_mal.brains.hparams import REQUIRED, HParam, HParamsError
from sb_mal.brains.recoverables import register
from sb_mal.dsp import time_stretch

logger = logging.getLogger(__name__)

__all__ = ["SPEED_FACTORS", "SPEED_MODES", "PositionInvariantBrain", "speed_perturb"]

#: Speed factors of the prior soft-DTW fine-tuning code: 0.80, 0.85, ..., 1.20.
SPEED_FACTORS = tuple(round(0.8 + 0.05 * i, 2) for i in range(9))
#: How a speed factor is applied: pitch-preserving time stretch, or resampling (tempo and pitch).
SPEED_MODES = ("stretch", "resample")


def speed_perturb(wav: torch.Tensor, factor: float, sample_rate: int = 16000, mode: str = "stretch") -> torch.Tensor:
    """Play ``wav`` (``[..., T]``) ``factor`` times faster.

    ``mode="stretch"`` (default): pitch-preserving time stretch (:func:`sb_mal.dsp.time_stretch`),
    ``round(T / factor)`` samples. ``mode="resample"``: resampled from ``round(factor * sample_rate)``
    to ``sample_rate`` Hz, ``ceil(T / factor)`` samples, the pitch multiplied by ``factor`` too (the
    effective factor is ``round(factor * sample_rate) / sample_rate``).

    Example
    -------
    >>> x = torch.randn(2, 16000)
    >>> speed_perturb(x, 0.8).shape, speed_perturb(x, 1.25, mode="resample").shape, speed_perturb(x, 1.0) is x
    (torch.Size([2, 20000]), torch.Size([2, 12800]), True)
    """
    factor = float(factor)
    if not 0.25 <= factor <= 4.0:
        raise ValueError(f"speed factor must be in [0.25, 4], got {factor}")
    if mode not in SPEED_MODES:
        raise ValueError(f"speed perturbation mode must be one of {SPEED_MODES}, got {mode!r}")
    if mode == "stretch":
        return time_stretch(wav, factor, int(sample_rate))
    source_rate = int(round(factor * sample_rate))
    if source_rate == sample_rate:
        return wav
    return resample(wav, source_rate, int(sample_rate))


def _accepts(fn, name: str) -> bool:
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class PositionInvariantBrain(EnhanceBrain):
    """Fine-tuning of a pretrained enhancer with a frozen-SSL feature loss (see the module docstring).

    Example
    -------
    >>> from speechbrain.utils.epoch_loop import EpochCounter
    >>> from sb_mal.losses import SSLSoftDTWLoss
    >>> from sb_mal.models import SpectralUNetSE, SSLFeatureExtractor, build_tiny_wavlm
    >>> model = SpectralUNetSE(channels=(4,), bottleneck_dim=8, rnn_layers=1)
    >>> brain = PositionInvariantBrain(
    ...     modules={"model": model}, opt_class=lambda p: torch.optim.Adam(p, 1e-4),
    ...     hparams={"ssl_loss": SSLSoftDTWLoss(SSLFeatureExtractor(build_tiny_wavlm())),
    ...              "init_from": "unused-here", "epoch_counter": EpochCounter(1)},
    ...     run_opts={"device": "cpu"})
    >>> brain.speed_perturb, brain.speed_factor(1, 1) in SPEED_FACTORS
    (True, True)
    """

    HPARAMS = ENHANCE_HPARAMS.extend("PositionInvariantBrain", [
        HParam("epoch_counter", "any", REQUIRED, "speechbrain.utils.epoch_loop.EpochCounter (the one given to fit)"),
        HParam("ssl_loss", "callable", REQUIRED, "the SSL feature loss (e.g. !new:sb_mal.losses.SSLSoftDTWLoss)"),
        HParam("init_from", "str", REQUIRED, "the pretrained enhancer: run folder, CKPT+* folder, its model.ckpt "
                                             "or an exported folder"),
        HParam("init_key", "str", "pesq", "which checkpoint of a run folder (CKPT.yaml key)"),
        HParam("init_mode", "str", "max", "best init_key is the highest or the lowest", choices=("max", "min")),
        HParam("trust_code", "bool", False, "let init_from's folder name a model class outside sb_mal's allow-list"),
        HParam("lambda_ssl", "float", 1.0, "weight of the SSL loss", low=0),
        HParam("rec_cost", "callable", None, "optional reconstruction loss"),
        HParam("lambda_rec", "float", 0.0, "weight of rec_cost", low=0),
        HParam("speed_perturb", "bool", None, "speed-perturb the noisy input (default: iff ssl_loss takes "
                                              "target_length)"),
        HParam("speed_perturb_mode", "str", "stretch", "how a speed factor is applied: pitch-preserving time "
                                                      "stretch, or resampling (tempo and pitch)", choices=SPEED_MODES),
        HParam("speed_factors", "numbers", list(SPEED_FACTORS), "the factors drawn from"),
        HParam("seed", "int", 0, "the recipe's seed (default of speed_seed)"),
        HParam("speed_seed", "int", None, "seed of the factor draws (default: seed)"),
        HParam("dtw_gamma", "float", 0.1, "gamma of the logged ssl_dtw distance", low=0),
    ], drop=["compute_cost"])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h = self.hparams
        self.ssl_loss = h.ssl_loss
        if not h.init_from:
            raise HParamsError("PositionInvariantBrain fine-tunes a pretrained enhancer: set `init_from` to a training "
                               "run folder (e.g. one written by recipes/baseline/train.py), a CKPT+* folder, its "
                               "model.ckpt, or an exported model folder")
        self.lambda_ssl, self.lambda_rec, self.rec_cost = h.lambda_ssl, h.lambda_rec, h.rec_cost
        if self.lambda_rec > 0 and self.rec_cost is None:
            raise HParamsError(f"lambda_rec={self.lambda_rec} needs a `rec_cost` (a waveform loss) in the hparams")
        self.takes_target_length = _accepts(self.ssl_loss, "target_length")
        self.speed_perturb = self.takes_target_length if h.speed_perturb is None else h.speed_perturb
        if self.speed_perturb and not self.takes_target_length:
            raise HParamsError(f"speed_perturb: True changes the length of the enhanced output, but the ssl_loss "
                               f"{type(self.ssl_loss).__name__} compares frame-aligned sequences (its forward has no "
                               "`target_length`); use sb_mal.losses.SSLSoftDTWLoss or set speed_perturb: False")
        self.speed_factors = tuple(float(f) for f in h.speed_factors)
        if not self.speed_factors or not all(0.5 <= f <= 2.0 for f in self.speed_factors):
            raise HParamsError(f"speed_factors must be a non-empty list of factors in [0.5, 2], got {h.speed_factors!r}")
        self.speed_perturb_mode = h.speed_perturb_mode
        self.speed_seed = h.seed if h.speed_seed is None else h.speed_seed
        self.dtw_metric = self._dtw_metric(h.dtw_gamma)
        gamma_state = self._gamma_state = getattr(self.ssl_loss, "gamma_state", None)
        if gamma_state is not None:  # a relative soft-DTW gamma: measured once, then saved with every checkpoint
            register(self.checkpointer, {"ssl_gamma": gamma_state}, "PositionInvariantBrain", optional=["ssl_gamma"])
        self.last_speed_factor = 1.0
        self._unperturbed = None

    def _dtw_metric(self, gamma: float):
        from sb_mal.losses.ssl import SSLSoftDTWLoss
        from sb_mal.models.frame_features import FrameFeatureExtractor

        extractor = getattr(self.ssl_loss, "extractor", None)
        if not isinstance(extractor, FrameFeatureExtractor):
            logger.info("ssl_loss has no FrameFeatureExtractor: the ssl_dtw metric is not logged")
            return None
        return SSLSoftDTWLoss(extractor, gamma=gamma)  # shares the frozen model: no second copy

    # -- speed perturbation ----------------------------------------------------------------------
    def speed_factor(self, epoch: int, step: int) -> float:
        """The factor of training batch ``step`` of ``epoch`` (a function of ``speed_seed`` and both)."""
        rng = np.random.default_rng([self.speed_seed, int(epoch), int(step)])
        return self.speed_factors[int(rng.integers(len(self.speed_factors)))]

    # -- start -----------------------------------------------------------------------------------
    def on_fit_start(self):
        """Recover a checkpoint if there is one; else load the pretrained weights from ``init_from``."""
        super().on_fit_start()
        if self.hparams.epoch_counter.current == 0:
            self.load_pretrained()

    def load_pretrained(self) -> None:
        """Load ``init_from`` into ``modules.model`` (strictly)."""
        h = self.hparams
        from sb_mal.checkpoints import load_pretrained

        found = load_pretrained(h.init_from, key=h.init_key, mode=h.init_mode, trust_code=h.trust_code)
        state, where = found.model.state_dict(), found.where
        model = unwrap(self.modules.model)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"init_from={h.init_from!r}: the pretrained weights ({where}) do not fit the model of "
                             "this recipe; give the recipe the same model sizes as the pretrained run (e.g. "
                             f"--channels, --bottleneck_dim, --rnn_layers): {err}") from err
        logger.info("PIFT: model initialised from %s", where)

    # -- forward / loss --------------------------------------------------------------------------
    def compute_forward(self, batch, stage):
        """Enhance the noisy batch; in training, speed-perturb it first (if on)."""
        batch = batch.to(self.device)
        noisy, lens = batch.noisy_sig
        self._unperturbed = (noisy, lens)
        self.last_speed_factor = 1.0
        if stage == sb.Stage.TRAIN and self.speed_perturb:
            self.last_speed_factor = self.speed_factor(self.hparams.epoch_counter.current, self.step)
            with torch.no_grad():
                noisy = speed_perturb(noisy, self.last_speed_factor, self._rate, self.speed_perturb_mode)
        return self.modules.model(noisy, lens)

    def compute_loss(self, predictions, clean, lens, stage):
        """``lambda_ssl * ssl_loss + lambda_rec * rec_cost`` and the logged terms."""
        kwargs = {"target_length": lens} if self.takes_target_length else {}
        ssl, terms = loss_and_terms(self.ssl_loss, predictions, clean, lens, **kwargs)
        terms["ssl"] = ssl.detach()
        if stage == sb.Stage.TRAIN and self._gamma_state is not None and self._gamma_state.measured:
            terms["sdtw_gamma"] = self._gamma_state.gamma  # a relative gamma, as measured: in the train log
        loss = self.lambda_ssl * ssl
        if self.lambda_rec > 0:
            rec_pred = predictions
            if predictions.shape[1] != clean.shape[1]:  # speed-perturbed: reconstruct the unperturbed input
                # through the unwrapped module: a second forward of a DDP wrapper in one step is not allowed;
                # the gradients still reach the shared parameters (and DDP's reducer) in the same backward
                rec_pred = unwrap(self.modules.model)(*self._unperturbed)
            rec, parts = loss_and_terms(self.rec_cost, rec_pred, clean, lens)
            terms.update({f"rec_{k}": v for k, v in parts.items()})
            terms["rec"] = rec.detach()
            loss = loss + self.lambda_rec * rec
        if stage != sb.Stage.TRAIN and self.dtw_metric is not None:
            with torch.no_grad():
                value = float(self.dtw_metric(predictions.detach(), clean, lens))
            if math.isfinite(value):
                terms["ssl_dtw"] = value
        return loss, terms

