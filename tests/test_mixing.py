"""On-the-fly mixing: SNR convention, determinism, epoch dependence, babble, loading with SpeechBrain."""

import numpy as np
import pytest
import torch
from speechbrain.dataio.batch import PaddedBatch

from sb_mal.data.mixing import OnTheFlyMixer, active_speech_power, mix_at_snr


@pytest.fixture(scope="module")
def mixer(devset):
    return OnTheFlyMixer(
        [devset / "speech/train/fr", devset / "speech/train/it"],
        devset / "noise/train",
        snr_range=(-5, 15),
        segment_seconds=2.0,
        num_items=16,
        seed=7,
    )


def test_items_have_requested_snr_and_shape(mixer):
    for i in range(8):
        item = mixer[i]
        noisy, clean = item["noisy_sig"].numpy(), item["clean_sig"].numpy()
        assert noisy.shape == clean.shape == (32000,)
        assert np.abs(noisy).max() <= 0.99 + 1e-6
        snr = 10 * np.log10(active_speech_power(clean) / np.mean((noisy - clean).astype(np.float64) ** 2))
        assert abs(snr - item["snr_db"]) < 0.05  # float32 rounding only
        assert -5 <= item["snr_db"] <= 15


def test_deterministic_and_epoch_dependent(mixer, devset):
    a = mixer[3]["noisy_sig"]
    again = OnTheFlyMixer(
        [devset / "speech/train/fr", devset / "speech/train/it"], devset / "noise/train",
        snr_range=(-5, 15), segment_seconds=2.0, num_items=16, seed=7,
    )
    assert torch.equal(a, again[3]["noisy_sig"])
    assert not torch.equal(a, mixer[4]["noisy_sig"])
    mixer.set_epoch(1)
    try:
        assert not torch.equal(a, mixer[3]["noisy_sig"])
    finally:
        mixer.set_epoch(0)
    assert torch.equal(a, mixer[3]["noisy_sig"])


def test_babble_and_whole_utterances(devset):
    m = OnTheFlyMixer(devset / "speech/train/ru", devset / "noise/train", babble_prob=1.0,
                      segment_seconds=None, num_items=4, seed=1, snr_range=(5, 5))
    item = m[0]
    assert item["noise_type"] == "babble"
    noise = (item["noisy_sig"] - item["clean_sig"]).numpy()
    # babble is speech-like: strongly modulated envelope compared with stationary noise
    frames = noise[: len(noise) // 320 * 320].reshape(-1, 320)
    env = np.sqrt((frames**2).mean(1))
    assert env.std() / env.mean() > 0.2
    assert len(item["clean_sig"]) > 0


def test_padded_batch_collation(mixer):
    batch = PaddedBatch([mixer[0], mixer[1]])
    wavs, lens = batch.noisy_sig
    assert wavs.shape == (2, 32000) and torch.allclose(lens, torch.ones(2))


def test_argument_errors(devset, tmp_path):
    with pytest.raises(ValueError, match="snr_range"):
        OnTheFlyMixer(devset / "speech/train/fr", devset / "noise/train", snr_range=(10, 0))
    with pytest.raises(ValueError, match="not a folder"):
        OnTheFlyMixer(tmp_path / "nope", devset / "noise/train")
    with pytest.raises(ValueError, match="silent"):
        mix_at_snr(np.zeros(100), np.ones(100), 0.0)
    with pytest.raises(IndexError):
        OnTheFlyMixer(devset / "speech/train/fr", devset / "noise/train", num_items=2)[2]
