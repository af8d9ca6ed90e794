"""The experiment protocol every paradigm's evidence follows (RESULTS.md, "Evidence" sections).

1. **Equal budgets.** Every arm of a comparison gets the same number of optimiser steps on the
   same data stream (same seed, same on-the-fly mixtures); arms differ only in the loss.
2. **Tuning on validation only.** A method's key hyperparameters are chosen by the validation
   score of the recipe's own best checkpoint (devset ``pairs/valid``), at the first seed; the test
   split is read once, by the final runs.
3. **Seeds.** At least three seeds per arm; a seed changes the model's initialisation and the
   training mixtures.
4. **Paired differences with intervals.** On the test split, each arm's per-utterance score minus
   the baseline's (same seed, same utterance), pooled over seeds; a 95 % interval by a two-level
   bootstrap that resamples seeds and utterances (the same utterances for every seed, so the
   correlation between seeds on one utterance is kept).
5. **Verdicts.** ``better`` / ``worse`` when the interval excludes 0 in the metric's good / bad
   direction, ``level`` otherwise.
6. **Without the tuning seed.** The seed whose validation runs chose the hyperparameters (the first)
   is also pooled into the test estimate, which favours the tuned arm a little (winner's curse); the
   tables also give the first metric's estimate without that seed (:func:`evidence_table`). Five
   seeds where compute allows: with two or three, the interval is anti-conservative when seeds
   disagree (``seed_coverage.py`` measures by how much).

Runs are resumable: a run folder holding its outputs and a ``seconds`` file is not run again, so a
driver killed at any point picks up where it stopped, and tables can be written from the runs
finished so far (``--report-only``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sb_mal.metrics.stats import LOWER_IS_BETTER, paired_bootstrap, verdict

__all__ = ["LOWER_IS_BETTER", "NotStarted", "compare", "compare_without", "evidence_table", "merge_overrides",
           "no_start_after", "paired_bootstrap", "read_scores", "run_once", "verdict", "verdict_line"]

REPO = Path(__file__).resolve().parents[1]
#: A time (seconds since the epoch) after which :func:`run_once` starts no new run, or a file read before each
#: run holding a time or a JSON object ``{run folder: time, "*": time of any other run}``; set by a caller
#: that must stop by a deadline (benchmarks/sprint.py), so that no run is started that could not finish.
NO_START_AFTER = "SB_MAL_NO_START_AFTER"


class NotStarted(SystemExit):
    """A run that :func:`run_once` did not start: the time in ``$SB_MAL_NO_START_AFTER`` had passed."""


def merge_overrides(defaults: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """``defaults`` less the ``--key=value`` entries whose key ``overrides`` sets, then ``overrides``: a
    recipe override given to a driver replaces the driver's own value of that key (SpeechBrain refuses a
    key given twice).

    >>> merge_overrides(["train.py", "--n_jobs=1", "--seed=1"], ["--n_jobs=4"])
    ['train.py', '--seed=1', '--n_jobs=4']
    """
    keys = {o.split("=", 1)[0] for o in map(str, overrides) if o.startswith("--") and "=" in o}
    return [d for d in defaults if not (str(d).startswith("--") and str(d).split("=", 1)[0] in keys)] + list(overrides)


class RunProgress:
    """Overall progress of a driver's runs, printed as each run starts and ends: how many are done of
    the planned total, the time so far and an estimate of the time left (from the mean of the runs
    finished in this process, divided among the runs going at once)."""

    def __init__(self):
        self.total: int | None = None
        self.done = self.running = 0
        self.seconds: list[float] = []
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def plan(self, total: int) -> None:
        """The number of runs this driver will need (finished ones of an earlier call included)."""
        with self._lock:
            self.total, self.done, self.seconds, self.started = int(total), 0, [], time.monotonic()

    def _count(self) -> str:
        return f"[runs {self.done}/{self.total if self.total is not None else '?'}]"

    def _left(self) -> str:
        if self.total is None or not self.seconds:
            return ""
        left = max(self.total - self.done, 0)
        minutes = sum(self.seconds) / len(self.seconds) * left / max(self.running, 1) / 60
        return f", about {minutes:.0f} min to go" if left else ""

    def resumed(self, folder: Path) -> None:
        with self._lock:
            self.done += 1
            print(f"{self._count()} already done: {folder}", flush=True)

    def start(self, folder: Path) -> None:
        with self._lock:
            self.running += 1
            print(f"{self._count()} started {folder} ({(time.monotonic() - self.started) / 60:.1f} min so far)",
                  flush=True)

    def end(self, folder: Path, seconds: float | None) -> None:
        with self._lock:
            self.running = max(self.running - 1, 0)
            if seconds is None:
                print(f"{self._count()} failed: {folder}", flush=True)
                return
            self.done += 1
            self.seconds.append(seconds)
            print(f"{self._count()} finished {folder} in {seconds / 60:.1f} min "
                  f"({(time.monotonic() - self.started) / 60:.1f} min so far{self._left()})", flush=True)


#: the progress of this process's runs (drivers call ``PROGRESS.plan(n)`` once they know n)
PROGRESS = RunProgress()


def no_start_after(folder: Path) -> float | None:
    """The time after which the run in ``folder`` may not start (:data:`NO_START_AFTER`), or None."""
    value = os.environ.get(NO_START_AFTER)
    if value and os.path.isfile(value):
        value = Path(value).read_text().strip()
        if value.startswith("{"):
            table = json.loads(value)
            value = table.get(str(Path(folder).resolve()), table.get("*"))
    return float(value) if value not in (None, "") else None


def run_once(cmd: Sequence[str], folder: Path, log: Path, threads: int = 1,
             outputs: Sequence[str] = ("test_summary.json",), cwd: Path = REPO) -> float:
    """Wall seconds of the command ``cmd`` (run in ``cwd``) writing into ``folder``; not run again
    once its ``outputs`` and the recorded ``seconds`` are there (a killed driver resumes). A failure
    names the log. A run not yet done is not started after its time in ``$SB_MAL_NO_START_AFTER``
    (:func:`no_start_after`; :class:`NotStarted`, a SystemExit)."""
    done = Path(folder) / "seconds"
    if done.exists() and all((Path(folder) / name).exists() for name in outputs):
        PROGRESS.resumed(folder)
        return float(done.read_text())
    stop = no_start_after(folder)
    if stop is not None and time.time() > stop:
        raise NotStarted(f"not started (past ${NO_START_AFTER}): {' '.join(map(str, cmd))}")
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    PROGRESS.start(folder)
    with open(log, "w", encoding="utf-8") as fout:
        proc = subprocess.run(list(map(str, cmd)), stdout=fout, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if proc.returncode != 0:
        PROGRESS.end(folder, None)
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(map(str, cmd))}; see {log}")
    seconds = time.monotonic() - started
    PROGRESS.end(folder, seconds)
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(f"{seconds:.1f}")
    return seconds


def read_scores(path: Path) -> dict[str, dict[str, float]]:
    """Per-utterance scores of a ``*_scores.csv`` (``id`` column + one column per metric; empty or
    ``nan`` cells are NaN)."""
    rows = {}
    with open(path, newline="", encoding="utf-8") as fin:
        for row in csv.DictReader(fin):
            uid = row.pop("id")
            rows[uid] = {k: (float(v) if v not in ("", "nan") else math.nan) for k, v in row.items()}
    return rows


def compare(baseline: dict[int, Path], arm: dict[int, Path], metrics: Sequence[str], n_boot: int = 4000,
            only: set[str] | None = None, exclude_seeds: Sequence[int] = ()) -> dict[str, dict]:
    """Paired comparison of two arms' per-utterance test scores, pooled over their common seeds.

    ``baseline`` and ``arm`` map seed -> scores CSV; ``only`` restricts the utterances (e.g. one SNR);
    ``exclude_seeds`` leaves seeds out (e.g. the tuning seed). Returns, per metric: arm mean,
    baseline mean, mean difference, interval, verdict, seeds and utterances used.
    """
    seeds = sorted((set(baseline) & set(arm)) - set(exclude_seeds))
    if not seeds:
        raise ValueError("no seed has both arms finished" + (f" (seeds {list(exclude_seeds)} left out)"
                                                              if exclude_seeds else ""))
    base = {s: read_scores(baseline[s]) for s in seeds}
    other = {s: read_scores(arm[s]) for s in seeds}
    utts = sorted(set.intersection(*(set(base[s]) & set(other[s]) for s in seeds)) & (only if only is not None
                                                                                    else set(base[seeds[0]])))
    if not utts:
        raise ValueError("no utterance is scored in both arms (and in `only`)")
    out = {}
    for m in metrics:
        a = np.array([[other[s][u].get(m, math.nan) for u in utts] for s in seeds])
        b = np.array([[base[s][u].get(m, math.nan) for u in utts] for s in seeds])
        mean, lo, hi = paired_bootstrap(a - b, n_boot=n_boot)
        out[m] = {"arm": float(np.nanmean(a)), "baseline": float(np.nanmean(b)), "diff": mean, "lo": lo, "hi": hi,
                  "verdict": verdict(lo, hi, m), "seeds": len(seeds), "utterances": len(utts)}
    return out


def evidence_table(rows: Sequence[tuple], metrics: Sequence[str], tuning_seed: int | None = None) -> str:
    """Markdown table: one row per arm, per metric ``arm mean (diff [lo, hi]) verdict``; ``rows``
    are ``(arm label, compare() result, extra text such as steps and minutes)``, optionally with a
    fourth element: the compare() result without the tuning seed (None where there is none). With
    ``tuning_seed`` given, a column shows the first metric's difference without that seed."""
    held_out = tuning_seed is not None
    head = "| arm | " + " | ".join(metrics) + (f" | {metrics[0]} without seed {tuning_seed} (tuning)" if held_out
                                                 else "") + " | seeds | budget |"
    sep = "|---" * (len(metrics) + 3 + held_out) + "|"
    lines = [head, sep]
    for label, result, extra, *rest in rows:
        cells = []
        for m in metrics:
            r = result.get(m)
            if r is None:
                cells.append("")
                continue
            cells.append(f"{r['arm']:.3f} ({r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]) **{r['verdict']}**")
        if held_out:
            r = (rest[0] or {}).get(metrics[0]) if rest else None
            cells.append(f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}] **{r['verdict']}** ({r['seeds']} seeds)"
                         if r else "")
        seeds = next(iter(result.values()))["seeds"] if result else 0
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {seeds} | {extra} |")
    return "\n".join(lines)


