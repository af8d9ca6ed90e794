"""The sb-mal command line: evaluate folders and manifests, prepare pairs."""

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import link_pairs
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
    with pytest.raises(SystemExit, match="give --clean DIR"):
        main(["evaluate", "--noisy", str(tmp_path)])
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
    with pytest.raises(SystemExit, match="unmatched"):
        main(["evaluate", "--clean", str(small_pairs / "clean"), *args, "--strict"])
    # manifest mode: a missing enhanced file no longer aborts the run
    manifest = tmp_path / "m.json"
    assert main(["prepare", "pairs", "--noisy", str(small_pairs / "noisy"), "--clean", str(small_pairs / "clean"),
                 "-o", str(manifest)]) == 0
    assert main(["evaluate", "--manifest", str(manifest), "--no-noisy", *args]) == 0
    summary = json.loads((out / "summary.json").read_text())["enh"]
    assert summary["n_utterances"] == 2
    listed = [os.path.basename(str(p)) for items in summary["unmatched"].values() for p in items]
    assert sorted(listed) == ["stray.wav", "test_002"]
    with pytest.raises(SystemExit, match="unmatched"):
        main(["evaluate", "--manifest", str(manifest), "--no-noisy", *args, "--strict"])


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
    with pytest.raises(SystemExit, match="none of the audio files of .* exists .*--data-root"):
        main(["evaluate", "--manifest", str(manifest), "--data-root", str(work), "--jobs", "0", "-o", "ev2"])


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
