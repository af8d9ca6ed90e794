"""Position-invariant fine-tuning through frozen feature models, under the protocol of benchmarks/protocol.py.

For each seed the starting model is that seed's reconstruction-only model of ``mal_experiment.py``
(``<start>/seed<k>/baseline``, the backbone at the reduced size listed there). From it, at equal
budgets (same steps, data stream, learning rate), ``recipes/pift/train.py`` fine-tunes:

- ``rec``: the reconstruction loss only (``lambda_ssl=0, lambda_rec=1``), the baseline arm;
- per feature model (``--encoders``): ``ssl_mse`` (frame-aligned MSE), ``ssl_mse_pad`` (reference
  zero-padded by 2-5 %, padded frames dropped) and ``ssl_softdtw`` (soft-DTW with speed perturbation
  0.8-1.2 of the noisy input), each ``lambda_ssl=1, lambda_rec=0`` as in the paper.

Feature models: ``torchfcpe`` and ``resemblyzer`` (pretrained encoders shipped inside pip wheels,
see :mod:`sb_mal.models.frame_features`: a supervised pitch estimator and a speaker encoder, neither a
self-supervised transformer), and ``wavlm_random`` (a WavLM with random weights, built locally: no
pretrained WavLM can be downloaded here; ``--wavlm PATH`` uses a real one).

Each run keeps its checkpoint with the lowest validation loss and is tested on the 120 devset test
pairs. Tables: each arm's paired per-utterance difference from the ``rec`` arm of the same seed,
pooled over seeds, with two-level bootstrap 95 % intervals; and ssl_mse_pad / ssl_softdtw against
ssl_mse of the same feature model (the paper's comparison). Nothing is tuned: the losses run at the
paper's settings, so the validation split serves checkpoint selection only.

Shift study (per feature model, on the first seed's starting model, first ``--shift-limit`` test
utterances): every loss for the enhanced signal delayed or zero-padded by 0-100 ms against the clean
reference, relative to the loss of the noisy input.

Usage: python benchmarks/pift_experiment.py [--seeds 1 2 3 4 5] [--encoders torchfcpe resemblyzer wavlm_random]
       [--epochs 4] [--examples 64] [--losses mse pad softdtw] [--sdtw-gamma-relative 0.1]
       [--section NAME] [--report-only] [--write-results]

Runs go to ``--out`` (results/pift_experiment, ignored by git); the tables and the shift figures to
``results/benchmarks/``, or to the committed ``benchmarks/RESULTS.md`` and ``benchmarks/figures/`` with
``--write-results``.
"""

from __future__ import annotations

import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import (DEVSET, add_batch_option, experiment_parser, figures_dir, header, parse_with_overrides,
                      update_section)
from mal_experiment import METRICS, SMALL
from protocol import PROGRESS, compare, evidence_table, merge_overrides, run_once, verdict_line

REPO = Path(__file__).resolve().parents[1]
LOSSES = {"mse": "ssl_mse", "pad": "ssl_mse_pad", "softdtw": "ssl_softdtw"}
ENCODERS = {
    "torchfcpe": "FCPE (torchfcpe wheel): supervised pitch estimator, 6 convolution-only conformer layers on "
                 "log-mel, 10 ms frames, 512-dim, last layer",
    "resemblyzer": "Resemblyzer: GE2E speaker encoder, 3-layer unidirectional LSTM on power mel, 10 ms frames, "
                   "256-dim, last layer",
    "wavlm_random": "WavLM with random weights (4 layers, hidden 128, LayerNorm front end, seed 0), 20 ms frames, "
                    "last layer",
}


def encoder_source(name: str, out: Path, wavlm: str | None) -> str:
    if name != "wavlm_random":
        return name
    if wavlm:
        return wavlm
    from sb_mal.models import build_tiny_wavlm

    folder = out / "wavlm_random_L4_H128"
    if not (folder / "config.json").exists():
        build_tiny_wavlm(folder, num_layers=4, hidden_size=128, dropout=0.0)
    return str(folder)


