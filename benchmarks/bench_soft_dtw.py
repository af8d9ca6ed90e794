"""Speed and peak memory of our batched soft-DTW (forward + backward), side by side with references.

Systems, all computing ``soft_dtw(x, y).sum()`` and its gradient wrt ``x`` and ``y``
(``x``, ``y``: ``[B, N, D]``, float32, squared Euclidean cost, gamma 0.1, full lengths):

* ours: :func:`sb_mal.losses.soft_dtw.soft_dtw` with its default backend (``"auto"``: the numba
  kernel on the CPU, the Triton kernel on CUDA; the header says which ran);
* ours, divergence: :func:`~sb_mal.losses.soft_dtw.soft_dtw_divergence` (3 soft-DTWs in one batch of 3B),
  what ``ssl_softdtw`` runs per layer;
* ours, torch path: ``soft_dtw(..., backend="torch")``, the anti-diagonal wavefront of tensor ops (the
  fallback without numba / Triton);
* autograd, wavefront (CPU only): the same anti-diagonal recursion written without in-place ops, backward
  by autograd;
* autograd, cell loop (CPU only): the straightforward recursion, one cell at a time (row by row), vectorised
  over the batch only, backward by autograd;
* pysdtw: ``pysdtw.SoftDTW`` (numba on the CPU, a numba-CUDA kernel on CUDA); "pysdtw, all cores" (CPU)
  is the same with numba's default thread count (one per core) instead of ``--threads``;
  tslearn (CPU only): ``tslearn.metrics.SoftDTWLossPyTorch``; sdtw-cuda-torch (CUDA only, API assumed:
  ``sdtw_cuda_torch.SoftDTW(gamma=...)(x, y) -> [B]``). These are the soft-DTW losses published as Python
  packages (``pip install pysdtw tslearn sdtw-cuda-torch``); a peer that is not installed is left out with
  a message, one that fails gets a row saying why;
* naive reference (CPU only): ``soft_dtw_naive`` from tests/test_soft_dtw.py (one pair at a time, a python
  double loop over torch scalars, float64, with its own per-cell cost), backward by autograd. It is run on
  B=1 only and its time and memory are multiplied by B (items are independent: linear in B), as stated
  in the table.

Each case runs in its own subprocess (``--threads`` torch threads; numba's thread count set to the same).
Time: one untimed warm-up run (compilation: numba's cache load, Triton, pysdtw's numba JIT) except for
the two slow references, then runs until ``--repeats`` runs or ``--budget`` seconds; median reported (a
CUDA device is synchronised around each run). Peak memory: growth of the process's peak RSS (``VmHWM``,
reset through ``/proc/self/clear_refs`` after the inputs exist) during the first timed run; torch's CPU
tensors are plain malloc/mmap memory, so this counts them (plus allocator slack). On CUDA,
``torch.cuda.max_memory_allocated`` growth is used instead.

Exactness: before timing, every system's value and gradients on a small case (B=2, N=60, M=50, D=16)
on the device are compared with the naive float64 reference, once with float64 inputs and once with
float32 inputs (the reference then runs on the float32 inputs, converted exactly to float64): the
largest absolute differences are reported with the table.

The results go to the section ``bench_soft_dtw`` (CPU) or ``bench_soft_dtw_cuda`` (CUDA) of the results
file: ``results/benchmarks/RESULTS.md``, or the committed ``benchmarks/RESULTS.md`` with ``--write-results``.

Usage: python benchmarks/bench_soft_dtw.py [--device cuda:0] [--repeats 5] [--sizes 100 250 500] [--dims 64 768]
       python benchmarks/bench_soft_dtw.py --smoke   # a few seconds: tiny sizes, nothing written
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

from _results import add_results_option, header, update_section
from sb_mal.losses.soft_dtw import _skew_index, pairwise_cost, resolve_backend, soft_dtw, soft_dtw_divergence
from sb_mal.metrics import format_table

GAMMA = 0.1
CPU_SYSTEMS = ("ours", "ours, divergence", "ours, torch path", "autograd, wavefront", "pysdtw", "pysdtw, all cores",
               "tslearn", "autograd, cell loop", "naive reference")
CUDA_SYSTEMS = ("ours", "ours, divergence", "ours, torch path", "pysdtw", "sdtw-cuda-torch")
SLOW = ("autograd, cell loop", "naive reference")  # run at --slow-dims only, without a warm-up run
#: system -> (module it imports, package to pip install)
PEERS = {"pysdtw": ("pysdtw", "pysdtw"), "pysdtw, all cores": ("pysdtw", "pysdtw"), "tslearn": ("tslearn", "tslearn"),
         "sdtw-cuda-torch": ("sdtw_cuda_torch", "sdtw-cuda-torch")}
KERNEL_FUNCTION = {"numba": "NumbaSoftDTW", "triton": "TritonSoftDTW", "torch": "SoftDTWFunction"}
NOT_OURS = ("autograd, wavefront", "pysdtw", "pysdtw, all cores", "tslearn", "sdtw-cuda-torch") + SLOW
#: (system, N, D) left out on the CPU: tslearn's loss holds [B, N, N, D] tensors, over 20 GB here (it was killed for
#: memory in earlier runs on this 24 GB machine, which other jobs share)
TOO_BIG = {("tslearn", 500, 768)}


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


def sdtw_cuda_torch_loss(x, y, gamma=GAMMA):
    import sdtw_cuda_torch

    return sdtw_cuda_torch.SoftDTW(gamma=gamma)(x, y)


FUNCTIONS = {
    "ours": lambda x, y: soft_dtw(x, y, gamma=GAMMA),
    "ours, torch path": lambda x, y: soft_dtw(x, y, gamma=GAMMA, backend="torch"),
    "pysdtw": pysdtw_loss,
    "pysdtw, all cores": pysdtw_loss,
    "tslearn": tslearn_loss,
    "sdtw-cuda-torch": sdtw_cuda_torch_loss,
    "ours, divergence": lambda x, y: soft_dtw_divergence(x, y, gamma=GAMMA),
    "autograd, wavefront": autograd_wavefront,
    "autograd, cell loop": autograd_cells,
    "naive reference": naive_batch,
}


def available(system: str) -> bool:
    import importlib.util

    return system not in PEERS or importlib.util.find_spec(PEERS[system][0]) is not None


def exactness(systems, device: str) -> list[dict]:
    """Largest |difference| of value and gradients from the naive float64 reference, small case on ``device``,
    with float64 and with float32 inputs."""
    g = torch.Generator().manual_seed(1)
    x64 = torch.randn(2, 60, 16, generator=g, dtype=torch.float64)
    y64 = torch.randn(2, 50, 16, generator=g, dtype=torch.float64)

    def run(fn, x, y, where):
        x, y = (t.detach().clone().to(where).requires_grad_(True) for t in (x, y))
        value = fn(x, y)
        value.sum().backward()
        return [t.detach().cpu().double() for t in (value, x.grad, y.grad)]

    refs = {dtype: run(naive_batch, x64.to(dtype).double(), y64.to(dtype).double(), "cpu")
            for dtype in (torch.float64, torch.float32)}
    rows = []
    for system in systems:
        if system in ("naive reference", "ours, divergence", "pysdtw, all cores"):
            continue
        row = {"system": system}
        for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
            try:
                got = run(FUNCTIONS[system], x64.to(dtype), y64.to(dtype), device)
                errors = [float((a - b).abs().max()) for a, b in zip(got, refs[dtype])]
                row.update({f"{k} ({tag} in)": f"{e:.1e}" for k, e in zip(("value", "grad x", "grad y"), errors)})
            except Exception as exc:  # a peer without float64 (or failing here) says so in its row
                row[f"value ({tag} in)"] = f"failed: {type(exc).__name__}: {str(exc)[:60]}"
        rows.append(row)
    return rows


EXACT_COLUMNS = ["system"] + [f"{k} ({t} in)" for t in ("f64", "f32") for k in ("value", "grad x", "grad y")]


def _status_kb(key: str) -> int:
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def run_case(system: str, batch: int, frames: int, dim: int, repeats: int, budget: float, device: str,
             threads: int) -> dict:
    """One case in this process: times of forward+backward runs and the peak memory of the first timed one."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, frames, dim, generator=g).to(device).requires_grad_(True)
    y = torch.randn(batch, frames, dim, generator=g).to(device).requires_grad_(True)
    fn = FUNCTIONS[system]
    cuda = device.startswith("cuda")
    if system not in SLOW:  # warm-up: JIT compilation and caches stay out of the timings
        value = fn(x, y)
        expected = KERNEL_FUNCTION[resolve_backend("auto", device)]
        if system == "ours" and not type(value.grad_fn).__name__.startswith(expected):
            raise RuntimeError(f"ours ran {type(value.grad_fn).__name__}, not {expected} (a kernel failed: see the log)")
        value.sum().backward()
        if cuda:
            torch.cuda.synchronize()
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
    try:
        import numba

        numba_threads = numba.get_num_threads()
    except ImportError:
        numba_threads = None
    return {"times": times, "peak_bytes": peak, "numba_threads": numba_threads}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu",
                        help="torch device of the inputs: cpu (default) or cuda[:index] (then the CUDA systems run "
                             "and the results go to the section bench_soft_dtw_cuda)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per case (default: 5 on the CPU, 20 on CUDA); the median is reported")
    parser.add_argument("--budget", type=float, default=30.0, help="stop repeating a case after this many seconds")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="sequence lengths N = M (default: 100 250 500 on the CPU, 150 250 500 on CUDA)")
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 768], help="feature sizes D")
    parser.add_argument("--batch", type=int, default=8, help="batch size B")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads and numba threads in each case's process (default 1)")
    parser.add_argument("--systems", nargs="+", default=None,
                        help="run only these systems (names as in the table, e.g. ours pysdtw)")
    parser.add_argument("--slow-dims", type=int, nargs="+", default=[64],
                        help="feature sizes at which the cell loop and the naive reference run (CPU)")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick check that every system runs: B=2, N=M=40, D=16, 2 repeats, nothing written")
    parser.add_argument("--no-write", action="store_true", help="print only; write no results file")
    add_results_option(parser)
    parser.add_argument("--case", nargs=6, metavar=("SYSTEM", "B", "N", "D", "REPEATS", "THREADS"),
                        help="internal (the script runs each case so, in a subprocess of its own): time one system "
                             "at batch B, lengths N = M, feature size D, at most REPEATS runs within --budget, with "
                             "THREADS threads, and print the result as one JSON line")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if args.case:
        system, b, n, d, r, t = args.case
        print(json.dumps(run_case(system, int(b), int(n), int(d), int(r), args.budget, args.device, int(t))))
        return
    if cuda and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    if args.smoke:
        args.sizes, args.dims, args.slow_dims, args.batch = [40], [16], [16], 2
        args.repeats, args.budget, args.no_write = 2, 5.0, True
    repeats = args.repeats or (20 if cuda else 5)
    sizes = args.sizes or ([150, 250, 500] if cuda else [100, 250, 500])
    all_systems = CUDA_SYSTEMS if cuda else CPU_SYSTEMS
    if args.systems:
        unknown = sorted(set(args.systems) - set(all_systems))
        if unknown:
            parser.error(f"--systems: unknown {unknown}; on {args.device} the systems are {list(all_systems)}")
        all_systems = tuple(s for s in all_systems if s in args.systems)

    gpu = torch.cuda.get_device_name(torch.device(args.device)) if cuda else None
    if gpu:
        print(f"GPU: {gpu}")
    ours_backend = resolve_backend("auto", args.device)
    print(f"ours runs the {ours_backend!r} backend on {args.device}")
    missing = [s for s in all_systems if not available(s)]
    for system in missing:
        print(f"{system}: not installed (pip install {PEERS[system][1]}); left out")
    systems = [s for s in all_systems if s not in missing]
    exact = exactness(systems, args.device)
    print(format_table(exact, EXACT_COLUMNS))
    load_before = os.getloadavg()[0]
    loads, rows, by, numba_threads = [load_before], [], {}, {}
    for dim in args.dims:
        for frames in sizes:
            for system in systems:
                if system in SLOW and dim not in args.slow_dims:
                    continue
                if not cuda and (system, frames, dim) in TOO_BIG:
                    rows.append({"system": system, "N=M": frames, "D": dim, "runs": 0,
                                 "runs ms": "left out: needs more memory than this machine has"})
                    continue
                batch = 1 if system == "naive reference" else args.batch
                runs = 1 if system == "naive reference" else repeats
                env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                           NUMBA_NUM_THREADS=str(args.threads))
                if system == "pysdtw, all cores":
                    env.pop("NUMBA_NUM_THREADS")
                cmd = [sys.executable, __file__, "--budget", str(args.budget), "--device", args.device,
                       "--case", system, str(batch), str(frames), str(dim), str(runs), str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:  # e.g. killed for memory: recorded, the other cases go on
                    why = (f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0
                           else f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:120]}")
                    rows.append({"system": system, "N=M": frames, "D": dim, "runs": 0, "runs s": why})
                    print(rows[-1], flush=True)
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                loads.append(os.getloadavg()[0])
                numba_threads[system] = res.get("numba_threads")
                scale = args.batch / batch
                med = statistics.median(res["times"]) * scale
                by[(system, frames, dim)] = (med, res["peak_bytes"] * scale)
                rows.append({"system": system + (f" (B=1 x {args.batch})" if scale != 1 else ""), "N=M": frames,
                             "D": dim, "runs": len(res["times"]), "median ms": med * 1e3,
                             "peak MB": res["peak_bytes"] * scale / 2**20,
                             "runs ms": " ".join(f"{t * scale * 1e3:.3g}" for t in res["times"])})
                print(rows[-1], flush=True)
    ratios = []
    for dim in args.dims:
        for frames in sizes:
            ours = by.get(("ours", frames, dim))
            for other in systems:
                ref = by.get((other, frames, dim))
                if other in NOT_OURS + ("ours, torch path",) and ours and ref:
                    ratios.append({"N=M": frames, "D": dim, "ours vs": other, "speed-up (time ratio)": ref[0] / ours[0],
                                   "memory ratio (theirs / ours)": ref[1] / max(ours[1], 1)})
    table = format_table(rows, ["system", "N=M", "D", "runs", "median ms", "peak MB", "runs ms"])
    ratio_table = format_table(ratios, ["N=M", "D", "ours vs", "speed-up (time ratio)", "memory ratio (theirs / ours)"])
    body = (header("Soft-DTW forward + backward on CUDA (bench_soft_dtw.py)" if cuda
                   else "Soft-DTW forward + backward (bench_soft_dtw.py)")
            + (f"- GPU: {gpu}\n" if gpu else "")
            + f"- input: x, y ~ N(0, 1) of [B={args.batch}, N, D], float32, squared Euclidean cost, gamma {GAMMA}, "
            + f"full lengths; device {args.device}; torch threads {args.threads}, numba threads {args.threads} "
            + "(each case in its own process"
            + (f"; pysdtw, all cores: numba's default, {numba_threads.get('pysdtw, all cores')} threads"
               if "pysdtw, all cores" in numba_threads else "") + ")\n"
            + f"- ours: the {ours_backend!r} backend (sb_mal.losses.soft_dtw, backend='auto'); ours, torch path: "
            + "backend='torch'\n"
            + ("- pysdtw, all cores: pysdtw as installed (numba's OpenMP threads, one per core); where other jobs "
               "keep the cores busy, its threads wait for them and it runs slower than on one thread\n"
               if "pysdtw, all cores" in numba_threads else "")
            + "- time: forward + backward wrt x and y (cost matrix included); one untimed warm-up run, then the median "
            + f"of up to {repeats} runs (fewer when a case passed {args.budget:.0f} s); `runs ms` lists them\n"
            + "- peak MB: " + ("CUDA `max_memory_allocated` growth" if cuda
                               else "growth of peak RSS (VmHWM) during the first timed run") + "\n"
            + ("" if cuda else "- naive reference: B=1 measured, time and memory multiplied by B (independent items: "
                               "linear in B); it computes in float64\n")
            + f"- 1-min load average ({os.cpu_count()} cores): {load_before:.2f} before, "
            + f"{min(loads):.2f}-{max(loads):.2f} during\n"
            + (f"- left out (not installed): {', '.join(missing)}\n" if missing else "")
            + "".join(_goal_lines(by, sizes, args.dims, systems, cuda))
            + "\n" + table + "\n\n" + ratio_table + "\n\n"
            + "Exactness: largest |difference| from the naive float64 reference (B=2, N=60, M=50, D=16), with float64 "
            + "inputs and with float32 inputs (reference on the same float32 values in float64):\n\n"
            + format_table(exact, EXACT_COLUMNS) + "\n")
    print(body)
    if not args.no_write:
        update_section("bench_soft_dtw_cuda" if cuda else "bench_soft_dtw", body)


