"""Codec-approximation loss: MP3 pairs, codec U-Nets, the loss (SpeechBrain signature)."""

import json
import os

import numpy as np
import pytest
import torch
from scipy.signal import correlate

from sb_mal.audio import read_audio, write_audio
from sb_mal.data import mp3 as mp3mod
from sb_mal.data.mp3 import LAME_DELAY, Mp3PairDataset, codec_delay, mp3_roundtrip
from sb_mal.losses.codec import LAYER_SETS, CodecApproximationLoss, layer_set
from sb_mal.models.codec_net import SpectralCodecNet, TimeCodecNet


def _lag(y, x, max_lag=2000):
    """Lag (samples) of y relative to x at the cross-correlation peak."""
    c = correlate(y, x, mode="full", method="fft")
    lags = np.arange(-len(x) + 1, len(y))
    keep = np.abs(lags) <= max_lag
    return int(lags[keep][np.argmax(c[keep])])


def _band_energy(x, lo, hi=None, rate=16000):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    return float(spec[(f >= lo) & (f < (hi or rate))].sum())


def _devset_files(devset):
    music = sorted((devset / "music" / "train").glob("*.flac"))[:2]
    speech = [sorted((devset / "speech" / "train" / v).glob("*.flac"))[7] for v in ("fr", "it", "ru")]
    return music + speech


# -- MP3 round trip --------------------------------------------------------------------------------
def test_roundtrip_is_aligned_and_same_length_on_devset(devset):
    for path in _devset_files(devset):
        x, _ = read_audio(path, as_numpy=True)
        x = x[: 16000 * 8]
        y = mp3_roundtrip(x)
        assert y.shape == x.shape and y.dtype == np.float32
        assert _lag(y, x) == 0, path.name
        # the raw decoder output is late by the codec delay: the alignment step is what fixes it
        raw = mp3mod._encode_decode(x, 16000, 16, 2)
        assert _lag(raw, x) == LAME_DELAY
        assert np.corrcoef(x, y)[0, 1] > 0.9


def test_codec_delay_is_measured_and_cached():
    codec_delay.cache_clear()
    assert codec_delay(16000, 16) == 1105
    assert codec_delay(16000, 16) == 1105
    assert codec_delay.cache_info().hits >= 1 and codec_delay.cache_info().misses == 1
    # another rate/bit rate: measured, and the round trip is aligned there too
    x = np.random.default_rng(0).standard_normal(22050).astype(np.float32) * 0.1
    x = np.convolve(x, np.ones(8) / 8, mode="same")  # keep it below the low-pass
    y = mp3_roundtrip(x, sample_rate=22050, bitrate_kbps=32)
    assert y.shape == x.shape and _lag(y, x) == 0


def test_coded_signal_is_band_limited(devset):
    # LAME at 16 kbps / 16 kHz low-passes at about 5.5 kHz (white noise: -20 dB re input at 5.5 kHz);
    # measured above 6 kHz on these files: -26 to -84 dB, coded fraction <= 1.4e-6 of the energy
    for path in _devset_files(devset):
        x, _ = read_audio(path, as_numpy=True)
        x = x[16000 : 16000 * 9] if len(x) > 16000 * 9 else x
        y = mp3_roundtrip(x)
        hi_x, hi_y = _band_energy(x, 6000), _band_energy(y, 6000)
        assert hi_x / _band_energy(x, 0) > 1e-4, path.name  # the input has content there
        assert hi_y < 1e-2 * hi_x, path.name  # the coded signal >= 20 dB less
        assert hi_y / _band_energy(y, 0) < 1e-5, path.name
        low_ratio = _band_energy(y, 0, 3000) / _band_energy(x, 0, 3000)
        assert 0.8 < low_ratio < 1.1  # the band below 3 kHz survives (measured 0.89-0.91)


def test_roundtrip_short_inputs_and_errors():
    for n in (1, 100, 577, 2000):
        assert mp3_roundtrip(0.1 * np.ones(n)).shape == (n,)
    assert mp3_roundtrip(torch.zeros(300)).shape == (300,)
    with pytest.raises(ValueError, match=r"mono waveform \[samples\], got shape \(2, 10\)"):
        mp3_roundtrip(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="NaN"):
        mp3_roundtrip(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="not an MP3 bit rate at 16000 Hz"):
        mp3_roundtrip(np.zeros(100), bitrate_kbps=17)
    with pytest.raises(ValueError, match="not an MP3 rate"):
        mp3_roundtrip(np.zeros(100), sample_rate=15000)


