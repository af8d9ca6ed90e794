"""``sb-mal demo``: train the baseline, then continue it with and without Model as Loss, side by side.

Everything runs offline on a fresh machine, on the CPU, in about seven minutes (ten with the corpus to build):

1. builds (or reuses) the embedded synthetic mini corpus;
2. trains the backbone with the reconstruction loss (L1 + multi-resolution STFT) for a wall-clock
   budget (``sb_mal/hparams/demo.yaml``, run by :class:`sb_mal.brains.MALBrain` with
   ``lambda_mal: 0``), stopping at the first step past it;
3. continues that model with Model as Loss (its own encoder as the loss, ``variant``/``lambda_mal``)
   for the continuation budget, then reconstruction-only for exactly as many steps (equal steps;
   a reconstruction step costs less than a MAL step, so it fits the same budget);
4. scores the noisy input, the baseline and both continuations on the same test utterances and
   prints them side by side, with the paired difference MAL - reconstruction-only and its bootstrap
   95 % interval over the utterances (one seed: this is a demonstration, not the evidence; see
   ``benchmarks/RESULTS.md``), and writes example audio and a spectrogram figure
   (noisy / reconstruction only / MAL / clean) to the output folder.

The budgets are wall-clock and checked after every training step, so a slow or busy machine trains
fewer steps rather than taking longer. The plan and the expected total are printed at the start, the
remaining time after each stage. Whatever the result, it is printed as measured.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["run_demo"]

_TABLE_METRICS = ("pesq", "stoi", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak")
_SYSTEMS = ("reconstruction only", "Model as Loss")
#: What the demo spends besides training, from runs on 2 idle cores (RESULTS.md, `sb-mal demo`): minutes to
#: build the corpus and to set up one run, and seconds per utterance to enhance and score it (with and without
#: DNSMOS) or to validate it.
_CORPUS_MINUTES, _RUN_MINUTES = 2.7, 0.15
_TEST_SECONDS, _TEST_SECONDS_DNSMOS, _VALID_SECONDS = 0.3, 0.8, 0.25


def _overheads(test_limit: int, valid_limit: int, dnsmos: bool) -> tuple[float, float]:
    """(minutes of one run besides training: set-up, validation, test; minutes to score the noisy input)."""
    per_test = (_TEST_SECONDS_DNSMOS if dnsmos else _TEST_SECONDS) * test_limit / 60
    return _RUN_MINUTES + valid_limit * _VALID_SECONDS / 60 + per_test, per_test


def plan_minutes(minutes: float, continue_minutes: float, test_limit: int, valid_limit: int, dnsmos: bool,
                 build_corpus: bool, slowness: float = 1.0) -> float:
    """The demo's expected wall-clock minutes: its training budgets plus the work around them (``slowness``
    times the planning figures).

    Example
    -------
    >>> round(plan_minutes(2.5, 1.0, 40, 30, True, False), 1)  # the defaults, DNSMOS installed, corpus built
    7.5
    """
    run, noisy = _overheads(test_limit, valid_limit, dnsmos)
    work = (_CORPUS_MINUTES if build_corpus else 0) + 3 * run + noisy
    return minutes + 2 * continue_minutes + slowness * work


def _calibrate(test_manifest: Path, corpus: Path, metrics: list[str]) -> float:
    """How much slower than the planning figures this machine scores audio now (at least 1, at most 10):
    two test utterances scored in this process, the second one timed."""
    from sb_mal.data.manifest import load_manifest
    from sb_mal.metrics import evaluate

    entries = list(load_manifest(test_manifest, corpus).values())[:2]
    if not entries:
        return 1.0
    seconds = 0.0
    for entry in entries:
        started = time.monotonic()
        evaluate([entry["noisy_wav"]], [entry["clean_wav"]], metrics=metrics, n_jobs=0)
        seconds = time.monotonic() - started
    planned = _TEST_SECONDS_DNSMOS if any(m.startswith("dnsmos") for m in metrics) else _TEST_SECONDS
    return min(max(seconds / planned, 1.0), 10.0)


def _demo_yaml() -> str:
    return str(resources.files("sb_mal") / "hparams" / "demo.yaml")


def _table_metrics() -> list[str]:
    """The table's metrics; DNSMOS only where its optional extra is installed."""
    from sb_mal.metrics import check_dependencies

    try:
        check_dependencies(["dnsmos"])
    except ImportError:
        print('(DNSMOS left out: it needs the dnsmos extra, pip install "sb_mal[dnsmos]")')
        return [m for m in _TABLE_METRICS if not m.startswith("dnsmos")]
    return list(_TABLE_METRICS)


