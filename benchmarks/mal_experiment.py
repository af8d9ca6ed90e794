"""Model as Loss against a reconstruction-only continuation, under the protocol of benchmarks/protocol.py.

For each seed:

1. phase 1: the backbone trained with the reconstruction loss (L1 + multi-resolution STFT) on
   on-the-fly devset mixtures (``recipes/baseline/train.py``, ``--epochs1`` epochs);
2. phase 2 from the last phase-1 checkpoint, ``--epochs2`` epochs per arm, the same data stream and
   fresh optimiser for every arm (``recipes/mal/train.py --init_from``): the baseline continues
   with the reconstruction loss only (``lambda_mal=0``); the MAL arms (frozen, frozen_fe, dynamic)
   add ``lambda_mal * L_mal``; the deep-feature arm (``ssl_l1``, the paper's comparison) adds
   ``lambda_mal * |F(clean) - F(enhanced)|_1`` on a frozen pretrained encoder ``F`` instead
   (``--deep-feature``, default ``torchfcpe``: the pitch estimator inside the torchfcpe wheel, see
   ``sb_mal.models.frame_features``; no pretrained WavLM can be downloaded here).

Tuning (validation split only, first seed): for each variant, ``lambda_mal`` over ``--lambdas``
with the bottleneck tap (the deep-feature arm: lambda only), then the taps (bottleneck vs every encoder layer + bottleneck) at the
best lambda; the score is the best validation PESQ of the run (its kept checkpoint). The chosen
configuration then runs at every seed and is tested on the 120 devset test pairs (intrusive
metrics + DNSMOS); the comparison is the paired per-utterance difference with the baseline arm of
the same seed, pooled over seeds, with a two-level bootstrap 95 % interval.

A smaller backbone than the recipes' default and shorter phases make 3 seeds x 4 arms plus the
tuning grid affordable on 2 CPU cores; the sizes are in the table header. Every run is resumable
(``--report-only`` writes the tables from the runs finished so far).

Usage: python benchmarks/mal_experiment.py [--seeds 1 2 3] [--epochs1 8] [--epochs2 6] [--report-only]
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from _results import DEVSET, experiment_parser, header, parse_with_overrides, update_section
from protocol import compare, evidence_table, run_once, verdict_line

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("frozen", "frozen_fe", "dynamic")
DEEP = "ssl_l1"
METRICS = ["pesq", "stoi", "estoi", "si_sdr", "csig", "cbak", "covl", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak"]
SMALL = ["--channels=[8,16,32]", "--bottleneck_dim=64", "--rnn_layers=1", "--segment_seconds=2.0"]
ALL_TAPS = "[enc1,enc2,enc3,bottleneck]"


def best_valid(folder: Path, key: str = "pesq") -> float:
    """The best validation ``key`` over a run's kept checkpoints (its CKPT.yaml)."""
    values = []
    for meta_file in (folder / "save").glob("CKPT+*/CKPT.yaml"):
        meta = yaml.safe_load(meta_file.read_text()) or {}
        if isinstance(meta.get(key), (int, float)):
            values.append(float(meta[key]))
    if not values:
        raise SystemExit(f"{folder}: no checkpoint with a validation {key}")
    return max(values)