def compare_without(baseline: dict[int, Path], arm: dict[int, Path], metrics: Sequence[str],
                    seed: int) -> dict[str, dict] | None:
    """:func:`compare` without ``seed`` (the tuning seed); None when no other seed has both arms."""
    if not (set(baseline) & set(arm)) - {seed}:
        return None
    return compare(baseline, arm, metrics, exclude_seeds=[seed])


def per_seed_differences(baseline: dict[int, Path], arm: dict[int, Path], metric: str = "pesq") -> dict[int, float]:
    """``{seed: mean paired difference arm - baseline}`` of ``metric`` over the utterances both scored, per seed
    with both arms: whether a pooled effect comes from every seed or from one."""
    out = {}
    for seed in sorted(set(baseline) & set(arm)):
        base, other = read_scores(baseline[seed]), read_scores(arm[seed])
        diffs = [other[u][metric] - base[u][metric] for u in sorted(set(base) & set(other))
                 if metric in base[u] and metric in other[u] and not math.isnan(other[u][metric] - base[u][metric])]
        if diffs:
            out[seed] = sum(diffs) / len(diffs)
    return out


def per_seed_line(label: str, baseline: dict[int, Path], arm: dict[int, Path], metric: str = "pesq") -> str:
    """``- label, per seed: PESQ +0.059 (seed 1), ...; k of n seeds above 0``."""
    diffs = per_seed_differences(baseline, arm, metric)
    above = sum(d > 0 for d in diffs.values())
    return (f"- {label}, {metric.upper()} per seed: "
            + ", ".join(f"{d:+.3f} (seed {s})" for s, d in diffs.items())
            + f"; {above} of {len(diffs)} seeds above 0")


def verdict_line(label: str, result: dict, metric: str = "pesq") -> str:
    """``- label: PESQ +d [lo, hi] (verdict); better on ...; worse on ...`` from a :func:`compare` result."""
    r = result[metric]
    better = [m for m, v in result.items() if v["verdict"] == "better"]
    worse = [m for m, v in result.items() if v["verdict"] == "worse"]
    return (f"- {label}: {metric.upper()} {r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}] ({r['verdict']}); better on "
            f"{', '.join(better) or 'no metric'}; worse on {', '.join(worse) or 'no metric'}")
