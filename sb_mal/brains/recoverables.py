"""The one way sb_mal's Brains add what a resumed run needs to SpeechBrain's Checkpointer.

The YAML's ``checkpointer.recoverables`` holds what the recipe declares (models, the epoch counter).
What a Brain creates itself (the MAL encoder snapshot, the MetricGAN history, per-network
optimisers, running totals) goes through :func:`register`, called from one method per Brain
(``extra_recoverables`` / ``init_optimizers``), so the names are fixed in one place and a clash with
a name the YAML already uses for another object is an error instead of a silent replacement.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping

from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

__all__ = ["EpochLog", "RunningTotals", "register"]

logger = logging.getLogger(__name__)


def register(checkpointer, objects: Mapping[str, object], owner: str, optional: Iterable[str] = ()) -> None:
    """Add ``objects`` (name -> recoverable) to ``checkpointer`` (None: nothing to do).

    A name the checkpointer already has is fine if it holds the same object (the YAML listed it);
    another object under that name is an error naming both. Names in ``optional`` may be missing
    from a checkpoint (written before they existed): recovery then keeps their current state.
    """
    optional = set(optional)
    if checkpointer is None:
        return
    for name, obj in objects.items():
        present = checkpointer.recoverables.get(name)
        if present is None:
            checkpointer.add_recoverable(name, obj, optional_load=name in optional)
        elif present is not obj:
            raise ValueError(f"{owner}: the checkpointer already has a recoverable {name!r} "
                             f"({type(present).__name__}); {owner} needs that name for its {type(obj).__name__}")


@register_checkpoint_hooks
class RunningTotals:
    """Named totals that survive a resume (e.g. the seconds a run has spent computing metrics).

    Example
    -------
    >>> totals = RunningTotals(metric_seconds=0.0)
    >>> totals.add("metric_seconds", 1.5)
    >>> totals["metric_seconds"]
    1.5
    """

    def __init__(self, **initial: float):
        self.values = {k: float(v) for k, v in initial.items()}

    def add(self, name: str, amount: float) -> None:
        self.values[name] = self.values.get(name, 0.0) + float(amount)

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    @mark_as_saver
    def _save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as fout:
            json.dump(self.values, fout)

    @mark_as_loader
    def _load(self, path, end_of_epoch=True) -> None:
        del end_of_epoch
        with open(path, encoding="utf-8") as fin:
            self.values.update({k: float(v) for k, v in json.load(fin).items()})


@register_checkpoint_hooks
class EpochLog:
    """The train-log line of the epoch a checkpoint closes, kept inside that checkpoint.

    A Brain writes an epoch's line only after the epoch's checkpoint exists, so an epoch redone
    after a kill is logged once. A kill between the checkpoint and the line would lose the line;
    this recoverable carries it: :meth:`stage` before the checkpoint is saved, :meth:`commit`
    after it, and :meth:`restore` once recovery has chosen a checkpoint (``on_fit_start``) appends
    the recovered line to the loggers if the text log does not have it yet. A line torn by a kill
    in the middle of a write is removed from the end of the log first (with a warning).

    Arguments
    ---------
    loggers : callable
        Returns the Brain's loggers (SpeechBrain train loggers; ``None`` entries are skipped).
        Whether a line is already there is read from the first one with a ``save_file``.
    """

    def __init__(self, loggers: Callable[[], Iterable]):
        self._loggers = loggers
        self.entry: dict | None = None
        self._recovered: dict | None = None
        self.recovered_pending: dict | None = None

    def stage(self, meta: dict, *, pending: bool = False, **stats) -> None:
        """The line of the epoch about to be checkpointed (saved with it). A ``pending`` line waits
        for stats still being computed: :meth:`commit` and :meth:`restore` leave it unwritten (after
        recovery it is :attr:`recovered_pending`); :meth:`write_once` writes it when complete."""
        self.entry = {"meta": dict(meta), "stats": {k: dict(v) for k, v in stats.items() if v is not None}}
        if pending:
            self.entry["pending"] = True

    def commit(self) -> None:
        """Write the staged line (call after the checkpoint is saved); a pending line waits."""
        if self.entry is not None and not self.entry.get("pending"):
            self._write(self.entry)

    def restore(self) -> None:
        """After recovery: append the recovered checkpoint's line if the log lacks it; a pending line
        is kept in :attr:`recovered_pending` for the Brain to complete."""
        entry, self._recovered = self._recovered, None
        self.recovered_pending = entry if entry is not None and entry.get("pending") else None
        if entry is None or self.recovered_pending is not None:
            return
        self.write_once(entry, "appending the log line of the recovered checkpoint (%s) that a kill left unwritten")

    def write_once(self, entry: dict, note: str | None = None) -> None:
        """Write ``entry`` (``{"meta", "stats"}``) unless the text log has its line already."""
        entry = {k: v for k, v in entry.items() if k != "pending"}
        file_logger = next((lg for lg in self._live_loggers() if getattr(lg, "save_file", None)), None)
        if file_logger is None or not self._has_line(file_logger, entry["meta"]):
            if note:
                logger.info(note, entry["meta"])
            self._write(entry)

    def _live_loggers(self) -> list:
        return [lg for lg in self._loggers() if lg is not None]

    def _write(self, entry: dict) -> None:
        for target in self._live_loggers():
            target.log_stats(entry["meta"], **entry["stats"])

    @staticmethod
    def _has_line(file_logger, meta: dict) -> bool:
        path = file_logger.save_file
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as fin:
            data = fin.read()
        if data and not data.endswith(b"\n"):  # a line torn by a kill mid-write
            keep = data.rfind(b"\n") + 1
            logger.warning("%s: removing an incomplete last line left by a killed write: %r", path, data[keep:][:80])
            with open(path, "r+b") as fout:
                fout.truncate(keep)
            data = data[:keep]
        to_string = getattr(file_logger, "_stats_to_string", None)
        head = to_string(meta) if to_string else ", ".join(f"{k}: {v}" for k, v in meta.items())
        lines = data.decode("utf-8", errors="replace").splitlines()
        return any(line == head or line.startswith(head + " - ") for line in lines)

    @mark_as_saver
    def _save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as fout:
            json.dump(self.entry, fout)

    @mark_as_loader
    def _load(self, path, end_of_epoch=True) -> None:
        del end_of_epoch
        with open(path, encoding="utf-8") as fin:
            self.entry = json.load(fin)
        self._recovered = self.entry