# -- dataset ------------------------------------------------------------------------------------------
@pytest.fixture()
def audio_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "audio"
    write_audio(d / "long.wav", 0.1 * rng.standard_normal(40000), 16000)
    write_audio(d / "sub" / "short.wav", 0.1 * rng.standard_normal(3000), 16000)
    write_audio(d / "other_rate.wav", 0.1 * rng.standard_normal(24000), 24000)
    return d


def test_dataset_determinism_and_epochs(audio_dir):
    a = Mp3PairDataset(audio_dir, segment_samples=8000, num_items=6, seed=3)
    b = Mp3PairDataset(audio_dir, segment_samples=8000, num_items=6, seed=3)
    assert len(a.files) == 3 and len(a) == 6
    x = a[2]
    assert set(x) >= {"id", "noisy_sig", "clean_sig"} and x["noisy_sig"].shape == (8000,)
    assert torch.equal(x["noisy_sig"], b[2]["noisy_sig"]) and torch.equal(x["clean_sig"], b[2]["clean_sig"])
    a.set_epoch(1)
    assert not torch.equal(a[2]["noisy_sig"], x["noisy_sig"])
    a.set_epoch(0)
    assert torch.equal(a[2]["noisy_sig"], x["noisy_sig"])
    fixed = Mp3PairDataset(audio_dir, segment_samples=8000, num_items=6, seed=3, epoch_dependent=False)
    first = fixed[1]["noisy_sig"]
    fixed.set_epoch(5)
    assert torch.equal(fixed[1]["noisy_sig"], first)
    other_seed = Mp3PairDataset(audio_dir, segment_samples=8000, num_items=6, seed=4)
    assert not torch.equal(other_seed[2]["noisy_sig"], x["noisy_sig"])


def test_dataset_segments_are_cut_from_the_coded_file(audio_dir, tmp_path):
    ds = Mp3PairDataset(audio_dir, segment_samples=5000, num_items=20, seed=0)
    k = ds.files.index(str(audio_dir / "long.wav"))
    whole, _ = read_audio(ds.files[k], as_numpy=True)
    coded = mp3_roundtrip(whole)
    found = 0
    for i in range(len(ds)):
        item = ds[i]
        if item["source"] == ds.files[k] and item["start"] + 5000 <= len(whole):
            s = item["start"]
            assert np.array_equal(item["noisy_sig"].numpy(), whole[s : s + 5000])
            assert np.array_equal(item["clean_sig"].numpy(), coded[s : s + 5000])
            found += 1
    assert found > 0
    # a 3000-sample file cannot fill 5000 samples alone: segments are completed with other files
    ds_short = Mp3PairDataset(audio_dir / "sub", segment_samples=5000, num_items=2)
    assert ds_short[0]["noisy_sig"].shape == (5000,)
    whole_items = Mp3PairDataset(audio_dir, segment_samples=None)
    assert len(whole_items) == 3 and whole_items[0]["noisy_sig"].shape == whole_items[0]["clean_sig"].shape
    k24 = whole_items.files.index(str(audio_dir / "other_rate.wav"))
    assert whole_items[k24]["noisy_sig"].shape == (16000,)  # the 24 kHz file, resampled


