"""Tests of sb_mal.data.voicebank on a tiny synthetic corpus in the official layout (offline)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sb_mal.audio import AudioError, write_audio
from sb_mal.data import voicebank as vb
from sb_mal.data.manifest import load_manifest
from sb_mal.data.voicebank import prepare_voicebank

SR = 48000
# utterance id -> (duration in samples at 48 kHz, tone frequency in Hz); odd lengths on purpose.
TRAIN = {"p226_001": (14400, 440), "p226_002": (19201, 660), "p287_002": (24002, 550),
         "p250_003": (28800, 1000), "p250_004": (16003, 770)}
TEST = {"p232_001": (21600, 880), "p257_001": (14401, 330)}
FOLDERS = ["clean_trainset_28spk_wav", "noisy_trainset_28spk_wav", "clean_testset_wav",
           "noisy_testset_wav"]
# The real Edinburgh DataShare URLs (handle 10283/2791), written out independently of the module.
REAL_URLS = {
    "https://datashare.ed.ac.uk/bitstream/handle/10283/2791/clean_trainset_28spk_wav.zip",
    "https://datashare.ed.ac.uk/bitstream/handle/10283/2791/noisy_trainset_28spk_wav.zip",
    "https://datashare.ed.ac.uk/bitstream/handle/10283/2791/clean_testset_wav.zip",
    "https://datashare.ed.ac.uk/bitstream/handle/10283/2791/noisy_testset_wav.zip",
}
TXT_URLS = {
    "https://datashare.ed.ac.uk/bitstream/handle/10283/2791/trainset_28spk_txt.zip",
    "https://datashare.ed.ac.uk/bitstream/handle/10283/2791/testset_txt.zip",
}


def make_voicebank(root: Path, transcripts: bool = True) -> Path:
    """Write the fixture corpus (48 kHz tones; noisy = tone + white noise) under ``root``."""
    rng = np.random.default_rng(0)
    for split, utts in (("trainset_28spk", TRAIN), ("testset", TEST)):
        for uid, (n, freq) in utts.items():
            clean = 0.3 * np.sin(2 * np.pi * freq * np.arange(n) / SR)
            noisy = clean + 0.02 * rng.standard_normal(n)
            write_audio(root / f"clean_{split}_wav" / f"{uid}.wav", clean, SR)
            write_audio(root / f"noisy_{split}_wav" / f"{uid}.wav", noisy, SR)
            if transcripts:
                txt = root / f"{split}_txt" / f"{uid}.txt"
                txt.parent.mkdir(parents=True, exist_ok=True)
                txt.write_text(f"Hello, world {uid}.\n")
    return root


def snapshot(folder: Path) -> dict:
    """path -> (mtime_ns, sha1) of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns,
                                         hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fail(*args, **kwargs):
    raise AssertionError("this should not have been called")


@pytest.fixture
def corpus(tmp_path):
    return make_voicebank(tmp_path / "vb")


def prepare(data, save, **kw):
    kw.setdefault("download", False)
    kw.setdefault("progress", False)
    return prepare_voicebank(data, save, **kw)


def test_manifests_have_the_right_utterances_per_split(corpus, tmp_path):
    paths = prepare(corpus, tmp_path / "save")
    assert set(paths) == {"train", "valid", "test"}
    m = {split: load_manifest(p, corpus) for split, p in paths.items()}
    assert sorted(m["train"]) == ["p250_003", "p250_004"]
    assert sorted(m["valid"]) == ["p226_001", "p226_002", "p287_002"]
    assert sorted(m["test"]) == ["p232_001", "p257_001"]
    text = Path(paths["train"]).read_text()
    assert "{data_root}/noisy_trainset_28spk_wav_16k/p250_003.wav" in text
    assert str(corpus) not in text
    e = m["test"]["p257_001"]
    assert e["noisy_wav"] == str(corpus / "noisy_testset_wav_16k" / "p257_001.wav")
    assert e["clean_wav"] == str(corpus / "clean_testset_wav_16k" / "p257_001.wav")
    assert e["speaker"] == "p257"
    assert e["words"] == "HELLO WORLD P257001"
    assert e["length"] == pytest.approx(14401 / SR, abs=1e-4)
    for split in m.values():
        for entry in split.values():
            assert sf.info(entry["noisy_wav"]).samplerate == 16000
            assert entry["length"] == pytest.approx(sf.info(entry["clean_wav"]).duration, abs=1e-6)


