"""Position-invariant SSL fine-tuning on the devset: ssl_mse vs ssl_mse_pad vs ssl_softdtw at equal budgets.

Protocol:

1. the starting model is a trained enhancer (default: the reconstruction-only baseline of
   ``mal_experiment.py``, ``results/mal_experiment/baseline``);
2. the frozen SSL model of the losses is a *random* WavLM built locally (``--wavlm-layers`` layers,
   ``--wavlm-hidden`` hidden units, seed 0, saved with ``save_pretrained``): pretrained WavLM weights
   cannot be downloaded here. Pass ``--wavlm /path/to/wavlm-base-plus`` to use real weights;
3. three fine-tuning runs of ``recipes/pift/train.py`` (hparams/folders/pift_{mse,pad,softdtw}.yaml),
   identical but for the loss (and speed perturbation, which only ssl_softdtw uses): same seed, data
   stream, learning rate and number of steps; each keeps its checkpoint with the lowest validation loss
   and is tested on the 120 devset test pairs (intrusive metrics + DNSMOS);
4. convergence: training loss and validation SSL distance (``ssl_dtw``, the soft-DTW divergence per
   frame, the same measure for every run) after every epoch, plotted against training steps;
5. shift robustness: every loss (and the hard-DTW feature distance) evaluated on the starting model's
   enhanced test utterances delayed / zero-padded by 0-100 ms against the clean reference, relative to
   the loss of the noisy input.

Usage: python benchmarks/pift_experiment.py [--out results/pift_experiment] [--epochs 6] [--examples 96]
"""

from __future__ import annotations

import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import DEVSET, FIGURES, experiment_parser, header, parse_with_overrides, update_section
from mal_experiment import COLUMNS, noisy_scores, run_once
from sb_mal.metrics import format_table

REPO = Path(__file__).resolve().parents[1]
LOSSES = {"mse": "ssl_mse", "pad": "ssl_mse_pad", "softdtw": "ssl_softdtw"}


def parse_train_log(path: Path) -> tuple[list[dict], dict]:
    """(per-epoch ``{"epoch", "train_loss", "valid_loss", "valid_ssl_dtw", "valid_pesq", ...}``, test stats)."""
    epochs, test = [], {}
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(" - ")]
        if not parts or ":" not in parts[0]:
            continue
        key, value = (s.strip() for s in parts[0].split(":", 1))
        stats = {}
        for part in parts[1:]:
            for item in part.split(", "):
                m = re.match(r"(train|valid|test) (\S+): (\S+)", item.strip())
                if m:
                    stats[f"{m.group(1)}_{m.group(2)}"] = float(m.group(3))
        if key == "epoch":
            epochs.append({"epoch": int(value), **stats})
        elif key == "epoch loaded":
            test = stats
    return epochs, test


