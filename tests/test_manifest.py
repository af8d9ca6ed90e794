"""Manifests and prepare_pairs on the devset's pairs/ folders and a DNS-style layout."""

import json

import numpy as np
import pytest
from speechbrain.dataio.dataset import DynamicItemDataset

from sb_mal.audio import write_audio
from sb_mal.data.manifest import load_manifest, manifest_paths, prepare_pairs, to_placeholder, write_manifest


def test_prepare_pairs_on_devset(devset, tmp_path):
    out = tmp_path / "test.json"
    entries = prepare_pairs(devset / "pairs/test/noisy", devset / "pairs/test/clean", out)
    assert len(entries) == 120
    assert entries["test_000"]["noisy_wav"] == "{data_root}/noisy/test_000.flac"
    # lengths agree with the corpus manifest
    import csv

    rows = {r["id"]: float(r["duration_s"]) for r in csv.DictReader(open(devset / "pairs/test/manifest.csv"))}
    for uid, e in entries.items():
        assert abs(e["length"] - rows[uid]) < 1e-4
    # SpeechBrain loads it with its own replacements mechanism
    ds = DynamicItemDataset.from_json(str(out), replacements={"data_root": str(devset / "pairs/test")})
    ds.set_output_keys(["id", "clean_wav"])
    assert ds[0]["clean_wav"].endswith("pairs/test/clean/test_000.flac")
    loaded = load_manifest(out, devset / "pairs/test")
    assert all(p.endswith(".flac") for p in manifest_paths(loaded, "noisy_wav"))


def test_prepare_pairs_dns_fileid_layout(tmp_path):
    sig = np.zeros(1600)
    for i in (3, 12):
        write_audio(tmp_path / "noisy" / f"book_0{i}_snr5_tl-20_fileid_{i}.wav", sig, 16000)
        write_audio(tmp_path / "clean" / f"clean_fileid_{i}.wav", sig, 16000)
    entries = prepare_pairs(tmp_path / "noisy", tmp_path / "clean", tmp_path / "m.json", match="fileid")
    assert sorted(entries) == ["fileid_12", "fileid_3"]
    assert entries["fileid_12"]["clean_wav"] == "{data_root}/clean/clean_fileid_12.wav"
    with pytest.raises(ValueError, match="unpaired files"):
        prepare_pairs(tmp_path / "noisy", tmp_path / "clean", tmp_path / "m2.json", match="name")


def test_prepare_pairs_errors(tmp_path):
    write_audio(tmp_path / "noisy" / "a.wav", np.zeros(1600), 16000)
    write_audio(tmp_path / "clean" / "a.wav", np.zeros(3200), 16000)
    with pytest.raises(ValueError, match=r"a\.wav: duration 0\.100 s differs"):
        prepare_pairs(tmp_path / "noisy", tmp_path / "clean", tmp_path / "m.json")
    write_audio(tmp_path / "clean" / "a.wav", np.zeros(1600), 8000)
    with pytest.raises(ValueError, match="sample rate is 8000 Hz, expected 16000"):
        prepare_pairs(tmp_path / "noisy", tmp_path / "clean", tmp_path / "m.json", sample_rate=16000)
    write_audio(tmp_path / "noisy" / "b.wav", np.zeros(1600), 16000)
    write_audio(tmp_path / "clean" / "a.wav", np.zeros(1600), 16000)
    with pytest.raises(ValueError, match=r"1 noisy file\(s\) without clean partner, e\.g\. .*b\.wav"):
        prepare_pairs(tmp_path / "noisy", tmp_path / "clean", tmp_path / "m.json")
    entries = prepare_pairs(tmp_path / "noisy", tmp_path / "clean", tmp_path / "m.json", allow_unpaired=True)
    assert list(entries) == ["a"]


def test_manifest_roundtrip_and_errors(tmp_path):
    entries = {"u1": {"clean_wav": to_placeholder(tmp_path / "c/u1.wav", tmp_path), "length": 1.0}}
    write_manifest(tmp_path / "m.json", entries)
    assert json.loads((tmp_path / "m.json").read_text()) == entries
    assert load_manifest(tmp_path / "m.json", "/root")["u1"]["clean_wav"] == "/root/c/u1.wav"
    with pytest.raises(ValueError, match="uses {data_root} but no data_root"):
        load_manifest(tmp_path / "m.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_manifest(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="nope.json: manifest not found"):
        load_manifest(tmp_path / "nope.json")
    with pytest.raises(KeyError, match="noisy_wav"):
        manifest_paths(entries, "noisy_wav")
