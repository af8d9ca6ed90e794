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

``--calibrate FOLDER BASELINE ARM`` takes the utterance and residual SDs from a finished experiment
instead (the paired test differences ``ARM - BASELINE`` of every ``FOLDER/seed<k>/`` holding both runs'
``test_scores.csv``, by a two-way random-effects decomposition, :func:`variance_components`) and
reports its seed-level SD too.

Usage: python benchmarks/seed_coverage.py [--replicates 300] [--boot 800] [--utterances 120]
       [--calibrate results/mal_experiment baseline frozen [--metric pesq]]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _results import add_results_option, header, update_section
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


def variance_components(diffs: np.ndarray) -> dict[str, float]:
    """SDs of the seed effect, the utterance effect and the residual of paired differences ``[seeds,
    utterances]`` (two-way random effects without replication, method of moments; a negative variance
    estimate is reported as 0).

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> d = rng.normal(0, 0.05, (60, 1)) + rng.normal(0, 0.1, (1, 200)) + rng.normal(0, 0.1, (60, 200))
    >>> {k: round(v, 2) for k, v in variance_components(d).items()}  # with 6 seeds the seed SD is rough
    {'seed_sd': 0.05, 'utt_sd': 0.11, 'noise_sd': 0.1}
    """
    d = np.asarray(diffs, dtype=float)
    d = d[:, np.isfinite(d).all(0)]
    k, n = d.shape
    grand = d.mean()
    ms_seed = n * ((d.mean(1) - grand) ** 2).sum() / (k - 1)
    ms_utt = k * ((d.mean(0) - grand) ** 2).sum() / (n - 1)
    resid = d - d.mean(1, keepdims=True) - d.mean(0, keepdims=True) + grand
    ms_res = (resid ** 2).sum() / ((k - 1) * (n - 1))
    return {"seed_sd": float(np.sqrt(max(ms_seed - ms_res, 0.0) / n)),
            "utt_sd": float(np.sqrt(max(ms_utt - ms_res, 0.0) / k)), "noise_sd": float(np.sqrt(ms_res))}


def experiment_diffs(folder: Path, baseline: str, arm: str, metric: str) -> np.ndarray:
    """Paired test differences ``[seeds, utterances]`` (arm - baseline) of a protocol experiment folder."""
    from protocol import read_scores

    rows = []
    for seed_dir in sorted(Path(folder).glob("seed*")):
        a, b = seed_dir / arm / "test_scores.csv", seed_dir / baseline / "test_scores.csv"
        if a.exists() and b.exists():
            sa, sb = read_scores(a), read_scores(b)
            rows.append({u: sa[u][metric] - sb[u][metric] for u in sorted(set(sa) & set(sb))})
    if len(rows) < 2:
        raise SystemExit(f"{folder}: fewer than two seeds with both {baseline} and {arm} tested")
    utts = sorted(set.intersection(*(set(r) for r in rows)))
    return np.array([[r[u] for u in utts] for r in rows])


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
    parser.add_argument("--calibrate", nargs=3, metavar=("FOLDER", "BASELINE", "ARM"), default=None,
                        help="take the utterance and residual SDs from the test differences ARM - BASELINE of an "
                             "experiment folder (seed<k>/<run>/test_scores.csv)")
    parser.add_argument("--metric", default="pesq", help="the metric of --calibrate")
    add_results_option(parser)
    args = parser.parse_args()
    calibration = ""
    if args.calibrate:
        folder, base, arm = args.calibrate
        diffs = experiment_diffs(Path(folder), base, arm, args.metric)
        parts = variance_components(diffs)
        args.utt_sd, args.noise_sd = parts["utt_sd"], parts["noise_sd"]
        calibration = (f"- calibrated on `{folder}`: {args.metric} of {arm} - {base}, {diffs.shape[0]} seeds x "
                       f"{diffs.shape[1]} utterances: seed SD {parts['seed_sd']:.3f}, utterance SD {parts['utt_sd']:.3f}, "
                       f"residual SD {parts['noise_sd']:.3f} (two-way random-effects moments); mean difference "
                       f"{diffs.mean():+.3f}\n")
    table = coverage_table(args.replicates, args.boot, args.utterances, args.utt_sd, args.noise_sd)
    body = (header("Coverage of the protocol's interval with few seeds (seed_coverage.py)")
            + calibration
            + f"- true effect 0; {args.utterances} utterances per seed; differences b_s + a_u + e_su with utterance SD "
            f"{args.utt_sd:g} and residual SD {args.noise_sd:g}; {args.replicates} simulated experiments per cell, "
            f"{args.boot} bootstrap draws each (sb_mal.metrics.stats.paired_bootstrap, 95 %)\n"
            "- each cell: share of experiments whose interval contains 0 (nominal 95 %; the rest would be called "
            "better or worse), and the mean interval width\n\n" + table + "\n")
    print(body)
    update_section("seed_coverage", body)


if __name__ == "__main__":
    main()
