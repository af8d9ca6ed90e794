"""``sb-mal demo``: train the baseline, then continue it with and without Model as Loss, side by side.

Everything runs offline on a fresh machine, on the CPU, in about six minutes:

1. builds (or reuses) the embedded synthetic mini corpus;
2. trains the backbone with the reconstruction loss (L1 + multi-resolution STFT) for a wall-clock
   budget (``sb_mal/hparams/demo.yaml``, run by :class:`sb_mal.brains.MALBrain` with
   ``lambda_mal: 0``);
3. continues that model twice for the same number of steps: reconstruction only, and with Model as
   Loss (its own encoder as the loss, ``variant``/``lambda_mal``);
4. scores the noisy input and both continuations on the same test utterances and prints them side
   by side, with the paired difference MAL - reconstruction-only and its bootstrap 95 % interval
   over the utterances (one seed: this is a demonstration, not the evidence; see
   ``benchmarks/RESULTS.md``), and writes example audio and a spectrogram figure
   (noisy / reconstruction only / MAL / clean) to the output folder.

Whatever the result, it is printed as measured.
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

    print(f"[1/5] mini corpus in {corpus}")
    paths = {split: corpus / f"{split}.json" for split in ("train", "valid", "test")}
    if corpus_dir is None or not all(p.is_file() for p in paths.values()):
        paths = build_mini_corpus(corpus, progress=True)
    # else: a corpus folder given by the user is used as it is (e.g. one built with other sizes)

    print(f"[2/5] training the baseline with the reconstruction loss for about {minutes:g} min")
    first = out / "baseline"
    brain = run_recipe(MALBrain, None, argv=[_demo_yaml(), f"--output_folder={first}", f"--max_train_minutes={minutes}",
                                             "--lambda_mal=0.0", "--test_data=null", *common])
    epochs = brain.hparams.epoch_counter.current
    epoch_minutes = (time.monotonic() - t0) / 60 / max(epochs, 1)
    more = max(1, round(continue_minutes / max(epoch_minutes, 1e-9)))

    runs = {}
    for step, (name, loss_args) in enumerate(
        [("reconstruction only", ["--lambda_mal=0.0"]),
         ("Model as Loss", [f"--lambda_mal={lambda_mal}", f"--variant={variant}"])], start=3):
        print(f"[{step}/5] continuing it for {more} epoch(s): {name}")
        folder = out / ("continued_reconstruction" if name == _SYSTEMS[0] else "continued_mal")
        run_recipe(MALBrain, None, argv=[_demo_yaml(), f"--output_folder={folder}", f"--init_from={first}",
                                         f"--number_of_epochs={more}", "--max_train_minutes=null", *loss_args,
                                         *common])
        runs[name] = folder
    train_minutes = (time.monotonic() - t0) / 60

    print("[5/5] scoring the noisy input of the same test utterances; audio examples and spectrograms")
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
        for name in _SYSTEMS:
            values = [scores[name][u].get(m, math.nan) for u in ids]
            finite = [v for v in values if not math.isnan(v)]
            row[name] = sum(finite) / len(finite) if finite else math.nan
        diffs = [[scores[_SYSTEMS[1]][u].get(m, math.nan) - scores[_SYSTEMS[0]][u].get(m, math.nan) for u in ids]]
        mean, lo, hi = paired_bootstrap(diffs)
        comparison[m] = {"diff": mean, "lo": lo, "hi": hi, "verdict": verdict(lo, hi, m)}
        row["MAL - rec. only [95% CI]"] = f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] {comparison[m]['verdict']}"
        rows.append(row)
    table = format_table(rows, ["metric", "noisy", *_SYSTEMS, "MAL - rec. only [95% CI]"])
    figure, examples = _write_examples(out, test, ids[:3], [runs[n] / "enhanced_test" for n in _SYSTEMS])
    summary = {
        "corpus": str(corpus),
        "test_utterances": len(ids),
        "baseline_epochs": epochs,
        "continuation_epochs_each": more,
        "mal": {"variant": variant, "lambda_mal": lambda_mal},
        "minutes_total": round((time.monotonic() - t0) / 60, 2),
        "minutes_until_trained": round(train_minutes, 2),
        "metrics": {r["metric"]: {k: r[k] for k in ("noisy", *_SYSTEMS)} for r in rows},
        "mal_minus_reconstruction": comparison,
        "figure": str(figure),
        "examples": examples,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "results.md", table + "\n")
    print()
    print(f"Test set of the mini corpus ({len(ids)} utterances, unseen voices), means; the baseline trained "
          f"{epochs} epoch(s), then each continuation {more} more (MAL: {variant}, lambda_mal {lambda_mal:g}):")
    print(table)
    print("(one seed and a few minutes of training: a demonstration of the paradigm, not evidence; "
          "benchmarks/RESULTS.md has the multi-seed comparison)")
    print(f"\nspectrograms: {figure}\naudio examples: {out / 'examples'}\nsummary: {out / 'summary.json'}")
    print(f"total time {summary['minutes_total']:.1f} min")
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
