"""CodecNetBrain: train the codec-approximation network (the loss net of CodecApproximationLoss).

The model (``modules.model``) is a :class:`~sb_mal.models.codec_net.SpectralCodecNet` or
:class:`~sb_mal.models.codec_net.TimeCodecNet`; the data are (original, MP3-coded) pairs in the
enhancement keys (:class:`~sb_mal.data.mp3.Mp3PairDataset`: ``noisy_sig`` = original = network
input, ``clean_sig`` = coded = target). The objective is the network's own
``fit_loss(original, coded, lengths)`` (L1 to the coded normalised magnitude, or to the coded
waveform for the time net), averaged over the batch. It is computed as
:func:`sb_mal.models.codec_imitation.imitation_l1` does, which equals ``fit_loss`` but runs the
network through ``modules.model`` (so a DDP wrapper sees the forward pass and syncs gradients) and
gives the **identity baseline** (``C(S) = S``: the L1 between the prepared input and the coded
target) from the same preparation.

Logged per stage: ``loss`` (network L1) and ``identity_l1``; validation and test also ``l1`` (= the
per-item mean network L1, which is what ``loss`` is there too) and ``ratio`` = loss / identity_l1
(below 1: better than doing nothing). Checkpoints are kept by the lowest validation ``loss``
(``ckpt_key: loss``, the key :meth:`CodecApproximationLoss.from_pretrained
<sb_mal.losses.CodecApproximationLoss.from_pretrained>` uses by default); ``model_config.json`` is
written at the start of training (EnhanceBrain), so ``from_pretrained(<output_folder>)`` works. The
test stage writes ``test_scores.csv`` (per item: ``l1``, ``identity_l1``) and ``test_summary.json``.
No PESQ/STOI: this is not speech enhancement. BatchNorm and dropout follow the Brain's modes (train
mode for training, eval mode for validation and test); under DDP they become SyncBatchNorm as in
any SpeechBrain recipe, except with the gloo backend (CPU), where SyncBatchNorm cannot run.

Hparams: those of :class:`~sb_mal.brains.enhance.EnhanceBrain` except ``compute_cost`` and the
metric lists (unused); ``ckpt_key`` is ``loss`` (the declared default, which
:func:`sb_mal.run.run_recipe` also uses to pick the test checkpoint).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import speechbrain as sb
import torch

from sb_mal.brains.ddp import unwrap
from sb_mal.brains.enhance import ENHANCE_HPARAMS, EnhanceBrain
from sb_mal.brains.hparams import HParam
from sb_mal.data.mp3 import Mp3PairDataset
from sb_mal.models.codec_imitation import imitation_l1
from sb_mal.metrics.results import EvalResult

logger = logging.getLogger(__name__)

__all__ = ["CodecNetBrain", "prepare_mp3_cache"]


def prepare_mp3_cache(folders: str | os.PathLike | Sequence[str | os.PathLike], cache_dir: str | os.PathLike,
                      sample_rate: int = 16000, bitrate_kbps: int = 16, quality: int = 2,
                      progress: bool = True) -> int:
    """MP3-code every audio file under ``folders`` into ``cache_dir`` (files already there are skipped).

    Meant as a recipe ``prepare`` step (it runs on the main process before the datasets are
    built), so that training draws segments from cached pairs instead of coding files on the
    fly. The cache is that of :class:`~sb_mal.data.mp3.Mp3PairDataset` (keyed by source file,
    rate, bit rate and quality), safe to share between runs. Returns the number of source files.

    Example
    -------
    >>> import tempfile, os, numpy as np
    >>> from sb_mal.audio import write_audio
    >>> src, cache = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> write_audio(os.path.join(src, "a.wav"), 0.1 * np.random.default_rng(0).standard_normal(8000), 16000)
    >>> prepare_mp3_cache(src, cache, progress=False), len(os.listdir(cache))
    (1, 1)
    """
    folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    os.makedirs(cache_dir, exist_ok=True)
    pairs = Mp3PairDataset(folders, segment_samples=None, sample_rate=sample_rate, bitrate_kbps=bitrate_kbps,
                           quality=quality, cache_dir=cache_dir, memory_cache_files=1)
    pairs.prepare(progress=progress)
    return len(pairs.files)


class CodecNetBrain(EnhanceBrain):
    """Trains a codec-imitation network on (original, coded) pairs (see the module docstring).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> from speechbrain.utils.epoch_loop import EpochCounter
    >>> from sb_mal.models.codec_net import SpectralCodecNet
    >>> _ = torch.manual_seed(0)
    >>> net = SpectralCodecNet(filters=4, levels=2)
    >>> data = [{"id": f"u{i}", "noisy_sig": x, "clean_sig": 0.5 * x} for i, x in enumerate(torch.randn(4, 4096))]
    >>> counter = EpochCounter(1)
    >>> brain = CodecNetBrain({"model": net}, lambda p: torch.optim.Adam(p, 1e-3),
    ...                       hparams={"epoch_counter": counter}, run_opts={"noprogressbar": True},
    ...                       checkpointer=Checkpointer(tempfile.mkdtemp(), {"model": net, "counter": counter}))
    >>> brain.fit(counter, data, data, train_loader_kwargs={"batch_size": 2}, valid_loader_kwargs={"batch_size": 2})
    >>> meta = brain.checkpointer.find_checkpoint(min_key="loss").meta
    >>> sorted(k for k in meta if k != "unixtime"), bool(meta["loss"] < meta["identity_l1"] * 10)
    (['end-of-epoch', 'identity_l1', 'l1', 'loss', 'ratio'], True)
    """

    HPARAMS = ENHANCE_HPARAMS.extend("CodecNetBrain", [
        HParam("ckpt_key", "str", "loss", "checkpoints are kept by the lowest validation L1", choices=("loss",)),
    ], drop=["compute_cost", "valid_metrics", "test_metrics", "n_jobs", "metric_timeout", "enhanced_folder"])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        model = getattr(self.modules, "model", None)
        if model is None or not all(hasattr(unwrap(model), a) for a in ("prepare", "fit_loss", "out_min")):
            found = "nothing" if model is None else type(unwrap(model)).__name__
            raise TypeError(f"CodecNetBrain needs modules.model = SpectralCodecNet or TimeCodecNet, found {found}")

    @property
    def codec_net(self) -> torch.nn.Module:
        """The codec network (without a DDP wrapper)."""
        return unwrap(self.modules.model)

    # -- forward / loss ----------------------------------------------------------------------
    def compute_forward(self, batch, stage):
        """``(network L1 [B], identity L1 [B])`` of the batch (see the module docstring)."""
        batch = batch.to(self.device)
        original, lens = batch.noisy_sig
        coded, _ = batch.clean_sig
        return imitation_l1(self.codec_net, original, coded, lens, forward=self.modules.model)

    def compute_objectives(self, predictions, batch, stage):
        """Mean network L1 over the batch; per-item values are kept outside training."""
        net_l1, identity = predictions
        if stage == sb.Stage.TRAIN:
            self.stage_terms.add({"identity_l1": identity.detach().mean()})  # summed on the device
        else:
            for uid, a, b in zip(batch.id, net_l1.detach().float().cpu(), identity.float().cpu()):
                self._outputs.append((uid, float(a), float(b)))
        return net_l1.mean()

    # -- stages ------------------------------------------------------------------------------
    def _metrics(self, stage) -> EvalResult | None:
        """Per-item network and identity L1 (every rank evaluates the whole valid/test set)."""
        if not self._outputs:
            return None
        rows = sorted(self._outputs, key=lambda r: r[0])
        result = EvalResult.from_rows([r[0] for r in rows], [{"l1": r[1], "identity_l1": r[2]} for r in rows],
                                      ["l1", "identity_l1"])
        identity = result.means["identity_l1"]
        result.means["ratio"] = result.means["l1"] / identity if identity > 0 else math.nan
        return result

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """As EnhanceBrain's; outside training ``loss`` is the per-item mean L1 (not a mean of batch means)."""
        if stage != sb.Stage.TRAIN and self._outputs:
            stage_loss = sum(r[1] for r in self._outputs) / len(self._outputs)
        super().on_stage_end(stage, stage_loss, epoch)