def test_resampled_files_keep_duration_and_content(corpus, tmp_path):
    prepare(corpus, tmp_path / "save")
    for folder in FOLDERS:
        originals = sorted((corpus / folder).glob("*.wav"))
        assert len(originals) in (len(TRAIN), len(TEST))
        for src in originals:
            dst = corpus / f"{folder}_16k" / src.name
            a, b = sf.info(str(src)), sf.info(str(dst))
            assert b.samplerate == 16000
            assert abs(a.duration - b.duration) < 1e-3
    wav, sr = sf.read(str(corpus / "clean_trainset_28spk_wav_16k" / "p250_003.wav"))
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    assert np.fft.rfftfreq(len(wav), 1 / sr)[spectrum.argmax()] == pytest.approx(1000, abs=3)
    reference = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(len(wav)) / sr)
    inner = slice(100, -100)  # resampling filter edges
    assert np.max(np.abs(wav[inner] - reference[inner])) < 5e-3


def test_originals_are_never_modified(corpus, tmp_path):
    before = snapshot(corpus)
    prepare(corpus, tmp_path / "save")
    prepare(corpus, tmp_path / "save2", valid_speakers=("p250",))
    after = snapshot(corpus)
    assert all(after[k] == v for k, v in before.items())
    n_wav = 2 * (len(TRAIN) + len(TEST))
    assert len(after) == len(before) + n_wav  # one 16 kHz copy per wav and nothing else


def test_second_run_does_no_work(corpus, tmp_path, monkeypatch):
    save = tmp_path / "save"
    prepare(corpus, save)
    before = snapshot(corpus), snapshot(save)
    monkeypatch.setattr(vb, "_resample_one", fail)
    monkeypatch.setattr(vb, "write_manifest", fail)
    prepare(corpus, save)
    assert (snapshot(corpus), snapshot(save)) == before


def test_changed_options_rewrite_manifests_but_keep_resampled_audio(corpus, tmp_path, monkeypatch):
    save = tmp_path / "save"
    prepare(corpus, save)
    audio = snapshot(corpus)
    monkeypatch.setattr(vb, "_resample_one", fail)
    paths = prepare(corpus, save, valid_speakers=["p250"])
    assert sorted(load_manifest(paths["valid"], corpus)) == ["p250_003", "p250_004"]
    assert "p250_003" not in load_manifest(paths["train"], corpus)
    assert snapshot(corpus) == audio
    stored = (save / vb.VOICEBANK_OPTIONS_FILE).read_text()
    assert '"p250"' in stored and '"p226"' not in stored


def test_killed_resampling_resumes(corpus, tmp_path, monkeypatch):
    real_write, calls = vb.write_audio, []

    def dying_write(path, *args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(path)
        real_write(path, *args, **kwargs)

    monkeypatch.setattr(vb, "write_audio", dying_write)
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus, tmp_path / "save")
    assert not (tmp_path / "save" / "train.json").exists()
    done = {p: os.stat(p).st_mtime_ns for p in calls}
    stale = corpus / "clean_trainset_28spk_wav_16k" / ".tmp-killed.wav"
    stale.write_bytes(b"half a file")
    monkeypatch.setattr(vb, "write_audio", real_write)
    paths = prepare(corpus, tmp_path / "save")
    assert {p: os.stat(p).st_mtime_ns for p in calls} == done  # not redone
    assert not stale.exists()
    n_train = len(load_manifest(paths["train"], corpus))
    assert n_train + len(load_manifest(paths["valid"], corpus)) == len(TRAIN)
    assert len(list((corpus / "noisy_trainset_28spk_wav_16k").glob("*.wav"))) == len(TRAIN)


