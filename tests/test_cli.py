"""The sb-mal command line: evaluate folders and manifests, prepare pairs."""

import csv
from pathlib import Path
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import link_pairs

REPO = Path(__file__).resolve().parents[1]
from sb_mal.cli import main


@pytest.fixture()
def small_pairs(devset_test_pairs, tmp_path):
    """Three devset pairs linked into noisy/ and clean/ folders (links, not copies)."""
    return link_pairs(devset_test_pairs[:3], tmp_path)


def test_evaluate_folders(small_pairs, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["evaluate", "--clean", str(small_pairs / "clean"), "--noisy", str(small_pairs / "noisy"),
               "--enhanced", str(small_pairs / "clean"), "--metrics", "pesq,stoi", "--jobs", "0", "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| system" in printed and "noisy" in printed
    rows = list(csv.DictReader(open(out / "noisy_scores.csv")))
    assert [r["id"] for r in rows] == ["test_000", "test_001", "test_002"]
    summary = json.loads((out / "summary.json").read_text())
    # "enhanced" = the clean files themselves: the ceiling
    assert summary["clean"]["means"]["pesq"] > 4.5 > summary["noisy"]["means"]["pesq"]


def test_evaluate_manifest_and_prepare(small_pairs, tmp_path, capsys):
    manifest = tmp_path / "m.json"
    assert main(["prepare", "pairs", "--noisy", str(small_pairs / "noisy"), "--clean", str(small_pairs / "clean"),
                 "-o", str(manifest)]) == 0
    out = tmp_path / "eval2"
    assert main(["evaluate", "--manifest", str(manifest), "--metrics", "si_sdr", "--jobs", "0", "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["noisy"]["n_utterances"] == 3


def test_evaluate_errors(tmp_path, capsys):
    assert main(["evaluate", "--noisy", str(tmp_path)]) == 2
    assert "give --clean DIR" in capsys.readouterr().err
    assert main(["evaluate", "--clean", str(tmp_path / "nope"), "--noisy", str(tmp_path)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_console_script_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "sb-mal")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "evaluate" in proc.stdout


def test_unmatched_files_are_listed_never_fatal_unless_strict(small_pairs, tmp_path, capsys):
    """Folder and manifest mode alike: a file without a partner is warned about, listed in summary.json
    and left out; --strict makes it an error; a half-length output is not scored and the counts say so."""
    import numpy as np
    import soundfile as sf

    enhanced = tmp_path / "enh"
    enhanced.mkdir()
    clean_files = sorted((small_pairs / "clean").iterdir())
    for f in clean_files[:2]:
        wav, rate = sf.read(f)
        sf.write(enhanced / f"{f.stem}.wav", wav if f is clean_files[0] else wav[: len(wav) // 2], rate)
    sf.write(enhanced / "stray.wav", np.zeros(1600), 16000)  # no clean partner
    out = tmp_path / "eval"
    args = ["--enhanced", str(enhanced), "--metrics", "stoi,si_sdr", "--jobs", "0", "-o", str(out)]
    assert main(["evaluate", "--clean", str(small_pairs / "clean"), *args]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())["enh"]
    assert summary["n_utterances"] == 2 and summary["counts"] == {"stoi": 1, "si_sdr": 1}
    assert "length mismatch" in summary["failures"][0]["message"]
    assert "stoi on 1 of 2" in printed
    listed = [p for items in summary["unmatched"].values() for p in items]
    assert sorted(os.path.basename(p) for p in listed) == ["stray.wav", "test_002.flac"]
    assert main(["evaluate", "--clean", str(small_pairs / "clean"), *args, "--strict"]) == 2  # as its help says
    assert "unmatched" in capsys.readouterr().err
    # manifest mode: a missing enhanced file no longer aborts the run
    manifest = tmp_path / "m.json"
    assert main(["prepare", "pairs", "--noisy", str(small_pairs / "noisy"), "--clean", str(small_pairs / "clean"),
                 "-o", str(manifest)]) == 0
    assert main(["evaluate", "--manifest", str(manifest), "--no-noisy", *args]) == 0
    summary = json.loads((out / "summary.json").read_text())["enh"]
    assert summary["n_utterances"] == 2
    listed = [os.path.basename(str(p)) for items in summary["unmatched"].values() for p in items]
    assert sorted(listed) == ["stray.wav", "test_002"]
    assert main(["evaluate", "--manifest", str(manifest), "--no-noisy", *args, "--strict"]) == 2
    assert "unmatched" in capsys.readouterr().err


def test_pairing_never_guesses_in_folder_and_manifest_mode(small_pairs, tmp_path, capsys):
    """Two enhanced files for one clean stem, an id twice, an entry without clean_wav, a non-UTF-8
    manifest: each a listed warning or one error line naming the file (and entry); --strict exits 2."""
    import shutil

    import soundfile as sf

    enhanced = tmp_path / "enh"
    enhanced.mkdir()
    clean_files = sorted((small_pairs / "clean").iterdir())
    for f in clean_files:
        wav, rate = sf.read(f)
        sf.write(enhanced / f"{f.stem}.wav", wav, rate)
    wav, rate = sf.read(clean_files[0])
    sf.write(enhanced / f"{clean_files[0].stem}.flac", 0.5 * wav, rate)  # which one is test_000's output?
    out = tmp_path / "eval"
    args = ["--enhanced", str(enhanced), "--metrics", "si_sdr", "--jobs", "0", "-o", str(out)]
    for mode in (["--clean", str(small_pairs / "clean")], None):
        if mode is None:
            manifest = tmp_path / "m.json"
            assert main(["prepare", "pairs", "--noisy", str(small_pairs / "noisy"), "--clean",
                         str(small_pairs / "clean"), "-o", str(manifest)]) == 0
            mode = ["--manifest", str(manifest), "--no-noisy"]
        assert main(["evaluate", *mode, *args]) == 0
        capsys.readouterr()
        summary = json.loads((out / "summary.json").read_text())["enh"]
        assert summary["n_utterances"] == 2, summary
        ambiguous = [p for k, items in summary["unmatched"].items() if k.startswith("ambiguous") for p in items]
        assert len(ambiguous) >= 1 and all(f"{clean_files[0].stem}" in str(p) for p in ambiguous), summary
        assert main(["evaluate", *mode, *args, "--strict"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "ambiguous" in err, err
    entries = json.loads(manifest.read_text())
    first = next(iter(entries))
    text = manifest.read_text()
    twice = text.rstrip().rstrip("}") + f', "{first}": {json.dumps(entries[first])}}}'
    cases = {"twice.json": (twice.encode(), f"utterance id '{first}' appears more than once"),
             "noclean.json": (json.dumps({first: {"noisy_wav": entries[first]["noisy_wav"]}}).encode(),
                              f"entry '{first}' has no 'clean_wav'"),
             "latin1.json": (text.replace("test_", "tést_").encode("latin-1"), "not UTF-8")}
    for name, (data, expected) in cases.items():
        bad = tmp_path / name
        bad.write_bytes(data)
        assert main(["evaluate", "--manifest", str(bad), "--data-root", str(tmp_path), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err and expected in err, err
    # prepare refuses two noisy files for one name instead of keeping either
    twin = small_pairs / "noisy" / f"{clean_files[0].stem}.wav"
    assert not twin.exists()  # a new file beside the linked devset one, never written through a link
    shutil.copy(enhanced / f"{clean_files[0].stem}.flac", twin)
    assert main(["prepare", "pairs", "--noisy", str(small_pairs / "noisy"), "--clean", str(small_pairs / "clean"),
                 "-o", str(tmp_path / "p.json")]) == 2
    assert "share the pairing key" in capsys.readouterr().err


def test_prepare_then_evaluate_a_manifest_written_elsewhere(small_pairs, tmp_path, monkeypatch, capsys):
    """The README's `sb-mal prepare pairs ... -o test.json` then `sb-mal evaluate --manifest test.json`, from
    another folder: one default {data_root} for both; a wrong --data-root is an error, not an all-NaN table."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["prepare", "pairs", "--noisy", str(small_pairs / "noisy"), "--clean", str(small_pairs / "clean"),
                 "-o", "test.json"]) == 0
    assert main(["evaluate", "--manifest", "test.json", "--metrics", "si_sdr", "--jobs", "0", "-o", "ev"]) == 0
    summary = json.loads((work / "ev" / "summary.json").read_text())
    assert summary["noisy"]["counts"]["si_sdr"] == 3
    manifest = tmp_path / "m.json"  # placeholders relative to the pairs folder
    assert main(["prepare", "pairs", "--noisy", str(small_pairs / "noisy"), "--clean", str(small_pairs / "clean"),
                 "-o", str(manifest), "--data-root", str(small_pairs)]) == 0
    assert main(["evaluate", "--manifest", str(manifest), "--data-root", str(work), "--jobs", "0", "-o", "ev2"]) == 2
    assert re.search("none of the audio files of .* exists .*--data-root", capsys.readouterr().err)


def test_prepare_pairs_refuses_a_pair_of_different_rates_and_an_unexpected_rate(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    for sub, rate in (("noisy", 16000), ("clean", 8000)):
        (tmp_path / sub).mkdir()
        sf.write(tmp_path / sub / "u1.wav", np.zeros(rate // 2), rate)
    args = ["prepare", "pairs", "--noisy", str(tmp_path / "noisy"), "--clean", str(tmp_path / "clean"),
            "-o", str(tmp_path / "m.json")]
    assert main(args) == 2
    assert "u1.wav: sample rate 16000 Hz differs from its clean file" in capsys.readouterr().err
    sf.write(tmp_path / "clean" / "u1.wav", np.zeros(8000), 16000)
    assert main([*args, "--sample-rate", "8000"]) == 2
    assert "sample rate is 16000 Hz, expected 8000 Hz" in capsys.readouterr().err
    assert main(args) == 0 and (tmp_path / "m.json").is_file()


def test_every_command_and_option_has_help():
    """`sb-mal --help` and each subcommand's help describe every option (no bare flags)."""
    import argparse

    from sb_mal.cli import build_parser

    parser = build_parser()
    missing = []

    def walk(p, path):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name):
                        missing.append(f"{path} {name} (no summary)")
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(parser, "sb-mal")
    assert not missing, missing


def test_taps_lists_what_each_stock_model_offers(tmp_path, capsys):
    models = REPO / "tests" / "stock_recipe" / "hparams" / "models"
    expected = {"cnn_transformer.yaml": ("custom_emb_module", "log1p-stft [2, 63, 257]"),
                "blstm.yaml": ("lstm", "log1p-stft"), "metricgan_generator.yaml": ("blstm", "log1p-stft"),
                "fcn.yaml": ("act2", "waveform-channel [2, 16000, 1]")}
    for name, (tap, used) in expected.items():
        assert main(["taps", str(models / name), "--set", "N_fft=512"]) == 0
        out = capsys.readouterr().out
        assert used in out.splitlines()[0], out
        assert re.search(rf"^{re.escape(tap)}\s+\[2, ", out, re.M), out
    assert main(["taps", str(models / "cnn_transformer.yaml")]) == 2  # its placeholder must be given
    assert "--set KEY=VALUE" in capsys.readouterr().err
    from conftest import make_run

    run, _ = make_run(tmp_path / "run")  # a run folder of sb_mal's backbone: its own taps, waveform input
    assert main(["taps", str(run)]) == 0
    out = capsys.readouterr().out
    assert "input waveform [2, 16000]" in out and re.search(r"^encoder_blocks\.0\s+\[2, ", out, re.M), out


def test_evaluate_keeps_what_it_scored_when_stopped(small_pairs, tmp_path, capsys, monkeypatch):
    from sb_mal.metrics.results import PartialRows

    real_add, calls = PartialRows.add, []

    def add_then_stop(self, uid, scores):
        real_add(self, uid, scores)
        calls.append(uid)
        if len(calls) == 5:  # the second system's second utterance: Ctrl-C
            raise KeyboardInterrupt

    monkeypatch.setattr(PartialRows, "add", add_then_stop)
    out = tmp_path / "eval"
    rc = main(["evaluate", "--clean", str(small_pairs / "clean"), "--noisy", str(small_pairs / "noisy"),
               "--enhanced", str(small_pairs / "clean"), "--metrics", "si_sdr", "--jobs", "0", "-o", str(out)])
    assert rc == 130
    first = list(csv.DictReader(open(out / "noisy_scores.csv")))  # the finished system: complete
    assert [r["id"] for r in first] == ["test_000", "test_001", "test_002"]
    assert json.loads((out / "summary.json").read_text())["noisy"]["n_utterances"] == 3
    partial = list(csv.DictReader(open(out / "clean_scores.csv.partial")))  # the stopped one: what it scored
    assert [r["id"] for r in partial] == ["test_000", "test_001"] and not (out / "clean_scores.csv").exists()
    assert float(partial[0]["si_sdr"]) > 40  # clean against itself
