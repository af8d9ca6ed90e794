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
(0 included: does any weight beat reconstruction-only on validation?) with the bottleneck tap (the
deep-feature arm: lambda only), then the taps (bottleneck vs every encoder layer + bottleneck) at
the best lambda; the score is the best validation PESQ of the run (its kept checkpoint). The taps
are combined by their mean (``ModelAsLoss``), so the tap choice does not change the weight. The
chosen configuration then runs at every seed and is tested on the 120 devset test pairs (intrusive
metrics + DNSMOS); the comparison is the paired per-utterance difference with the baseline arm of
the same seed, pooled over seeds, with a two-level bootstrap 95 % interval, and (a column) the same
without the tuning seed.

Instead of tuning: ``--skip-tuning`` with ``--arm-config`` (JSON, e.g. ``'{"frozen": {"lambda_mal": 4,
"taps": "[enc1,enc2,enc3,bottleneck]"}}'``) runs the given configuration; ``--target-share 0.5``
sets each MAL arm's lambda per seed so that ``||lambda * grad L_mal|| / ||grad L_rec||`` on the
decoder is 0.5 at the start of phase 2 (measured at lambda 1 on that seed's phase-1 model, four
batches of devset training mixtures: ``lambda = target / share``). ``--arms`` runs chosen arms only
(the baseline always runs). Every MAL run logs its gradient share at the start of phase 2
(``mal_gradient_share.json``); the table shows the mean over seeds.

A smaller backbone than the recipes' default and shorter phases make 3 seeds x 4 arms plus the
tuning grid affordable on 2 CPU cores; the sizes are in the table header. Every run is resumable
(``--report-only`` writes the tables from the runs finished so far).

Usage: python benchmarks/mal_experiment.py [--seeds 1 2 3] [--epochs1 8] [--epochs2 6] [--arms frozen]
       [--skip-tuning --arm-config JSON] [--target-share 0.5] [--report-only] [--section NAME]
       [--write-results]

Runs go to ``--out`` (results/mal_experiment, ignored by git); the tables to
``results/benchmarks/RESULTS.md``, or to the committed ``benchmarks/RESULTS.md`` with ``--write-results``.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from _results import DEVSET, add_batch_option, experiment_parser, header, parse_with_overrides, update_section
from protocol import (PROGRESS, compare, compare_without, evidence_table, merge_overrides, per_seed_line, run_once,
                      verdict_line)

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


def measured_share(start: Path, taps: str, seed: int, batches: int = 4, batch_size: int = 8,
                   seconds: float = 2.0) -> dict:
    """The MAL gradient share per unit of lambda on the decoder of the phase-1 model ``start`` (a CKPT
    folder): ``||grad L_mal|| / ||grad L_rec||`` at lambda 1, the mean over ``batches`` batches of devset
    training mixtures (seeded by ``seed``), with the recipes' reconstruction loss (L1 + multi-resolution
    STFT, weights 1) and the snapshot of the model itself as the loss encoder (what phase 2 starts with)."""
    import torch

    from _results import devset_batch
    from sb_mal.brains.mal import decoder_parameters, gradient_share
    from sb_mal.checkpoints import load_pretrained
    from sb_mal.losses import ModelAsLoss, MultiResolutionSTFTLoss, WaveformL1, WeightedSum

    model = load_pretrained(start).model.train()
    mal = ModelAsLoss(model, taps=taps.strip("[]").split(","), encoder="snapshot", snapshot_now=True)
    rec_cost = WeightedSum({"l1": WaveformL1(), "mrstft": MultiResolutionSTFTLoss()})
    noisy, clean = devset_batch(batches * batch_size, seconds, seed=seed)
    lens = torch.ones(batch_size)
    shares = []
    for i in range(batches):
        part = slice(i * batch_size, (i + 1) * batch_size)
        out = model(noisy[part], lens)
        shares.append(gradient_share(rec_cost(out, clean[part], lens), mal(out, clean[part], lens),
                                     decoder_parameters(model))["share_per_lambda"])
    return {"share_per_lambda": sum(shares) / len(shares), "by_batch": shares}


