"""Listening enhancement: unprocessed vs MetricGAN+ (SIIB) vs MetricGAN-OKD (SIIB, ESTOI), under the protocol.

For every seed, ``recipes/metricgan_okd/train.py`` trains ``hparams/folders/le_metricgan_plus.yaml``
(one generator, SIIB) and ``hparams/folders/le_okd_siib_estoi.yaml`` (two generators, SIIB and
ESTOI, alpha 5) from scratch at an equal budget of generator steps (``--epochs`` x ``--samples``
devset training mixtures whose noise is rescaled to -10..5 dB; a seed changes initialisation and
draws). Each generator keeps the checkpoint with its best validation target (devset valid pairs,
noise at -5/0/5 dB by utterance). Test: the devset test pairs (held-out speech and noise), the noise
of each rescaled to -5, 0 or 5 dB (fixed by the utterance id, as in the recipes), scored with SIIB,
ESTOI and STOI (and HASPI with ``--haspi``) between the clean speech and what the listener hears.

Tables: each generator, and a fixed rule (pre-emphasis 0.95 at equal power: spectral-tilt
flattening, the classic baseline, trained on nothing), against the unprocessed speech in the same
noise (paired per-utterance differences pooled over seeds, bootstrap 95 % intervals), overall and
per SNR; each OKD generator against MetricGAN+ of the same seed; each learned generator against the
fixed rule (a learned modifier that does not beat a fixed high-pass has not learned much). Figure: what the first seed's generators do to one test
utterance at 0 dB (clean, unprocessed in noise, modified, modified in noise).

Usage: python benchmarks/le_experiment.py [--seeds 1 2 3] [--epochs 30] [--samples 48] [--haspi] [--report-only]
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import DEVSET, FIGURES, experiment_parser, header, parse_with_overrides, update_section
from okd_experiment import okd_run
from protocol import compare, evidence_table, read_scores, verdict_line

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = {"le_metricgan_plus": ("MetricGAN+ (SIIB)", ["siib"]),
           "le_okd_siib_estoi": ("OKD (SIIB, ESTOI)", ["siib", "estoi"])}
EVAL_SNRS = (-5.0, 0.0, 5.0)


def pre_emphasis(s, coef: float = 0.95):
    """Spectral-tilt flattening, the classic fixed listening-enhancement baseline: a first-order
    high-pass ``m[t] = s[t] - coef * s[t-1]``, rescaled to the power of ``s``."""
    import torch

    from sb_mal.listening import equal_power

    tilted = torch.cat([s[..., :1], s[..., 1:] - coef * s[..., :-1]], dim=-1)
    return equal_power(tilted, s)


def fixed_scores(path: Path, metrics: list[str], modify=None) -> Path:
    """Per-utterance scores of the test speech heard in its noise at its SNR: unprocessed
    (``modify`` None) or modified by a fixed rule (e.g. :func:`pre_emphasis`)."""
    if path.exists():
        return path
    import torch

    from sb_mal.audio import read_audio
    from sb_mal.listening import noise_at_snr, utterance_snr
    from sb_mal.metrics import evaluate

    ids, heard, clean = [], [], []
    for noisy_file in sorted((DEVSET / "pairs/test/noisy").glob("*.flac")):
        s = torch.as_tensor(read_audio(DEVSET / "pairs/test/clean" / noisy_file.name, 16000)[0])[None]
        y = torch.as_tensor(read_audio(noisy_file, 16000)[0])[None]
        n = noise_at_snr(y - s, s, [utterance_snr(noisy_file.stem, (-10.0, 5.0), EVAL_SNRS)])
        m = s if modify is None else modify(s)
        ids.append(noisy_file.stem)
        heard.append((m + n)[0].numpy())
        clean.append(s[0].numpy())
    result = evaluate(heard, clean, 16000, metrics=metrics, n_jobs=1, ids=ids, progress=True)
    result.to_csv(path)
    return path


def example_figure(out: Path, seed: int) -> None:
    """Spectrograms of one 0 dB test utterance: clean, unprocessed in noise, each system's generator 0."""
    import torch

    from sb_mal.audio import read_audio
    from sb_mal.checkpoints import load_pretrained
    from sb_mal.evaluation.plots import save_spectrogram_grid
    from sb_mal.listening import equal_power, noise_at_snr, utterance_snr

    names = [p.stem for p in sorted((DEVSET / "pairs/test/noisy").glob("*.flac"))]
    uid = next(u for u in names if utterance_snr(u, (-10.0, 5.0), EVAL_SNRS) == 0.0)
    s = torch.as_tensor(read_audio(DEVSET / "pairs/test/clean" / f"{uid}.flac", 16000)[0])[None]
    y = torch.as_tensor(read_audio(DEVSET / "pairs/test/noisy" / f"{uid}.flac", 16000)[0])[None]
    n = noise_at_snr(y - s, s, [0.0])
    rows, labels = [[s[0].numpy(), (s + n)[0].numpy()]], ["clean / unprocessed in noise"]
    for name, (label, targets) in SYSTEMS.items():
        run = out / f"seed{seed}" / name
        if not (run / "seconds").exists():
            continue
        gen = load_pretrained(run, key=f"g0_{targets[0]}", recoverable="generator_0").model
        with torch.no_grad():
            m = equal_power(gen(s), s)
        rows.append([m[0].numpy(), (m + n)[0].numpy()])
        labels.append(f"{label} G0: modified / in noise")
    FIGURES.mkdir(parents=True, exist_ok=True)
    save_spectrogram_grid(FIGURES / "le_example.png", rows, labels, ["speech", "heard in noise (0 dB)"],
                          title=f"Listening enhancement, test utterance {uid} at 0 dB (seed {seed})")