def main():
    parser = experiment_parser(__doc__, "results/mal_experiment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs1", type=int, default=8)
    parser.add_argument("--epochs2", type=int, default=6)
    parser.add_argument("--examples", type=int, default=200, help="training mixtures per epoch (batch 8)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.3, 1.0, 3.0, 10.0])
    parser.add_argument("--valid-limit", type=int, default=30, help="validation pairs (tuning and checkpoints)")
    parser.add_argument("--deep-feature", default="torchfcpe",
                        help="the frozen encoder of the deep-feature arm (torchfcpe, resemblyzer, a WavLM folder; "
                             "'none' leaves the arm out)")
    parser.add_argument("--report-only", action="store_true", help="write the tables from the finished runs")
    args, extra = parse_with_overrides(parser)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"--data_folder={DEVSET}", f"--examples_per_epoch={args.examples}", f"--valid_limit={args.valid_limit}",
              "--n_jobs=1", *SMALL, *extra]
    seconds: dict[str, float] = {}

    def phase1(seed: int) -> Path:
        folder = out / f"seed{seed}" / "phase1"
        cmd = [sys.executable, "recipes/baseline/train.py", "hparams/folders/baseline.yaml", f"--output_folder={folder}",
               f"--number_of_epochs={args.epochs1}", "--test_data=null", f"--seed={seed}", *common]
        seconds[f"phase1/{seed}"] = run_once(cmd, folder, out / "logs" / f"phase1_{seed}.log", args.threads,
                                             outputs=("save",))
        return max((folder / "save").glob("CKPT+*"), key=lambda p: p.stat().st_mtime)

    def phase2(seed: int, name: str, variant: str, lam: float, taps: str, test: bool) -> Path:
        folder = out / f"seed{seed}" / name
        cmd = [sys.executable, "recipes/mal/train.py", f"hparams/folders/mal_{variant}.yaml", f"--output_folder={folder}",
               f"--init_from={starts[seed]}", "--phase1_epochs=0", f"--number_of_epochs={args.epochs2}",
               f"--lambda_mal={lam}", f"--seed={seed}", *common]
        cmd.append(f"--ssl_source={args.deep_feature}" if variant == DEEP else f"--mal_taps={taps}")
        if not test:
            cmd.append("--test_data=null")
        seconds[f"{name}/{seed}"] = run_once(cmd, folder, out / "logs" / f"{name}_{seed}.log", args.threads,
                                             outputs=("test_scores.csv",) if test else ("save",))
        return folder

    def finished(seed: int, name: str, test: bool) -> bool:
        folder = out / f"seed{seed}" / name
        return (folder / "seconds").exists() and (not test or (folder / "test_scores.csv").exists())

    starts: dict[int, Path] = {}
    deep = args.deep_feature.lower() != "none"
    tuned = json.loads((out / "tuned.json").read_text()) if (out / "tuned.json").exists() else {}
    if not args.report_only:
        with ThreadPoolExecutor(args.parallel) as pool:
            for seed, start in zip(args.seeds, pool.map(phase1, args.seeds)):
                starts[seed] = start
            first = args.seeds[0]
            # tuning on validation, first seed: lambda with the bottleneck tap (the deep-feature arm: lambda only), then the taps
            grid = [(v, lam) for v in VARIANTS for lam in args.lambdas]
            list(pool.map(lambda vl: phase2(first, f"tune_{vl[0]}_l{vl[1]:g}", vl[0], vl[1], "[bottleneck]", False),
                          grid))
            for v in VARIANTS:
                scores = {lam: best_valid(out / f"seed{first}" / f"tune_{v}_l{lam:g}") for lam in args.lambdas}
                tuned[v] = {"lambda_mal": max(scores, key=scores.get), "valid_pesq_by_lambda": scores}
            list(pool.map(lambda v: phase2(first, f"tune_{v}_alltaps", v, tuned[v]["lambda_mal"], ALL_TAPS, False),
                          VARIANTS))
            for v in VARIANTS:
                lam = tuned[v]["lambda_mal"]
                taps = {"[bottleneck]": best_valid(out / f"seed{first}" / f"tune_{v}_l{lam:g}"),
                        ALL_TAPS: best_valid(out / f"seed{first}" / f"tune_{v}_alltaps")}
                tuned[v].update(taps=max(taps, key=taps.get), valid_pesq_by_taps=taps)
            (out / "tuned.json").write_text(json.dumps(tuned, indent=2))
            # the final arms, every seed, tested
            jobs = [(s, "baseline", "frozen", 0.0, "[bottleneck]") for s in args.seeds]
            jobs += [(s, v, v, tuned[v]["lambda_mal"], tuned[v]["taps"]) for s in args.seeds for v in VARIANTS]
            list(pool.map(lambda j: phase2(*j, True), jobs))
            if deep:  # the deep-feature arm: lambda tuned on validation at the first seed, then every seed
                list(pool.map(lambda lam: phase2(first, f"tune_{DEEP}_l{lam:g}", DEEP, lam, "", False), args.lambdas))
                scores = {lam: best_valid(out / f"seed{first}" / f"tune_{DEEP}_l{lam:g}") for lam in args.lambdas}
                tuned[DEEP] = {"lambda_mal": max(scores, key=scores.get), "valid_pesq_by_lambda": scores,
                               "source": args.deep_feature}
                (out / "tuned.json").write_text(json.dumps(tuned, indent=2))
                list(pool.map(lambda s: phase2(s, DEEP, DEEP, tuned[DEEP]["lambda_mal"], "", True), args.seeds))
    report(out, args, tuned, finished)


