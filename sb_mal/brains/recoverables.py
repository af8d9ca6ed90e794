"""The one way sb_mal's Brains add what a resumed run needs to SpeechBrain's Checkpointer.

The YAML's ``checkpointer.recoverables`` holds what the recipe declares (models, the epoch counter).
What a Brain creates itself (the MAL encoder snapshot, the MetricGAN history, per-network
optimisers, running totals) goes through :func:`register`, called from one method per Brain
(``extra_recoverables`` / ``init_optimizers``), so the names are fixed in one place and a clash with
a name the YAML already uses for another object is an error instead of a silent replacement.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

__all__ = ["RunningTotals", "register"]


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
