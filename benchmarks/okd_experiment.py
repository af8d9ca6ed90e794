"""MetricGAN+ vs MetricGAN-OKD (and SpeechBrain's own MetricGAN+ recipe) under the protocol of benchmarks/protocol.py.

Part 1, sb_mal's recipes (``recipes/metricgan_okd/train.py``, hparams/folders): for every seed (3 by
default), MetricGAN+ trained on PESQ, MetricGAN+ trained on CSIG (``metricgan_plus.yaml`` with
``--target_metrics=[csig]``) and MetricGAN-OKD (PESQ, CSIG; ``--systems`` may add the 4-metric one and
MetricGAN+ on CBAK/COVL), trained at an equal budget of generator steps (``--epochs`` x ``--samples``
utterances drawn from the same pool of on-the-fly devset mixtures; a seed changes initialisation
and draws). Each generator keeps the checkpoint with the best validation score of its own target
metric (validation split only) and is tested on the devset test pairs. Tables: each generator
against the noisy input, and each OKD generator against MetricGAN+ trained on the *same* target
metric and seed (like for like: OKD's PESQ generator against MetricGAN+ on PESQ, its CSIG generator
against MetricGAN+ on CSIG), as paired per-utterance differences pooled over seeds with bootstrap
95 % intervals.

``--warm-start`` (a departure from both papers, stated in the report): per seed, one MetricGAN+ mask
generator is first trained with waveform MSE (``recipes/baseline/train.py
hparams/folders/metricgan_pretrain.yaml``, ``--warm-start-epochs`` x 200 mixtures) and every generator
of every system of that seed starts from it (``--init_generators_from``), so that the comparison
happens where the metric-driven training refines a working enhancer, as in the papers' long runs,
instead of in the first hundreds of steps from scratch. Warm-started runs go to their own folders
(``seed<k>/<system>_warm``).

Part 2, only with ``--speechbrain-recipes PATH`` (a SpeechBrain checkout, or its ``recipes``
folder): SpeechBrain's ``recipes/Voicebank/enhance/MetricGAN`` and sb_mal's MetricGAN+
(``hparams/voicebank/metricgan_plus.yaml``) trained on the same data, written once as a
VoiceBank-style folder (``--sb-pool`` fixed devset training mixtures, the devset valid and test
pairs), for the same epochs and samples per epoch, validating every epoch as SpeechBrain does. Both
tests are scored by the same code (``sb_mal.metrics.evaluate`` on the enhanced files), and the
seconds of each epoch (training + the recipe's own validation, from the timestamps of the runs'
``log.txt``; the test is left out, the two recipes score different metric sets) are reported with
their ratio. Without the option, part 2 is skipped with a message; ``--speechbrain-only`` runs part 2
alone.

Usage: python benchmarks/okd_experiment.py [--seeds 1 2 3] [--epochs 40] [--samples 48] [--warm-start]
       [--speechbrain-recipes ~/speechbrain [--speechbrain-only] [--sb-epochs 10]] [--report-only]
       [--write-results]

Runs go to ``--out`` (results/okd_experiment, ignored by git); the tables to
``results/benchmarks/RESULTS.md``, or to the committed ``benchmarks/RESULTS.md`` with ``--write-results``.
"""

from __future__ import annotations

import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import DEVSET, experiment_parser, header, parse_with_overrides, update_section
from _sb_recipe import epoch_seconds, find_recipe, speechbrain_args, speechbrain_command
from protocol import PROGRESS, compare, evidence_table, run_once

REPO = Path(__file__).resolve().parents[1]
#: system -> (label, target metrics, YAML of hparams/folders, recipe overrides)
SYSTEMS = {"metricgan_plus": ("MetricGAN+ (PESQ)", ["pesq"], "metricgan_plus", []),
           **{f"metricgan_plus_{m}": (f"MetricGAN+ ({m.upper()})", [m], "metricgan_plus", [f"--target_metrics=[{m}]"])
              for m in ("csig", "cbak", "covl")},
           "okd_pesq_csig": ("OKD (PESQ, CSIG)", ["pesq", "csig"], "okd_pesq_csig", []),
           "okd_4metrics": ("OKD (PESQ, CSIG, CBAK, COVL)", ["pesq", "csig", "cbak", "covl"], "okd_4metrics", [])}


