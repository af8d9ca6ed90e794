"""DNSMOS: same numbers as the reference implementation in speechmos; ordering on real audio."""

import numpy as np
import pytest

from sb_mal.audio import read_audio
from sb_mal.metrics import evaluate

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def scorer():
    from sb_mal.metrics.dnsmos import DNSMOS

    return DNSMOS()


def test_log_mel_matches_librosa(scorer, devset_test_pairs):
    librosa = pytest.importorskip("librosa")
    x, _ = read_audio(devset_test_pairs[0][1], as_numpy=True)
    seg = np.tile(x, 3)[: int(9.01 * 16000) - 160]
    ours = scorer._log_mel(seg)
    mel = librosa.feature.melspectrogram(y=seg, sr=16000, n_fft=321, hop_length=160, n_mels=120)
    ref = ((librosa.power_to_db(mel, ref=np.max) + 40) / 40).T
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-4


def test_equals_speechmos_reference(scorer, devset_test_pairs):
    pytest.importorskip("librosa")
    from speechmos import dnsmos

    x, _ = read_audio(devset_test_pairs[1][1], as_numpy=True)
    ours = scorer(x)
    ref = dnsmos.run(x, 16000)
    for k in ("sig", "bak", "ovrl", "p808"):
        assert ours[k] == pytest.approx(float(ref[f"{k}_mos"]), abs=1e-4)


def test_clean_beats_noisy_through_the_pool(devset_test_pairs):
    low_snr = devset_test_pairs[:3]
    res_noisy = evaluate([n for _, n, _ in low_snr], None, metrics="dnsmos", n_jobs=0)
    res_clean = evaluate([c for _, _, c in low_snr], None, metrics="dnsmos", n_jobs=0)
    assert res_clean.means["dnsmos_ovrl"] > res_noisy.means["dnsmos_ovrl"] + 0.3
    assert res_clean.means["dnsmos_bak"] > res_noisy.means["dnsmos_bak"] + 0.5
    assert all(1.0 <= v <= 5.0 for v in res_clean.means.values())


def test_input_errors(scorer):
    with pytest.raises(ValueError, match="16 kHz"):
        scorer(np.zeros(16000, np.float32), 8000)
    with pytest.raises(ValueError, match="too short"):
        scorer(np.zeros(100, np.float32))