def shift_study(start_run: Path, source: str, limit: int) -> list[dict]:
    """Mean shift curves of the three losses + ssl_dtw on ``limit`` enhanced test utterances of ``start_run``."""
    from sb_mal.audio import read_audio
    from sb_mal.evaluation.shift import evaluate_shift_robustness
    from sb_mal.models import build_frame_extractor

    names = sorted(p.stem for p in (DEVSET / "pairs/test/noisy").glob("*.flac"))[:limit]
    pairs = []
    for name in names:
        enhanced = start_run / "enhanced_test" / f"{name}.wav"
        if not enhanced.exists():
            raise SystemExit(f"{enhanced} not found: the starting run has no enhanced test output for {name}")
        pairs.append(tuple(read_audio(path, 16000)[0] for path in (
            enhanced, DEVSET / f"pairs/test/clean/{name}.flac", DEVSET / f"pairs/test/noisy/{name}.flac")))
    return evaluate_shift_robustness(pairs, extractor=build_frame_extractor(source))


def main():
    parser = experiment_parser(__doc__, "results/pift_experiment")
    parser.add_argument("--start", default="results/mal_experiment",
                        help="the mal_experiment.py output folder (its seed<k>/baseline runs are the starting models)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                        help="seeds (5 by default; at least 3): each needs that seed's mal_experiment.py baseline")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS),
                        help="frozen feature models the SSL losses run through (default: all three)")
    parser.add_argument("--wavlm", default=None, help="a local pretrained WavLM folder instead of the random one")
    parser.add_argument("--epochs", type=int, default=4,
                        help="fine-tuning epochs of every arm, each of --examples mixtures (default 4)")
    parser.add_argument("--examples", type=int, default=64, help="training mixtures per epoch")
    add_batch_option(parser)
    parser.add_argument("--valid-limit", type=int, default=20,
                        help="devset validation pairs of the checkpoint choice (default 20)")
    parser.add_argument("--shift-limit", type=int, default=20, help="test utterances of the shift study")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES),
                        help="the SSL arms per feature model (default: all three; rec always runs)")
    parser.add_argument("--sdtw-gamma-relative", type=float, default=None,
                        help="the ssl_softdtw arms' gamma as this factor of the median frame-pair cost of their first "
                             "batch (the recipe's sdtw_gamma_relative; default: the recipe's absolute gamma 0.1)")
    parser.add_argument("--section", default="pift_experiment",
                        help="the results section the tables go to (default pift_experiment)")
    parser.add_argument("--report-only", action="store_true", help="write the tables from the finished runs")
    args, extra = parse_with_overrides(parser)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = (REPO / args.start).resolve()
    sources = {name: encoder_source(name, out, args.wavlm) for name in args.encoders}
    common = merge_overrides([f"--data_folder={DEVSET}", f"--examples_per_epoch={args.examples}",
                              f"--batch_size={args.batch}", f"--number_of_epochs={args.epochs}",
                              f"--valid_limit={args.valid_limit}", "--n_jobs=1",
                              *SMALL], extra)

    def run(job: tuple[int, str, str]) -> None:
        seed, encoder, loss = job
        init = start / f"seed{seed}" / "baseline"
        if not (init / "save").exists():
            raise SystemExit(f"{init}: no starting model; run benchmarks/mal_experiment.py first (or give --start)")
        folder = out / f"seed{seed}" / (loss if encoder == "-" else f"{encoder}_{loss}")
        cmd = [sys.executable, "recipes/pift/train.py", f"hparams/folders/pift_{'mse' if loss == 'rec' else loss}.yaml",
               f"--output_folder={folder}", f"--init_from={init}", f"--seed={seed}", *common]
        if loss == "rec":  # the equal-budget baseline: reconstruction only (its SSL term has weight 0)
            cmd += ["--lambda_ssl=0", "--lambda_rec=1", f"--ssl_source={sources[args.encoders[0]]}"]
        else:
            cmd.append(f"--ssl_source={sources[encoder]}")
        if loss == "softdtw" and args.sdtw_gamma_relative is not None:
            cmd.append(f"--sdtw_gamma_relative={args.sdtw_gamma_relative}")
        run_once(cmd, folder, out / "logs" / f"{folder.name}_{seed}.log", args.threads,
                 outputs=("test_scores.csv",))

    if not args.report_only:
        jobs = [(s, "-", "rec") for s in args.seeds]  # one encoder after the other: partial reports stay whole
        jobs += [(s, e, loss) for e in args.encoders for s in args.seeds for loss in args.losses]
        PROGRESS.plan(len(jobs))
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(run, jobs))
        for encoder in args.encoders:
            cache = out / f"shift_{encoder}.json"
            if not cache.exists():
                cache.write_text(json.dumps(shift_study(start / f"seed{args.seeds[0]}" / "baseline", sources[encoder],
                                                        args.shift_limit)))
    report(out, args)