def single_metric_baseline(metric: str) -> str:
    """The MetricGAN+ system trained on ``metric`` (the like-for-like reference of an OKD generator)."""
    return "metricgan_plus" if metric == "pesq" else f"metricgan_plus_{metric}"
METRICS = ["pesq", "csig", "cbak", "covl", "stoi", "estoi", "si_sdr", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak"]


def score_folder(enhanced: dict[str, Path], out_csv: Path, metrics=("intrusive", "dnsmos")) -> Path:
    """Score enhanced files against the devset test clean speech (cached in ``out_csv``)."""
    if out_csv.exists():
        return out_csv
    from sb_mal.metrics import evaluate

    ids = sorted(enhanced)
    clean = [str(DEVSET / "pairs/test/clean" / f"{u}.flac") for u in ids]
    result = evaluate([str(enhanced[u]) for u in ids], clean, metrics=list(metrics), n_jobs=1, ids=ids, progress=True)
    result.to_csv(out_csv)
    return out_csv


def noisy_scores(out: Path, ids: list[str]) -> Path:
    """Per-utterance scores of the noisy inputs of the devset test pairs ``ids`` (cached; rescored when
    the cache lacks one of them)."""
    path = out / "noisy_scores.csv"
    if path.exists():
        from protocol import read_scores

        if set(ids) <= set(read_scores(path)):
            return path
        path.unlink()
    return score_folder({u: DEVSET / "pairs/test/noisy" / f"{u}.flac" for u in ids}, path)


def build_parser():
    """The driver's command-line options."""
    parser = experiment_parser(__doc__, "results/okd_experiment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (at least 3)")
    parser.add_argument("--systems", nargs="+", default=["metricgan_plus", "metricgan_plus_csig", "okd_pesq_csig"],
                        choices=list(SYSTEMS),
                        help="systems to train (each OKD generator is compared with MetricGAN+ on its own metric)")
    parser.add_argument("--warm-start", action="store_true",
                        help="start every generator of a seed from one MSE-pretrained mask generator (a departure "
                             "from the papers, stated in the report)")
    parser.add_argument("--warm-start-epochs", type=int, default=10,
                        help="epochs (x 200 mixtures, batch 8) of the MSE pretraining")
    parser.add_argument("--epochs", type=int, default=40,
                        help="training epochs of every system, each drawing --samples utterances: "
                             "(epochs - 1) x samples generator steps (default 40)")
    parser.add_argument("--samples", type=int, default=48, help="utterances drawn per epoch, one generator step each from epoch 2 (default 48)")
    parser.add_argument("--valid-every", type=int, default=5,
                        help="validate (and keep each generator's best checkpoint) every this many epochs (default 5)")
    parser.add_argument("--valid-limit", type=int, default=20,
                        help="devset validation pairs, in part 1 and in part 2's VoiceBank-style folder (default 20)")
    parser.add_argument("--test-limit", type=int, default=None, help="devset test pairs (default: all 120)")
    parser.add_argument("--speechbrain-recipes", default=None,
                        help="a SpeechBrain checkout (or its recipes folder): also run its MetricGAN+ recipe")
    parser.add_argument("--sb-pool", type=int, default=200, help="fixed training mixtures written for part 2")
    parser.add_argument("--sb-epochs", type=int, default=10,
                        help="epochs of both recipes in part 2 (SpeechBrain's and sb_mal's MetricGAN+) (default 10)")
    parser.add_argument("--speechbrain-only", action="store_true",
                        help="run part 2 only (needs --speechbrain-recipes); part 1's finished runs are still reported")
    parser.add_argument("--n-jobs", type=int, default=1,
                        help="metric worker processes per run (the recipes' n_jobs; speed only, same scores)")
    parser.add_argument("--device", default="cpu",
                        help="where every recipe runs (e.g. cuda:0); a GPU run reports into its own RESULTS section")
    parser.add_argument("--report-only", action="store_true", help="write the tables from the finished runs")
    return parser


def main():
    parser = build_parser()
    args, extra = parse_with_overrides(parser)
    extra = [f"--device={args.device}", *extra]
    if args.speechbrain_only and not args.speechbrain_recipes:
        parser.error("--speechbrain-only needs --speechbrain-recipes PATH")
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"--data_folder={DEVSET}", f"--number_of_epochs={args.epochs}", f"--samples_per_epoch={args.samples}",
              f"--valid_every={args.valid_every}", f"--valid_limit={args.valid_limit}", f"--n_jobs={args.n_jobs}",
              *extra]
    if args.test_limit:
        common.append(f"--test_limit={args.test_limit}")

    def train(job: tuple[int, str]) -> None:
        seed, name = job
        warm = [f"--init_generators_from={pretrain(out, seed, args.warm_start_epochs, args.threads, extra)}"] \
            if args.warm_start else []
        okd_run(out, seed, name, common + warm, args.threads, warm=args.warm_start)

    sb_root = find_recipe(args.speechbrain_recipes)
    if not args.report_only:
        if not args.speechbrain_only:
            jobs = [(s, name) for s in args.seeds
                    for name in sorted(args.systems, key=lambda n: -len(SYSTEMS[n][1]))]
            if args.warm_start:  # the pretrained generators first, one per seed
                with ThreadPoolExecutor(args.parallel) as pool:
                    list(pool.map(lambda s: pretrain(out, s, args.warm_start_epochs, args.threads, extra), args.seeds))
            PROGRESS.plan(len(jobs))
            with ThreadPoolExecutor(args.parallel) as pool:
                list(pool.map(train, jobs))
            from protocol import read_scores

            tested = [p for name in args.systems for g in range(len(SYSTEMS[name][1]))
                      for p in _finished(out, args.seeds, _folder(name, args.warm_start), g).values()]
            noisy_scores(out, sorted(set().union(*(read_scores(p) for p in tested))))
        if sb_root is not None:
            speechbrain_comparison(args, out, sb_root, extra)
    if sb_root is None:
        print("part 2 skipped: no --speechbrain-recipes PATH given (a SpeechBrain checkout to run its MetricGAN+ "
              "recipe from)")
    report(out, args)


