"""``max_train_minutes``: a wall-clock training budget that every Brain reads the same way."""

from __future__ import annotations

import logging
import time

import torch

logger = logging.getLogger(__name__)

__all__ = ["TrainingBudget"]


class TrainingBudget:
    """Stops training after the first epoch that ends past ``minutes`` of this fit (resumes included
    count from their own start). Under DDP every rank follows the main process's clock, so all stop
    after the same epoch.

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

    def check(self, minutes: float | None, epoch: int | None, counter) -> bool:
        """After ``epoch``: if the budget is used, make it the last epoch of ``counter``; returns whether."""
        if minutes is None or epoch is None or counter is None:
            return False
        elapsed = (time.monotonic() - self.started) / 60
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            decision = [elapsed]
            torch.distributed.broadcast_object_list(decision, src=0)
            elapsed = decision[0]
        if elapsed < float(minutes):
            return False
        logger.info("training budget of %.1f min used (%.1f min); stopping after epoch %d", minutes, elapsed, epoch)
        counter.limit = epoch
        return True
