"""Model-as-Loss experiment on the devset: baseline vs MAL frozen / frozen_fe / dynamic at equal budgets.

Protocol (every model sees the same number of training steps on the same data stream):

1. phase 1: the backbone trained with the reconstruction loss (L1 + multi-resolution STFT) on
   on-the-fly devset mixtures for ``--epochs1`` epochs (``--examples`` mixtures each);
2. from the *last* phase-1 checkpoint, four phase-2 runs of ``--epochs2`` epochs each, identical
   but for the loss (recipes/mal/train.py, fresh optimiser, same seed and data stream):
   baseline (``lambda_mal=0``: reconstruction only), MAL frozen, frozen_fe and dynamic
   (``lambda_mal`` from the YAML);
3. each run keeps its best checkpoint by validation PESQ (devset valid pairs) and is tested on the
   120 devset test pairs (intrusive metrics + DNSMOS), by the recipe's own test stage.

Phase-2 runs go ``--parallel`` at a time, each on ``--threads`` torch threads.
Usage: python benchmarks/mal_experiment.py [--out results/mal_experiment] [--epochs1 10] [--epochs2 10]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import DEVSET, experiment_parser, header, parse_with_overrides, update_section
from sb_mal.metrics import format_table

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("baseline", "frozen", "frozen_fe", "dynamic")
COLUMNS = ["pesq", "stoi", "estoi", "si_sdr", "csig", "cbak", "covl", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak"]


def run(cmd: list[str], log: Path, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return time.monotonic() - t0


def run_once(cmd: list[str], folder: Path, log: Path, threads: int,
             outputs: tuple[str, ...] = ("test_summary.json",)) -> float:
    """Wall seconds of the recipe run ``cmd`` writing to ``folder``; a run whose ``outputs`` and
    recorded ``seconds`` are already there is not repeated (drivers resume after an interruption)."""
    done = folder / "seconds"
    if done.exists() and all((folder / name).exists() for name in outputs):
        return float(done.read_text())
    log.parent.mkdir(parents=True, exist_ok=True)
    seconds = run(cmd, log, threads)
    done.write_text(f"{seconds:.1f}")
    return seconds


def noisy_scores(out: Path) -> dict:
    """Means of the metrics on the noisy test inputs (cached in ``out/noisy_scores.json``)."""
    cache = out / "noisy_scores.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from sb_mal.metrics import evaluate

    noisy = sorted((DEVSET / "pairs/test/noisy").glob("*.flac"))
    clean = [DEVSET / "pairs/test/clean" / p.name for p in noisy]
    result = evaluate([str(p) for p in noisy], [str(p) for p in clean], metrics=["intrusive", "dnsmos"], n_jobs=2,
                      progress=True)
    cache.write_text(json.dumps(result.means))
    return result.means


def main():
    parser = experiment_parser(__doc__, "results/mal_experiment")
    parser.add_argument("--epochs1", type=int, default=10)
    parser.add_argument("--epochs2", type=int, default=10)
    parser.add_argument("--examples", type=int, default=400, help="training mixtures per epoch")
    args, extra = parse_with_overrides(parser)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"--data_folder={DEVSET}", f"--examples_per_epoch={args.examples}", f"--seed={args.seed}",
              "--n_jobs=1", *extra]
    times = {}
    phase1 = out / "phase1"
    if not (phase1 / "done").exists():
        times["phase1"] = run([sys.executable, "recipes/baseline/train.py", "hparams/folders/baseline.yaml",
                               f"--output_folder={phase1}", f"--number_of_epochs={args.epochs1}", "--test_data=null",
                               *common], out / "phase1.log", args.threads)
        (phase1 / "done").write_text(json.dumps({"seconds": times["phase1"]}))
    else:
        times["phase1"] = json.loads((phase1 / "done").read_text())["seconds"]
    last = max((phase1 / "save").glob("CKPT+*"), key=lambda p: p.stat().st_mtime)

    def phase2(name: str) -> tuple[str, float]:
        folder = out / name
        variant = "frozen" if name == "baseline" else name
        cmd = [sys.executable, "recipes/mal/train.py", f"hparams/folders/mal_{variant}.yaml", f"--output_folder={folder}",
               f"--init_from={last}", "--phase1_epochs=0", f"--number_of_epochs={args.epochs2}", *common]
        if name == "baseline":
            cmd.append("--lambda_mal=0")
        return name, run_once(cmd, folder, out / f"{name}.log", args.threads)

    with ThreadPoolExecutor(args.parallel) as pool:
        times.update(dict(pool.map(phase2, SYSTEMS)))

    rows = [{"system": "noisy input", **noisy_scores(out)}]
    for name in SYSTEMS:
        summary = json.loads((out / name / "test_summary.json").read_text())
        label = "baseline (reconstruction only)" if name == "baseline" else f"MAL {name}"
        rows.append({"system": label, **summary["means"], "phase-2 min": times[name] / 60})
    table = format_table(rows, ["system", *COLUMNS, "phase-2 min"])
    steps = args.examples // 8
    body = (header("Model-as-Loss experiment on the devset (mal_experiment.py)")
            + f"- budget: every model {args.epochs1 + args.epochs2} epochs x {args.examples} on-the-fly mixtures "
            + f"(batch 8, 3 s segments: {(args.epochs1 + args.epochs2) * steps} steps); the first {args.epochs1} "
            + f"epochs are one shared reconstruction-only phase 1 ({times['phase1'] / 60:.1f} min), then "
            + f"{args.epochs2} epochs of phase 2 per model; {args.threads} torch thread(s) per run, "
            + f"{args.parallel} runs at a time (wall times below are therefore only indicative)\n"
            + "- checkpoint: best validation PESQ (60 devset valid pairs); test: 120 devset test pairs\n"
            + f"- seed {args.seed}; lambda_mal 10, lambda_rec 1, MAL tap: bottleneck\n\n" + table + "\n")
    print(body)
    update_section("mal_experiment", body)


if __name__ == "__main__":
    main()