def main():
    parser = experiment_parser(__doc__, "results/le_experiment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--samples", type=int, default=48, help="utterances drawn per epoch (generator steps)")
    parser.add_argument("--valid-every", type=int, default=5)
    parser.add_argument("--valid-limit", type=int, default=20)
    parser.add_argument("--haspi", action="store_true", help="also score HASPI (the haspi extra; slow)")
    parser.add_argument("--report-only", action="store_true", help="write the tables from the finished runs")
    args, extra = parse_with_overrides(parser)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    metrics = ["siib", "estoi", "stoi", *(["haspi"] if args.haspi else [])]
    common = [f"--data_folder={DEVSET}", f"--number_of_epochs={args.epochs}", f"--samples_per_epoch={args.samples}",
              f"--valid_every={args.valid_every}", f"--valid_limit={args.valid_limit}", "--n_jobs=1",
              f"--test_metrics=[{','.join(metrics)}]", *extra]

    def train(job: tuple[int, str]) -> None:
        okd_run(out, job[0], job[1], len(SYSTEMS[job[1]][1]), common, args.threads)

    if not args.report_only:
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(train, [(s, name) for s in args.seeds for name in SYSTEMS]))
        fixed_scores(out / "unprocessed_scores.csv", metrics)
        fixed_scores(out / "pre_emphasis_scores.csv", metrics, pre_emphasis)
        example_figure(out, args.seeds[0])
    report(out, args, metrics)


def report(out: Path, args, metrics: list[str]) -> None:
    from sb_mal.listening import utterance_snr

    unprocessed = out / "unprocessed_scores.csv"
    if not unprocessed.exists():
        print("no unprocessed scores yet")
        return
    by_snr = {snr: {u for u in read_scores(unprocessed) if utterance_snr(u, (-10.0, 5.0), EVAL_SNRS) == snr}
              for snr in EVAL_SNRS}
    budget = f"{args.epochs} x {args.samples} steps"
    finished = {(name, g): {s: out / f"seed{s}" / name / f"test_scores_g{g}.csv" for s in args.seeds
                            if (out / f"seed{s}" / name / "seconds").exists()}
                for name, (_, targets) in SYSTEMS.items() for g in range(len(targets))}
    sections, lines = [], []
    for subset, title in ((None, "all SNRs"), *((by_snr[snr], f"{snr:+g} dB ({len(by_snr[snr])} utterances)")
                                                for snr in EVAL_SNRS)):
        rows = []
        tilt = out / "pre_emphasis_scores.csv"
        arms = list(finished.items()) + ([(("pre_emphasis", 0), {s: tilt for s in args.seeds})] if tilt.exists() else [])
        for (name, g), arm in arms:
            if arm:
                label = (f"{SYSTEMS[name][0]} G{g} ({SYSTEMS[name][1][g].upper()})" if name in SYSTEMS
                         else "fixed pre-emphasis (0.95), equal power")
                try:
                    result = compare({s: unprocessed for s in arm}, arm, metrics, only=subset)
                except ValueError:  # no tested utterance at this SNR (a --test_limit run)
                    continue
                rows.append((label, result, budget if name in SYSTEMS else "fixed rule, no training"))
                if subset is None:
                    lines.append(verdict_line(f"{label} vs unprocessed", result, "siib"))
        if rows:
            sections.append(f"Against the unprocessed speech in the same noise, {title}:\n\n"
                            + evidence_table(rows, metrics))
    base = finished[("le_metricgan_plus", 0)]
    rows = []
    for g, metric in enumerate(SYSTEMS["le_okd_siib_estoi"][1]):
        arm = finished[("le_okd_siib_estoi", g)]
        if set(arm) & set(base):
            result = compare(base, arm, metrics)
            rows.append((f"OKD G{g} ({metric.upper()}) vs MetricGAN+", result, budget))
            lines.append(verdict_line(f"OKD G{g} ({metric.upper()}) vs MetricGAN+", result, "siib"))
    tilt = out / "pre_emphasis_scores.csv"
    for (name, g), arm in finished.items():
        if arm and tilt.exists():
            label = f"{SYSTEMS[name][0]} G{g} vs fixed pre-emphasis"
            result = compare({s: tilt for s in arm}, arm, metrics)
            rows.append((label, result, budget))
            lines.append(verdict_line(label, result, "siib"))
    if rows:
        sections.append("Each OKD generator against MetricGAN+ of the same seed (difference = OKD - MetricGAN+), and "
                        "each learned generator against the fixed pre-emphasis:\n\n"
                        + evidence_table(rows, metrics))
    if not sections:
        print("no finished run yet")
        return
    figure = "\n\n![listening enhancement example](figures/le_example.png)" if (FIGURES / "le_example.png").exists() else ""
    body = (header("Listening enhancement: MetricGAN+ vs MetricGAN-OKD (le_experiment.py)", args.report_only)
            + f"- protocol: benchmarks/protocol.py; seeds {args.seeds}; every generator trained from scratch for "
            f"{args.epochs} epochs x {args.samples} utterances (3 s devset training mixtures, noise rescaled to "
            "-10..5 dB), equal power, YAML model sizes, OKD alpha 5\n"
            f"- checkpoint: each generator's best validation target (every {args.valid_every} epochs, "
            f"{args.valid_limit} devset valid pairs at -5/0/5 dB); test: 120 devset test pairs (held-out speech and "
            f"noise) at -5/0/5 dB ({'/'.join(str(len(by_snr[v])) for v in EVAL_SNRS)} utterances, fixed by the id); "
            "SIIB is per utterance (sb_mal's short-stimulus estimator, see README)\n\n" + "\n\n".join(sections) + "\n\n" + "\n".join(lines) + figure + "\n")
    print(body)
    update_section("le_experiment", body)


if __name__ == "__main__":
    main()
