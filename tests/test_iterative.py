"""Iterative (self-consistency) enhancement study: API, outputs, CLI with exported models."""

import csv

import numpy as np
import pytest

from sb_mal.cli import main
from sb_mal.evaluation.iterative import iterate_models

from conftest import make_run  # noqa: E402  (shared test helpers)


@pytest.fixture(scope="module")
def pairs(devset_test_arrays):
    ids, noisy, clean = devset_test_arrays
    return ids[:2], noisy[:2], clean[:2]


def test_passes_feed_outputs_back(pairs, tmp_path):
    ids, noisy, clean = pairs
    calls = []

    def identity(x):
        calls.append(x)
        return x

    rng = np.random.default_rng(0)

    def degrade(x):  # adds noise at every pass: quality must fall pass after pass
        return x + 0.02 * rng.standard_normal(len(x)).astype(np.float32)

    rows = iterate_models({"identity": identity, "degrade": degrade}, noisy, clean, passes=3,
                          metrics=["si_sdr", "stoi"], ids=ids, out_dir=tmp_path, n_jobs=0, progress=False)
    assert [(r["model"], r["pass"]) for r in rows] == [("input", 0)] + [("identity", k) for k in (1, 2, 3)] + [
        ("degrade", k) for k in (1, 2, 3)]
    assert len(calls) == 3 * 2  # 3 passes x 2 utterances, each pass fed the previous output
    ident = [r["si_sdr"] for r in rows if r["model"] == "identity"]
    assert ident == pytest.approx([rows[0]["si_sdr"]] * 3)
    deg = [r["si_sdr"] for r in rows if r["model"] == "degrade"]
    assert deg[0] > deg[1] > deg[2]
    for name in ("iterate_scores.csv", "iterate_summary.json", "iterate_spectrograms.png", "iterate_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    table = list(csv.DictReader(open(tmp_path / "iterate_scores.csv")))
    assert len(table) == 7 and table[0]["model"] == "input"


def test_a_stopped_study_keeps_its_scored_passes_and_shows_one_overall_bar(pairs, tmp_path, capsys):
    ids, noisy, clean = pairs
    calls = []

    def stops_in_pass_2(x):
        calls.append(x)
        if len(calls) > len(noisy):
            raise KeyboardInterrupt  # the user stops the study during pass 2
        return 0.9 * x

    with pytest.raises(KeyboardInterrupt):
        iterate_models({"m": stops_in_pass_2}, noisy, clean, passes=3, metrics=["si_sdr"], ids=ids,
                       out_dir=tmp_path, n_jobs=0, progress=True)
    table = list(csv.DictReader(open(tmp_path / "iterate_scores.csv")))
    assert [(r["model"], r["pass"]) for r in table] == [("input", "0"), ("m", "1")]
    bar = capsys.readouterr().err
    assert "iterate: m pass 2/3" in bar and f"/{len(noisy) * (1 + 2 * 3)}" in bar  # one total over the study


def test_cli_iterate_with_exported_models(devset_test_pairs, tmp_path, capsys):
    run, _ = make_run(tmp_path / "run")
    assert main(["export", str(run), "-o", str(tmp_path / "m1")]) == 0
    assert main(["export", str(run), "-o", str(tmp_path / "m2"), "--key", "loss", "--min"]) == 0
    from conftest import link_pairs

    link_pairs(devset_test_pairs[:2], tmp_path)
    out = tmp_path / "study"
    assert main(["iterate", "--model", f"a={tmp_path / 'm1'}", "--model", f"b={tmp_path / 'm2'}",
                 "--noisy", str(tmp_path / "noisy"), "--clean", str(tmp_path / "clean"), "--passes", "2",
                 "--metrics", "pesq,stoi", "--jobs", "0", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| model" in printed
    rows = list(csv.DictReader(open(out / "iterate_scores.csv")))
    assert [(r["model"], r["pass"]) for r in rows] == [("input", "0"), ("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]
    assert (out / "iterate_spectrograms.png").exists()
    assert main(["iterate", "--model", "nosource", "--noisy", "x", "--clean", "y"]) == 2
    assert "NAME=SOURCE" in capsys.readouterr().err