def test_truncated_resampled_file_is_redone(corpus, tmp_path):
    prepare(corpus, tmp_path / "save")
    bad = corpus / "noisy_testset_wav_16k" / "p232_001.wav"
    write_audio(bad, np.zeros(100), 16000)
    (tmp_path / "save" / "test.json").unlink()
    prepare(corpus, tmp_path / "save")
    assert sf.info(str(bad)).frames == 21600 // 3


def test_missing_corpus_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        prepare(tmp_path / "nowhere", tmp_path / "save", download=False)
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg
    assert all(name in msg for name in FOLDERS)


def test_missing_clean_partner_fails_before_resampling(corpus, tmp_path):
    (corpus / "clean_trainset_28spk_wav" / "p250_004.wav").unlink()
    pattern = "noisy_trainset_28spk_wav/p250_004.wav.*clean partner"
    with pytest.raises(FileNotFoundError, match=pattern):
        prepare(corpus, tmp_path / "save")
    assert not (corpus / "noisy_trainset_28spk_wav_16k").exists()


def test_duration_mismatch_names_the_file(corpus, tmp_path):
    write_audio(corpus / "clean_testset_wav" / "p257_001.wav", np.full(9600, 0.1), SR)
    with pytest.raises(AudioError, match="p257_001.wav: duration"):
        prepare(corpus, tmp_path / "save")


def test_unreadable_file_is_named(corpus, tmp_path):
    (corpus / "noisy_testset_wav" / "p257_001.wav").write_bytes(b"not a wav at all")
    with pytest.raises(AudioError, match="noisy_testset_wav/p257_001.wav"):
        prepare(corpus, tmp_path / "save")


def test_unknown_valid_speaker_is_an_error(corpus, tmp_path):
    with pytest.raises(ValueError, match="p999"):
        prepare(corpus, tmp_path / "save", valid_speakers=["p226", "p999"])


def test_skip_prep_does_nothing(tmp_path):
    paths = prepare(tmp_path / "absent", tmp_path / "save", skip_prep=True)
    assert paths["test"] == str(tmp_path / "save" / "test.json")
    assert not (tmp_path / "save").exists()


def test_already_resampled_corpus_without_originals(corpus, tmp_path):
    """SpeechBrain's noisy-vctk-16k layout: only the *_16k folders."""
    prepare(corpus, tmp_path / "save")
    for name in FOLDERS:
        shutil.rmtree(corpus / name)
    paths = prepare(corpus, tmp_path / "save2")
    assert sorted(load_manifest(paths["test"], corpus)) == ["p232_001", "p257_001"]


def test_parallel_resampling_matches_serial(tmp_path, monkeypatch):
    one = make_voicebank(tmp_path / "one", transcripts=False)
    two = make_voicebank(tmp_path / "two", transcripts=False)
    prepare(one, tmp_path / "s1")
    real_write, pids = vb.write_audio, tmp_path / "pids.txt"

    def write_and_log_pid(*args, **kwargs):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        real_write(*args, **kwargs)

    monkeypatch.setattr(vb, "write_audio", write_and_log_pid)
    prepare(two, tmp_path / "s2", num_workers=2)
    workers = set(pids.read_text().split())
    assert str(os.getpid()) not in workers and len(pids.read_text().split()) == 14
    for name in FOLDERS:
        for f in (one / f"{name}_16k").glob("*.wav"):
            assert f.read_bytes() == (two / f"{name}_16k" / f.name).read_bytes()


def zip_corpus(src: Path, out: Path) -> None:
    """One zip per top-level folder, each holding that folder (as the official zips do)."""
    out.mkdir()
    for folder in src.iterdir():
        shutil.make_archive(str(out / folder.name), "zip", root_dir=src, base_dir=folder.name)