def _goal_lines(by: dict, sizes, dims, systems, cuda: bool) -> list[str]:
    """The issue's goals, with the measured ratios."""
    lines = []
    if cuda:
        peers = [s for s in ("pysdtw", "sdtw-cuda-torch") if s in systems]
        worst = []
        for dim in dims:
            for frames in sizes:
                ours = by.get(("ours", frames, dim))
                times = [by[(p, frames, dim)][0] for p in peers if (p, frames, dim) in by]
                if ours and times:
                    worst.append((min(times) / ours[0], frames, dim))
        if worst:
            ratio, frames, dim = min(worst)
            lines.append(f"- goal: >= 2x the fastest peer ({', '.join(peers)}) at every size: lowest measured "
                         f"{ratio:.2f}x (N={frames}, D={dim})\n")
        return lines
    for peer in ("pysdtw", "pysdtw, all cores"):
        pair = by.get((peer, 500, 64)), by.get(("ours", 500, 64))
        if all(pair):
            lines.append(f"- goal: >= 2x {peer} at N=500 (D=64): measured {pair[0][0] / pair[1][0]:.2f}x\n")
    pair = by.get(("naive reference", 250, 64)), by.get(("ours", 250, 64))
    if all(pair):
        lines.append(f"- goal: >= 20x faster than the naive reference at N=250 (D=64): measured "
                     f"{pair[0][0] / pair[1][0]:.0f}x\n")
    return lines


if __name__ == "__main__":
    main()
