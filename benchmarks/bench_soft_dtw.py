"""Speed and peak memory of our batched soft-DTW (forward + backward), side by side with references.

Systems, all computing ``soft_dtw(x, y).sum()`` and its gradient wrt ``x`` and ``y``
(``x``, ``y``: ``[B, N, D]``, float32, squared Euclidean cost, gamma 0.1, full lengths):

* ours: :func:`sb_mal.losses.soft_dtw.soft_dtw` (anti-diagonal wavefront, custom backward);
* ours, divergence: :func:`~sb_mal.losses.soft_dtw.soft_dtw_divergence` (3 soft-DTWs in one batch of 3B),
  what ``ssl_softdtw`` runs per layer;
* autograd, wavefront: the same anti-diagonal recursion written without in-place ops, backward by autograd;
* autograd, cell loop: the straightforward recursion, one cell at a time (row by row), vectorised over the
  batch only, backward by autograd;
* pysdtw: ``pysdtw.SoftDTW`` (its CPU path, numba), and tslearn: ``tslearn.metrics.SoftDTWLossPyTorch``,
  the soft-DTW losses published as Python packages (``pip install pysdtw tslearn``; a peer that is
  not installed is left out with a message);
* naive reference: ``soft_dtw_naive`` from tests/test_soft_dtw.py (one pair at a time, a python double
  loop over torch scalars, float64, with its own per-cell cost), backward by autograd. It is run on B=1
  only and its time and memory are multiplied by B (items are independent: linear in B), as stated
  in the table.

Each case runs in its own subprocess (1 torch thread). Time: the first run is timed too (there is no
warm-up run: the recursion has no lazy initialisation, and the slow systems take many seconds per run),
then repeats until ``--repeats`` runs or ``--budget`` seconds; median reported. Peak memory: growth of the
process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` after the inputs exist) during
the first run; torch's CPU tensors are plain malloc/mmap memory, so this counts them (plus allocator
slack). On CUDA, ``torch.cuda.max_memory_allocated`` is used instead.

Exactness: before timing, every system's value and gradients on a small float64 case (B=2, N=60,
M=50, D=16) are compared with the naive float64 reference; the largest absolute differences are
reported with the table.

Usage: python benchmarks/bench_soft_dtw.py [--repeats 5] [--sizes 100 250 500] [--dims 64 768] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from _results import header, update_section
from sb_mal.losses.soft_dtw import _skew_index, pairwise_cost, soft_dtw, soft_dtw_divergence
from sb_mal.metrics import format_table

GAMMA = 0.1
SYSTEMS = ("ours", "ours, divergence", "autograd, wavefront", "pysdtw", "tslearn", "autograd, cell loop",
           "naive reference")
PEERS = {"pysdtw": "pysdtw", "tslearn": "tslearn"}  # system -> the package it needs


def autograd_cells(x, y, gamma=GAMMA):
    """Soft-DTW by the plain row-by-row recursion, one cell at a time, batched over items; autograd backward."""
    cost = pairwise_cost(x, y)
    batch, rows, cols = cost.shape
    inf, zero = cost.new_full((batch,), math.inf), cost.new_zeros(batch)
    prev = [zero] + [inf] * cols
    for i in range(1, rows + 1):
        row = [inf]
        for j in range(1, cols + 1):
            r = torch.stack((prev[j - 1], prev[j], row[j - 1]))
            row.append(cost[:, i - 1, j - 1] - gamma * torch.logsumexp(-r / gamma, 0))
        prev = row
    return prev[cols]


def autograd_wavefront(x, y, gamma=GAMMA):
    """Our anti-diagonal recursion without in-place ops, differentiated by autograd."""
    cost = pairwise_cost(x, y)
    batch, rows, cols = cost.shape
    to_skew, _ = _skew_index(rows, cols, cost.device)
    flat = torch.cat((cost.reshape(batch, -1), cost.new_zeros(batch, 1)), 1)
    skewed = flat.index_select(1, to_skew).view(batch, rows + cols + 1, rows + 2)
    first = cost.new_full((batch, rows + 2), math.inf)
    diags = [torch.cat((cost.new_zeros(batch, 1), first[:, 1:]), 1), first]
    for k in range(2, rows + cols + 1):
        lo, hi = max(1, k - cols), min(rows, k - 1)
        p2, p1 = diags[k - 2], diags[k - 1]
        pred = torch.stack((p2[:, lo - 1:hi], p1[:, lo - 1:hi], p1[:, lo:hi + 1]))
        val = skewed[:, k, lo:hi + 1] - gamma * torch.logsumexp(-pred / gamma, 0)
        diags.append(torch.nn.functional.pad(val, (lo, rows + 1 - hi), value=math.inf))
    return diags[-1][:, rows]


def naive_batch(x, y, gamma=GAMMA):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_soft_dtw import soft_dtw_naive

    return torch.stack([soft_dtw_naive(x[b], y[b], gamma) for b in range(x.shape[0])])


def pysdtw_loss(x, y, gamma=GAMMA):
    import pysdtw

    return pysdtw.SoftDTW(gamma=gamma, dist_func=pysdtw.distance.pairwise_l2_squared, use_cuda=x.is_cuda)(x, y)


def tslearn_loss(x, y, gamma=GAMMA):
    from tslearn.metrics import SoftDTWLossPyTorch

    return SoftDTWLossPyTorch(gamma=gamma)(x, y)


FUNCTIONS = {
    "ours": lambda x, y: soft_dtw(x, y, gamma=GAMMA),
    "pysdtw": pysdtw_loss,
    "tslearn": tslearn_loss,
    "ours, divergence": lambda x, y: soft_dtw_divergence(x, y, gamma=GAMMA),
    "autograd, wavefront": autograd_wavefront,
    "autograd, cell loop": autograd_cells,
    "naive reference": naive_batch,
}


def available(system: str) -> bool:
    import importlib.util

    return system not in PEERS or importlib.util.find_spec(PEERS[system]) is not None


def exactness(systems) -> list[dict]:
    """Largest |difference| of value and gradients from the naive float64 reference, small case."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 60, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 50, 16, generator=g, dtype=torch.float64, requires_grad=True)

    def run(fn):
        x.grad = y.grad = None
        value = fn(x, y)
        value.sum().backward()
        return value.detach().clone(), x.grad.clone(), y.grad.clone()

    ref = run(naive_batch)
    rows = []
    for system in systems:
        if system in ("naive reference", "ours, divergence"):
            continue
        got = run(FUNCTIONS[system])
        errors = [float((a - b).abs().max()) for a, b in zip(got, ref)]
        rows.append({"system": system, **{k: f"{e:.1e}" for k, e in zip(("value", "grad x", "grad y"), errors)}})
    return rows


