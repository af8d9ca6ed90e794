"""sb_mal.audio: reading every soundfile format, downmix, resample, validation, atomic writes."""

import os

import lameenc
import numpy as np
import pytest
import soundfile as sf
import torch

from sb_mal.audio import AudioError, audio_info, list_audio_files, read_audio, resample, write_audio


def _tone(freq=440.0, sr=16000, seconds=0.5, amp=0.3):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_roundtrip_formats(tmp_path, ext):
    x = _tone()
    path = tmp_path / f"x.{ext}"
    write_audio(path, x, 16000)
    y, sr = read_audio(path)
    assert sr == 16000 and isinstance(y, torch.Tensor) and y.dtype == torch.float32
    assert y.shape == (len(x),)
    tol = 1e-3 if ext in ("wav", "flac") else 0.05  # Vorbis is lossy
    assert np.abs(y.numpy() - x).max() < tol


def test_reads_mp3_from_lameenc(tmp_path):
    x = _tone(seconds=1.0)
    enc = lameenc.Encoder()
    enc.set_bit_rate(32)
    enc.set_in_sample_rate(16000)
    enc.set_channels(1)
    data = enc.encode((x * 32767).astype(np.int16).tobytes()) + enc.flush()
    path = tmp_path / "x.mp3"
    path.write_bytes(bytes(data))
    y, sr = read_audio(path)
    assert sr == 16000
    assert len(y) >= len(x)  # MP3 adds codec delay and padding
    # the tone survives: dominant frequency is 440 Hz
    spec = np.abs(np.fft.rfft(y.numpy()[:16000]))
    assert abs(np.argmax(spec) * 16000 / 16000 - 440) <= 2


def test_downmix_and_resample(tmp_path):
    left, right = _tone(440, 48000), _tone(440, 48000) * 0.0
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], 1), 48000)
    y, sr = read_audio(path, sample_rate=16000)
    assert sr == 16000 and y.shape == (8000,)
    assert np.isclose(np.abs(y.numpy()).max(), 0.15, atol=0.01)  # mean of the two channels
    y2, _ = read_audio(path, mono=False)
    assert y2.shape == (2, 24000)
    spec = np.abs(np.fft.rfft(y.numpy()))
    assert abs(np.argmax(spec) * 16000 / len(y) - 440) <= 2


def test_strict_rate_names_file(tmp_path):
    path = tmp_path / "x8k.wav"
    write_audio(path, _tone(sr=8000), 8000)
    with pytest.raises(AudioError, match=r"x8k\.wav.*8000 Hz, expected 16000"):
        read_audio(path, 16000, strict_rate=True)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="missing.wav: no such audio file"):
        read_audio(tmp_path / "missing.wav")
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="garbage.wav: unreadable"):
        read_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav: empty audio"):
        read_audio(empty)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.1], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: audio contains 1 NaN/Inf"):
        read_audio(nan)


def test_write_refuses_input_and_is_atomic(tmp_path, monkeypatch):
    src = tmp_path / "in.wav"
    write_audio(src, _tone(), 16000)
    before = src.read_bytes()
    with pytest.raises(AudioError, match="refusing to overwrite an input"):
        write_audio(src, _tone() * 0.5, 16000, protect=[src])
    assert src.read_bytes() == before

    # a failure while writing leaves the old file intact and no temp file behind
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sf.SoundFile, "write", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_audio(src, _tone() * 0.5, 16000)
    assert src.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["in.wav"]


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(AudioError, match="unknown audio extension"):
        write_audio(tmp_path / "x.xyz", _tone(), 16000)
    with pytest.raises(AudioError, match="NaN/Inf"):
        write_audio(tmp_path / "x.wav", np.array([np.inf, 0.0]), 16000)
    with pytest.raises(AudioError, match="overwrite=False"):
        write_audio(tmp_path / "y.wav", _tone(), 16000)
        write_audio(tmp_path / "y.wav", _tone(), 16000, overwrite=False)


def test_info_list_and_partial_read(tmp_path, devset):
    path = next((devset / "pairs" / "test" / "clean").glob("*.flac"))
    info = audio_info(path)
    assert info.sample_rate == 16000 and info.channels == 1 and 3.0 <= info.duration <= 5.0
    part, _ = read_audio(path, start=100, stop=1100)
    full, _ = read_audio(path)
    assert torch.equal(part, full[100:1100])
    files = list_audio_files(devset / "pairs" / "test" / "clean")
    assert len(files) == 120 and files == sorted(files)
    write_audio(tmp_path / "a" / "b.wav", _tone(), 16000)
    (tmp_path / "a" / "notes.txt").write_text("x")
    assert [os.path.basename(f) for f in list_audio_files(tmp_path)] == ["b.wav"]
    with pytest.raises(AudioError, match="no audio files"):
        list_audio_files(tmp_path / "a", extensions=(".mp3",))


def test_resample_tensor_and_array():
    x = torch.from_numpy(_tone(1000, 48000))
    y = resample(x, 48000, 16000)
    assert isinstance(y, torch.Tensor) and y.shape == (8000,)
    spec = np.abs(np.fft.rfft(y.numpy()))
    assert abs(np.argmax(spec) * 16000 / 8000 - 1000) <= 2
    assert resample(np.ones(10), 16000, 16000).shape == (10,)
    with pytest.raises(ValueError, match="positive"):
        resample(np.ones(10), 0, 16000)