def run_demo(
    output: str | os.PathLike = "sb_mal_demo",
    *,
    minutes: float = 2.5,
    continue_minutes: float = 1.0,
    variant: str = "frozen",
    lambda_mal: float = 1.0,
    corpus_dir: str | os.PathLike | None = None,
    test_limit: int = 40,
    n_jobs: int = 2,
    seed: int = 1234,
    extra_args: list[str] | None = None,
) -> dict:
    """Run the demo; returns the summary it also writes to ``<output>/summary.json``.

    Arguments
    ---------
    output : path
        Folder for the runs, audio examples, figure and summary (created).
    minutes : float
        Budget of the first, reconstruction-only training (it stops after the first epoch that
        ends past it).
    continue_minutes : float
        Budget of each continuation, turned into a number of epochs from the first run's epoch time
        (at least one); both continuations run that many epochs (equal steps).
    variant, lambda_mal : str, float
        The Model-as-Loss continuation (``frozen``, ``frozen_fe`` or ``dynamic``, and its weight). The
        defaults are the variant and weight that scored best on the validation split in
        ``benchmarks/mal_experiment.py`` (frozen, 1.0).
    corpus_dir : path, optional
        Where the mini corpus lives (default: the sb_mal cache, built there on first use); a folder
        that already holds a corpus (``train.json``, ``valid.json``, ``test.json``) is used as it is.
    test_limit : int
        Test utterances enhanced and scored.
    n_jobs : int
        Metric worker processes.
    seed : int
        Training seed (the same for the three runs).
    extra_args : list of str
        More ``--key=value`` overrides for the three runs (e.g. ``["--batch_size=4"]``).
    """
    from sb_mal.brains import MALBrain
    from sb_mal.data.manifest import load_manifest
    from sb_mal.data.mini import build_mini_corpus, default_mini_dir
    from sb_mal.fileio import atomic_write_text
    from sb_mal.metrics import evaluate, format_table
    from sb_mal.metrics.stats import paired_bootstrap, verdict
    from sb_mal.run import run_recipe

    t0 = time.monotonic()
    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(corpus_dir) if corpus_dir is not None else default_mini_dir()
    metrics = _table_metrics()
    common = [f"--data_folder={corpus}", "--prepare=null", f"--seed={seed}", f"--test_limit={test_limit}", f"--n_jobs={n_jobs}",
              f"--test_metrics=[{','.join(m for m in metrics if not m.startswith('dnsmos'))}"
              f"{',dnsmos' if any(m.startswith('dnsmos') for m in metrics) else ''}]", *(extra_args or [])]

    paths = {split: corpus / f"{split}.json" for split in ("train", "valid", "test")}
    build = corpus_dir is None and not all(p.is_file() for p in paths.values())
    valid_limit = next((int(a.split("=", 1)[1]) for a in extra_args or [] if a.startswith("--valid_limit=")), 30)
    dnsmos = any(m.startswith("dnsmos") for m in metrics)
    promised = plan_minutes(minutes, continue_minutes, test_limit, valid_limit, dnsmos, build)
    run_overhead, noisy_overhead = _overheads(test_limit, valid_limit, dnsmos)

    def budget(wanted: float, runs_left: int) -> float:
        """Training minutes for the next run: as planned, or less when the work so far ran slow."""
        left = promised - (time.monotonic() - t0) / 60
        need = slowness * (runs_left * run_overhead + noisy_overhead)
        return max(min(wanted, (left - need) / max(runs_left, 1)), 0.02)  # at least a few steps

    def measured(started: float, trained: float) -> float:
        return max(slowness, ((time.monotonic() - started) / 60 - trained) / run_overhead)
    print(f"plan: {'build the mini corpus, ' if build else ''}train the baseline for {minutes:g} min, continue it "
          f"with Model as Loss for {continue_minutes:g} min and reconstruction-only for as many steps, score "
          f"{test_limit} test utterances; about {promised:.1f} min in all")
    print(f"[1/5] mini corpus in {corpus}")
    if build:
        paths = build_mini_corpus(corpus, progress=True)
    # else: a corpus folder given by the user is used as it is (e.g. one built with other sizes)
    # how much slower than planned the work around training runs (first measured, then after each run)
    slowness = _calibrate(paths["test"], corpus, metrics)  # this machine, now, against the planning figures
    if slowness > 1.2:
        promised = (time.monotonic() - t0) / 60 + plan_minutes(minutes, continue_minutes, test_limit, valid_limit,
                                                                 dnsmos, False, slowness)
        print(f"(this machine scores audio {slowness:.1f}x slower than planned for: about {promised:.1f} min in all)")

    def remaining(step: str) -> None:
        used = (time.monotonic() - t0) / 60
        print(f"{step} ({used:.1f} min so far, about {max(promised - used, 0):.1f} min to go)")

    remaining(f"[2/5] training the baseline with the reconstruction loss for {minutes:g} min")
    first, started = out / "baseline", time.monotonic()
    brain = run_recipe(MALBrain, None, argv=[_demo_yaml(), f"--output_folder={first}", f"--max_train_minutes={minutes}",
                                             "--lambda_mal=0.0", *common])
    epochs, base_steps = brain.hparams.epoch_counter.current, brain.optimizer_step
    slowness = measured(started, minutes)

    runs = {"baseline": first}
    mal_minutes = budget(continue_minutes, 2)
    shortened = f" (shortened from {continue_minutes:g} to keep the planned time)" if mal_minutes < continue_minutes else ""
    remaining(f"[3/5] continuing it with Model as Loss ({variant}, lambda_mal {lambda_mal:g}) for "
              f"{mal_minutes:.2g} min{shortened}")
    started = time.monotonic()
    mal = run_recipe(MALBrain, None, argv=[_demo_yaml(), f"--output_folder={out / 'continued_mal'}",
                                           f"--init_from={first}", f"--max_train_minutes={mal_minutes}",
                                           f"--lambda_mal={lambda_mal}", f"--variant={variant}", *common])
    steps = mal.optimizer_step
    slowness = measured(started, mal_minutes)
    remaining(f"[4/5] continuing it reconstruction-only for the same {steps} step(s)")
    rec = run_recipe(MALBrain, None, argv=[_demo_yaml(), f"--output_folder={out / 'continued_reconstruction'}",
                                           f"--init_from={first}", f"--optimizer_step_limit={steps}",
                                           f"--max_train_minutes={max(budget(continue_minutes, 1), mal_minutes)}",
                                           "--lambda_mal=0.0", *common])  # the cap guards against a pathological slowdown
    if rec.optimizer_step < steps:
        print(f"(reconstruction-only made {rec.optimizer_step} of the {steps} steps before its time cap: the "
              "comparison below is at unequal steps)")
    runs.update({_SYSTEMS[0]: out / "continued_reconstruction", _SYSTEMS[1]: out / "continued_mal"})
    train_minutes = (time.monotonic() - t0) / 60

    remaining("[5/5] scoring the noisy input of the same test utterances; audio examples and spectrograms")
    test = load_manifest(paths["test"], corpus)
    scores = {name: _read_scores(folder / "test_scores.csv") for name, folder in runs.items()}
    ids = sorted(set.intersection(*(set(s) for s in scores.values())))
    if not ids:
        raise RuntimeError(f"the test stages of {', '.join(map(str, runs.values()))} scored no utterance")
    noisy = evaluate([test[u]["noisy_wav"] for u in ids], [test[u]["clean_wav"] for u in ids], metrics=metrics,
                     n_jobs=n_jobs, ids=ids, progress=True)

    rows, comparison = [], {}
    for m in metrics:
        row = {"metric": m, "noisy": noisy.means.get(m, math.nan)}
        for name in ("baseline", *_SYSTEMS):
            values = [scores[name][u].get(m, math.nan) for u in ids]
            finite = [v for v in values if not math.isnan(v)]
            row[name] = sum(finite) / len(finite) if finite else math.nan
        diffs = [[scores[_SYSTEMS[1]][u].get(m, math.nan) - scores[_SYSTEMS[0]][u].get(m, math.nan) for u in ids]]
        mean, lo, hi = paired_bootstrap(diffs)
        comparison[m] = {"diff": mean, "lo": lo, "hi": hi, "verdict": verdict(lo, hi, m)}
        row["MAL - rec. only [95% CI]"] = f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] {comparison[m]['verdict']}"
        rows.append(row)
    table = format_table(rows, ["metric", "noisy", "baseline", *_SYSTEMS, "MAL - rec. only [95% CI]"])
    figure, examples = _write_examples(out, test, ids[:3], [runs[n] / "enhanced_test" for n in _SYSTEMS])
    summary = {
        "corpus": str(corpus),
        "test_utterances": len(ids),
        "baseline_epochs": epochs,
        "baseline_steps": base_steps,
        "continuation_steps_each": steps,
        "reconstruction_only_steps": rec.optimizer_step,
        "promised_minutes": round(promised, 2),
        "mal": {"variant": variant, "lambda_mal": lambda_mal},
        "minutes_total": round((time.monotonic() - t0) / 60, 2),
        "minutes_until_trained": round(train_minutes, 2),
        "metrics": {r["metric"]: {k: r[k] for k in ("noisy", "baseline", *_SYSTEMS)} for r in rows},
        "mal_minus_reconstruction": comparison,
        "figure": str(figure),
        "examples": examples,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "results.md", table + "\n")
    print()
    print(f"Test set of the mini corpus ({len(ids)} utterances, unseen voices), means; the baseline trained "
          f"{base_steps} steps, then each continuation {steps} more (MAL: {variant}, lambda_mal {lambda_mal:g}):")
    print(table)
    print("(one seed and a few minutes of training: a demonstration of the paradigm, not evidence; "
          "benchmarks/RESULTS.md has the multi-seed comparison)")
    print(f"\nspectrograms: {figure}\naudio examples: {out / 'examples'}\nsummary: {out / 'summary.json'}")
    print(f"total time {summary['minutes_total']:.1f} min (planned: about {promised:.1f} min)")
    return summary