@pytest.mark.parametrize("transcripts_ok", [True, False])
def test_download_path_offline(tmp_path, monkeypatch, transcripts_ok):
    from speechbrain.utils import data_utils

    zips = tmp_path / "zips"
    zip_corpus(make_voicebank(tmp_path / "src"), zips)
    calls = []

    def fake_download(source, dest, unpack=False, dest_unpack=None, **kwargs):
        calls.append(source)
        assert unpack and dest_unpack is not None
        if source in TXT_URLS and not transcripts_ok:
            raise OSError("network unreachable")
        shutil.copyfile(zips / source.rsplit("/", 1)[1], dest)
        shutil.unpack_archive(dest, dest_unpack)

    monkeypatch.setattr(data_utils, "download_file", fake_download)
    data = tmp_path / "data"
    paths = prepare(data, tmp_path / "save", download=True)
    assert set(calls) == REAL_URLS | TXT_URLS and len(calls) == 6
    assert sorted(p.name for p in data.iterdir()) == sorted(
        FOLDERS + [f"{f}_16k" for f in FOLDERS] + (sorted(
            ["trainset_28spk_txt", "testset_txt"]) if transcripts_ok else []))
    test = load_manifest(paths["test"], data)
    assert sorted(test) == ["p232_001", "p257_001"]
    assert ("words" in test["p232_001"]) == transcripts_ok
    assert sf.info(test["p232_001"]["noisy_wav"]).samplerate == 16000
    # present corpus: download=True must not download again
    monkeypatch.setattr(data_utils, "download_file", fail)
    (tmp_path / "save" / "test.json").unlink()
    prepare(data, tmp_path / "save", download=True, valid_speakers=["p226", "p287"])


def test_interrupted_download_is_fetched_again(tmp_path, monkeypatch):
    from speechbrain.utils import data_utils

    zips = tmp_path / "zips"
    zip_corpus(make_voicebank(tmp_path / "src", transcripts=False), zips)
    data = tmp_path / "data"
    data.mkdir()
    (data / "noisy_testset_wav.zip").write_bytes(b"PK\x03\x04 truncated")
    seen = []

    def fake_download(source, dest, unpack=False, dest_unpack=None, **kwargs):
        seen.append(os.path.exists(dest))
        name = source.rsplit("/", 1)[1]
        if not (zips / name).exists():
            raise OSError("404")
        shutil.copyfile(zips / name, dest)
        shutil.unpack_archive(dest, dest_unpack)

    monkeypatch.setattr(data_utils, "download_file", fake_download)
    paths = prepare(data, tmp_path / "save", download=True)
    assert not any(seen)  # the broken zip was removed before download_file ran
    assert sorted(load_manifest(paths["test"], data)) == ["p232_001", "p257_001"]
    assert not list(data.glob("*.zip")) and not list(data.glob(".unpack-*"))


def test_offline_download_is_one_line_naming_the_url_and_the_manual_route(tmp_path, monkeypatch, capsys):
    import urllib.error

    from speechbrain.utils import data_utils

    from sb_mal.cli import main

    def offline(source, dest, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(data_utils, "download_file", offline)
    rc = main(["prepare", "voicebank", "--data-folder", str(tmp_path / "vb"), "--save-folder", str(tmp_path / "m")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "cannot download https://datashare.ed.ac.uk/" in err and "--no-download" in err and "Traceback" not in err


def test_a_recipe_offline_is_one_line_naming_its_own_key(tmp_path, monkeypatch):
    """The recipe's message names the YAML key that turns the download off, not the CLI's --no-download."""
    import urllib.error

    from speechbrain.utils import data_utils

    from sb_mal.brains import EnhanceBrain
    from sb_mal.run import run_recipe

    def offline(source, dest, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(data_utils, "download_file", offline)
    repo = Path(__file__).resolve().parents[1]
    with pytest.raises(SystemExit) as stop:
        run_recipe(EnhanceBrain, argv=[str(repo / "hparams/voicebank/baseline.yaml"), f"--data_folder={tmp_path / 'vb'}",
                                       f"--output_folder={tmp_path / 'out'}", "--test_metrics=[pesq]"])
    message = str(stop.value)
    assert "\n" not in message and message.startswith("error: cannot download https://datashare.ed.ac.uk/")
    assert "--download=False (the YAML key download)" in message and "--no-download" not in message