def _status_kb(key: str) -> int:
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def run_case(system: str, batch: int, frames: int, dim: int, repeats: int, budget: float, device: str) -> dict:
    """One case in this process: times of forward+backward runs and the peak memory of the first."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, frames, dim, generator=g).to(device).requires_grad_(True)
    y = torch.randn(batch, frames, dim, generator=g).to(device).requires_grad_(True)
    fn = FUNCTIONS[system]
    cuda = device.startswith("cuda")
    times, peak = [], None
    while len(times) < repeats and (not times or sum(times) < budget):
        x.grad = y.grad = None
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        elif peak is None:
            Path("/proc/self/clear_refs").write_text("5")
            base = _status_kb("VmRSS") * 1024
        t0 = time.perf_counter()
        fn(x, y).sum().backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if peak is None:
            peak = (torch.cuda.max_memory_allocated() if cuda else _status_kb("VmHWM") * 1024) - base
    return {"times": times, "peak_bytes": peak}


def ours_state_bytes(batch: int, frames: int, itemsize: int = 4) -> int:
    """Analytic bytes of our saved weights (3 K B W) plus E (K B W) for N = M = frames."""
    diags, width = 2 * frames + 1, frames + 2
    return (3 * (diags + 2) + (diags + 2)) * batch * width * itemsize


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=30.0, help="stop repeating a case after this many seconds")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 768])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--slow-dims", type=int, nargs="+", default=[64],
                        help="feature sizes at which the cell loop and the naive reference run")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update RESULTS.md")
    parser.add_argument("--case", nargs=5, metavar=("SYSTEM", "B", "N", "D", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        system, b, n, d, r = args.case
        print(json.dumps(run_case(system, int(b), int(n), int(d), int(r), args.budget, args.device)))
        return

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    missing = [s for s in SYSTEMS if not available(s)]
    for system in missing:
        print(f"{system}: not installed (pip install {PEERS[system]}); left out")
    systems = [s for s in SYSTEMS if s not in missing]
    exact = exactness(systems)
    print(format_table(exact, ["system", "value", "grad x", "grad y"]))
    load_before = os.getloadavg()[0]
    loads, rows, by = [load_before], [], {}
    for dim in args.dims:
        for frames in args.sizes:
            for system in systems:
                slow = system in ("autograd, cell loop", "naive reference")
                if slow and dim not in args.slow_dims:
                    continue
                batch = 1 if system == "naive reference" else args.batch
                repeats = 1 if system == "naive reference" else args.repeats
                cmd = [sys.executable, __file__, "--budget", str(args.budget), "--device", args.device,
                       "--case", system, str(batch), str(frames), str(dim), str(repeats)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:  # e.g. killed for memory: recorded, the other cases go on
                    why = (f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0
                           else f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:120]}")
                    rows.append({"system": system, "N=M": frames, "D": dim, "runs": 0, "runs s": why})
                    print(rows[-1], flush=True)
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                loads.append(os.getloadavg()[0])
                scale = args.batch / batch
                med = statistics.median(res["times"]) * scale
                by[(system, frames, dim)] = (med, res["peak_bytes"] * scale)
                rows.append({"system": system + (f" (B=1 x {args.batch})" if scale != 1 else ""), "N=M": frames,
                             "D": dim, "runs": len(res["times"]), "median s": med,
                             "peak MB": res["peak_bytes"] * scale / 2**20,
                             "runs s": " ".join(f"{t * scale:.3g}" for t in res["times"])})
                print(rows[-1], flush=True)
    ratios = []
    for dim in args.dims:
        for frames in args.sizes:
            ours = by.get(("ours", frames, dim))
            for other in systems[2:]:
                ref = by.get((other, frames, dim))
                if ours and ref:
                    ratios.append({"N=M": frames, "D": dim, "ours vs": other, "speed-up (time ratio)": ref[0] / ours[0],
                                   "memory ratio (theirs / ours)": ref[1] / max(ours[1], 1)})
    table = format_table(rows, ["system", "N=M", "D", "runs", "median s", "peak MB", "runs s"])
    ratio_table = format_table(ratios, ["N=M", "D", "ours vs", "speed-up (time ratio)", "memory ratio (theirs / ours)"])
    goal = by.get(("naive reference", 250, 64)), by.get(("ours", 250, 64))
    goal_line = (f"- goal: >= 20x faster than the naive reference at N=250 (D=64): measured "
                 f"{goal[0][0] / goal[1][0]:.0f}x\n" if all(goal) else "")
    analytic = ", ".join(f"N={n}: {ours_state_bytes(args.batch, n) / 2**20:.0f} MB" for n in args.sizes)
    memory = ("CUDA `max_memory_allocated` growth" if args.device.startswith("cuda")
              else "growth of peak RSS (VmHWM) during the first run")
    body = (
        header("Soft-DTW forward + backward (bench_soft_dtw.py)")
        + f"- input: x, y ~ N(0, 1) of [B={args.batch}, N, D], float32, squared Euclidean cost, gamma {GAMMA}, "
        + f"full lengths; device {args.device}; torch threads 1 (each case in its own process)\n"
        + f"- time: forward + backward wrt x and y (cost matrix included); median of up to {args.repeats} runs "
        + f"(fewer when a case passed {args.budget:.0f} s); `runs s` lists them\n"
        + f"- peak MB: {memory}; ours keeps 3 soft-min weights per cell on the anti-diagonal layout "
        + f"(analytic saved weights + E for B={args.batch}, float32: {analytic})\n"
        + "- naive reference: B=1 measured, time and memory multiplied by B (independent items: linear in B); "
        + "it computes in float64\n"
        + f"- 1-min load average (2 cores, a training job shares them): {load_before:.2f} before, "
        + f"{min(loads):.2f}-{max(loads):.2f} during\n"
        + (f"- left out (not installed): {', '.join(missing)}\n" if missing else "")
        + goal_line + "\n" + table + "\n\n" + ratio_table + "\n\n"
        + "Exactness: largest |difference| from the naive float64 reference (B=2, N=60, M=50, D=16, float64 "
        + "inputs); the peers compute in float32 inside, whatever the input precision:\n\n"
        + format_table(exact, ["system", "value", "grad x", "grad y"]) + "\n"
    )
    print(body)
    if not args.no_write:
        update_section("bench_soft_dtw", body)


if __name__ == "__main__":
    main()
