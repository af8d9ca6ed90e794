"""Codec-approximation loss vs L1 across the separation ladder, under the protocol of benchmarks/protocol.py.

Arms, for each capacity (P1..P5) and seed, runs of ``recipes/codec/train_separation.py`` identical but
for the loss (same data stream and number of steps):

* ``l1_mag``: L1 between magnitude spectrograms (the separator's STFT, n_fft 1024 / hop 256), the
  paper's baseline and the reference of every comparison;
* ``l1``: waveform L1 (a second baseline; the only one before December 2026);
* ``codec``: magnitude L1 + prediction term + feature term (layer set F) of a trained codec net
  (``--codec-base waveform`` puts waveform L1 in place of the magnitude L1);
* ``codec_nopred``: magnitude L1 + feature term only (the prediction term's weight 0).

``--arms`` runs a subset (``l1_mag`` always runs).

Loss weights. The raw terms differ in scale by more than an order of magnitude, so equal weights
let one term dominate by accident. The weights are set in two steps: (1) *balanced*: ``lb`` and
``lc`` make the prediction and feature terms equal to the base term (magnitude or waveform L1) for
a do-nothing separator (the noisy mixture as the estimate) over a fixed batch of devset training
mixtures, measured once and written to ``weights.json``; (2) a multiplier ``m`` of both codec terms,
chosen from ``--multipliers`` (default 0.1, 0.3, 1, 3: 1 is "each codec term as large as the base
term") by validation PESQ (validation split only) at the first seed and the smallest capacity; a
single value is used as given, without tuning. ``codec_nopred`` uses the same ``m`` and ``lc``.

The codec net (``--codec-run``) is trained first by ``recipes/codec/train_codec_net.py`` when the
folder holds no run (``--codec-epochs``; resumable). Every run keeps its best-validation-PESQ
checkpoint and is tested on the devset test pairs (speech) or fixed held-out mixtures (music).
Tables: each arm's paired per-utterance difference from ``l1_mag`` of the same capacity and seed,
pooled over seeds, with two-level bootstrap 95 % intervals (and without the tuning seed when the
multiplier was tuned); and the PESQ / SI-SDR gain against capacity (figure). The claim to check (the
paper): the gain is largest for the smallest networks and fades with capacity. The paper judged it
by listening tests; DNSMOS (``--dnsmos``) is the closest stand-in here.

Tests score PESQ, STOI, ESTOI and SI-SDR; ``--dnsmos`` adds DNSMOS (1-4 s per utterance on a CPU core,
more than training a small network costs).

Usage: python benchmarks/codec_ladder.py [--codec-run results/codec_ladder/codec_net] [--capacities P4 P5]
       [--arms l1_mag codec_nopred] [--multipliers 1] [--seeds 1 2 3] [--epochs 12] [--test-size 60]
       [--dnsmos] [--report-only] [--write-results]

Runs go to ``--out`` (results/codec_ladder, ignored by git); the tables and the figure to
``results/benchmarks/``, or to the committed ``benchmarks/RESULTS.md`` and ``benchmarks/figures/`` with
``--write-results``.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import (DEVSET, add_batch_option, devset_batch, experiment_parser, figures_dir, header,
                      parse_with_overrides, update_section)
from mal_experiment import best_valid
from protocol import PROGRESS, compare, compare_without, evidence_table, merge_overrides, run_once

REPO = Path(__file__).resolve().parents[1]
TASKS = {"speech": ("speech denoising", "hparams/folders/separation_speech.yaml"),
         "music": ("speech/music separation", "hparams/folders/separation_music.yaml")}
BASELINE = "l1_mag"
ARMS = (BASELINE, "l1", "codec", "codec_nopred")
# DNSMOS is left out of the tests by default: at 1-4 s per utterance on a CPU core it would cost more than
# training P1-P3 (--dnsmos adds it back)
METRICS = ["pesq", "stoi", "estoi", "si_sdr"]
DNSMOS = ["dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak"]
BASE_TERM = {"magnitude": "mag_l1", "waveform": "wave_l1"}


def balanced_weights(codec_run: Path, path: Path, base: str = "magnitude") -> dict:
    """``lb``, ``lc`` making the prediction and feature terms equal to the base term (``base``:
    magnitude or waveform L1) for the noisy mixture as the estimate (a fixed batch of 8 devset training
    mixtures); cached in ``path`` (one entry per base)."""
    cached = json.loads(path.read_text()) if path.exists() else {}
    if base in cached:
        return cached[base]
    import torch

    from sb_mal.losses import CodecApproximationLoss

    noisy, clean = devset_batch(8, 3.0)
    loss = CodecApproximationLoss.from_pretrained(codec_run, layers="F", base=base)
    with torch.no_grad():
        _, parts = loss(noisy, clean, terms=True)
    terms = {k: float(v) for k, v in parts.items()}
    ref = terms[BASE_TERM[base]]
    cached[base] = {"raw_terms": terms, "lb": ref / terms["codec_l1"], "lc": ref / terms["features"]}
    path.write_text(json.dumps(cached, indent=2))
    return cached[base]


def run_name(capacity: str, arm: str, base: str, m: float) -> str:
    """A run's folder name: the capacity and arm, and for a codec arm its base term and multiplier."""
    return f"{capacity}_{arm}" if arm in ("l1", BASELINE) else f"{capacity}_{arm}_{base}_m{m:g}"


