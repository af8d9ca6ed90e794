"""The synthetic mini corpus: eSpeak NG speech, synthetic noises, manifests, idempotence."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sb_mal.data import mini
from sb_mal.data.manifest import load_manifest
from sb_mal.data.mini import TEST_VARIANTS, TRAIN_VARIANTS, build_mini_corpus, default_mini_dir
from sb_mal.data.mixing import active_speech_power
from sb_mal.data.synth_noise import NOISE_TYPES, colored_noise, make_noise
from sb_mal.data.synth_speech import make_sentence, sentence_bucket, synthesize

SR = 16000
SMALL = {"n_train": 16, "n_valid": 8, "n_test": 8}  # 16 train = every noise kind twice
TINY = {"n_train": 3, "n_valid": 1, "n_test": 1, "progress": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini")
    paths = build_mini_corpus(out, progress=False, **SMALL)
    return out, paths, {s: load_manifest(p, out) for s, p in paths.items()}


def _sentences(text: str) -> set[str]:
    return {s.strip().lower() for s in re.split(r"(?<=[.?])\s+", text) if s.strip()}


def _snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    noise = noisy.astype(np.float64) - clean
    return 10 * np.log10(active_speech_power(clean, SR) / np.mean(noise**2))


def _band_slope(x: np.ndarray) -> float:
    """dB per octave of the power in octave bands 125 Hz .. 4 kHz."""
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    centres = 125 * 2.0 ** np.arange(6)
    levels = [
        10 * np.log10(power[(freqs >= c / 2**0.5) & (freqs < c * 2**0.5)].mean()) for c in centres
    ]
    return float(np.polyfit(np.arange(6), levels, 1)[0])


def _pitches(x: np.ndarray) -> list[float]:
    """F0 (Hz) of the clearly voiced 40 ms frames (autocorrelation of the signal below 1 kHz)."""
    spec = np.fft.rfft(x)
    spec[np.fft.rfftfreq(len(x), 1 / SR) > 1000] = 0
    low = np.fft.irfft(spec, len(x))
    frame, out = int(0.04 * SR), []
    energies = [np.mean(low[i : i + frame] ** 2) for i in range(0, len(low) - frame, frame // 2)]
    for i, energy in zip(range(0, len(low) - frame, frame // 2), energies):
        if energy < 0.05 * max(energies):
            continue
        seg = low[i : i + frame] - low[i : i + frame].mean()
        ac = np.correlate(seg, seg, "full")[frame - 1 :]
        lo, hi = SR // 600, SR // 50
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.6 * ac[0]:
            out.append(SR / lag)
    return out


def test_manifests_point_to_16k_mono_files_of_stated_length(corpus):
    _, paths, manifests = corpus
    for split, manifest in manifests.items():
        assert len(manifest) == SMALL[f"n_{split}"]
        raw = json.loads(Path(paths[split]).read_text())
        assert all(v["noisy_wav"].startswith("{data_root}/") for v in raw.values())
        for uid, entry in manifest.items():
            assert {
                "noisy_wav",
                "clean_wav",
                "length",
                "snr_db",
                "noise_type",
                "voice",
                "text",
            } <= set(entry)
            for key in ("noisy_wav", "clean_wav"):
                info = sf.info(entry[key])
                assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16"), entry[
                    key
                ]
                assert info.frames / SR == pytest.approx(entry["length"], abs=1e-6)
            assert 2.0 <= entry["length"] <= 4.0, uid


def test_noisy_contains_clean_at_the_stated_snr(corpus):
    _, _, manifests = corpus
    for split, manifest in manifests.items():
        for uid, entry in manifest.items():
            noisy, _ = sf.read(entry["noisy_wav"])
            clean, _ = sf.read(entry["clean_wav"])
            assert not np.allclose(noisy, clean), uid
            assert np.abs(noisy).max() <= 0.99 + 1e-4
            assert _snr(clean, noisy) == pytest.approx(entry["snr_db"], abs=0.5), uid
            if split == "train":
                assert -5.0 <= entry["snr_db"] <= 15.0
            else:
                assert entry["snr_db"] in (-5.0, 0.0, 5.0, 10.0, 15.0)


def test_every_noise_kind_is_used_and_balanced(corpus):
    _, _, manifests = corpus
    kinds = [e["noise_type"] for e in manifests["train"].values()]
    assert sorted(set(kinds)) == sorted(NOISE_TYPES)
    assert max(kinds.count(k) for k in NOISE_TYPES) == 2
    grid = [e["snr_db"] for e in manifests["test"].values()]
    assert max(grid.count(s) for s in set(grid)) - min(grid.count(s) for s in set(grid)) <= 1


def test_splits_have_disjoint_sentences_and_test_voices_are_held_out(corpus):
    _, _, manifests = corpus
    sentences = {
        s: set().union(*(_sentences(e["text"]) for e in m.values())) for s, m in manifests.items()
    }
    assert len(sentences["train"]) >= SMALL["n_train"]
    assert not sentences["train"] & sentences["valid"]
    assert not sentences["train"] & sentences["test"]
    assert not sentences["valid"] & sentences["test"]
    variants = {s: {e["voice"].split("+")[1] for e in m.values()} for s, m in manifests.items()}
    assert variants["train"] <= set(TRAIN_VARIANTS) and variants["valid"] <= set(TRAIN_VARIANTS)
    assert variants["test"] <= set(TEST_VARIANTS) and not set(TEST_VARIANTS) & set(TRAIN_VARIANTS)
    assert len({e["voice"] for e in manifests["train"].values()}) >= 8


def test_sentence_buckets_keep_splits_apart():
    rng = np.random.default_rng(3)
    drawn = [make_sentence(rng) for _ in range(500)]
    assert len(set(drawn)) > 490  # the grammar hardly repeats itself
    buckets = [sentence_bucket(s) for s in drawn]
    assert min(buckets) >= 0 and max(buckets) < 100 and len(set(buckets)) > 90


def test_synthesis_is_deterministic_and_depends_on_voice():
    text = "Seven green ships sailed to the harbour on Tuesday."
    first = synthesize(text, "en-us+m3", rate=170, pitch=40)
    synthesize("Something else entirely, to disturb any state.", "de+f2", pitch=70)
    again = synthesize(text, "en-us+m3", rate=170, pitch=40)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, synthesize(text, "en-us+f2", rate=170, pitch=40))
    with pytest.raises(ValueError, match="no variant 'nosuch'"):
        synthesize(text, "en-us+nosuch")
    with pytest.raises(ValueError, match="unknown voice"):
        synthesize(text, "xx-notalanguage")


def test_clean_speech_is_speech_like(corpus):
    from pesq import pesq

    _, _, manifests = corpus
    pitches = []
    for entry in list(manifests["train"].values())[:8]:
        clean, _ = sf.read(entry["clean_wav"])
        assert pesq(SR, clean, clean, "wb") == pytest.approx(4.64, abs=0.01)
        power = np.abs(np.fft.rfft(clean)) ** 2
        below = power[np.fft.rfftfreq(len(clean), 1 / SR) < 4000].sum() / power.sum()
        assert below > 0.8, entry["voice"]
        pitches += _pitches(clean)
    assert len(pitches) > 100
    assert np.mean([70 <= f <= 400 for f in pitches]) > 0.9


def test_noise_kinds_have_their_character():
    n = 4 * SR
    white, pink, brown = (
        make_noise(k, n, np.random.default_rng(0))[0] for k in ("white", "pink", "brown")
    )
    assert abs(_band_slope(white)) < 0.5
    assert _band_slope(pink) == pytest.approx(-3.0, abs=0.5)
    assert _band_slope(brown) == pytest.approx(-6.0, abs=0.7)
    for seed in range(4):
        hum, detail = make_noise("hum", n, np.random.default_rng(seed))
        mains = int(detail.split()[1])
        peak = np.fft.rfftfreq(n, 1 / SR)[np.argmax(np.abs(np.fft.rfft(hum)))]
        assert mains in (50, 60) and abs(peak / mains - round(peak / mains)) < 0.02, (detail, peak)
        clicks, _ = make_noise("transient", n, np.random.default_rng(seed))
        assert np.abs(clicks).max() > 10 * np.sqrt(np.mean(clicks**2))  # crest factor > 20 dB
    assert np.abs(white).max() < 6 * white.std()
    band, detail = make_noise("bandpass", n, np.random.default_rng(5))
    low, high = (float(v) for v in re.findall(r"(\d+)-(\d+) Hz", detail)[0])
    power, freqs = np.abs(np.fft.rfft(band)) ** 2, np.fft.rfftfreq(n, 1 / SR)
    assert power[(freqs > low * 0.8) & (freqs < high * 1.25)].sum() > 0.95 * power.sum()
    for kind in NOISE_TYPES:
        if kind != "babble":
            x, _ = make_noise(kind, 1000, np.random.default_rng(1))
            assert x.shape == (1000,) and np.sqrt(np.mean(x**2)) == pytest.approx(1.0)
            assert np.array_equal(x, make_noise(kind, 1000, np.random.default_rng(1))[0])


def test_babble_is_a_few_talkers_and_needs_them():
    with pytest.raises(ValueError, match="talker"):
        make_noise("babble", SR, np.random.default_rng(0))
    talkers = [
        synthesize(t, v) for t, v in [("One two three.", "fr+m1"), ("Four five six.", "es+f2")]
    ]
    babble, detail = make_noise("babble", 2 * SR, np.random.default_rng(0), babble_talkers=talkers)
    assert 3 <= int(detail.split()[2]) <= 6
    white = colored_noise(2 * SR, np.random.default_rng(0))

    def frame_levels(x):
        return 10 * np.log10(np.mean(x[: 2 * SR].reshape(-1, 320) ** 2, axis=1) + 1e-12)

    assert frame_levels(babble).std() > 3 * frame_levels(white).std()  # speech-like fluctuation


def test_build_is_deterministic_and_seeded(tmp_path):
    a = build_mini_corpus(tmp_path / "a", seed=7, **TINY)
    b = build_mini_corpus(tmp_path / "b", seed=7, **TINY)
    c = build_mini_corpus(tmp_path / "c", seed=8, **TINY)
    ma, mb, mc = (load_manifest(m["train"], root) for m, root in
                  [(a, tmp_path / "a"), (b, tmp_path / "b"), (c, tmp_path / "c")])  # fmt: skip
    for uid in ma:
        for key in ("noisy_wav", "clean_wav"):
            assert Path(ma[uid][key]).read_bytes() == Path(mb[uid][key]).read_bytes()
        assert ma[uid]["text"] != mc[uid]["text"]
        assert not np.array_equal(
            sf.read(ma[uid]["noisy_wav"])[0][:100], sf.read(mc[uid]["noisy_wav"])[0][:100]
        )


@pytest.mark.slow
def test_parallel_build_gives_the_same_files(tmp_path):
    serial = build_mini_corpus(tmp_path / "s", **TINY)
    parallel = build_mini_corpus(tmp_path / "p", num_workers=2, **TINY)
    for split in serial:
        ms, mp = (
            load_manifest(serial[split], tmp_path / "s"),
            load_manifest(parallel[split], tmp_path / "p"),
        )
        assert ms.keys() == mp.keys()
        for uid in ms:
            assert (
                Path(ms[uid]["noisy_wav"]).read_bytes() == Path(mp[uid]["noisy_wav"]).read_bytes()
            )


def _mtimes(root) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_second_build_reuses_and_changed_parameters_rebuild(tmp_path):
    out = tmp_path / "corpus"
    first = build_mini_corpus(out, **TINY)
    before = _mtimes(out)
    assert build_mini_corpus(out, **TINY) == first
    assert _mtimes(out) == before  # nothing rewritten
    build_mini_corpus(out, **{**TINY, "n_train": 2, "seed": 3})
    info = json.loads((out / "corpus_info.json").read_text())
    assert info["params"]["seed"] == 3 and info["version"] == mini.CORPUS_VERSION
    assert sorted(p.name for p in (out / "train" / "noisy").iterdir()) == [
        "train_0000.wav",
        "train_0001.wav",
    ]
    assert not (out / ".mini_building.json").exists()
    assert (
        _mtimes(out)[str(out / "valid" / "clean" / "valid_0000.wav")]
        != before[str(out / "valid" / "clean" / "valid_0000.wav")]
    )


def test_interrupted_build_never_looks_complete(tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    real = mini._make_utterance
    calls = []

    def failing(job):
        calls.append(job[0]["uid"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(mini, "_make_utterance", failing)
    with pytest.raises(KeyboardInterrupt):
        build_mini_corpus(out, **TINY)
    assert not (out / "corpus_info.json").exists() and (out / ".mini_building.json").exists()
    monkeypatch.setattr(mini, "_make_utterance", real)
    paths = build_mini_corpus(out, **TINY)
    assert len(load_manifest(paths["train"], out)) == 3 and (out / "corpus_info.json").exists()


def test_refuses_folders_that_are_not_a_mini_corpus(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an sb_mal mini corpus"):
        build_mini_corpus(tmp_path, **TINY)
    assert (tmp_path / "train" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_train": 0}, "n_train"), ({"min_seconds": 3.0, "max_seconds": 2.0}, "min_seconds"),
     ({"noise_types": ("pink", "rain")}, "noise_types"), ({"sample_rate": 4000}, "sample_rate")],
)  # fmt: skip
def test_bad_arguments_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_mini_corpus(tmp_path, **{**TINY, **kwargs})


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SB_MAL_CACHE", str(tmp_path))
    assert default_mini_dir() == tmp_path / "mini"
    monkeypatch.delenv("SB_MAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_mini_dir() == tmp_path / "xdg" / "sb_mal" / "mini"
    assert os.fspath(default_mini_dir()).endswith(os.path.join("sb_mal", "mini"))