def _folder(name: str, warm: bool) -> str:
    """A system's run folder name (warm-started runs apart from runs from scratch)."""
    return f"{name}_warm" if warm else name


def okd_run(out: Path, seed: int, name: str, common: list[str], threads: int, warm: bool = False) -> None:
    """One run of system ``name`` (``recipes/metricgan_okd/train.py hparams/folders/<yaml>.yaml`` + the
    system's overrides) for ``seed`` into ``<out>/seed<seed>/<name>[_warm]`` (resumable: done once every
    generator's test scores are there)."""
    _, targets, yaml_name, overrides = SYSTEMS[name]
    folder = out / f"seed{seed}" / _folder(name, warm)
    cmd = [sys.executable, "recipes/metricgan_okd/train.py", f"hparams/folders/{yaml_name}.yaml",
           f"--output_folder={folder}", f"--seed={seed}", *overrides, *common]
    run_once(cmd, folder, out / "logs" / f"{_folder(name, warm)}_{seed}.log", threads,
             tuple(f"test_scores_g{i}.csv" for i in range(len(targets))))


def pretrain(out: Path, seed: int, epochs: int, threads: int, extra: list[str]) -> Path:
    """The MSE-pretrained mask generator of ``seed`` (the warm start; trained once, resumable)."""
    folder = out / f"seed{seed}" / "pretrained_generator"
    cmd = [sys.executable, "recipes/baseline/train.py", "hparams/folders/metricgan_pretrain.yaml",
           f"--data_folder={DEVSET}", f"--output_folder={folder}", f"--seed={seed}", f"--number_of_epochs={epochs}",
           "--examples_per_epoch=200", "--valid_limit=20", "--test_data=null", "--n_jobs=1",
           *[e for e in extra if e.startswith("--device=")]]
    run_once(cmd, folder, out / "logs" / f"pretrained_generator_{seed}.log", threads, outputs=("save",))
    return folder


