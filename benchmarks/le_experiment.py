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

Usage: python benchmarks/le_experiment.py [--seeds 1 2 3] [--epochs 30] [--samples 48] [--haspi | --haspi-limit 24]
       [--report-only] [--write-results]

Runs go to ``--out`` (results/le_experiment, ignored by git); the tables and the figure to
``results/benchmarks/``, or to the committed ``benchmarks/RESULTS.md`` and ``benchmarks/figures/`` with
``--write-results``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import DEVSET, experiment_parser, figures_dir, header, parse_with_overrides, update_section
from okd_experiment import okd_run
from protocol import PROGRESS, compare, evidence_table, read_scores, verdict_line

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


def fixed_scores(path: Path, metrics: list[str], modify=None, only: set[str] | None = None, n_jobs: int = 1) -> Path:
    """Per-utterance scores of the test speech heard in its noise at its SNR: unprocessed
    (``modify`` None), modified by a fixed rule (e.g. :func:`pre_emphasis`) or by a trained
    generator (then ``modify`` applies it at equal power); ``only`` limits the utterance ids."""
    if path.exists():
        return path
    import torch

    from sb_mal.audio import read_audio
    from sb_mal.listening import noise_at_snr, utterance_snr
    from sb_mal.metrics import evaluate

    ids, heard, clean = [], [], []
    for noisy_file in sorted((DEVSET / "pairs/test/noisy").glob("*.flac")):
        if only is not None and noisy_file.stem not in only:
            continue
        s = torch.as_tensor(read_audio(DEVSET / "pairs/test/clean" / noisy_file.name, 16000)[0])[None]
        y = torch.as_tensor(read_audio(noisy_file, 16000)[0])[None]
        n = noise_at_snr(y - s, s, [utterance_snr(noisy_file.stem, (-10.0, 5.0), EVAL_SNRS)])
        with torch.no_grad():
            m = s if modify is None else modify(s)
        ids.append(noisy_file.stem)
        heard.append((m + n)[0].numpy())
        clean.append(s[0].numpy())
    result = evaluate(heard, clean, 16000, metrics=metrics, n_jobs=n_jobs, ids=ids, progress=True)
    result.to_csv(path)
    return path


def generator_modifier(run: Path, g: int = 0):
    """Generator ``g`` of the finished run ``run`` (``<out>/seed<k>/<system>``) as a modifier:
    clean speech ``[1, T]`` -> modified speech at the power of the input."""
    from sb_mal.checkpoints import load_pretrained
    from sb_mal.listening import equal_power

    gen = load_pretrained(run, key=f"g{g}_{SYSTEMS[run.name][1][g]}", recoverable=f"generator_{g}").model
    return lambda s: equal_power(gen(s), s)


def example_figure(out: Path, seed: int) -> None:
    """Spectrograms of one 0 dB test utterance: clean, unprocessed in noise, each system's generator 0."""
    import torch

    from sb_mal.audio import read_audio
    from sb_mal.evaluation.plots import save_spectrogram_grid
    from sb_mal.listening import noise_at_snr, utterance_snr

    names = [p.stem for p in sorted((DEVSET / "pairs/test/noisy").glob("*.flac"))]
    uid = next(u for u in names if utterance_snr(u, (-10.0, 5.0), EVAL_SNRS) == 0.0)
    s = torch.as_tensor(read_audio(DEVSET / "pairs/test/clean" / f"{uid}.flac", 16000)[0])[None]
    y = torch.as_tensor(read_audio(DEVSET / "pairs/test/noisy" / f"{uid}.flac", 16000)[0])[None]
    n = noise_at_snr(y - s, s, [0.0])
    rows, labels = [[s[0].numpy(), (s + n)[0].numpy()]], ["unprocessed"]
    for name, (label, _) in SYSTEMS.items():
        run = out / f"seed{seed}" / name
        if not (run / "seconds").exists():
            continue
        with torch.no_grad():
            m = generator_modifier(run)(s)
        rows.append([m[0].numpy(), (m + n)[0].numpy()])
        labels.append(f"{label.split(' (')[0]} G0")
    save_spectrogram_grid(figures_dir() / "le_example.png", rows, labels, ["speech (modified at equal power)", "heard in noise (0 dB)"],
                          title=f"Listening enhancement, test utterance {uid} at 0 dB (seed {seed})", dpi=72)


