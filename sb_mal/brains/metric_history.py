"""The MetricGAN history buffer: past enhanced utterances and their metric targets, checkpointed.

MetricGAN+ replays a portion of the enhanced utterances of earlier epochs when it trains the
discriminator. Unlike SpeechBrain's recipe (a pickle written outside the checkpointer), this buffer
is a recoverable: its index (utterance, epoch, audio file, targets) is saved in every checkpoint, so
a run resumed after a kill sees exactly the history of its checkpoint. Audio goes to
``folder/<id>@<epoch>.flac`` with its clean reference beside it (``..._clean.flac``; on-the-fly
mixtures cannot be re-created from an id), written atomically by the main process only; a file
written after the last checkpoint is simply not in the index.

The cache of the noisy inputs' scores lives here too (it is computed once per utterance).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

from sb_mal.fileio import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["MetricHistory"]


@register_checkpoint_hooks
class MetricHistory:
    """Replay buffer of (enhanced audio file, normalised targets), plus the noisy-score cache.

    Arguments
    ---------
    folder : path
        Where the enhanced audio of past epochs is kept.
    sample_rate : int
        Rate of the stored audio.

    Example
    -------
    >>> import tempfile
    >>> h = MetricHistory(tempfile.mkdtemp())
    >>> h.add("utt1", 1, np.zeros(800, np.float32), np.zeros(800, np.float32), [0.3, 0.5])
    >>> len(h), h.entries[0]["targets"]
    (1, [0.3, 0.5])
    >>> [w.shape for w in h.load_audio(h.entries[0])]
    [(800,), (800,)]
    """

    def __init__(self, folder: str | os.PathLike, sample_rate: int = 16000):
        self.folder = Path(folder)
        self.sample_rate = int(sample_rate)
        self.entries: list[dict] = []
        self.noisy_targets: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def path_for(self, uid: str, epoch: int) -> Path:
        """Audio file of utterance ``uid`` enhanced at ``epoch``."""
        safe = uid.replace("/", "__")
        return self.folder / f"{safe}@{epoch}.flac"

    def add(self, uid: str, epoch: int, enhanced: np.ndarray, clean: np.ndarray, targets, write: bool = True) -> None:
        """Record an enhanced utterance and its reference; ``write`` them to disk (the main process does)."""
        path = self.path_for(uid, epoch)
        clean_path = path.with_name(path.stem + "_clean.flac")
        # one common gain keeps the pair's relative level inside the file's full scale; it is stored and
        # undone on load, so the discriminator replays the pair at the level its targets were computed at
        peak = max(1.0, float(np.abs(enhanced).max()), float(np.abs(clean).max()))
        if write:
            from sb_mal.audio import write_audio

            write_audio(path, np.asarray(enhanced, np.float32) / peak, self.sample_rate)
            write_audio(clean_path, np.asarray(clean, np.float32) / peak, self.sample_rate)
        self.entries.append({"id": uid, "epoch": int(epoch), "path": str(path), "clean_path": str(clean_path),
                             "targets": [float(t) for t in targets], "gain": peak})

    def sample(self, portion: float, rng: np.random.Generator) -> list[dict]:
        """A random ``portion`` of the history (without replacement)."""
        if not self.entries or portion <= 0:
            return []
        k = max(1, int(round(portion * len(self.entries))))
        idx = rng.choice(len(self.entries), size=min(k, len(self.entries)), replace=False)
        return [self.entries[i] for i in sorted(idx)]

    def load_audio(self, entry: dict) -> tuple[np.ndarray, np.ndarray]:
        """``(clean, enhanced)`` waveforms of an entry."""
        from sb_mal.audio import read_audio

        gain = float(entry.get("gain", 1.0))  # back to the level the targets were computed at
        clean = read_audio(entry["clean_path"], self.sample_rate, as_numpy=True)[0] * gain
        return clean, read_audio(entry["path"], self.sample_rate, as_numpy=True)[0] * gain

    @mark_as_saver
    def _save(self, path):
        atomic_write_text(path, json.dumps({"entries": self.entries, "noisy_targets": self.noisy_targets}) + "\n")

    @mark_as_loader
    def _load(self, path, end_of_epoch=True):
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        entries = state.get("entries", [])
        self.entries = [e for e in entries if os.path.isfile(e["path"]) and os.path.isfile(e["clean_path"])]
        if len(self.entries) != len(entries):
            logger.warning("history: %d stored utterance(s) missing on disk were dropped", len(entries) - len(self.entries))
        self.noisy_targets = {k: list(v) for k, v in state.get("noisy_targets", {}).items()}