def arm_overrides(arm: str, base: str, m: float, weights: dict) -> list[str]:
    """The recipe overrides that make a run of ``arm`` (``weights``: the balanced lb, lc of ``base``)."""
    if arm == "l1":
        return ["--loss=l1"]
    if arm == BASELINE:
        return ["--loss=l1_mag"]
    lb = 0.0 if arm == "codec_nopred" else m * weights["lb"]
    return ["--loss=codec", f"--codec_base={base}", f"--codec_lb={lb:.6g}", f"--codec_lc={m * weights['lc']:.6g}"]


def build_parser():
    """The driver's command-line options."""
    parser = experiment_parser(__doc__, "results/codec_ladder")
    parser.add_argument("--codec-run", default="results/codec_ladder/codec_net",
                        help="a trained codec-net run folder (trained here first when it holds no run, or when it "
                             "is inside --out and its training has not finished)")
    parser.add_argument("--codec-epochs", type=int, default=20, help="epochs of the codec net when it is trained here")
    parser.add_argument("--tasks", nargs="+", default=["speech"], choices=list(TASKS),
                        help="speech: denoising of devset speech in devset noise; music: speech separated from "
                             "devset music (default: speech)")
    parser.add_argument("--capacities", nargs="+", default=["P1", "P2", "P3", "P4", "P5"],
                        help="separators of the ladder, P1 (smallest) to P5 (largest) (default: all five)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                        help=f"the arms to run ({BASELINE}, the baseline, always runs)")
    parser.add_argument("--codec-base", default="magnitude", choices=list(BASE_TERM),
                        help="the base term of the codec arms: magnitude L1 (the paper's baseline loss) or waveform L1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                        help="seeds (5 by default; at least 3); the first is the tuning seed")
    parser.add_argument("--epochs", type=int, default=12,
                        help="training epochs of every run, each of --examples mixtures (default 12)")
    parser.add_argument("--examples", type=int, default=160, help="training mixtures per epoch")
    add_batch_option(parser)
    parser.add_argument("--multipliers", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0],
                        help="grid of the codec terms' multiplier (1: each term as large as the base term for a "
                             "do-nothing separator); one value is used as given, without tuning")
    parser.add_argument("--valid-size", type=int, default=20,
                        help="validation utterances (checkpoint choice and the multiplier's tuning) (default 20)")
    parser.add_argument("--test-size", type=int, default=None, help="test utterances (default: all)")
    parser.add_argument("--dnsmos", action="store_true", help="also score DNSMOS in every test (slow on a CPU)")
    parser.add_argument("--report-only", action="store_true", help="write the tables from the finished runs")
    return parser


def main():
    parser = build_parser()
    args, extra = parse_with_overrides(parser)
    from sb_mal.models.separation import LADDER, ladder_table

    params = {r["name"]: r["parameters"] for r in ladder_table()}
    unknown = [c for c in args.capacities if c not in LADDER]
    if unknown:
        parser.error(f"unknown capacities {unknown}; choose from {sorted(LADDER)}")
    args.arms = [a for a in ARMS if a in args.arms or a == BASELINE]
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    codec_run = (REPO / args.codec_run).resolve()
    tuned_file = out / "tuned.json"
    tuned = json.loads(tuned_file.read_text()) if tuned_file.exists() else {}
    base = args.codec_base
    weights: dict = {}

    def train(task: str, capacity: str, arm: str, seed: int, name: str, m: float, test: bool) -> Path:
        folder = out / task / f"seed{seed}" / name
        sizes = ([f"--valid_limit={args.valid_size}"] + ([f"--test_limit={args.test_size}"] if args.test_size else [])
                 if task == "speech" else
                 [f"--valid_items={args.valid_size}"] + ([f"--test_items={args.test_size}"] if args.test_size else []))
        cmd = merge_overrides([sys.executable, "recipes/codec/train_separation.py", TASKS[task][1],
                               f"--data_folder={DEVSET}", f"--output_folder={folder}", f"--capacity={capacity}",
                               f"--codec_run={codec_run}", *arm_overrides(arm, base, m, weights),
                               f"--number_of_epochs={args.epochs}", f"--examples_per_epoch={args.examples}",
                               f"--batch_size={args.batch}", f"--seed={seed}", "--n_jobs=1",
                               f"--test_metrics=[{','.join(METRICS + (['dnsmos'] if args.dnsmos else []))}]", *sizes],
                              extra)
        if not test:
            cmd.append("--test_data=null")
        run_once(cmd, folder, out / "logs" / f"{task}_{name}_{seed}.log", args.threads,
                 outputs=("test_scores.csv",) if test else ("save",))
        return folder

    def multiplier(task: str) -> dict:
        if len(args.multipliers) == 1:
            return {"multiplier": args.multipliers[0], "given": True}
        return tuned[f"{task}/{base}"]

    if not args.report_only:
        # the recipe writes model_config.json when it starts: a codec net of this driver's own folder is
        # done once run_once recorded its seconds (a killed training resumes); one given from elsewhere is
        # used as it is, never trained further
        codec_arms = [a for a in args.arms if a.startswith("codec")]
        own = codec_run.is_relative_to(out)
        if codec_arms and (not (codec_run / "model_config.json").exists()
                           or (own and not (codec_run / "seconds").exists())):
            cmd = [sys.executable, "recipes/codec/train_codec_net.py", "hparams/mp3codec/spectral.yaml",
                   f"--data_folder={DEVSET}", f"--output_folder={codec_run}", f"--number_of_epochs={args.codec_epochs}",
                   *[e for e in extra if e.startswith("--device=")]]  # on the runs' device
            run_once(cmd, codec_run, out / "logs" / "codec_net.log", args.threads, outputs=("model_config.json",))
        if codec_arms:
            weights.update(balanced_weights(codec_run, out / "weights.json", base))
        first, smallest = args.seeds[0], min(args.capacities, key=params.get)
        with ThreadPoolExecutor(args.parallel) as pool:
            for task in args.tasks:
                key = f"{task}/{base}"
                if codec_arms and len(args.multipliers) > 1 and key not in tuned:
                    # the multiplier, on validation: first seed, smallest capacity
                    names = {m: run_name(smallest, "codec", base, m).replace(smallest, f"tune_{smallest}", 1)
                             for m in args.multipliers}
                    list(pool.map(lambda m: train(task, smallest, "codec", first, names[m], m, False),
                                  args.multipliers))
                    scores = {m: best_valid(out / task / f"seed{first}" / names[m]) for m in args.multipliers}
                    tuned[key] = {"multiplier": max(scores, key=scores.get), "valid_pesq_by_multiplier": scores,
                                  "capacity": smallest}
                    tuned_file.write_text(json.dumps(tuned, indent=2))
            # seed by seed (a partial report has whole seeds), the largest capacity first
            jobs = [(t, c, a, s) for s in args.seeds for c in sorted(args.capacities, key=lambda c: -params[c])
                    for t in args.tasks for a in args.arms]

            def job(j):
                m = multiplier(j[0])["multiplier"] if j[2].startswith("codec") else 1.0
                return train(*j, run_name(j[1], j[2], base, m), m, True)

            PROGRESS.plan(len(jobs))
            list(pool.map(job, jobs))
    report(out, args, tuned)


def report(out: Path, args, tuned: dict) -> None:
    from sb_mal.models.separation import ladder_table

    params = {r["name"]: r["parameters"] for r in ladder_table()}
    cols = METRICS + (DNSMOS if args.dnsmos else [])
    steps = args.epochs * (args.examples // args.batch)
    base = args.codec_base
    sections, gains = [], []
    for task in args.tasks:
        cfg = ({"multiplier": args.multipliers[0], "given": True} if len(args.multipliers) == 1
               else tuned.get(f"{task}/{base}", {}))
        m = cfg.get("multiplier")
        tuning_seed = None if cfg.get("given") else args.seeds[0]
        rows = []
        for capacity in args.capacities:
            runs = {}
            for a in args.arms:
                name = run_name(capacity, a, base, m if m is not None else float("nan"))
                runs[a] = {s: out / task / f"seed{s}" / name / "test_scores.csv" for s in args.seeds
                           if (out / task / f"seed{s}" / name / "seconds").exists()}
            if not runs[BASELINE]:
                continue
            ref = runs[BASELINE]
            rows.append((f"{capacity} ({params[capacity]} params) {BASELINE} (baseline)", compare(ref, ref, cols),
                         _budget(steps, ref), None))
            for arm in args.arms[1:]:
                if set(runs[arm]) & set(ref):
                    result = compare(ref, runs[arm], cols)
                    rows.append((f"{capacity} {arm}", result, _budget(steps, runs[arm]),
                                 compare_without(ref, runs[arm], cols, tuning_seed) if tuning_seed else None))
                    gains.append({"task": TASKS[task][0], "arm": arm, "capacity": capacity,
                                  "parameters": params[capacity], **{k: result[k] for k in ("pesq", "si_sdr")}})
        if rows:
            how = ("given (--multipliers, not tuned)" if cfg.get("given") else
                   f"chosen on validation ({cfg.get('capacity')}, seed {args.seeds[0]}); valid PESQ by multiplier "
                   f"{json.dumps(cfg.get('valid_pesq_by_multiplier', {}))}")
            sections.append(f"### {TASKS[task][0]}\n\n- multiplier of the codec terms: {m}, {how}\n\n"
                            + evidence_table(rows, cols, tuning_seed=tuning_seed))
    if not sections:
        print("no finished run yet")
        return
    if gains:
        gain_plot(figures_dir() / "codec_ladder.png", gains)
    w = json.loads((out / "weights.json").read_text()).get(base, {}) if (out / "weights.json").exists() else {}
    body = (header("Codec-approximation loss vs L1 across the separation ladder (codec_ladder.py)", args.report_only)
            + f"- protocol: benchmarks/protocol.py; seeds {args.seeds}; every run {args.epochs} epochs x {args.examples} "
            f"on-the-fly devset mixtures (batch {args.batch}, 3 s: {steps} steps), Adam lr 1e-3\n"
            f"- baseline: {BASELINE}, L1 between magnitude spectrograms (the paper's); arms: {', '.join(args.arms[1:])} "
            f"(l1 = waveform L1; codec arms = {base} L1 + codec terms)\n"
            f"- codec net: `{args.codec_run}`; layer set F; balanced weights (terms equal to the {base} L1 for "
            f"the noisy mixture): lb {w.get('lb', float('nan')):.4g}, lc {w.get('lc', float('nan')):.4g} (raw terms "
            f"{json.dumps({k: round(v, 4) for k, v in w.get('raw_terms', {}).items()})}), times the multiplier\n"
            f"- checkpoint: best validation PESQ ({args.valid_size} utterances); test: "
            f"{args.test_size or 'all'} utterances{'' if args.dnsmos else ', DNSMOS not scored (--dnsmos)'}; each "
            f"cell: arm mean (paired difference from {BASELINE} of the same capacity [95 % bootstrap interval over "
            "seeds and utterances]) verdict\n\n"
            + "\n\n".join(sections) + "\n\n![capacity vs gain](figures/codec_ladder.png)\n")
    print(body)
    update_section("codec_ladder", body)


def _budget(steps: int, scores: dict[int, Path]) -> str:
    """A table's budget cell: the steps, and the mean minutes of a run (training, validation, test) over
    the seeds whose test scores are ``scores``."""
    minutes = [float((p.parent / "seconds").read_text()) / 60 for p in scores.values()]
    return f"{steps} steps, {sum(minutes) / len(minutes):.1f} min/run"


def gain_plot(path: Path, gains: list[dict]) -> None:
    from sb_mal.evaluation.plots import _pyplot, _save

    plt = _pyplot()
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric in zip(axes, ("pesq", "si_sdr")):
        for key in dict.fromkeys((g["task"], g["arm"]) for g in gains):
            pts = sorted((g["parameters"], g[metric]) for g in gains if (g["task"], g["arm"]) == key)
            x = [p for p, _ in pts]
            ax.errorbar(x, [r["diff"] for _, r in pts], yerr=[[r["diff"] - r["lo"] for _, r in pts],
                                                            [r["hi"] - r["diff"] for _, r in pts]],
                        marker="o", capsize=3, label=" / ".join(key))
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ticks = sorted({(g["parameters"], g["capacity"]) for g in gains})
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks([p for p, _ in ticks], [f"{c}\n{p}" for p, c in ticks])
        ax.set_xlabel("separator parameters")
        ax.set_title(f"{metric}: codec arm - L1 (95 % interval)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


if __name__ == "__main__":
    main()