def main():
    parser = experiment_parser(__doc__, "results/le_experiment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="seeds, each training both recipes (default: 1 2 3; at least 3)")
    parser.add_argument("--epochs", type=int, default=30,
                        help="training epochs (default 30); epoch 1 trains only the discriminator, so the generators "
                             "make (epochs - 1) x --samples steps")
    parser.add_argument("--samples", type=int, default=48,
                        help="utterances drawn per epoch, one generator step each from epoch 2 (default 48)")
    parser.add_argument("--valid-every", type=int, default=5,
                        help="validate (and keep the best checkpoint) every this many epochs (default 5)")
    parser.add_argument("--valid-limit", type=int, default=20,
                        help="devset validation pairs of the checkpoint choice (default 20)")
    parser.add_argument("--haspi", action="store_true", help="also score HASPI in the recipes' tests (slow)")
    parser.add_argument("--haspi-limit", type=int, default=0,
                        help="score HASPI afterwards on this many test utterances (a third per SNR) for every arm")
    parser.add_argument("--haspi-jobs", type=int, default=2, help="processes for the HASPI subset")
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
        PROGRESS.plan(len(args.seeds) * len(SYSTEMS))
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
    runs = [out / f"seed{s}" / name / "seconds" for s in args.seeds for name in SYSTEMS]
    minutes = {name: [float(f.read_text()) / 60 for f in runs if f.exists() and f.parent.name == name] for name in SYSTEMS}
    budget = f"{args.epochs} x {args.samples} utterances, {(args.epochs - 1) * args.samples} generator steps"
    budget_of = {name: budget + (f", {sum(m) / len(m):.0f} min/run" if m else "") for name, m in minutes.items()}
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
                rows.append((label, result, budget_of[name] if name in SYSTEMS else "fixed rule, no training"))
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
            rows.append((f"OKD G{g} ({metric.upper()}) vs MetricGAN+", result, budget_of["le_okd_siib_estoi"]))
            lines.append(verdict_line(f"OKD G{g} ({metric.upper()}) vs MetricGAN+", result, "siib"))
    tilt = out / "pre_emphasis_scores.csv"
    for (name, g), arm in finished.items():
        if arm and tilt.exists():
            label = f"{SYSTEMS[name][0]} G{g} vs fixed pre-emphasis"
            result = compare({s: tilt for s in arm}, arm, metrics)
            rows.append((label, result, budget_of[name]))
            lines.append(verdict_line(label, result, "siib"))
    if rows:
        sections.append("Each OKD generator against MetricGAN+ of the same seed (difference = OKD - MetricGAN+), and "
                        "each learned generator against the fixed pre-emphasis:\n\n"
                        + evidence_table(rows, metrics))
    if not sections:
        print("no finished run yet")
        return
    sections.append(per_seed_table(out, args, metrics, finished, unprocessed, tilt))
    sections.append(what_it_does_table(what_it_does(out, args.seeds)))
    if args.haspi_limit:
        sections.append(haspi_section(haspi_scores(out, args.seeds, args.haspi_limit, args.haspi_jobs),
                                      args.haspi_limit))
    figure = "\n\n![listening enhancement example](figures/le_example.png)" if (figures_dir() / "le_example.png").exists() else ""
    body = (header("Listening enhancement: MetricGAN+ vs MetricGAN-OKD (le_experiment.py)", args.report_only)
            + f"- protocol: benchmarks/protocol.py; seeds {args.seeds}; every generator trained from scratch for "
            f"{args.epochs} epochs x {args.samples} utterances (3 s devset training mixtures, noise rescaled to "
            "-10..5 dB; epoch 1 trains only the discriminator), equal power, YAML model sizes, OKD alpha 5\n"
            f"- checkpoint: each generator's best validation target (every {args.valid_every} epochs, "
            f"{args.valid_limit} devset valid pairs at -5/0/5 dB); test: 120 devset test pairs (held-out speech and "
            f"noise) at -5/0/5 dB ({'/'.join(str(len(by_snr[v])) for v in EVAL_SNRS)} utterances, fixed by the id); "
            "SIIB is per utterance (sb_mal's short-stimulus estimator, see README)\n\n" + "\n\n".join(sections) + "\n\n" + "\n".join(lines) + figure + "\n")
    print(body)
    update_section("le_experiment", body)


def haspi_subset(limit: int) -> set[str]:
    """The first ``limit // 3`` test ids at each of the three evaluation SNRs."""
    from sb_mal.listening import utterance_snr

    names = sorted(p.stem for p in (DEVSET / "pairs/test/noisy").glob("*.flac"))
    return {u for snr in EVAL_SNRS
            for u in [v for v in names if utterance_snr(v, (-10.0, 5.0), EVAL_SNRS) == snr][: limit // 3]}


def haspi_scores(out: Path, seeds, limit: int, n_jobs: int) -> dict:
    """HASPI v2 (normal hearing) of every arm on :func:`haspi_subset`: ``{arm: {seed: csv}}``, cached
    under ``<out>/haspi``. Slow (seconds per utterance), hence a subset."""
    only, folder = haspi_subset(limit), out / "haspi"
    folder.mkdir(exist_ok=True)
    arms = {"unprocessed": {s: fixed_scores(folder / "unprocessed.csv", ["haspi"], None, only, n_jobs) for s in seeds},
            "pre_emphasis": {s: fixed_scores(folder / "pre_emphasis.csv", ["haspi"], pre_emphasis, only, n_jobs)
                             for s in seeds}}
    for name, (_, targets) in SYSTEMS.items():
        for g in range(len(targets)):
            for seed in seeds:
                run = out / f"seed{seed}" / name
                if not (run / "seconds").exists():
                    continue
                path = folder / f"{name}_g{g}_seed{seed}.csv"
                arms.setdefault((name, g), {})[seed] = (path if path.exists() else fixed_scores(
                    path, ["haspi"], generator_modifier(run, g), only, n_jobs))
    return arms


def haspi_section(arms: dict, limit: int) -> str:
    base = arms["unprocessed"]
    rows = []
    for arm, paths in arms.items():
        if arm == "unprocessed":
            continue
        label = ("fixed pre-emphasis (0.95), equal power" if arm == "pre_emphasis"
                 else f"{SYSTEMS[arm[0]][0]} G{arm[1]} ({SYSTEMS[arm[0]][1][arm[1]].upper()})")
        rows.append((label, compare({s: base[s] for s in paths}, paths, ["haspi"]), f"{limit} utterances"))
    return (f"HASPI v2 (normal hearing, clean speech at 65 dB SPL) against the unprocessed speech, on {limit} test "
            f"utterances ({limit // 3} per SNR, the first of each; HASPI takes seconds per utterance):\n\n"
            + evidence_table(rows, ["haspi"]))


BAND_EDGES = (0, 500, 1000, 2000, 4000, 8001)


def what_it_does(out: Path, seeds, n_utts: int = 12) -> list[dict]:
    """Per seed and system, what generator 0 does to clean test speech (the first ``n_utts`` test
    utterances, at equal power): the level change per frequency band (dB) and the frame-level dynamic
    range (90th minus 10th percentile of 32 ms frame energy, dB). Cached in ``what_it_does.json``."""
    import json

    import numpy as np
    import torch

    from sb_mal.audio import read_audio

    cache = out / "what_it_does.json"
    rows = json.loads(cache.read_text()) if cache.exists() else []
    done = {(r["seed"], r["system"]) for r in rows}
    todo = [(seed, name) for seed in seeds for name in SYSTEMS
            if (seed, name) not in done and (out / f"seed{seed}" / name / "seconds").exists()]
    if not todo and ("-", "clean") in done:
        return rows
    files = sorted((DEVSET / "pairs/test/clean").glob("*.flac"))[:n_utts]
    speech = [torch.as_tensor(read_audio(p, 16000)[0])[None] for p in files]

    def bands(x):
        power, freq = np.abs(np.fft.rfft(x)) ** 2, np.fft.rfftfreq(len(x), 1 / 16000)
        return 10 * np.log10(np.array([power[(freq >= a) & (freq < b)].sum() for a, b in
                                       zip(BAND_EDGES, BAND_EDGES[1:])]) + 1e-12)

    def dynamic_range(x):
        frames = x[: len(x) // 512 * 512].reshape(-1, 512)
        level = 10 * np.log10((frames**2).mean(1) + 1e-12)
        return float(np.percentile(level, 90) - np.percentile(level, 10))

    if ("-", "clean") not in done:
        rows.append({"seed": "-", "system": "clean", "bands_db": [0.0] * (len(BAND_EDGES) - 1),
                     "dynamic_range_db": float(np.mean([dynamic_range(s[0].numpy()) for s in speech]))})
    for seed, name in todo:
        modify = generator_modifier(out / f"seed{seed}" / name)
        change, ranges = [], []
        for s in speech:
            with torch.no_grad():
                m = modify(s)[0].numpy()
            change.append(bands(m) - bands(s[0].numpy()))
            ranges.append(dynamic_range(m))
        rows.append({"seed": seed, "system": name, "bands_db": np.mean(change, 0).tolist(),
                     "dynamic_range_db": float(np.mean(ranges))})
    cache.write_text(json.dumps(rows, indent=1))
    return rows


def what_it_does_table(rows: list[dict]) -> str:
    heads = [f"{a / 1000:g}-{(b - 1 if b > 8000 else b) / 1000:g} kHz" for a, b in zip(BAND_EDGES, BAND_EDGES[1:])]
    lines = ["| system | seed | " + " | ".join(heads) + " | dynamic range (dB) |", "|---" * (len(heads) + 3) + "|"]
    for r in rows:
        label = "clean speech" if r["system"] == "clean" else f"{SYSTEMS[r['system']][0]} G0"
        cells = ["" if r["system"] == "clean" else f"{v:+.1f}" for v in r["bands_db"]]
        lines.append(f"| {label} | {r['seed']} | " + " | ".join(cells) + f" | {r['dynamic_range_db']:.1f} |")
    return ("What generator 0 does to clean speech (first 12 test utterances, equal power): level change per band "
            "(dB, modified minus clean) and frame-level dynamic range (90th minus 10th percentile of 32 ms frame "
            "energy):\n\n" + "\n".join(lines))


def per_seed_table(out: Path, args, metrics: list[str], finished: dict, unprocessed: Path, tilt: Path) -> str:
    """Test means per seed (all SNRs): how much of the spread in the pooled intervals is between seeds."""
    def means(path: Path) -> list[str]:
        scores = read_scores(path)
        cells = []
        for m in metrics:
            values = [row[m] for row in scores.values() if row.get(m) == row.get(m)]  # drop NaN
            cells.append(f"{sum(values) / len(values):.3f}" if values else "")
        return cells

    lines = ["| system | seed | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|",
             "| unprocessed | - | " + " | ".join(means(unprocessed)) + " |"]
    if tilt.exists():
        lines.append("| fixed pre-emphasis (0.95) | - | " + " | ".join(means(tilt)) + " |")
    for (name, g), arm in finished.items():
        for seed, path in sorted(arm.items()):
            lines.append(f"| {SYSTEMS[name][0]} G{g} | {seed} | " + " | ".join(means(path)) + " |")
    return "Test means per seed (all SNRs; the same seed gives MetricGAN+ and OKD the same initial G0):\n\n" + "\n".join(lines)


if __name__ == "__main__":
    main()
