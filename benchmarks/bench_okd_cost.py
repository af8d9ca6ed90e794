"""Epoch cost of MetricGAN-OKD with N = 2 and N = 4 generators against MetricGAN+ (N = 1).

Each configuration is the recipe itself (``recipes/metricgan_okd/train.py`` with
hparams/folders/{metricgan_plus, okd_pesq_csig, okd_4metrics}.yaml, default model sizes) run for
``--epochs`` epochs of ``--samples`` devset mixtures. Epoch 1 has no generator step (the
MetricGAN+ schedule: the discriminator learns first), so the timed epochs are 2..``--epochs``:
generator steps, metric targets of the epoch's enhanced and noisy utterances (the pool, ``--n-jobs``
workers) and the discriminator step with history replay. The recipe logs each epoch's wall time
(``epoch_seconds``) and the part spent in metric computation (``metric_seconds``). Validation runs
once after the last epoch (2 pairs) and is not timed; there is no test stage.

The configurations run one after the other, ``--rounds`` times interleaved; the median epoch time
of each is compared with N = 1's. Goal: N = 2 costs at most 1.6x the N = 1 epoch.

Usage: python benchmarks/bench_okd_cost.py [--epochs 3] [--samples 24] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _results import DEVSET, header, update_section
from sb_mal.metrics import format_table

REPO = Path(__file__).resolve().parents[1]
CONFIGS = (("MetricGAN+ (N=1, PESQ)", "metricgan_plus.yaml"), ("OKD N=2 (PESQ, CSIG)", "okd_pesq_csig.yaml"),
           ("OKD N=4 (PESQ, CSIG, CBAK, COVL)", "okd_4metrics.yaml"))


def epoch_times(log: Path) -> list[tuple[int, float, float]]:
    """(epoch, epoch_seconds, metric_seconds) of every epoch line of a train_log.txt."""
    out = []
    for line in log.read_text().splitlines():
        m = re.match(r"epoch: (\d+) - ", line)
        if not m:
            continue
        e = re.search(r"train epoch_seconds: ([0-9.e+-]+)", line)
        s = re.search(r"train metric_seconds: ([0-9.e+-]+)", line)
        if e and s:
            out.append((int(m.group(1)), float(e.group(1)), float(s.group(1))))
    return out


def run_config(yaml: str, folder: Path, args, extra: list[str]) -> list[tuple[int, float, float]]:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(REPO / "recipes/metricgan_okd/train.py"), str(REPO / "hparams/folders" / yaml),
           f"--data_folder={DEVSET}", f"--output_folder={folder}", f"--number_of_epochs={args.epochs}",
           f"--samples_per_epoch={args.samples}", f"--training_pool={max(args.samples, 100)}", "--valid_every=1000",
           "--valid_limit=2", "--valid_metrics=[pesq]", "--test_data=null", f"--n_jobs={args.n_jobs}",
           f"--seed={args.seed}", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder.parent)
    if proc.returncode != 0:
        raise SystemExit(f"{yaml} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    times = [t for t in epoch_times(folder / "train_log.txt") if t[0] >= 2]
    if not times:
        raise SystemExit(f"{yaml}: no timed epoch in {folder / 'train_log.txt'}")
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=24, help="utterances drawn per epoch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    parser.add_argument("--n-jobs", type=int, default=2, help="metric pool workers")
    parser.add_argument("--seed", type=int, default=1234)
    args, extra = parser.parse_known_args()  # anything else: --key=value overrides for every run
    bad = [a for a in extra if not (a.startswith("--") and "=" in a)]
    if bad:
        parser.error(f"unrecognized arguments {bad} (recipe overrides are written --key=value)")
    if args.epochs < 2:
        raise SystemExit("--epochs must be >= 2 (epoch 1 has no generator step)")
    work = Path(tempfile.mkdtemp(prefix="bench_okd_"))
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in CONFIGS}
    try:
        for r in range(args.rounds):
            for label, yaml in CONFIGS:
                folder = work / f"{Path(yaml).stem}_{r}"
                times = run_config(yaml, folder, args, extra)
                samples[label] += [(e, m) for _, e, m in times]
                print(f"round {r + 1}: {label}: " + ", ".join(f"{e:.1f} s (metrics {m:.1f} s)" for _, e, m in times),
                      flush=True)
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(e for e, _ in samples[CONFIGS[0][0]])
    rows = []
    for label, _ in CONFIGS:
        epochs = [e for e, _ in samples[label]]
        metrics = [m for _, m in samples[label]]
        med = statistics.median(epochs)
        rows.append({"configuration": label, "epochs timed": len(epochs), "median epoch s": med,
                     "min epoch s": min(epochs), "median metric s": statistics.median(metrics),
                     "metric share": statistics.median(m / e for e, m in samples[label]), "ratio to N=1": med / base})
    table = format_table(rows, ["configuration", "epochs timed", "median epoch s", "min epoch s", "median metric s",
                                "metric share", "ratio to N=1"])
    n2 = rows[1]["ratio to N=1"]
    body = (header("MetricGAN-OKD epoch cost (bench_okd_cost.py)")
            + f"- one training epoch = {args.samples} devset mixtures (3 s, batch 1): generator steps, metric targets "
            + f"of the enhanced and noisy utterances ({args.n_jobs} pool workers), discriminator step with history "
            + f"replay; epochs 2..{args.epochs} of {args.rounds} interleaved runs per configuration; model sizes of the "
            + f"YAMLs (BLSTM 200x2, discriminator 15x4) unless the command overrides them; {args.threads} torch thread(s)\n"
            + f"- goal: N=2 at most 1.6x the N=1 epoch: {'met' if n2 <= 1.6 else 'NOT met'} ({n2:.2f}x)\n\n"
            + table + "\n")
    print(body)
    update_section("bench_okd_cost", body)


if __name__ == "__main__":
    main()
