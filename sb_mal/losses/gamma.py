"""A soft-DTW ``gamma`` set relative to the data (see :class:`RelativeGamma`).

Soft-DTW's ``gamma`` is in the units of the frame-pair cost, which differ by orders of magnitude
between feature models; :class:`~sb_mal.losses.SSLSoftDTWLoss` takes ``gamma_relative`` to set it
as a factor of the cost it measures on the first batches instead.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = ["RelativeGamma"]

logger = logging.getLogger(__name__)


class RelativeGamma(nn.Module):
    """A soft-DTW ``gamma`` set relative to the data: ``factor`` x the median frame-pair cost of the
    first ``batches`` batches it observes (the mean of their medians), then fixed.

    The state (the median cost and how many batches were observed) is in buffers, so it is saved
    with a checkpoint and a resumed run uses the same ``gamma``
    (:class:`~sb_mal.brains.PositionInvariantBrain` registers it as the recoverable ``ssl_gamma``).
    Under DDP the ranks' medians are averaged, so every rank uses one ``gamma``.

    Example
    -------
    >>> rg = RelativeGamma(0.1, batches=2)
    >>> rg.observe(torch.tensor([[1.0, 2.0, 9.0]])), rg.measured  # gamma of the batches so far
    (0.2, False)
    >>> rg.observe(torch.tensor([4.0])), rg.measured, rg.observe(torch.tensor([100.0]))  # then fixed
    (0.3, True, 0.3)
    >>> fresh = RelativeGamma(0.1, batches=2)
    >>> _ = fresh.load_state_dict(rg.state_dict())
    >>> fresh.gamma, fresh.measured
    (0.3, True)
    """

    def __init__(self, factor: float, batches: int = 1):
        super().__init__()
        if not float(factor) > 0:
            raise ValueError(f"gamma_relative must be positive, got {factor}")
        if int(batches) < 1:
            raise ValueError(f"gamma_batches must be >= 1, got {batches}")
        self.factor, self.batches = float(factor), int(batches)
        self.register_buffer("median_cost", torch.zeros((), dtype=torch.float64))
        self.register_buffer("observed", torch.zeros((), dtype=torch.long))

    @property
    def measured(self) -> bool:
        """Whether the first ``batches`` batches have been observed (``gamma`` is then fixed)."""
        return int(self.observed) >= self.batches

    @property
    def gamma(self) -> float:
        """``factor`` x the median cost measured so far (valid once at least one batch was observed),
        floored at 1e-8 (soft-DTW needs a positive gamma; a zero median means identical sequences)."""
        return max(round(self.factor * float(self.median_cost), 12), 1e-8)

    def observe(self, costs: torch.Tensor) -> float:
        """Take the median of ``costs`` (the valid frame-pair costs of a batch) into the measurement, unless
        it is complete; return the ``gamma`` to use now."""
        if self.measured:
            return self.gamma
        median = costs.detach().double().median().reshape(1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(median)
            median /= torch.distributed.get_world_size()
        n = int(self.observed)
        self.median_cost.copy_((self.median_cost * n + median[0].to(self.median_cost)) / (n + 1))
        self.observed += 1
        if self.measured:
            logger.info("soft-DTW gamma set to %.4g = %g x the median frame-pair cost %.4g (%d batch(es))",
                        self.gamma, self.factor, float(self.median_cost), self.batches)
        return self.gamma

    def extra_repr(self) -> str:
        return f"factor={self.factor}, batches={self.batches}, gamma={self.gamma if self.measured else 'unmeasured'}"