def test_dataset_disk_cache(audio_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    ds = Mp3PairDataset(audio_dir, segment_samples=4000, num_items=4, cache_dir=cache)
    ds.prepare(progress=False)
    files = sorted(os.listdir(cache))
    assert len(files) == 3 and all(f.endswith(".npy") and not f.startswith(".tmp") for f in files)
    ref = ds[1]
    monkeypatch.setattr(mp3mod, "mp3_roundtrip", lambda *a, **k: (_ for _ in ()).throw(AssertionError("coded")))
    again = Mp3PairDataset(audio_dir, segment_samples=4000, num_items=4, cache_dir=cache)
    assert torch.equal(again[1]["clean_sig"], ref["clean_sig"])  # served from the cache, no coding
    with pytest.raises(ValueError, match="needs cache_dir"):
        Mp3PairDataset(audio_dir).prepare()
    # another bit rate is another cache entry
    assert ds.cache_path(0) != Mp3PairDataset(audio_dir, bitrate_kbps=24, cache_dir=cache).cache_path(0)


# -- codec nets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 7, 33, 45])
def test_spectral_net_shapes_for_odd_frames(frames):
    torch.manual_seed(0)
    net = SpectralCodecNet(filters=4).eval()
    mag = torch.rand(2, 512, frames)
    feats = net.features(mag)
    assert net(mag).shape == mag.shape
    assert [n for n in net.layer_names] == [f"enc{i}" for i in range(1, 6)] + [f"dec{i}" for i in range(1, 6)]
    for f, name, ch in zip(feats, net.layer_names, [4, 8, 16, 32, 64, 32, 16, 8, 4]):
        level = net.layer_level(name)
        assert f.shape == (2, ch, 512 >> level, -(-frames // (1 << level))), name
    with torch.no_grad():
        assert torch.equal(feats[-1], net(mag)) and float(feats[-1].min()) >= 0 and float(feats[-1].max()) <= 1


def test_time_net_shapes_and_output_range():
    net = TimeCodecNet(filters=4)
    x = torch.randn(2, 1001)
    with torch.no_grad():
        assert net(x).shape == (2, 1001) and float(net(x).abs().max()) <= 1
        feats = net.features(x)
    assert len(feats) == 16 and feats[0].shape == (2, 4, 1001) and feats[7].shape == (2, 32, 8)
    assert feats[8].shape == (2, 32, 8) and feats[-1].shape == (2, 4, 1001)


@pytest.mark.parametrize("cls", [SpectralCodecNet, TimeCodecNet])
def test_net_output_on_valid_steps_ignores_padding(cls):
    torch.manual_seed(0)
    net = cls(filters=4).eval()
    x = torch.randn(1, 512, 40).abs() if cls is SpectralCodecNet else torch.randn(1, 3000)
    padded = torch.cat([x, 5 * torch.rand_like(x)[..., :23]], dim=-1)
    valid = torch.tensor([x.shape[-1]])
    with torch.no_grad():
        alone, inside = net(x), net(padded, valid)
    assert torch.allclose(alone, inside[..., : x.shape[-1]], atol=1e-5)
    assert float(inside[..., x.shape[-1] :].abs().max()) == 0


def test_config_rebuilds_the_net():
    for net in (SpectralCodecNet(filters=4, compress=0.5), TimeCodecNet(filters=4, levels=3)):
        clone = type(net)(**json.loads(json.dumps(net.config)))
        clone.load_state_dict(net.state_dict())
        assert clone.config == net.config


@pytest.mark.slow
def test_tiny_spectral_net_learns_devset_mp3(devset, tmp_path):
    # 20 s excerpts of three training tracks, 10 s of two test tracks (coding whole tracks costs 3 s)
    for split, seconds, count in (("train", 20, 3), ("test", 10, 2)):
        for path in sorted((devset / "music" / split).glob("*.flac"))[:count]:
            wav, _ = read_audio(path, as_numpy=True, start=16000 * 5, stop=16000 * (5 + seconds))
            write_audio(tmp_path / split / path.name, wav, 16000)
    torch.manual_seed(0)
    seg = 31 * 512  # 32 frames
    train = Mp3PairDataset(tmp_path / "train", segment_samples=seg, num_items=400, seed=0)
    val = Mp3PairDataset(tmp_path / "test", segment_samples=seg, num_items=8, seed=1)
    vx = torch.stack([val[i]["noisy_sig"] for i in range(8)])
    vy = torch.stack([val[i]["clean_sig"] for i in range(8)])
    net = SpectralCodecNet(filters=4)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)

    def val_l1():
        net.eval()
        with torch.no_grad():
            out = float(net.fit_loss(vx, vy).mean())
        net.train()
        return out

    before = val_l1()
    for step in range(40):
        items = [train[step * 4 + j] for j in range(4)]
        x = torch.stack([it["noisy_sig"] for it in items])
        y = torch.stack([it["clean_sig"] for it in items])
        loss = net.fit_loss(x, y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = val_l1()
    s_in, scale, _ = net.prepare(vx)
    identity = float((s_in.clamp(0, 1) - net.prepare(vy, scale=scale)[0].clamp(0, 1)).abs().mean())
    print(f"held-out L1: before {before:.4f}, after 40 steps {after:.4f}, identity {identity:.4f}")
    assert after < 0.75 * before
    assert after < 1.2 * identity  # near (here: below) the identity map after 40 steps


# -- the loss -----------------------------------------------------------------------------------------
def _loss(cls=SpectralCodecNet, **kw):
    torch.manual_seed(0)
    return CodecApproximationLoss(cls(filters=4), **kw)


@pytest.mark.parametrize("cls", [SpectralCodecNet, TimeCodecNet])
def test_gradient_reaches_prediction_not_codec_net(cls):
    loss = _loss(cls, layers="D")
    target = torch.randn(2, 8000)
    pred = (target + 0.1 * torch.randn(2, 8000)).requires_grad_(True)
    value = loss(pred, target, torch.tensor([1.0, 0.7]))
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.codec_net.parameters())
    assert float(loss(target, target)) == 0.0
    assert loss(target + 0.01 * torch.randn(2, 8000), target) < value


def test_codec_net_stays_in_eval_mode():
    loss = _loss(layers="B")
    stats = {k: v.clone() for k, v in loss.codec_net.state_dict().items()}
    loss.train()
    assert loss.training and not any(m.training for m in loss.codec_net.modules())
    target = torch.randn(2, 8000)
    pred = target + 0.1 * torch.randn(2, 8000)
    a, b = loss(pred, target), loss(pred, target)  # dropout would make these differ
    assert torch.equal(a, b)
    assert all(torch.equal(v, loss.codec_net.state_dict()[k]) for k, v in stats.items())  # BN stats untouched
    loss.codec_net.train()  # even when switched on directly
    loss(pred, target)
    assert not loss.codec_net.training


def test_layer_sets():
    expected = {
        "A": ["enc1", "enc2", "enc3", "enc4", "enc5"], "B": ["dec1", "dec2", "dec3", "dec4", "dec5"],
        "C": ["enc4", "enc5", "dec1", "dec2"], "D": ["enc1", "enc2", "enc3", "dec3", "dec4", "dec5"],
        "E": ["enc4", "enc5"], "F": ["enc1", "enc2", "enc3"],
    }
    net = SpectralCodecNet(filters=4)
    for name, layers in expected.items():
        assert list(LAYER_SETS[name]) == layers
        assert CodecApproximationLoss(net, layers=name.lower()).layers == layers
    assert CodecApproximationLoss(net).layers == expected["F"]  # the default
    assert layer_set("F", 8) == ["enc1", "enc2", "enc3", "enc4"]
    assert CodecApproximationLoss(TimeCodecNet(filters=4), layers="C").layers == \
        ["enc5", "enc6", "enc7", "enc8", "dec1", "dec2", "dec3", "dec4"]
    assert CodecApproximationLoss(net, layers=["dec1", "enc2"]).layers == ["enc2", "dec1"]
    with pytest.raises(ValueError, match="unknown layer set 'G'"):
        CodecApproximationLoss(net, layers="G")
    with pytest.raises(ValueError, match=r"unknown codec-net layers \['enc9'\]"):
        CodecApproximationLoss(net, layers=["enc1", "enc9"])
    with pytest.raises(ValueError, match="2 layer_weights for 3 layers"):
        CodecApproximationLoss(net, layer_weights=[1.0, 2.0])
    with pytest.raises(TypeError, match="codec_net must be"):
        CodecApproximationLoss(torch.nn.Linear(2, 2))


def test_terms_weights_and_early_stop():
    loss = _loss(layers="F", la=0.5, lb=0.0, lc=2.0, layer_weights={"enc2": 3.0})
    target = torch.randn(2, 6000)
    pred = target + 0.1 * torch.randn(2, 6000)
    value, parts = loss(pred, target, terms=True)
    value, t = float(value), {k: float(v) for k, v in parts.items()}
    assert "codec_l1" not in t and set(t) == {"wave_l1", "feat_enc1", "feat_enc2", "feat_enc3", "features"}
    assert t["features"] == pytest.approx(t["feat_enc1"] + 3 * t["feat_enc2"] + t["feat_enc3"], rel=1e-5)
    assert value == pytest.approx(0.5 * t["wave_l1"] + 2.0 * t["features"], rel=1e-5)
    feats, out = loss.codec_net.forward_features(torch.rand(1, 512, 12), upto=loss._upto())
    assert len(feats) == 3 and out is None  # set F with lb=0 runs only three layers
    full = _loss(layers="F")
    _, full_parts = full(pred, target, terms=True)
    spectral_out = full.codec_net.prepare(target)
    assert full_parts["codec_l1"] > 0 and spectral_out[0].shape[1] == 512


@pytest.mark.parametrize("cls", [SpectralCodecNet, TimeCodecNet])
def test_padding_never_contributes(cls):
    loss = _loss(cls, layers="D")
    torch.manual_seed(1)
    target = torch.randn(2, 8000)
    pred = target + 0.1 * torch.randn(2, 8000)
    lens = torch.tensor([1.0, 0.5])
    base = loss(pred, target, lens, reduction="batch")
    pred2, target2 = pred.clone(), target.clone()
    pred2[1, 4000:] = 5 * torch.randn(4000)
    target2[1, 4000:] = torch.randn(4000)
    assert torch.allclose(loss(pred2, target2, lens, reduction="batch"), base, atol=1e-6)
    alone = loss(pred[1:, :4000], target[1:, :4000], reduction="batch")
    assert torch.allclose(alone, base[1:], rtol=1e-4, atol=1e-6)  # same as the unpadded item
    assert base.shape == (2,) and torch.isclose(loss(pred, target, lens), base.mean())


def test_stock_recipe_yaml_form():
    from hyperpyyaml import load_hyperpyyaml

    hp = load_hyperpyyaml("""
codec_net: !new:sb_mal.models.codec_net.SpectralCodecNet
    filters: 4
compute_cost: !new:sb_mal.losses.codec.CodecApproximationLoss
    codec_net: !ref <codec_net>
    layers: D
    lb: 0.5
""")
    loss = hp["compute_cost"]
    assert loss.codec_net is hp["codec_net"] and loss.layers == list(LAYER_SETS["D"])
    target = torch.randn(2, 4000)
    value = loss(target + 0.1 * torch.randn(2, 4000), target, torch.tensor([1.0, 0.8]))
    assert torch.isfinite(value) and value > 0


def test_from_pretrained_run_folder(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    from sb_mal.checkpoints import ExportError

    torch.manual_seed(0)
    net = SpectralCodecNet(filters=4)
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"class": "sb_mal.models.codec_net.SpectralCodecNet", "kwargs": net.config, "sample_rate": 16000}
    (run / "model_config.json").write_text(json.dumps(cfg))
    ckpt = Checkpointer(run / "save", {"model": net})
    ckpt.save_checkpoint(meta={"loss": 0.2}, name="best")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ckpt.save_checkpoint(meta={"loss": 0.9}, name="worse")
    loss = CodecApproximationLoss.from_pretrained(run, layers="E", lb=0.0)
    assert loss.layers == ["enc4", "enc5"] and not loss.codec_net.training
    loaded = loss.codec_net.state_dict()
    best = torch.load(run / "save" / "CKPT+best" / "model.ckpt")
    assert all(torch.equal(loaded[k], best[k]) for k in best)
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_config.json").write_text(json.dumps({"class": "torch.nn.Identity", "kwargs": {}}))
    Checkpointer(other / "save", {"model": torch.nn.Identity()}).save_checkpoint(meta={"loss": 0.1})
    with pytest.raises(ExportError, match="not a codec net"):
        CodecApproximationLoss.from_pretrained(other)


def test_magnitude_base_term_is_the_papers_baseline_loss():
    """base="magnitude": the codec loss's first term is MagnitudeL1 (phase-blind), the separation recipes'
    l1_mag loss; the default stays waveform L1."""
    from sb_mal.losses import MagnitudeL1

    target = torch.randn(2, 6000)
    flipped = -target  # same magnitude spectrogram, opposite waveform
    mag = _loss(la=1.0, lb=0.0, lc=0.0 + 1e-9, base="magnitude")
    wave = _loss(la=1.0, lb=0.0, lc=1e-9)
    mag_parts, wave_parts = mag(flipped, target, terms=True)[1], wave(flipped, target, terms=True)[1]
    assert "mag_l1" in mag_parts and "wave_l1" not in mag_parts
    assert mag_parts["mag_l1"] < 1e-4 < wave_parts["wave_l1"]
    pred = target + 0.3 * torch.randn(2, 6000)
    lens = torch.tensor([1.0, 0.7])
    mag_parts = mag(pred, target, lens, terms=True)[1]
    assert float(mag_parts["mag_l1"]) == pytest.approx(float(MagnitudeL1()(pred, target, lens)), rel=1e-5)
    custom = _loss(la=1.0, lb=0.0, lc=1e-9, base=MagnitudeL1(512, 128))
    assert "base" in custom(pred, target, terms=True)[1]
    with pytest.raises(ValueError, match="base must be one of"):
        _loss(base="spectral")


def test_separation_yaml_offers_the_magnitude_l1_baseline(tmp_path):
    from hyperpyyaml import load_hyperpyyaml

    from sb_mal.brains.separation import build_named_cost
    from sb_mal.losses import MagnitudeL1

    text = open(os.path.join(os.path.dirname(__file__), "..", "hparams/folders/separation_speech.yaml")).read()
    hp = load_hyperpyyaml(text, {"data_folder": str(tmp_path), "output_folder": str(tmp_path / "out")})
    cost = build_named_cost(hp["costs"], "l1_mag")
    assert isinstance(cost, MagnitudeL1) and cost.cfg.n_fft == hp["n_fft"] and cost.cfg.hop == hp["hop"]
