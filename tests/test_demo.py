"""sb-mal demo, shortened: baseline, then reconstruction-only and MAL continuations side by side."""

import json

import pytest

pytestmark = pytest.mark.recipe

TINY = ["--channels=[8,16]", "--bottleneck_dim=32", "--rnn_layers=1", "--train_limit=16", "--valid_limit=2",
        "--batch_size=8"]


def test_demo_prints_the_three_way_table_and_writes_the_figure(tmp_path, capsys):
    from sb_mal.cli import main
    from sb_mal.data.mini import build_mini_corpus

    corpus = tmp_path / "mini"
    build_mini_corpus(corpus, n_train=16, n_valid=4, n_test=4, progress=False)
    rc = main(["demo", "-o", str(tmp_path / "demo"), "--corpus", str(corpus), "--minutes", "0.01",
               "--continue-minutes", "0.001", "--test-limit", "4", "--jobs", "0", *[f"--extra={a}" for a in TINY]])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| metric" in printed and "reconstruction only" in printed and "Model as Loss" in printed
    assert "MAL - rec. only [95% CI]" in printed
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["baseline_epochs"] == 1 and summary["baseline_steps"] >= 1
    assert summary["continuation_steps_each"] >= 1
    assert summary["test_utterances"] == 4
    assert "baseline" in printed.splitlines()[[i for i, line in enumerate(printed.splitlines())
                                                 if line.startswith("| metric")][0]]
    for m in ("pesq", "stoi"):
        row = summary["metrics"][m]
        assert all(1e-3 < row[k] < 5 for k in ("noisy", "reconstruction only", "Model as Loss")), row
        comparison = summary["mal_minus_reconstruction"][m]
        assert comparison["lo"] <= comparison["diff"] <= comparison["hi"]
        assert comparison["verdict"] in ("better", "level", "worse")
    assert (tmp_path / "demo" / "spectrograms.png").stat().st_size > 10_000
    # the MAL continuation trained with the MAL term, the other without it
    mal_log = (tmp_path / "demo" / "continued_mal" / "train_log.txt").read_text()
    rec_log = (tmp_path / "demo" / "continued_reconstruction" / "train_log.txt").read_text()
    assert "train mal:" in mal_log and "train mal:" not in rec_log


def test_the_demo_keeps_its_promised_time_when_every_step_is_ten_times_slower(tmp_path, capsys, monkeypatch):
    """Budgets are checked after every step: a machine ten times slower trains fewer steps, not longer;
    both continuations still make the same number of steps."""
    import time

    from sb_mal.brains import EnhanceBrain
    from sb_mal.cli import main
    from sb_mal.data.mini import build_mini_corpus

    corpus = tmp_path / "mini"
    build_mini_corpus(corpus, n_train=64, n_valid=4, n_test=4, progress=False)  # 32 steps of 2 per epoch
    real = EnhanceBrain.fit_batch
    seen = []

    def slow(self, batch):
        started = time.monotonic()
        loss = real(self, batch)
        seen.append(time.monotonic() - started)
        time.sleep(9 * seen[-1] + 1.0)  # each step ten times as long, and never under 1 s: an epoch > 30 s
        return loss

    monkeypatch.setattr(EnhanceBrain, "fit_batch", slow)
    started = time.monotonic()
    rc = main(["demo", "-o", str(tmp_path / "demo"), "--corpus", str(corpus), "--minutes", "0.5",
               "--continue-minutes", "0.25", "--test-limit", "4", "--jobs", "0",
               *[f"--extra={a}" for a in TINY if not a.startswith(("--train_limit", "--batch_size"))],
               "--extra=--train_limit=64", "--extra=--batch_size=2"])
    minutes = (time.monotonic() - started) / 60
    assert rc == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert "about" in printed.splitlines()[0] and "| metric" in printed
    assert minutes <= 2 * summary["promised_minutes"], (minutes, summary["promised_minutes"])
    assert summary["baseline_epochs"] == 1  # stopped inside its first epoch (32 steps of >= 1 s do not fit 30 s)
    rec = (tmp_path / "demo" / "continued_reconstruction" / "train_log.txt").read_text()
    assert summary["continuation_steps_each"] >= 1 and "epoch: 1" in rec
