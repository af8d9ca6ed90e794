"""Paired bootstrap intervals and verdicts (sb_mal.metrics.stats), used by the demo and benchmarks/protocol.py."""

import math

import numpy as np
import pytest

from sb_mal.metrics.stats import paired_bootstrap, verdict

pytestmark = pytest.mark.unit


def test_the_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """3 seeds x 40 utterances, a seed effect and an utterance effect shared by the seeds: the two-level
    interval covers the true mean difference in roughly 95 % of simulated experiments."""
    rng = np.random.default_rng(0)
    true, hits, trials = 0.05, 0, 200
    for _ in range(trials):
        utterance = rng.normal(0, 0.2, size=40)  # per-utterance difference, the same for every seed
        seed = rng.normal(0, 0.02, size=(3, 1))
        diffs = true + utterance[None, :] + seed + rng.normal(0, 0.05, size=(3, 40))
        _, lo, hi = paired_bootstrap(diffs, n_boot=400, seed=int(rng.integers(1 << 30)))
        hits += lo <= true <= hi
    assert 0.85 <= hits / trials <= 0.99, hits / trials


def test_nan_cells_are_left_out_and_the_mean_is_the_plain_mean():
    diffs = np.array([[0.1, math.nan, 0.3], [0.2, 0.2, math.nan]])
    mean, lo, hi = paired_bootstrap(diffs, n_boot=500)
    assert mean == pytest.approx(0.2) and lo <= mean <= hi and not math.isnan(lo)


def test_verdicts_follow_the_metric_direction():
    assert verdict(0.01, 0.2, "pesq") == "better" and verdict(-0.2, -0.01, "pesq") == "worse"
    assert verdict(-0.01, 0.2, "stoi") == "level"
    assert verdict(-0.2, -0.01, "l1") == "better"  # lower is better
    with pytest.raises(ValueError, match="seeds, utterances"):
        paired_bootstrap(np.zeros(5))
