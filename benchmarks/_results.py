"""Shared helpers of the benchmark scripts: machine description and RESULTS.md section updates."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

#: The results file the benchmarks update (their own section each); $SB_MAL_BENCH_RESULTS moves it (and the
#: figures, written to ``figures/`` beside it), e.g. to try a benchmark without touching the committed results.
RESULTS = Path(os.environ.get("SB_MAL_BENCH_RESULTS") or Path(__file__).resolve().parent / "RESULTS.md")
FIGURES = RESULTS.parent / "figures"
DEVSET = Path(os.environ.get("SB_MAL_DEVSET", Path(__file__).resolve().parents[2] / "shared" / "data" / "devset"))


def machine() -> str:
    """One line describing where a benchmark ran."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


def header(title: str, report_only: bool = False) -> str:
    """Section header lines: title, date, machine and the exact command (with ``report_only``, a
    line saying that the runs were made by the same command without ``--report-only``)."""
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = ("- the runs were made by the same command without --report-only (which only reads them)\n"
            if report_only else "")
    return f"## {title}\n\n- date: {now}\n- machine: {machine()}\n- command: `{cmd}`\n{note}"


def update_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the block between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by the scripts in `benchmarks/`.\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def interleaved_times(steps: dict, repeats: int, warmup: int = 1) -> dict:
    """``{key: [seconds, ...]}``: every callable of ``steps`` run ``warmup`` times, then ``repeats``
    rounds in which each runs once (interleaved, so a slow spell of the machine hits all alike)."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t0)
    return times


def timed(fn, repeats: int = 3) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` over ``repeats`` runs, and all the times."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def experiment_parser(doc: str, out: str):
    """An argument parser with the options every experiment driver shares: ``--out`` (default
    ``out``), ``--threads`` (torch threads per run), ``--parallel`` (runs at a time). The drivers'
    seeds are their own ``--seeds``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--out", default=out, help=f"folder of the runs, resumable (default {out})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (default 2)")
    return parser


def parse_with_overrides(parser):
    """``(args, overrides)``: any argument the parser does not know must be a ``--key=value`` recipe
    override, passed on to every run."""
    args, extra = parser.parse_known_args()
    bad = [a for a in extra if not (a.startswith("--") and "=" in a)]
    if bad:
        parser.error(f"unrecognized arguments {bad} (recipe overrides are written --key=value)")
    return args, extra


def devset_batch(n: int = 8, seconds: float = 3.0, seed: int = 3):
    """``(noisy, clean)``: a fixed batch of ``n`` devset training mixtures, for step-cost benchmarks."""
    import torch

    from sb_mal.data.mixing import OnTheFlyMixer

    mixer = OnTheFlyMixer(DEVSET / "speech/train", DEVSET / "noise/train", segment_seconds=seconds, num_items=n,
                          seed=seed)
    items = [mixer[i] for i in range(n)]
    return torch.stack([it["noisy_sig"] for it in items]), torch.stack([it["clean_sig"] for it in items])