def build_parser():
    """The driver's command-line options."""
    parser = experiment_parser(__doc__, "results/mal_experiment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                        help="seeds (5 by default; at least 3); the first is the tuning seed")
    parser.add_argument("--epochs1", type=int, default=8,
                        help="phase-1 epochs: the backbone trained with the reconstruction loss (default 8)")
    parser.add_argument("--epochs2", type=int, default=6,
                        help="phase-2 epochs of every arm, from the phase-1 model (default 6)")
    parser.add_argument("--examples", type=int, default=200, help="training mixtures per epoch")
    add_batch_option(parser)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.3, 1.0, 3.0, 10.0],
                        help="the lambda_mal grid of the tuning (0 = reconstruction only)")
    parser.add_argument("--valid-limit", type=int, default=30, help="validation pairs (tuning and checkpoints)")
    parser.add_argument("--deep-feature", default="torchfcpe",
                        help="the frozen encoder of the deep-feature arm (torchfcpe, resemblyzer, a WavLM folder; "
                             "'none' leaves the arm out)")
    parser.add_argument("--arms", nargs="+", default=[*VARIANTS, DEEP], choices=[*VARIANTS, DEEP],
                        help="the arms to run besides the reconstruction-only baseline (default: all)")
    parser.add_argument("--skip-tuning", action="store_true",
                        help="no validation grid: every arm's configuration comes from --arm-config (or an earlier "
                             "tuned.json in --out)")
    parser.add_argument("--arm-config", type=json.loads, default={},
                        help='JSON: arm -> {"lambda_mal": x, "taps": "[enc1,bottleneck]"} (taps: MAL arms only), '
                             "used instead of tuning")
    parser.add_argument("--target-share", type=float, default=None,
                        help="set each MAL arm's lambda per seed so that ||lambda*grad L_mal|| / ||grad L_rec|| on "
                             "the decoder equals this at the start of phase 2 (measured at lambda 1 on the phase-1 "
                             "model); the taps come from --arm-config, tuning, or all four")
    parser.add_argument("--report-only", action="store_true", help="write the tables from the finished runs")
    parser.add_argument("--section", default="mal_experiment",
                        help="the results section the tables go to (default mal_experiment; another name keeps a "
                             "rerun of some arms beside the main table)")
    return parser