def _read_scores(path: Path) -> dict:
    scores = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            scores[row["id"]] = {k: float(v) for k, v in row.items() if k != "id"}
    return scores


def _write_examples(out: Path, test: dict, ids: list[str], enhanced_dirs: list[Path]):
    from sb_mal.audio import read_audio, write_audio
    from sb_mal.evaluation.plots import save_spectrogram_grid

    names = ["noisy", "reconstruction", "mal", "clean"]
    rows, examples = [], []
    for uid in ids:
        noisy, sr = read_audio(test[uid]["noisy_wav"], as_numpy=True)
        clean, _ = read_audio(test[uid]["clean_wav"], sr, as_numpy=True)
        enhanced = [read_audio(folder / f"{uid}.wav", sr, as_numpy=True)[0] for folder in enhanced_dirs]
        row = [noisy, *enhanced, clean]
        rows.append(row)
        for name, wav in zip(names, row):
            path = out / "examples" / f"{uid}_{name}.wav"
            write_audio(path, wav, sr, overwrite=True)
            examples.append(str(path))
    figure = out / "spectrograms.png"
    labels = [f"{uid} ({test[uid].get('noise_type', '?')}, {test[uid].get('snr_db', '?')} dB)" for uid in ids]
    save_spectrogram_grid(figure, rows, labels, ["noisy", "reconstruction only", "Model as Loss", "clean"],
                          title="sb_mal demo: the baseline continued with and without Model as Loss")
    return figure, examples
