"""Paired comparisons of two systems on the same utterances: bootstrap intervals and verdicts.

Used by the experiment drivers in ``benchmarks/`` (see ``benchmarks/protocol.py``) and by
``sb-mal demo``.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["LOWER_IS_BETTER", "paired_bootstrap", "verdict"]

#: Metrics where a smaller value is better (everything else: larger is better).
LOWER_IS_BETTER = {"loss", "l1", "ratio", "lsd"}


def paired_bootstrap(diffs: np.ndarray, n_boot: int = 4000, seed: int = 0, level: float = 0.95
                     ) -> tuple[float, float, float]:
    """Mean of ``diffs`` [seeds, utterances] and its ``level`` interval by a two-level bootstrap.

    Each replicate draws seeds with replacement and utterances with replacement (one draw of
    utterance indices shared by the drawn seeds). NaN cells (a metric undefined on an utterance) are
    left out of every mean.

    Example
    -------
    >>> d = np.array([[0.1, 0.2, 0.3, 0.2], [0.2, 0.1, 0.2, 0.3], [0.3, 0.2, 0.1, 0.2]])
    >>> mean, lo, hi = paired_bootstrap(d, n_boot=2000)
    >>> round(mean, 3), 0 < lo < mean < hi
    (0.2, True)
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 2 or diffs.size == 0:
        raise ValueError(f"expected a [seeds, utterances] array, got shape {diffs.shape}")
    mean = float(np.nanmean(diffs))
    rng = np.random.default_rng(seed)
    n_seeds, n_utts = diffs.shape
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    utts = rng.integers(0, n_utts, size=(n_boot, n_utts))
    stats = np.empty(n_boot)
    with warnings.catch_warnings():  # a replicate that drew only NaN cells is NaN and left out
        warnings.simplefilter("ignore", RuntimeWarning)
        for b in range(n_boot):
            stats[b] = np.nanmean(diffs[seeds[b]][:, utts[b]])
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(stats, [alpha, 1 - alpha])
    return mean, float(lo), float(hi)


def verdict(lo: float, hi: float, metric: str) -> str:
    """``better``, ``worse`` or ``level`` from the interval of (arm - baseline) of ``metric``.

    Example
    -------
    >>> verdict(0.02, 0.10, "pesq"), verdict(-0.3, -0.1, "pesq"), verdict(-0.1, 0.2, "pesq"), verdict(-2, -1, "l1")
    ('better', 'worse', 'level', 'better')
    """
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    if sign * lo > 0 and sign * hi > 0:
        return "better"
    if sign * lo < 0 and sign * hi < 0:
        return "worse"
    return "level"