def main():
    parser = build_parser()
    args, extra = parse_with_overrides(parser)
    if args.target_share is not None and not args.target_share > 0:
        parser.error("--target-share must be positive")
    unknown = set(args.arm_config) - {*VARIANTS, DEEP}
    if unknown:
        parser.error(f"--arm-config names unknown arms {sorted(unknown)}")
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = merge_overrides([f"--data_folder={DEVSET}", f"--examples_per_epoch={args.examples}",
                              f"--batch_size={args.batch}", f"--valid_limit={args.valid_limit}", "--n_jobs=1", *SMALL],
                             extra)
    seconds: dict[str, float] = {}
    deep = args.deep_feature.lower() != "none" and DEEP in args.arms
    variants = [v for v in VARIANTS if v in args.arms]

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
               f"--lambda_mal={lam:.6g}", f"--seed={seed}", *common]
        cmd.append(f"--ssl_source={args.deep_feature}" if variant == DEEP else f"--mal_taps={taps}")
        if not test:
            cmd.append("--test_data=null")
        seconds[f"{name}/{seed}"] = run_once(cmd, folder, out / "logs" / f"{name}_{seed}.log", args.threads,
                                             outputs=("test_scores.csv",) if test else ("save",))
        return folder

    def tune_name(variant: str, lam: float) -> str:
        # lambda 0 is reconstruction only: the same run for frozen and dynamic (frozen_fe freezes the encoder)
        return "tune_rec_only" if lam == 0 and variant != "frozen_fe" else f"tune_{variant}_l{lam:g}"

    def lam_of(v: str, seed: int) -> float:
        cfg = tuned[v]
        return float(cfg.get("lambda_by_seed", {}).get(str(seed), cfg["lambda_mal"]))

    def finished(seed: int, name: str, test: bool) -> bool:
        folder = out / f"seed{seed}" / name
        return (folder / "seconds").exists() and (not test or (folder / "test_scores.csv").exists())

    starts: dict[int, Path] = {}
    tuned = json.loads((out / "tuned.json").read_text()) if (out / "tuned.json").exists() else {}
    for arm, cfg in args.arm_config.items():  # given configurations replace tuned ones
        tuned[arm] = {**cfg, "lambda_mal": float(cfg.get("lambda_mal", 1.0)), "given": True}
        if arm == DEEP:
            tuned[arm]["source"] = args.deep_feature
    if not args.report_only:
        missing = [v for v in ([*variants, DEEP] if deep else variants) if v not in tuned]
        if args.skip_tuning and missing and args.target_share is None:
            parser.error(f"--skip-tuning needs a configuration for {missing} (--arm-config)")
        # the planned runs: phase 1 and the arms of every seed, the tuning grid of the first seed
        n_tune = len({(tune_name(v, lam), v) for v in variants if v not in tuned and not args.skip_tuning
                      and args.target_share is None for lam in args.lambdas}) * 2
        PROGRESS.plan(len(args.seeds) * (2 + len(variants) + deep) + n_tune)
        with ThreadPoolExecutor(args.parallel) as pool:
            for seed, start in zip(args.seeds, pool.map(phase1, args.seeds)):
                starts[seed] = start
            first = args.seeds[0]
            to_tune = [v for v in variants if v not in tuned and not args.skip_tuning]
            if args.target_share is not None:  # lambda from the gradient share; taps given, tuned or all four
                for v in variants:
                    cfg = tuned.setdefault(v, {"taps": ALL_TAPS})
                    cfg.setdefault("taps", ALL_TAPS)
                    cfg["target_share"] = args.target_share
                    cfg["share_per_lambda_by_seed"] = {str(s): measured_share(starts[s], cfg["taps"], s)["share_per_lambda"]
                                                       for s in args.seeds}
                    cfg["lambda_by_seed"] = {s: args.target_share / r for s, r in cfg["share_per_lambda_by_seed"].items()}
                    cfg["lambda_mal"] = cfg["lambda_by_seed"][str(first)]
                to_tune = []
                (out / "tuned.json").write_text(json.dumps(tuned, indent=2))
            # tuning on validation, first seed: lambda with the bottleneck tap, then the taps at the best lambda
            grid = sorted({(tune_name(v, lam), v, lam) for v in to_tune for lam in args.lambdas})
            list(pool.map(lambda g: phase2(first, g[0], g[1], g[2], "[bottleneck]", False), grid))
            for v in to_tune:
                scores = {lam: best_valid(out / f"seed{first}" / tune_name(v, lam)) for lam in args.lambdas}
                tuned[v] = {"lambda_mal": max(scores, key=scores.get), "valid_pesq_by_lambda": scores}
            to_tap = [v for v in to_tune if tuned[v]["lambda_mal"] > 0]
            list(pool.map(lambda v: phase2(first, f"tune_{v}_alltaps", v, tuned[v]["lambda_mal"], ALL_TAPS, False),
                          to_tap))
            for v in to_tune:
                lam = tuned[v]["lambda_mal"]
                if lam == 0:
                    tuned[v].update(taps="[bottleneck]")
                    continue
                taps = {"[bottleneck]": best_valid(out / f"seed{first}" / tune_name(v, lam)),
                        ALL_TAPS: best_valid(out / f"seed{first}" / f"tune_{v}_alltaps")}
                tuned[v].update(taps=max(taps, key=taps.get), valid_pesq_by_taps=taps)
            (out / "tuned.json").write_text(json.dumps(tuned, indent=2))
            # the final arms, every seed, tested
            jobs = [(s, "baseline", "frozen", 0.0, "[bottleneck]") for s in args.seeds]
            jobs += [(s, v, v, lam_of(v, s), tuned[v]["taps"]) for s in args.seeds for v in variants]
            list(pool.map(lambda j: phase2(*j, True), jobs))
            if deep:  # the deep-feature arm: lambda tuned on validation at the first seed, then every seed
                if DEEP not in tuned:
                    list(pool.map(lambda lam: phase2(first, f"tune_{DEEP}_l{lam:g}", DEEP, lam, "", False),
                                  [lam for lam in args.lambdas if lam > 0]))
                    scores = {lam: best_valid(out / f"seed{first}" / (f"tune_{DEEP}_l{lam:g}" if lam > 0
                                                                        else "tune_rec_only"))
                              for lam in args.lambdas if lam > 0 or (out / f"seed{first}" / "tune_rec_only").exists()}
                    tuned[DEEP] = {"lambda_mal": max(scores, key=scores.get), "valid_pesq_by_lambda": scores,
                                   "source": args.deep_feature}
                    (out / "tuned.json").write_text(json.dumps(tuned, indent=2))
                list(pool.map(lambda s: phase2(s, DEEP, DEEP, tuned[DEEP]["lambda_mal"], "", True), args.seeds))
    report(out, args, tuned, finished)


def read_share(folder: Path) -> float | None:
    """The gradient share a MAL run logged at the start of phase 2 (None if it has not)."""
    path = folder / "mal_gradient_share.json"
    return float(json.loads(path.read_text())["share"]) if path.exists() else None