def report(out: Path, args, tuned: dict, finished) -> None:
    base = {s: out / f"seed{s}" / "baseline" / "test_scores.csv" for s in args.seeds if finished(s, "baseline", True)}
    rows = []
    minutes = lambda name: [float((out / f"seed{s}" / name / "seconds").read_text()) / 60  # noqa: E731
                            for s in args.seeds if finished(s, name, True)]
    steps = args.epochs2 * args.examples // 8
    for v in (*VARIANTS, DEEP):
        arm = {s: out / f"seed{s}" / v / "test_scores.csv" for s in args.seeds if finished(s, v, True)}
        if not (set(arm) & set(base)):
            continue
        cfg = tuned.get(v, {})
        label = (f"deep-feature L1 through {cfg.get('source', '?')} (lambda {cfg.get('lambda_mal', '?'):g})"
                 if v == DEEP else f"MAL {v} (lambda {cfg.get('lambda_mal', '?'):g}, taps {cfg.get('taps', '?')})")
        times = minutes(v)
        rows.append((label, compare(base, arm, METRICS), f"{steps} steps, {sum(times) / len(times):.1f} min/run"))
    if not rows:
        print("no finished arm yet")
        return
    base_rows = compare(base, base, METRICS)
    base_times = minutes("baseline")
    table = evidence_table([("reconstruction only (baseline)", base_rows,
                             f"{steps} steps, {sum(base_times) / len(base_times):.1f} min/run"), *rows], METRICS)
    verdicts = [verdict_line(label, result) for label, result, _ in rows]
    tuning = "\n".join(f"- {v}: valid PESQ by lambda_mal {json.dumps(c['valid_pesq_by_lambda'])}"
                       + (f"; by taps {json.dumps(c['valid_pesq_by_taps'])}" if "valid_pesq_by_taps" in c else "")
                       for v, c in tuned.items())
    body = (header(f"Model as Loss against reconstruction-only, {len(base)} seed(s) (mal_experiment.py)",
                   args.report_only)
            + f"- protocol: benchmarks/protocol.py; phase 1 {args.epochs1} epochs, then {args.epochs2} epochs "
            f"({steps} steps of batch 8, 2 s segments) per arm from the same phase-1 model; seeds {args.seeds}\n"
            f"- model: the backbone at a reduced size ({' '.join(SMALL)}) so that 3 seeds fit on 2 CPU cores\n"
            + (f"- deep-feature arm ({DEEP}): L1 between frozen {tuned[DEEP]['source']} features of clean and "
               "enhanced speech (sb_mal.models.frame_features), in place of the model's own encoder\n"
               if DEEP in tuned else "")
            + f"- tuned on the validation split ({args.valid_limit} devset valid pairs, best-checkpoint PESQ, first "
            f"seed only):\n{tuning}\n"
            "- test: 120 devset test pairs; each cell: arm mean (paired difference from the baseline [95 % "
            "bootstrap interval over seeds and utterances]) verdict\n\n" + table + "\n\n"
            + "Against the reconstruction-only continuation of the same model, at these sizes and budgets:\n"
            + "\n".join(verdicts) + "\n")
    print(body)
    update_section("mal_experiment", body)


if __name__ == "__main__":
    main()
