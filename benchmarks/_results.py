"""Shared helpers of the benchmark scripts: machine description and RESULTS.md section updates.

Where results go (one rule for every script, in :func:`results_file`): each script writes its own
section of a results file and its figures to ``figures/`` beside that file. By default the file is
``results/benchmarks/RESULTS.md``, inside the ignored ``results/`` folder, so a run leaves the
checkout clean. The committed ``benchmarks/RESULTS.md`` (and ``benchmarks/figures/``) is rewritten
only when asked: ``--write-results`` (every script that writes results has it) or
``SB_MAL_WRITE_RESULTS=1`` in the environment. ``SB_MAL_BENCH_RESULTS=/path/RESULTS.md`` names
another file and wins over both.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The committed results file: rewritten only with --write-results or $SB_MAL_WRITE_RESULTS.
TRACKED_RESULTS = REPO / "benchmarks" / "RESULTS.md"
#: Where results go by default: inside results/, which .gitignore leaves out.
DEFAULT_RESULTS = REPO / "results" / "benchmarks" / "RESULTS.md"
DEVSET = Path(os.environ.get("SB_MAL_DEVSET", REPO.parent / "shared" / "data" / "devset"))

_write_tracked = os.environ.get("SB_MAL_WRITE_RESULTS", "").strip().lower() not in ("", "0", "false", "no")


def results_file() -> Path:
    """The results file this run writes: ``$SB_MAL_BENCH_RESULTS`` if set, else the committed
    ``benchmarks/RESULTS.md`` when asked (``--write-results``, ``$SB_MAL_WRITE_RESULTS``), else
    ``results/benchmarks/RESULTS.md`` (ignored by git)."""
    chosen = os.environ.get("SB_MAL_BENCH_RESULTS")
    if chosen:
        return Path(chosen)
    return TRACKED_RESULTS if _write_tracked else DEFAULT_RESULTS


def figures_dir() -> Path:
    """The folder of this run's figures: ``figures/`` beside :func:`results_file` (created)."""
    folder = results_file().parent / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it lies inside it, else absolute."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path.resolve()) if relative.startswith("..") else relative


class _WriteResults(argparse.Action):
    """``--write-results``: from now on this process writes the committed results file."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        global _write_tracked
        _write_tracked = True
        setattr(namespace, self.dest, True)


def add_results_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--write-results`` (update the committed benchmarks/RESULTS.md and benchmarks/figures/)."""
    parser.add_argument("--write-results", action=_WriteResults,
                        help="rewrite this script's section of the committed benchmarks/RESULTS.md (and its figures "
                             "in benchmarks/figures/); default: results/benchmarks/RESULTS.md and "
                             "results/benchmarks/figures/, ignored by git (same as SB_MAL_WRITE_RESULTS=1; "
                             "SB_MAL_BENCH_RESULTS=FILE names another file and wins over both)")
    return parser


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
    cmd = "python " + shlex.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])  # quoted: it can be pasted
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = ("- the runs were made by the same command without --report-only (which only reads them)\n"
            if report_only else "")
    return f"## {title}\n\n- date: {now}\n- machine: {machine()}\n- command: `{cmd}`\n{note}"


def update_section(name: str, body: str, path: Path | None = None) -> None:
    """Replace (or append) the block between ``<!-- name:start -->`` and ``<!-- name:end -->`` of
    ``path`` (default :func:`results_file`), and say where it went."""
    path = results_file() if path is None else Path(path)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by the scripts in `benchmarks/`.\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    note = "" if path.resolve() == TRACKED_RESULTS.resolve() else " (--write-results updates benchmarks/RESULTS.md)"
    print(f"results: section {name} written to {_shown(path)}{note}", flush=True)


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
    ``out``), ``--threads`` (torch threads per run), ``--parallel`` (runs at a time) and
    ``--write-results``. The drivers' seeds are their own ``--seeds``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--out", default=out, help=f"folder of the runs, resumable (default {out})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (default 2)")
    return add_results_option(parser)


def add_batch_option(parser, default: int = 8):
    """``--batch``: training mixtures per optimiser step of every run (the recipes' ``batch_size``); the
    budget of an epoch stays ``--examples`` mixtures, so a larger batch means fewer, larger steps."""
    parser.add_argument("--batch", type=int, default=default,
                        help=f"training mixtures per step of every run (default {default}); an epoch is still "
                             "--examples mixtures")
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
