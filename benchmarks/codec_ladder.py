"""Codec-approximation loss vs L1 across the separation ladder P1..P5 on the devset, at equal budgets.

For each task and capacity, two runs of ``recipes/codec/train_separation.py`` identical but for the
loss (same seed, data stream and number of steps):

* ``l1``: waveform L1;
* ``codec``: waveform L1 + the codec-approximation prediction and feature terms (layer set F) of a
  codec net trained beforehand (``--codec-run``, e.g. by ``recipes/codec/train_codec_net.py``).

Tasks: ``speech`` (speech denoising: devset speech + noise, tested on the devset test pairs) and
``music`` (speech/music separation: devset speech over devset music, fixed held-out mixtures).
Every run keeps its best-validation-PESQ checkpoint and is tested on ``--test-size`` utterances
(PESQ, STOI, SI-SDR, DNSMOS). Writes a table, the gain (codec - l1) per capacity and a
capacity-vs-gain figure. The paper's claim to check: the gain is largest for the smallest networks
and fades with capacity.

Usage: python benchmarks/codec_ladder.py --codec-run results/codec_experiment/codec_net [--capacities P1 P3 P5]
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import DEVSET, FIGURES, experiment_parser, header, parse_with_overrides, update_section
from mal_experiment import run_once
from sb_mal.metrics import format_table

REPO = Path(__file__).resolve().parents[1]
TASKS = {"speech": ("speech denoising", "hparams/folders/separation_speech.yaml"),
         "music": ("speech/music separation", "hparams/folders/separation_music.yaml")}
LOSSES = ("l1", "codec")
COLUMNS = ["pesq", "stoi", "si_sdr", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak"]


def gain_plot(path: Path, rows: list[dict]) -> None:
    from sb_mal.evaluation.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, metric in zip(axes, ("pesq", "si_sdr", "dnsmos_ovrl")):
        for task in dict.fromkeys(r["task"] for r in rows):
            pts = sorted((r["parameters"], r[f"gain {metric}"]) for r in rows if r["task"] == task)
            ax.plot([p for p, _ in pts], [g for _, g in pts], marker="o", label=task)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("separator parameters (P1 .. P5)")
        ax.set_title(f"{metric}: codec loss - L1", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def main():
    parser = experiment_parser(__doc__, "results/codec_experiment")
    parser.add_argument("--codec-run", required=True, help="a trained codec-net run folder")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--capacities", nargs="+", default=["P1", "P2", "P3", "P4", "P5"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--examples", type=int, default=200, help="training mixtures per epoch (batch 8)")
    parser.add_argument("--valid-size", type=int, default=30)
    parser.add_argument("--test-size", type=int, default=60)
    args, extra = parse_with_overrides(parser)
    from sb_mal.models.separation import LADDER, ladder_table

    unknown = [c for c in args.capacities if c not in LADDER]
    if unknown:
        parser.error(f"unknown capacities {unknown}; choose from {sorted(LADDER)}")
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    codec_run = (REPO / args.codec_run).resolve()
    if not (codec_run / "model_config.json").exists():
        raise SystemExit(f"--codec-run {codec_run}: not a codec-net run (no model_config.json)")
    params = {r["name"]: r["parameters"] for r in ladder_table()}

    def job(spec: tuple[str, str, str]) -> tuple[tuple[str, str, str], float]:
        task, capacity, loss = spec
        folder = out / task / f"{capacity}_{loss}"
        sizes = ([f"--valid_limit={args.valid_size}", f"--test_limit={args.test_size}"] if task == "speech"
                 else [f"--valid_items={args.valid_size}", f"--test_items={args.test_size}"])
        cmd = [sys.executable, "recipes/codec/train_separation.py", TASKS[task][1], f"--data_folder={DEVSET}",
               f"--output_folder={folder}", f"--capacity={capacity}", f"--loss={loss}", f"--codec_run={codec_run}",
               f"--number_of_epochs={args.epochs}", f"--examples_per_epoch={args.examples}", f"--seed={args.seed}",
               "--n_jobs=1", "--test_metrics=[pesq,stoi,si_sdr,dnsmos]", *sizes, *extra]
        return spec, run_once(cmd, folder, out / task / f"{capacity}_{loss}.log", args.threads)

    # the largest (slowest) networks first, so the pool's two slots stay busy to the end
    specs = [(t, c, l) for c in sorted(args.capacities, reverse=True) for t in args.tasks for l in LOSSES]
    t0 = time.monotonic()
    with ThreadPoolExecutor(args.parallel) as pool:
        times = dict(pool.map(job, specs))
    print(f"ladder done in {(time.monotonic() - t0) / 60:.1f} min", flush=True)

    rows, gains = [], []
    for task in args.tasks:
        for capacity in sorted(args.capacities):
            means = {}
            for loss in LOSSES:
                means[loss] = json.loads((out / task / f"{capacity}_{loss}" / "test_summary.json").read_text())["means"]
                rows.append({"task": TASKS[task][0], "capacity": capacity, "parameters": params[capacity], "loss": loss,
                             **means[loss], "min": times[(task, capacity, loss)] / 60})
            gains.append({"task": TASKS[task][0], "capacity": capacity, "parameters": params[capacity],
                          **{f"gain {m}": means["codec"][m] - means["l1"][m] for m in COLUMNS}})
    table = format_table(rows, ["task", "capacity", "parameters", "loss", *COLUMNS, "min"])
    gain_table = format_table(gains, ["task", "capacity", "parameters", *(f"gain {m}" for m in COLUMNS)])
    FIGURES.mkdir(parents=True, exist_ok=True)
    gain_plot(FIGURES / "codec_ladder.png", gains)
    body = (header("Codec-approximation loss vs L1 across the separation ladder (codec_ladder.py)")
            + f"- codec net: `{args.codec_run}` (its imitation numbers are in the codec_imitation section)\n"
            + f"- budget: every run {args.epochs} epochs x {args.examples} on-the-fly devset mixtures (batch 8, 3 s: "
            + f"{args.epochs * (args.examples // 8)} steps), Adam lr 1e-3, seed {args.seed}; codec loss = waveform L1 "
            + "+ prediction term + feature term, layer set F, all weights 1\n"
            + f"- checkpoint: best validation PESQ ({args.valid_size} utterances); test: {args.test_size} utterances "
            + "(speech denoising: the first devset test pairs; speech/music: fixed mixtures of held-out speech and "
            + f"music at -5..5 dB); {args.threads} torch thread(s) per run, {args.parallel} runs at a time\n\n"
            + table + "\n\nGain of the codec loss over L1 (codec - l1):\n\n" + gain_table
            + "\n\n![capacity vs gain](figures/codec_ladder.png)\n")
    print(body)
    update_section("codec_ladder", body)


if __name__ == "__main__":
    main()