def convergence_plot(path: Path, curves: dict[str, list[dict]], steps_per_epoch: int, start: dict) -> None:
    from sb_mal.evaluation.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    panels = (("train_loss", "training loss (own scale)", True), ("valid_ssl_dtw", "valid SSL distance (ssl_dtw)", False),
              ("valid_pesq", "valid PESQ", False))
    for ax, (key, title, relative) in zip(axes, panels):
        for name, rows in curves.items():
            pts = [(r["epoch"] * steps_per_epoch, r[key]) for r in rows if key in r]
            if not pts:
                continue
            if relative:
                pts = [(s, v / pts[0][1]) for s, v in pts]
            elif key in start:
                pts = [(0, start[key])] + pts
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", markersize=3, label=LOSSES[name])
        ax.set_title(title + (" / first epoch" if relative else ""), fontsize=9)
        ax.set_xlabel("training steps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def shift_study(start_run: Path, wavlm: str, limit: int) -> list[dict]:
    """Mean shift curves of the three losses + ssl_dtw on ``limit`` enhanced test utterances of ``start_run``."""
    from sb_mal.audio import read_audio
    from sb_mal.evaluation.shift import evaluate_shift_robustness
    from sb_mal.models import SSLFeatureExtractor

    extractor = SSLFeatureExtractor(wavlm)
    names = sorted(p.stem for p in (DEVSET / "pairs/test/noisy").glob("*.flac"))[:limit]
    pairs = []
    for name in names:
        enhanced = start_run / "enhanced_test" / f"{name}.wav"
        if not enhanced.exists():
            raise SystemExit(f"{enhanced} not found: the starting run has no enhanced test output for {name}")
        pairs.append(tuple(read_audio(path, 16000)[0] for path in (
            enhanced, DEVSET / f"pairs/test/clean/{name}.flac", DEVSET / f"pairs/test/noisy/{name}.flac")))
    return evaluate_shift_robustness(pairs, extractor=extractor)


def main():
    parser = experiment_parser(__doc__, "results/pift_experiment")
    parser.add_argument("--init", default="results/mal_experiment/baseline", help="the starting run (or exported model)")
    parser.add_argument("--wavlm", default=None, help="a local WavLM folder (default: a random one built in --out)")
    parser.add_argument("--wavlm-layers", type=int, default=4)
    parser.add_argument("--wavlm-hidden", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--examples", type=int, default=96, help="training mixtures per epoch (batch 8)")
    parser.add_argument("--valid-limit", type=int, default=30)
    parser.add_argument("--shift-limit", type=int, default=20, help="test utterances of the shift study")
    args, extra = parse_with_overrides(parser)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    init = (REPO / args.init).resolve()
    if not init.exists():
        raise SystemExit(f"--init {init} not found: run benchmarks/mal_experiment.py first, or give a trained run")
    wavlm = args.wavlm
    if wavlm is None:
        from sb_mal.models import build_tiny_wavlm

        wavlm_dir = out / f"wavlm_random_L{args.wavlm_layers}_H{args.wavlm_hidden}"
        if not (wavlm_dir / "config.json").exists():
            build_tiny_wavlm(wavlm_dir, num_layers=args.wavlm_layers, hidden_size=args.wavlm_hidden, dropout=0.0)
        wavlm = str(wavlm_dir)
        wavlm_label = (f"a random WavLM ({args.wavlm_layers} layers, hidden {args.wavlm_hidden}, LayerNorm front end, "
                       "seed 0; no pretrained SSL weights can be downloaded here), last layer")
    else:
        wavlm_label = f"WavLM from {wavlm}, last layer"
    common = [f"--data_folder={DEVSET}", f"--init_from={init}", f"--ssl_source={wavlm}",
              f"--examples_per_epoch={args.examples}", f"--number_of_epochs={args.epochs}",
              f"--valid_limit={args.valid_limit}", f"--seed={args.seed}", "--n_jobs=1", *extra]

    def finetune(name: str) -> tuple[str, float]:
        folder = out / name
        cmd = [sys.executable, "recipes/pift/train.py", f"hparams/folders/pift_{name}.yaml",
               f"--output_folder={folder}", *common]
        return name, run_once(cmd, folder, out / f"{name}.log", args.threads)

    t0 = time.monotonic()
    with ThreadPoolExecutor(args.parallel) as pool:
        times = dict(pool.map(finetune, LOSSES))
    print(f"fine-tuning done in {(time.monotonic() - t0) / 60:.1f} min", flush=True)

    steps = args.examples // 8
    curves, tests = {}, {}
    for name in LOSSES:
        curves[name], tests[name] = parse_train_log(out / name / "train_log.txt")

    shift_cache = out / "shift_rows.json"
    if shift_cache.exists():
        shift_rows = json.loads(shift_cache.read_text())
    else:
        t1 = time.monotonic()
        shift_rows = shift_study(init, wavlm, args.shift_limit)
        shift_cache.write_text(json.dumps(shift_rows))
        print(f"shift study done in {(time.monotonic() - t1) / 60:.1f} min", flush=True)
    start_dtw = next(r["value"] for r in shift_rows if r["mode"] == "delay" and r["loss"] == "ssl_dtw"
                     and r["shift_ms"] == 0)

    from sb_mal.evaluation.shift import save_shift_plot

    FIGURES.mkdir(exist_ok=True)
    save_shift_plot(FIGURES / "pift_shift.png", shift_rows,
                    title="SSL losses vs a time shift of the enhanced signal (relative to the noisy input's loss)")
    convergence_plot(FIGURES / "pift_convergence.png", curves, steps, {})

    start_summary = init / "test_summary.json"
    rows = [{"system": "noisy input", **noisy_scores(out)}]
    if start_summary.exists():
        rows.append({"system": "starting model (no fine-tuning)", **json.loads(start_summary.read_text())["means"]})
    for name, loss in LOSSES.items():
        summary = json.loads((out / name / "test_summary.json").read_text())
        rows.append({"system": f"fine-tuned with {loss}", **summary["means"],
                     "test ssl_dtw": tests[name].get("test_ssl_dtw"), "min": times[name] / 60})
    table = format_table(rows, ["system", *COLUMNS, "test ssl_dtw", "min"])

    conv_rows = []
    for name, loss in LOSSES.items():
        for r in curves[name]:
            conv_rows.append({"loss": loss, "step": r["epoch"] * steps, "train loss": r.get("train_loss"),
                              "valid loss": r.get("valid_loss"), "valid ssl_dtw": r.get("valid_ssl_dtw"),
                              "valid pesq": r.get("valid_pesq"), "valid stoi": r.get("valid_stoi")})
    conv = format_table(conv_rows, ["loss", "step", "train loss", "valid loss", "valid ssl_dtw", "valid pesq",
                                    "valid stoi"])

    picks = (0, 20, 50, 100)
    shift_table_rows = []
    for mode in ("delay", "pad"):
        for loss in ("ssl_mse", "ssl_mse_pad", "ssl_softdtw", "ssl_dtw"):
            row = {"mode": mode, "loss": loss}
            for r in shift_rows:
                if r["mode"] == mode and r["loss"] == loss and r["shift_ms"] in picks:
                    row[f"{int(r['shift_ms'])} ms"] = r["relative"]
            shift_table_rows.append(row)
    shift_table = format_table(shift_table_rows, ["mode", "loss", *(f"{p} ms" for p in picks)])

    body = (header("Position-invariant SSL fine-tuning on the devset (pift_experiment.py)")
            + f"- SSL model: {wavlm_label}\n"
            + f"- starting model: `{args.init}` (best-validation-PESQ checkpoint)\n"
            + f"- budget: every run {args.epochs} epochs x {args.examples} on-the-fly devset mixtures (batch 8, "
            + f"3 s segments: {args.epochs * steps} steps), Adam lr 1e-4, lambda_ssl 1, lambda_rec 0, seed {args.seed}; "
            + "speed perturbation 0.8-1.2 for ssl_softdtw only (gamma 0.1); ssl_mse_pad pads 2-5 % at the start\n"
            + f"- checkpoint: lowest validation loss ({args.valid_limit} devset valid pairs); test: 120 devset test "
            + f"pairs; {args.threads} torch thread(s) per run, {args.parallel} runs at a time (minutes only indicative)\n"
            + f"- ssl_dtw: soft-DTW divergence per frame (gamma 0.1) between SSL features of enhanced and clean; "
            + f"the starting model's hard-DTW feature distance on the first {args.shift_limit} test utterances is "
            + f"{start_dtw:.4f}\n\n"
            + table + "\n\nConvergence (after each epoch; the training loss is each run's own loss):\n\n" + conv
            + "\n\n![convergence](figures/pift_convergence.png)\n\n"
            + f"Shift robustness on the starting model's enhanced output ({args.shift_limit} test utterances): "
            + "each loss for the enhanced signal delayed (zeros in front, end cut) or padded (zeros in front, "
            + "longer) against the clean reference, divided by the same loss for the noisy input; the "
            + "frame-aligned losses crop a padded signal, so for them pad = delay:\n\n"
            + shift_table + "\n\n![shift robustness](figures/pift_shift.png)\n")
    print(body)
    update_section("pift_experiment", body)


if __name__ == "__main__":
    main()
