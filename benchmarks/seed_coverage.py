"""How often the protocol's 95 % interval covers a true effect of zero, by simulation.

``sb_mal.metrics.stats.paired_bootstrap`` (benchmarks/protocol.py, step 4) resamples seeds and
utterances. With few seeds it cannot see the between-seed variance of an effect, so when seeds
disagree its interval is too narrow. This script measures by how much: for each seed-level SD of the
effect and each number of seeds, it draws ``--replicates`` simulated experiments with a true effect
of 0 and counts how often the interval contains 0 (nominal: 95 %).

The simulated paired differences (arm - baseline, e.g. PESQ) of seed ``s`` on utterance ``u`` are
``b_s + a_u + e_su``: ``b_s ~ N(0, seed_sd)`` the seed's own effect (training noise that does not
average out within a seed), ``a_u ~ N(0, utt_sd)`` an utterance effect shared by all seeds (some
utterances favour one arm), ``e_su ~ N(0, noise_sd)`` the rest. The defaults (0.05, 0.1) are of the
order of the per-utterance PESQ differences of the MAL experiment.

Usage: python benchmarks/seed_coverage.py [--replicates 300] [--boot 800] [--utterances 120]
"""

from __future__ import annotations

import argparse

import numpy as np

from _results import header, update_section
from sb_mal.metrics.stats import paired_bootstrap

SEED_SDS = (0.0, 0.03, 0.06)
SEED_COUNTS = (2, 3, 5)


def simulate_coverage(seed_sd: float, n_seeds: int, n_utts: int = 120, replicates: int = 300, n_boot: int = 800,
                      utt_sd: float = 0.05, noise_sd: float = 0.1, seed: int = 0) -> dict:
    """Coverage of ``paired_bootstrap``'s 95 % interval for a true effect of 0 (see the module docstring).

    Returns the share of replicates whose interval contains 0 (``coverage``), the share that would
    be called better or worse (``false_verdicts`` = 1 - coverage), the mean interval width and the
    replicate count.

    Example
    -------
    >>> out = simulate_coverage(0.0, 3, n_utts=40, replicates=20, n_boot=200)
    >>> sorted(out), 0.0 <= out["coverage"] <= 1.0
    (['coverage', 'false_verdicts', 'mean_width', 'replicates'], True)
    """
    rng = np.random.default_rng(seed)
    covered, widths = 0, []
    for r in range(replicates):
        diffs = (rng.normal(0.0, seed_sd, (n_seeds, 1)) + rng.normal(0.0, utt_sd, (1, n_utts))
                 + rng.normal(0.0, noise_sd, (n_seeds, n_utts)))
        _, lo, hi = paired_bootstrap(diffs, n_boot=n_boot, seed=r)
        covered += lo <= 0.0 <= hi
        widths.append(hi - lo)
    coverage = covered / replicates
    return {"coverage": coverage, "false_verdicts": 1.0 - coverage, "mean_width": float(np.mean(widths)),
            "replicates": replicates}


def coverage_table(replicates: int, n_boot: int, n_utts: int, utt_sd: float, noise_sd: float) -> str:
    """Markdown table: coverage (and mean interval width) per seed-level SD and number of seeds."""
    head = "| seed-level SD of the effect | " + " | ".join(f"{k} seeds" for k in SEED_COUNTS) + " |"
    lines = [head, "|---" * (len(SEED_COUNTS) + 1) + "|"]
    for sd in SEED_SDS:
        cells = []
        for k in SEED_COUNTS:
            out = simulate_coverage(sd, k, n_utts, replicates, n_boot, utt_sd, noise_sd)
            cells.append(f"{100 * out['coverage']:.1f} % (width {out['mean_width']:.3f})")
        lines.append(f"| {sd:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicates", type=int, default=300, help="simulated experiments per cell")
    parser.add_argument("--boot", type=int, default=800, help="bootstrap draws per interval")
    parser.add_argument("--utterances", type=int, default=120, help="test utterances per seed")
    parser.add_argument("--utt-sd", type=float, default=0.05, help="SD of the utterance effect shared by the seeds")
    parser.add_argument("--noise-sd", type=float, default=0.1, help="SD of the seed x utterance residual")
    args = parser.parse_args()
    table = coverage_table(args.replicates, args.boot, args.utterances, args.utt_sd, args.noise_sd)
    body = (header("Coverage of the protocol's interval with few seeds (seed_coverage.py)")
            + f"- true effect 0; {args.utterances} utterances per seed; differences b_s + a_u + e_su with utterance SD "
            f"{args.utt_sd:g} and residual SD {args.noise_sd:g}; {args.replicates} simulated experiments per cell, "
            f"{args.boot} bootstrap draws each (sb_mal.metrics.stats.paired_bootstrap, 95 %)\n"
            "- each cell: share of experiments whose interval contains 0 (nominal 95 %; the rest would be called "
            "better or worse), and the mean interval width\n\n" + table + "\n")
    print(body)
    update_section("seed_coverage", body)


if __name__ == "__main__":
    main()
