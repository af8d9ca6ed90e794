"""Throughput of the metric suite on the 120 devset test pairs, side by side with SpeechBrain.

Systems (all on the same in-memory arrays, medians of ``--repeats`` runs):

* sb_mal, full intrusive suite (PESQ wb+nb, STOI, ESTOI, SI-SDR, SSNR, CSIG/CBAK/COVL), 1 and 2 workers;
* sb_mal, PESQ + STOI only, 1 and 2 workers;
* SpeechBrain's own recipe evaluation: ``MetricStats`` with PESQ per utterance (``batch_eval=False``,
  ``n_jobs`` 1 and 2, joblib) plus ``MetricStats(metric=stoi_loss)`` on padded batches of 8, as in
  ``recipes/Voicebank/enhance/spectral_mask``.

Worker start-up is excluded (the pools are warmed first; it is reported separately), because the
pool is persistent and paid once per training run.

Usage: python benchmarks/bench_metrics.py [--repeats 3] [--limit 120] [--no-write] [--write-results]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _results import DEVSET, add_results_option, header, timed, update_section
from sb_mal.audio import read_audio
from sb_mal.metrics import MetricPool, format_table


def load_pairs(limit: int):
    noisy_dir = DEVSET / "pairs" / "test" / "noisy"
    files = sorted(noisy_dir.glob("*.flac"))[:limit]
    noisy = [read_audio(f, as_numpy=True)[0] for f in files]
    clean = [read_audio(DEVSET / "pairs" / "test" / "clean" / f.name, as_numpy=True)[0] for f in files]
    return [f.stem for f in files], noisy, clean


def speechbrain_eval(noisy, clean, n_jobs: int, batch: int = 8):
    from pesq import pesq
    from speechbrain.nnet.loss.stoi_loss import stoi_loss
    from speechbrain.utils.metric_stats import MetricStats

    def pesq_eval(pred_wav, target_wav):
        return pesq(fs=16000, ref=target_wav.numpy(), deg=pred_wav.numpy(), mode="wb")

    pesq_stats = MetricStats(metric=pesq_eval, n_jobs=n_jobs, batch_eval=False)
    stoi_stats = MetricStats(metric=stoi_loss)
    for start in range(0, len(noisy), batch):
        n = noisy[start : start + batch]
        c = clean[start : start + batch]
        T = max(len(x) for x in n)
        pad = lambda xs: torch.stack([torch.from_numpy(np.pad(x, (0, T - len(x)))) for x in xs])  # noqa: E731
        lens = torch.tensor([len(x) / T for x in n])
        ids = [str(i) for i in range(start, start + len(n))]
        pesq_stats.append(ids, predict=pad(n), target=pad(c), lengths=lens)
        stoi_stats.append(ids, pad(n), pad(c), lens, reduction="batch")
    return pesq_stats.summarize("average"), -stoi_stats.summarize("average")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of each system over all pairs; the median is reported (default 3)")
    parser.add_argument("--limit", type=int, default=120,
                        help="number of devset test pairs scored (default: all 120)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no results file")
    add_results_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ids, noisy, clean = load_pairs(args.limit)
    n = len(ids)
    seconds = sum(len(x) for x in noisy) / 16000
    rows = []

    pools = {}
    for jobs in (1, 2):
        t0 = time.perf_counter()
        pools[jobs] = MetricPool(n_jobs=jobs)
        pools[jobs].evaluate(noisy[:jobs], clean[:jobs], metrics="intrusive")  # start workers
        pools[jobs].startup = time.perf_counter() - t0

    for label, metrics in (("sb_mal intrusive suite (9 metrics)", "intrusive"), ("sb_mal PESQ+STOI", ["pesq", "stoi"])):
        for jobs in (1, 2):
            out = {}
            med, times = timed(lambda: out.setdefault("r", pools[jobs].evaluate(noisy, clean, metrics=metrics, ids=ids)), args.repeats)
            res = out["r"]
            rows.append({"system": label, "workers": jobs, "median s": med, "utt/s": n / med, "pesq": res.means["pesq"], "stoi": res.means["stoi"]})
    for jobs in (1, 2):
        out = {}
        med, times = timed(lambda: out.setdefault("r", speechbrain_eval(noisy, clean, jobs)), args.repeats)
        p, s = out["r"]
        rows.append({"system": "SpeechBrain MetricStats PESQ+STOI", "workers": jobs, "median s": med, "utt/s": n / med, "pesq": p, "stoi": s})
    for p in pools.values():
        p.close()

    by = {(r["system"], r["workers"]): r["utt/s"] for r in rows}
    suite, pq = "sb_mal intrusive suite (9 metrics)", "sb_mal PESQ+STOI"
    sb = "SpeechBrain MetricStats PESQ+STOI"
    ratios = [
        ("intrusive suite, 2 workers vs 1 (goal >= 1.7)", by[(suite, 2)] / by[(suite, 1)]),
        ("PESQ+STOI, 2 workers vs 1", by[(pq, 2)] / by[(pq, 1)]),
        ("sb_mal PESQ+STOI vs SpeechBrain PESQ+STOI, 1 worker each", by[(pq, 1)] / by[(sb, 1)]),
        ("sb_mal PESQ+STOI vs SpeechBrain PESQ+STOI, 2 workers each", by[(pq, 2)] / by[(sb, 2)]),
        ("sb_mal full suite (9 metrics) vs SpeechBrain PESQ+STOI, 2 workers each", by[(suite, 2)] / by[(sb, 2)]),
    ]
    table = format_table(rows, ["system", "workers", "median s", "utt/s", "pesq", "stoi"])
    ratio_table = format_table([{"ratio (throughput)": k, "value": v} for k, v in ratios], ["ratio (throughput)", "value"])
    body = (
        header("Metric suite throughput (bench_metrics.py)")
        + f"- input: {n} devset test pairs ({seconds / 60:.1f} min of noisy audio, 16 kHz), in memory; "
        + f"medians of {args.repeats} runs; torch threads 1; worker start-up excluded "
        + f"(1 worker: {pools[1].startup:.1f} s, 2 workers: {pools[2].startup:.1f} s, paid once per process)\n\n"
        + table + "\n\n" + ratio_table + "\n\n"
        + "SpeechBrain's STOI here is its differentiable `stoi_loss` (torch), as its recipes use it for\n"
        + "validation; its value differs slightly from pystoi's reference STOI.\n"
    )
    print(body)
    if not args.no_write:
        update_section("bench_metrics", body)


if __name__ == "__main__":
    main()