# -- part 2: SpeechBrain's recipe ------------------------------------------------------------------
def write_pool(folder: Path, pool: int, limits: dict[str, int | None], seed: int = 0) -> Path:
    """A VoiceBank-style data folder: ``pool`` fixed devset training mixtures + the first ``limits[split]``
    devset valid/test pairs, with SpeechBrain's ``train/valid/test.json`` (noisy_wav, clean_wav, length)."""
    if (folder / "test.json").exists():
        return folder
    from sb_mal.audio import read_audio, write_audio
    from sb_mal.data.mixing import OnTheFlyMixer

    mixer = OnTheFlyMixer(DEVSET / "speech/train", DEVSET / "noise/train", segment_seconds=3.0, num_items=pool,
                          seed=seed)
    train = {}
    for i in range(pool):
        item = mixer[i]
        uid = f"pool_{i:04d}"
        for kind in ("noisy", "clean"):
            path = folder / "train" / kind / f"{uid}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_audio(path, item[f"{kind}_sig"].numpy(), 16000)
        train[uid] = {"noisy_wav": str(folder / "train/noisy" / f"{uid}.wav"),
                      "clean_wav": str(folder / "train/clean" / f"{uid}.wav"), "length": 3.0}
    splits = {"train": train}
    for split in ("valid", "test"):
        entries = {}
        for noisy in sorted((DEVSET / "pairs" / split / "noisy").glob("*.flac"))[:limits[split]]:
            clean = DEVSET / "pairs" / split / "clean" / noisy.name
            entries[noisy.stem] = {"noisy_wav": str(noisy), "clean_wav": str(clean),
                                   "length": len(read_audio(clean, 16000)[0]) / 16000}
        splits[split] = entries
    for split in ("train", "valid", "test"):  # test.json last: its presence marks a complete folder
        (folder / f"{split}.json").write_text(json.dumps(splits[split], indent=1))
    return folder


def speechbrain_comparison(args, out: Path, recipe: Path, extra: list[str]) -> None:
    data = write_pool(out / "sb_data", args.sb_pool, {"valid": args.valid_limit, "test": args.test_limit})
    seed = args.seeds[0]
    sizes = [f"--number_of_epochs={args.sb_epochs}"]
    sb_folder = out / "speechbrain_metricgan" / str(seed)
    cmd = speechbrain_command(recipe, *speechbrain_args(data, sb_folder, args.samples, seed, args.device, args.n_jobs),
                              *sizes)
    # SpeechBrain's recipe imports its own helpers from its folder: it runs there
    run_once(cmd, sb_folder, out / "logs" / "speechbrain_metricgan.log", args.threads, ("save",), cwd=recipe)
    ours = out / "sbmal_metricgan_plus_pool" / str(seed)
    cmd = [sys.executable, "recipes/metricgan_okd/train.py", "hparams/voicebank/metricgan_plus.yaml",
           f"--data_folder={data}", f"--manifest_folder={data}", "--prepare=null", f"--output_folder={ours}",
           f"--samples_per_epoch={args.samples}", "--valid_every=1", f"--seed={seed}", f"--n_jobs={args.n_jobs}",
           *sizes, *extra]
    run_once(cmd, ours, out / "logs" / "sbmal_metricgan_plus_pool.log", args.threads, ("test_scores_g0.csv",))
    test_ids = sorted(json.loads((data / "test.json").read_text()))
    enhanced = {u: sb_folder / "enhanced_wavs" / f"{u}.wav" for u in test_ids}
    missing = [u for u, p in enhanced.items() if not p.exists()]
    if missing:
        raise SystemExit(f"{sb_folder}/enhanced_wavs: SpeechBrain's recipe wrote no enhanced test file for "
                         f"{missing[:3]}...")
    score_folder(enhanced, sb_folder / "test_scores.csv")