def softdtw_settings(out: Path, seeds, encoder: str) -> str:
    """How the ssl_softdtw runs of ``encoder`` perturbed the input and set gamma, read from their saved
    hyperparameters, with the gamma each measured (a relative gamma: ``sdtw_gamma`` in its train log)."""
    modes, gammas, measured = set(), set(), []
    for seed in seeds:
        folder = out / f"seed{seed}" / f"{encoder}_softdtw"
        saved = folder / "hyperparams.yaml"
        if not saved.exists():
            continue
        values = dict(re.findall(r"^(speed_perturb_mode|sdtw_gamma|sdtw_gamma_relative):\s*([^\s#]+)",
                                 saved.read_text(), re.M))
        modes.add(values.get("speed_perturb_mode", "resample (before the option existed)"))
        relative = values.get("sdtw_gamma_relative", "null")
        gammas.add(f"gamma {values.get('sdtw_gamma', '?')} in cost units" if relative in ("null", "None")
                   else f"gamma {relative} x the median frame-pair cost of the first batch")
        log = folder / "train_log.txt"
        found = re.findall(r"train sdtw_gamma: ([0-9.eE+-]+)", log.read_text()) if log.exists() else []
        if found:
            measured.append(f"seed {seed}: {float(found[-1]):.3g}")
    if not modes:
        return "no run yet"
    return (f"speed perturbation by {', '.join(sorted(modes))}; {'; '.join(sorted(gammas))}"
            + (f" (measured gamma {', '.join(measured)})" if measured else ""))


def _scores(out: Path, seeds, name: str) -> dict[int, Path]:
    return {s: out / f"seed{s}" / name / "test_scores.csv" for s in seeds
            if (out / f"seed{s}" / name / "test_scores.csv").exists() and (out / f"seed{s}" / name / "seconds").exists()}


def _minutes(out: Path, seeds, name: str) -> str:
    times = [float((out / f"seed{s}" / name / "seconds").read_text()) / 60 for s in _scores(out, seeds, name)]
    return f"{sum(times) / len(times):.1f} min/run" if times else ""


