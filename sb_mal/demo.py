"""``sb-mal demo``: build the mini corpus, train the baseline briefly, show what it does.

Everything runs offline on a fresh machine, on the CPU, in a few minutes:

1. builds (or reuses) the embedded synthetic mini corpus;
2. trains the baseline recipe (``sb_mal/hparams/demo.yaml``: the backbone with L1 +
   multi-resolution STFT losses) for a wall-clock budget, keeping the best validation PESQ;
3. enhances part of the test split with the best checkpoint;
4. prints a before/after table (PESQ, STOI, DNSMOS) and writes example audio and a spectrogram
   figure (noisy / enhanced / clean) to the output folder.
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


def _demo_yaml() -> str:
    return str(resources.files("sb_mal") / "hparams" / "demo.yaml")


def run_demo(
    output: str | os.PathLike = "sb_mal_demo",
    *,
    minutes: float = 3.5,
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
        Folder for the run, audio examples, figure and summary (created).
    minutes : float
        Training budget (training stops after the first epoch that ends past it).
    corpus_dir : path, optional
        Where the mini corpus lives (default: the sb_mal cache).
    test_limit : int
        Test utterances enhanced and scored.
    n_jobs : int
        Metric worker processes.
    seed : int
        Training seed.
    extra_args : list of str
        More ``--key=value`` overrides for the demo recipe (e.g. ``["--batch_size=4"]``).
    """
    from sb_mal.brains import EnhanceBrain
    from sb_mal.data.manifest import load_manifest
    from sb_mal.data.mini import build_mini_corpus, default_mini_dir
    from sb_mal.metrics import evaluate, format_table
    from sb_mal.fileio import atomic_write_text
    from sb_mal.run import run_recipe

    t0 = time.monotonic()
    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(corpus_dir) if corpus_dir is not None else default_mini_dir()

    print(f"[1/4] mini corpus in {corpus}")
    paths = build_mini_corpus(corpus, progress=True)

    print(f"[2/4] training the baseline for about {minutes:g} min (output: {out / 'run'})")
    args = [
        _demo_yaml(), f"--output_folder={out / 'run'}", f"--data_folder={corpus}", f"--seed={seed}",
        f"--max_train_minutes={minutes}", f"--test_limit={test_limit}", f"--n_jobs={n_jobs}",
        *(extra_args or []),
    ]
    brain = run_recipe(EnhanceBrain, None, argv=args)
    train_minutes = (time.monotonic() - t0) / 60

    print("[3/4] scoring the noisy input of the same test utterances")
    test = load_manifest(paths["test"], corpus)
    enhanced_dir = out / "run" / "enhanced_test"
    ids = sorted(p.stem for p in enhanced_dir.glob("*.wav"))
    if not ids:
        raise RuntimeError(f"the test stage wrote no enhanced audio to {enhanced_dir}")
    noisy = evaluate([test[u]["noisy_wav"] for u in ids], [test[u]["clean_wav"] for u in ids],
                     metrics=list(_TABLE_METRICS), n_jobs=n_jobs, ids=ids, progress=True)
    enhanced = _read_scores(out / "run" / "test_scores.csv")

    rows = []
    for m in _TABLE_METRICS:
        before = noisy.means.get(m, math.nan)
        values = [enhanced[u][m] for u in ids if u in enhanced and not math.isnan(enhanced[u].get(m, math.nan))]
        after = sum(values) / len(values) if values else math.nan
        rows.append({"metric": m, "noisy": before, "enhanced": after, "change": after - before})
    table = format_table(rows, ["metric", "noisy", "enhanced", "change"])

    print("[4/4] writing audio examples and a spectrogram figure")
    figure, examples = _write_examples(out, test, ids[:3], enhanced_dir)
    summary = {
        "corpus": str(corpus),
        "test_utterances": len(ids),
        "epochs_trained": brain.hparams.epoch_counter.current,
        "minutes_total": round((time.monotonic() - t0) / 60, 2),
        "minutes_until_trained": round(train_minutes, 2),
        "metrics": {r["metric"]: {"noisy": r["noisy"], "enhanced": r["enhanced"]} for r in rows},
        "figure": str(figure),
        "examples": examples,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "results.md", table + "\n")
    print()
    print(f"Test set of the mini corpus ({len(ids)} utterances, unseen voices), means:")
    print(table)
    print(f"\nspectrograms: {figure}\naudio examples: {out / 'examples'}\nsummary: {out / 'summary.json'}")
    print(f"total time {summary['minutes_total']:.1f} min")
    return summary


def _read_scores(path: Path) -> dict:
    scores = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            scores[row["id"]] = {k: float(v) for k, v in row.items() if k != "id"}
    return scores


def _write_examples(out: Path, test: dict, ids: list[str], enhanced_dir: Path):
    from sb_mal.audio import read_audio, write_audio
    from sb_mal.evaluation.plots import save_spectrogram_grid

    rows, examples = [], []
    for uid in ids:
        noisy, sr = read_audio(test[uid]["noisy_wav"], as_numpy=True)
        clean, _ = read_audio(test[uid]["clean_wav"], sr, as_numpy=True)
        enh, _ = read_audio(enhanced_dir / f"{uid}.wav", sr, as_numpy=True)
        rows.append([noisy, enh, clean])
        for name, wav in (("noisy", noisy), ("enhanced", enh), ("clean", clean)):
            path = out / "examples" / f"{uid}_{name}.wav"
            write_audio(path, wav, sr)
            examples.append(str(path))
    figure = out / "spectrograms.png"
    labels = [f"{uid} ({test[uid].get('noise_type', '?')}, {test[uid].get('snr_db', '?')} dB)" for uid in ids]
    save_spectrogram_grid(figure, rows, labels, ["noisy", "enhanced", "clean"], title="sb_mal demo: baseline on the mini corpus")
    return figure, examples