def report(out: Path, args, tuned: dict, finished) -> None:
    base = {s: out / f"seed{s}" / "baseline" / "test_scores.csv" for s in args.seeds if finished(s, "baseline", True)}
    rows, seed_lines = [], []
    minutes = lambda name: [float((out / f"seed{s}" / name / "seconds").read_text()) / 60  # noqa: E731
                            for s in args.seeds if finished(s, name, True)]
    steps = args.epochs2 * (args.examples // args.batch)
    first = args.seeds[0]
    for v in (*VARIANTS, DEEP):
        arm = {s: out / f"seed{s}" / v / "test_scores.csv" for s in args.seeds if finished(s, v, True)}
        if not (set(arm) & set(base)):
            continue
        cfg = tuned.get(v, {})
        lam = (f"lambda for share {cfg['target_share']:g}: "
               + ", ".join(f"{float(x):.3g}" for x in cfg["lambda_by_seed"].values())
               if "target_share" in cfg else f"lambda {cfg.get('lambda_mal', float('nan')):g}")
        label = (f"deep-feature L1 through {cfg.get('source', '?')} ({lam})"
                 if v == DEEP else f"MAL {v} ({lam}, mean of taps {cfg.get('taps', '?')})")
        times = minutes(v)
        shares = [x for x in (read_share(out / f"seed{s}" / v) for s in arm) if x is not None]
        share = f", gradient share {sum(shares) / len(shares):.3f}" if shares else ""
        rows.append((label, compare(base, arm, METRICS), f"{steps} steps, {sum(times) / len(times):.1f} min/run{share}",
                     compare_without(base, arm, METRICS, first)))
        seed_lines.append(per_seed_line(label, base, arm))
    if not rows:
        print("no finished arm yet")
        return
    base_rows = compare(base, base, METRICS)
    base_times = minutes("baseline")
    tuned_here = any(not c.get("given") and "target_share" not in c for c in tuned.values())
    table = evidence_table([("reconstruction only (baseline)", base_rows,
                             f"{steps} steps, {sum(base_times) / len(base_times):.1f} min/run"), *rows], METRICS,
                           tuning_seed=first if tuned_here else None)
    verdicts = [verdict_line(label, result) for label, result, _, _ in rows]
    config = []
    for v, c in tuned.items():
        if c.get("given"):
            config.append(f"- {v}: given on the command line (--arm-config), not tuned here: "
                          f"{json.dumps({k: x for k, x in c.items() if k != 'given'})}")
        elif "target_share" in c:
            config.append(f"- {v}: lambda per seed for a gradient share of {c['target_share']:g} (measured share per "
                          f"unit of lambda {json.dumps({k: round(x, 4) for k, x in c['share_per_lambda_by_seed'].items()})}); "
                          f"taps {c.get('taps')}")
        else:
            config.append(f"- {v}: valid PESQ by lambda_mal {json.dumps(c.get('valid_pesq_by_lambda', {}))}"
                          + (f"; by taps {json.dumps(c['valid_pesq_by_taps'])}" if "valid_pesq_by_taps" in c else ""))
    body = (header(f"Model as Loss against reconstruction-only, {len(base)} seed(s) (mal_experiment.py)",
                   args.report_only)
            + f"- protocol: benchmarks/protocol.py; phase 1 {args.epochs1} epochs, then {args.epochs2} epochs "
            f"({steps} steps of batch {args.batch}, 2 s segments) per arm from the same phase-1 model; "
            f"seeds {args.seeds}\n"
            f"- model: the backbone at a reduced size ({' '.join(SMALL)}) so that the seeds fit on 2 CPU cores\n"
            "- L_mal is the mean over its taps (a sum before December 2026: lambda x with k summed taps equals "
            "lambda k*x with the mean); gradient share = ||lambda * grad L_mal|| / ||grad L_rec|| on the decoder at "
            "the first phase-2 step, mean over seeds\n"
            + (f"- deep-feature arm ({DEEP}): L1 between frozen {tuned[DEEP].get('source')} features of clean and "
               "enhanced speech (sb_mal.models.frame_features), in place of the model's own encoder\n"
               if DEEP in tuned else "")
            + f"- configuration (tuning: {args.valid_limit} devset valid pairs, best-checkpoint PESQ, seed {first} "
            f"only):\n" + "\n".join(config) + "\n"
            "- test: 120 devset test pairs; each cell: arm mean (paired difference from the baseline [95 % "
            "bootstrap interval over seeds and utterances]) verdict\n\n" + table + "\n\n"
            + "Against the reconstruction-only continuation of the same model, at these sizes and budgets:\n"
            + "\n".join(verdicts) + "\n\nWhether every seed agrees (mean paired difference per seed):\n"
            + "\n".join(seed_lines) + "\n")
    print(body)
    update_section(args.section, body)


if __name__ == "__main__":
    main()