def report(out: Path, args) -> None:
    steps = args.epochs * (args.examples // args.batch)
    budget = lambda name: f"{steps} steps, {_minutes(out, args.seeds, name)}"  # noqa: E731
    rec = _scores(out, args.seeds, "rec")
    sections = []
    for encoder in args.encoders:
        rows, against_mse = [], []
        if rec:
            rows.append(("reconstruction only (baseline)", compare(rec, rec, METRICS), budget("rec")))
        for loss, label in LOSSES.items():
            arm = _scores(out, args.seeds, f"{encoder}_{loss}")
            if arm and set(arm) & set(rec) and loss in args.losses:
                rows.append((label, compare(rec, arm, METRICS), budget(f"{encoder}_{loss}")))
        mse = _scores(out, args.seeds, f"{encoder}_mse")
        for loss in ("pad", "softdtw"):
            arm = _scores(out, args.seeds, f"{encoder}_{loss}")
            if arm and set(arm) & set(mse) and loss in args.losses:
                against_mse.append((f"{LOSSES[loss]} vs ssl_mse", compare(mse, arm, METRICS), budget(f"{encoder}_{loss}")))
        shift_file = out / f"shift_{encoder}.json"
        if len(rows) < 2:  # no fine-tuning arm finished yet: the shift study alone, if there is one
            if shift_file.exists():
                sections.append(f"### Through {encoder}\n\n- feature model: {ENCODERS[encoder]}\n- fine-tuning runs: "
                                "not finished yet\n\n"
                                + shift_table(json.loads(shift_file.read_text()), encoder, args.shift_limit, args.section) + "\n")
            continue
        done = {loss: sorted(_scores(out, args.seeds, f"{encoder}_{loss}")) for loss in args.losses}
        text = (f"### Through {encoder}\n\n- feature model: {ENCODERS[encoder]}\n"
                + (f"- ssl_softdtw as run: {softdtw_settings(out, args.seeds, encoder)}\n" if "softdtw" in args.losses
                   else "") + "- finished seeds: "
                + ", ".join(f"{LOSSES[k]} {v}" for k, v in done.items()) + f", reconstruction only {sorted(rec)}\n\n"
                "Against the reconstruction-only fine-tuning of the same starting model (paired difference [95 % "
                "interval]):\n\n" + evidence_table(rows, METRICS) + "\n")
        if against_mse:
            text += ("\nThe position-invariant losses against the frame-aligned ssl_mse (same feature model; the "
                     "difference is arm - ssl_mse):\n\n" + evidence_table(against_mse, METRICS) + "\n")
        lines = [verdict_line(label if " vs " in label else f"{label} vs reconstruction only", result)
                 for label, result, _ in rows[1:] + against_mse]
        text += "\n" + "\n".join(lines) + "\n"
        if shift_file.exists():
            text += "\n" + shift_table(json.loads(shift_file.read_text()), encoder, args.shift_limit, args.section) + "\n"
        sections.append(text)
    if not sections:
        print("no finished arm yet")
        return
    body = (header("Position-invariant fine-tuning through frozen feature models (pift_experiment.py)", args.report_only)
            + f"- protocol: benchmarks/protocol.py; seeds {args.seeds}; every arm {args.epochs} epochs x "
            f"{args.examples} on-the-fly devset mixtures ({steps} steps of batch {args.batch}, 2 s segments), Adam lr 1e-4, "
            "from "
            f"the seed's reconstruction-only model of mal_experiment.py (backbone at {' '.join(SMALL)})\n"
            "- losses at the paper's settings (lambda_ssl 1, lambda_rec 0; padding 2-5 % at the start; soft-DTW "
            "with speed perturbation 0.8-1.2, its mode and gamma as run are under each feature model): nothing "
            "tuned; the validation split "
            f"({args.valid_limit} devset valid pairs) only selects each run's checkpoint (lowest validation loss)\n"
            "- test: 120 devset test pairs; each cell: arm mean (paired difference [95 % bootstrap interval over "
            "seeds and utterances]) verdict\n\n" + "\n".join(sections))
    print(body)
    update_section(args.section, body)


def shift_table(rows: list[dict], encoder: str, limit: int, section: str = "pift_experiment") -> str:
    from sb_mal.evaluation.shift import save_shift_plot
    from sb_mal.metrics import format_table

    # one figure per section: a second section (another run) keeps the first one's figure as it was
    figure = f"pift_shift_{encoder}.png" if section == "pift_experiment" else f"{section}_shift_{encoder}.png"
    save_shift_plot(figures_dir() / figure, rows,
                    title=f"Feature losses through {encoder} vs a time shift (relative to the noisy input's loss)")
    picks = (0, 20, 50, 100)
    table_rows = []
    for mode in ("delay", "pad"):
        for loss in ("ssl_mse", "ssl_mse_pad", "ssl_softdtw", "ssl_dtw"):
            row = {"mode": mode, "loss": loss}
            for r in rows:
                if r["mode"] == mode and r["loss"] == loss and r["shift_ms"] in picks:
                    row[f"{int(r['shift_ms'])} ms"] = r["relative"]
            table_rows.append(row)
    limit = max((int(r.get("n", 0)) for r in rows), default=limit)  # what the cached study really used
    return (f"Shift study through {encoder} ({limit} test utterances of the seed-1 starting model): each loss for "
            "the enhanced signal delayed (zeros in front, end cut) or padded (zeros in front, longer) against the "
            "clean reference, divided by the same loss for the noisy input (below 1: the shifted enhanced signal "
            "still looks better than the noisy input):\n\n"
            + format_table(table_rows, ["mode", "loss", *(f"{p} ms" for p in picks)])
            + f"\n\n![shift {encoder}](figures/{figure})")


if __name__ == "__main__":
    main()