# -- report ----------------------------------------------------------------------------------------
def _finished(out: Path, seeds, name: str, g: int) -> dict[int, Path]:
    return {s: out / f"seed{s}" / name / f"test_scores_g{g}.csv" for s in seeds
            if (out / f"seed{s}" / name / f"test_scores_g{g}.csv").exists()
            and (out / f"seed{s}" / name / "seconds").exists()}


def report(out: Path, args) -> None:
    budget = f"{args.epochs} x {args.samples} utterances, {(args.epochs - 1) * args.samples} generator steps"
    noisy_csv = out / "noisy_scores.csv"
    warm = args.warm_start
    sections = []
    if noisy_csv.exists():
        rows = []
        for name in args.systems:
            label, targets, _, _ = SYSTEMS[name]
            for g, metric in enumerate(targets):
                arm = _finished(out, args.seeds, _folder(name, warm), g)
                if arm:
                    noisy = {s: noisy_csv for s in arm}
                    rows.append((f"{label} G{g} ({metric.upper()})", compare(noisy, arm, METRICS), budget))
        if rows:
            sections.append("Against the noisy input (paired difference [95 % interval]):\n\n"
                            + evidence_table(rows, METRICS))
    rows = []
    for name in args.systems:
        if name.startswith("metricgan_plus"):
            continue
        label, targets, _, _ = SYSTEMS[name]
        for g, metric in enumerate(targets):
            base_name = single_metric_baseline(metric)
            base = _finished(out, args.seeds, _folder(base_name, warm), 0)
            arm = _finished(out, args.seeds, _folder(name, warm), g)
            if set(arm) & set(base):
                rows.append((f"{label} G{g} ({metric.upper()}) vs {SYSTEMS[base_name][0]}", compare(base, arm, METRICS),
                             budget))
    if rows:
        sections.append("Like for like: each OKD generator against MetricGAN+ trained on the same target metric, "
                        "same seed (difference = OKD - MetricGAN+):\n\n" + evidence_table(rows, METRICS))
    sb_part = speechbrain_report(out, args)
    if not sections and not sb_part:
        print("no finished run yet")
        return
    part1 = ("" if not sections else
             f"- protocol: benchmarks/protocol.py; seeds {args.seeds}; every generator trained "
             f"{'from the warm start' if warm else 'from scratch'} for "
             f"{args.epochs} epochs x {args.samples} utterances (3 s on-the-fly devset mixtures from a fixed pool, "
             "batch 1; epoch 1 trains only the discriminator), the same draws for every system of a seed; YAML model "
             "sizes; OKD alpha 5\n"
             + (f"- **departure from the papers**: every generator of a seed starts from one mask generator "
                f"pretrained with waveform MSE ({args.warm_start_epochs} epochs x 200 mixtures, batch 8, "
                "hparams/folders/metricgan_pretrain.yaml), not from scratch\n" if warm else "")
             + f"- checkpoint: each generator's best validation score of its own target metric (every "
             f"{args.valid_every} epochs, {args.valid_limit} devset valid pairs); nothing else tuned; test: devset "
             "test pairs\n\n" + "\n\n".join(sections) + "\n")
    where = ("" if args.device == "cpu" else f", {args.device.split(':')[0]}") + (", warm start" if args.warm_start
                                                                                  else "")
    body = (header(f"MetricGAN+ vs MetricGAN-OKD under the protocol (okd_experiment.py{where})", args.report_only)
            + accelerator(args.device, out) + data_line() + part1 + sb_part)
    print(body)
    update_section(section_name(args.device, args.warm_start), body)


