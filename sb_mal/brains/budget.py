"""``max_train_minutes``: a wall-clock training budget that every Brain reads the same way."""

from __future__ import annotations

import logging
import time

import torch

logger = logging.getLogger(__name__)

__all__ = ["TrainingBudget"]


class TrainingBudget:
    """A wall-clock budget of ``minutes`` for one fit (a resume counts from its own start).

    :meth:`expired` is asked after every training step: past the budget, the Brain ends the epoch
    there (SpeechBrain's ``optimizer_step_limit``: validation and a checkpoint follow, so the steps
    made are kept), whatever the length of an epoch or of a step. :meth:`check` after each epoch
    makes it the last (the validation may have used the rest of the budget). Under DDP every rank
    follows the main process's clock, so all stop at the same step.

    Example
    -------
    >>> from speechbrain.utils.epoch_loop import EpochCounter
    >>> counter, budget = EpochCounter(100), TrainingBudget()
    >>> budget.check(0.0, epoch=3, counter=counter), counter.limit
    (True, 3)
    """

    def __init__(self):
        self.started = time.monotonic()

    def start(self) -> None:
        """Start the clock (at the start of fit)."""
        self.started = time.monotonic()

    def _elapsed(self) -> float:
        elapsed = (time.monotonic() - self.started) / 60
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            decision = [elapsed]
            torch.distributed.broadcast_object_list(decision, src=0)
            elapsed = decision[0]
        return elapsed

    def expired(self, minutes: float | None) -> bool:
        """Whether ``minutes`` of this fit have passed (None: no budget)."""
        return minutes is not None and self._elapsed() >= float(minutes)

    def check(self, minutes: float | None, epoch: int | None, counter) -> bool:
        """After ``epoch``: if the budget is used, make it the last epoch of ``counter``; returns whether."""
        if minutes is None or epoch is None or counter is None:
            return False
        elapsed = self._elapsed()
        if elapsed < float(minutes):
            return False
        logger.info("training budget of %.1f min used (%.1f min); stopping after epoch %d", minutes, elapsed, epoch)
        counter.limit = epoch
        return True
