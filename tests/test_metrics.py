"""Metric suite and worker pool: correctness anchors, failures -> NaN + warning, timeouts, persistence."""

import logging
import math
import os
import time

import numpy as np
import pytest

from sb_mal.metrics import METRICS, MetricPool, evaluate, get_pool, resolve_metrics, score_utterance
from sb_mal.metrics.intrusive import si_sdr


class _Hang:
    """Unpickling this in a worker sleeps: simulates a hung metric computation."""

    def __reduce__(self):
        return (time.sleep, (60,))


class _Crash:
    """Unpickling this in a worker kills the worker process."""

    def __reduce__(self):
        return (os._exit, (3,))


@pytest.fixture(scope="module")
def pairs(devset_test_arrays):
    """Four real test pairs as arrays: (ids, noisy, clean)."""
    return devset_test_arrays


def test_identical_signals_hit_the_ceilings(pairs):
    _, _, clean = pairs
    scores, problems = score_utterance(clean[0], clean[0], 16000, resolve_metrics("intrusive"))
    assert problems == []
    assert scores["pesq"] == pytest.approx(4.64, abs=0.01)
    assert scores["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert scores["estoi"] == pytest.approx(1.0, abs=1e-6)
    assert scores["si_sdr"] > 60
    # 35 dB per frame (the clip) except digitally silent frames, which composite.m scores -10 dB
    assert scores["ssnr"] > 25
    assert 4.9 <= scores["csig"] <= 5.0 and scores["covl"] <= 5.0


def test_noisy_scores_are_plausible_and_ordered(pairs):
    _, noisy, clean = pairs
    res = evaluate(noisy, clean, 16000, metrics="intrusive", n_jobs=0)
    assert res.counts["pesq"] == 4
    assert 1.0 <= res.means["pesq"] < 3.5
    assert 0.5 < res.means["stoi"] < 1.0
    for m in ("csig", "cbak", "covl"):
        assert 1.0 <= res.means[m] <= 5.0
    # PESQ and SI-SDR both prefer a mildly noisy version over a very noisy one
    rng = np.random.default_rng(0)
    mild = clean[0] + 0.01 * rng.standard_normal(len(clean[0]))
    bad = clean[0] + 0.1 * rng.standard_normal(len(clean[0]))
    r = evaluate([mild, bad], [clean[0], clean[0]], metrics=["pesq", "si_sdr"], n_jobs=0)
    assert r.rows[0]["pesq"] > r.rows[1]["pesq"] and r.rows[0]["si_sdr"] > r.rows[1]["si_sdr"]


def test_failures_give_nan_warning_and_are_left_out(pairs, caplog):
    ids, noisy, clean = pairs
    silence = np.zeros(len(clean[0]), np.float32)  # a silent output, as long as its reference
    short = clean[1][:800]  # 50 ms: too short for PESQ/STOI
    with caplog.at_level(logging.WARNING, logger="sb_mal.metrics.pool"):
        res = evaluate([noisy[0], silence, short], [clean[0], clean[0], clean[1][:800]],
                       metrics=["pesq", "stoi", "si_sdr"], n_jobs=0, ids=["ok", "silent", "short"])
    assert math.isnan(res.rows[1]["pesq"])  # PESQ: no utterances detected in a silent signal
    assert math.isnan(res.rows[2]["pesq"])
    assert math.isnan(res.rows[2]["stoi"])  # pystoi's 1e-5 placeholder is reported as a failure
    assert res.counts["pesq"] == 1 and res.means["pesq"] == pytest.approx(res.rows[0]["pesq"])
    assert not math.isnan(res.rows[1]["si_sdr"])  # the other metrics still computed
    assert "silent" in caplog.text and "pesq" in caplog.text
    assert {f[0] for f in res.failures} >= {"silent", "short"}


def test_parallel_matches_serial_and_pool_persists(pairs):
    ids, noisy, clean = pairs
    serial = evaluate(noisy, clean, metrics=["pesq", "stoi", "ssnr"], n_jobs=0, ids=ids)
    pool = get_pool(2)
    par = evaluate(noisy, clean, metrics=["pesq", "stoi", "ssnr"], n_jobs=2, ids=ids)
    assert get_pool(2) is pool
    pids = sorted(w.process.pid for w in pool._workers)
    assert len(pids) == 2
    again = evaluate(noisy, clean, metrics=["pesq", "stoi", "ssnr"], n_jobs=2, ids=ids)
    assert sorted(w.process.pid for w in pool._workers) == pids  # same workers reused
    for a, b, c in zip(serial.rows, par.rows, again.rows):
        for m in ("pesq", "stoi", "ssnr"):
            assert a[m] == pytest.approx(b[m], abs=1e-9) and b[m] == pytest.approx(c[m], abs=1e-9)


def test_hung_and_crashed_workers_are_bounded(pairs, caplog):
    ids, noisy, clean = pairs
    with MetricPool(n_jobs=2, timeout=3.0) as pool, caplog.at_level(logging.WARNING):
        t0 = time.monotonic()
        res = pool.evaluate([noisy[0], _Hang(), _Crash(), noisy[1]], [clean[0], clean[0], clean[0], clean[1]],
                            metrics=["stoi", "si_sdr"], ids=["a", "hang", "crash", "b"])
        elapsed = time.monotonic() - t0
        assert elapsed < 30  # bounded by the timeout, not the 60 s sleep
        assert math.isnan(res.rows[1]["stoi"]) and math.isnan(res.rows[2]["stoi"])
        assert not math.isnan(res.rows[0]["stoi"]) and not math.isnan(res.rows[3]["stoi"])
        assert "timed out" in caplog.text and "crashed" in caplog.text
        # the pool still works afterwards with fresh workers
        res2 = pool.evaluate([noisy[2]], [clean[2]], metrics=["si_sdr"])
        assert not math.isnan(res2.rows[0]["si_sdr"])
        assert len(pool._workers) == 2


def test_paths_resampling_and_tensors(pairs, devset_test_pairs, tmp_path):
    import torch

    from sb_mal.audio import resample, write_audio

    uid, n_path, c_path = devset_test_pairs[0]
    by_path = evaluate([n_path], [c_path], metrics=["pesq", "stoi"], n_jobs=0)
    _, noisy, clean = pairs
    by_tensor = evaluate([torch.from_numpy(noisy[0])], [torch.from_numpy(clean[0])], metrics=["pesq", "stoi"], n_jobs=0)
    assert by_path.rows[0]["pesq"] == pytest.approx(by_tensor.rows[0]["pesq"], abs=1e-6)
    # 8 kHz input is resampled to 16 kHz before scoring: close to the 16 kHz score for STOI
    n8, c8 = resample(noisy[0], 16000, 8000), resample(clean[0], 16000, 8000)
    r8 = evaluate([n8], [c8], sample_rate=8000, metrics=["stoi"], n_jobs=0)
    assert r8.rows[0]["stoi"] == pytest.approx(by_path.rows[0]["stoi"], abs=0.05)
    write_audio(tmp_path / "x.wav", noisy[0], 16000)


def test_results_outputs(pairs, tmp_path):
    ids, noisy, clean = pairs
    res = evaluate(noisy[:2] + [np.zeros(16000)], clean[:2] + [clean[0][:16000]], metrics=["pesq", "si_sdr"],
                   n_jobs=0, ids=ids[:2] + ["silent"])
    res.to_csv(tmp_path / "s.csv")
    res.to_json(tmp_path / "s.json")
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "id,pesq,si_sdr" and len(lines) == 4 and lines[3].startswith("silent,nan")
    import json

    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["counts"]["pesq"] == 2 and summary["failures"][0]["id"] == "silent"


def test_metric_names():
    assert resolve_metrics("all") == METRICS
    assert resolve_metrics(["dnsmos", "pesq"])[-1] == "pesq"
    with pytest.raises(ValueError, match="unknown metric 'pesk'"):
        resolve_metrics(["pesk"])
    with pytest.raises(ValueError, match="got 2 enhanced but 1 clean"):
        evaluate([np.ones(10), np.ones(10)], [np.ones(10)], n_jobs=0)
    with pytest.raises(ValueError, match="silent reference"):
        si_sdr(np.zeros(100), np.ones(100))


def test_a_script_without_the_main_guard_fails_fast_with_the_fix(tmp_path):
    """spawn re-imports the script in each worker, which then dies at start: an error in seconds, not a loop."""
    import subprocess
    import sys

    script = tmp_path / "score.py"
    script.write_text("import numpy as np\nfrom sb_mal.metrics import evaluate\n"
                      "x = np.random.default_rng(0).standard_normal(16000) * 0.1\n"
                      "print(evaluate([x, x], [x, x], metrics=['si_sdr'], n_jobs=2).means)\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert "MetricWorkerError" in proc.stderr and 'if __name__ == "__main__":' in proc.stderr, proc.stderr[-2000:]
    assert elapsed < 60, elapsed
    guarded = tmp_path / "guarded.py"
    body = script.read_text().splitlines()
    guarded.write_text("\n".join(body[:2]) + "\nif __name__ == '__main__':\n" + "\n".join("    " + b for b in body[2:]) + "\n")
    ok = subprocess.run([sys.executable, str(guarded)], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0 and "si_sdr" in ok.stdout, ok.stderr[-2000:]


def test_a_worker_that_dies_while_starting_is_an_error_not_a_respawn_loop(monkeypatch):
    """Replacing a crashed worker checks the new one starts; a dead start is MetricWorkerError at once."""
    from sb_mal.metrics import MetricWorkerError
    from sb_mal.metrics import pool as pool_module

    pool = MetricPool(n_jobs=1, timeout=30)
    try:
        x = np.zeros(1600)
        started = []
        real_worker = pool_module._Worker

        class DiesAtStart(real_worker):
            def __init__(self, ctx):
                super().__init__(ctx)
                started.append(self)
                if len(started) > 1:  # every replacement dies before saying ready
                    self.process.kill()

        monkeypatch.setattr(pool_module, "_Worker", DiesAtStart)
        with pytest.raises(MetricWorkerError, match="exited while starting"):
            pool.evaluate([_Crash(), x, x], [x, x, x], 16000, metrics=["si_sdr"])
        assert len(started) == 2  # the first worker and one replacement: no loop
    finally:
        pool.close()


def test_undefined_pairs_are_nan_never_averaged(pairs):
    """A silent or near-silent reference and a length mismatch beyond the tolerance give NaN for every
    intrusive metric (STOI/ESTOI included), a reason each, and true counts; small length differences are trimmed."""
    ids, noisy, clean = pairs
    names = ["pesq", "stoi", "estoi", "si_sdr", "ssnr", "csig"]
    near_silent = np.random.default_rng(0).standard_normal(len(clean[0])) * 1e-6  # -120 dBFS
    half = noisy[1][: len(noisy[1]) // 2]
    a_hop_short = noisy[2][:-256]  # 16 ms: within the tolerance
    res = evaluate([noisy[0], noisy[0], half, a_hop_short], [np.zeros_like(clean[0]), near_silent, clean[1], clean[2]],
                   metrics=names, n_jobs=0, ids=["silent", "near_silent", "half", "hop"])
    for row in res.rows[:3]:
        assert all(math.isnan(row[m]) for m in names), row
    assert all(np.isfinite(res.rows[3][m]) for m in names), res.rows[3]
    assert res.counts == {m: 1 for m in names}
    assert res.means["stoi"] == res.rows[3]["stoi"]
    reasons = dict(res.failures)
    assert "silent" in reasons["silent"] and "silent" in reasons["near_silent"]
    assert "length mismatch" in reasons["half"] and "hop" not in reasons