def accelerator(device: str, out: Path) -> str:
    """A header line naming the accelerator the recipes ran on (empty on the CPU); the name is kept in
    ``<out>/accelerator.txt`` for a later ``--report-only`` on another machine."""
    if device == "cpu":
        return ""
    import torch

    known = out / "accelerator.txt"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
        known.write_text(name)
    else:
        name = known.read_text().strip() if known.exists() else "unknown"
    return f"- accelerator: {device} ({name}); the metrics (PESQ, composite, STOI, DNSMOS) run on the CPU\n"


def data_line() -> str:
    """A header line naming the devset the runs read and how much training audio it holds."""
    counts = {k: sum(1 for p in (DEVSET / k / "train").rglob("*") if p.suffix in (".flac", ".wav"))
              for k in ("speech", "noise")}  # FLAC, or WAV when preloaded (benchmarks/sprint.py)
    return f"- data: devset at `{DEVSET}` ({counts['speech']} speech/train and {counts['noise']} noise/train files)\n"


def section_name(device: str, warm: bool = False) -> str:
    """The RESULTS.md section of a run on ``device``: CPU runs and accelerator runs are kept apart, and
    warm-started runs from runs from scratch."""
    name = "okd_experiment" if device == "cpu" else f"okd_experiment_{device.split(':')[0]}"
    return f"{name}_warm" if warm else name


def speechbrain_report(out: Path, args) -> str:
    seed = args.seeds[0]
    sb_folder = out / "speechbrain_metricgan" / str(seed)
    ours = out / "sbmal_metricgan_plus_pool" / str(seed)
    if not ((sb_folder / "test_scores.csv").exists() and (ours / "test_scores_g0.csv").exists()):
        return ""
    from protocol import read_scores

    sb_epochs, our_epochs = epoch_seconds(sb_folder / "log.txt"), epoch_seconds(ours / "log.txt")
    if not (sb_epochs and our_epochs):
        raise SystemExit(f"no epoch timestamps in {sb_folder / 'log.txt'} or {ours / 'log.txt'}")
    sb_med, our_med = statistics.median(sb_epochs), statistics.median(our_epochs)
    result = compare({seed: sb_folder / "test_scores.csv"}, {seed: ours / "test_scores_g0.csv"}, METRICS)
    n = len(read_scores(sb_folder / "test_scores.csv"))
    return ("\nSpeechBrain's own MetricGAN+ recipe against sb_mal's MetricGAN+, same data (a fixed pool of "
            f"{args.sb_pool} devset training mixtures + the devset valid/test pairs, written as a VoiceBank-style "
            f"folder), {args.sb_epochs} epochs x {args.samples} samples, validation every epoch, seed {seed}, both "
            f"tests ({n} utterances) scored by sb_mal.metrics.evaluate; difference = sb_mal - SpeechBrain:\n\n"
            + evidence_table([("sb_mal MetricGAN+ vs SpeechBrain's recipe", result,
                               f"{args.sb_epochs} epochs")], METRICS)
            + "\n\nSeconds per epoch (training + each recipe's own validation, from the timestamps of 'Going into "
            "epoch k' to the epoch's log line in each run's log.txt; the end's test is not counted since the two "
            "recipes score different metric sets): SpeechBrain "
            + ", ".join(f"{x:.1f}" for x in sb_epochs) + " (median " + f"{sb_med:.1f}), sb_mal "
            + ", ".join(f"{x:.1f}" for x in our_epochs) + f" (median {our_med:.1f}); ratio SpeechBrain / sb_mal "
            f"{sb_med / our_med:.2f}. Whole runs including the test: SpeechBrain "
            f"{float((sb_folder / 'seconds').read_text()):.0f} s, sb_mal {float((ours / 'seconds').read_text()):.0f} s\n")


if __name__ == "__main__":
    main()
