"""Frozen SSL feature extractor and SSL feature losses, on a tiny random WavLM saved offline."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sb_mal.losses.ssl import SSLL1Loss, SSLMSELoss, SSLMSEPadLoss, pad_frames
from sb_mal.models.ssl import SSLFeatureExtractor, SSLModelLoadError, build_tiny_wavlm

HOP = 320


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def tiny_dir(tiny_wavlm_dir):
    """The shared tiny random WavLM (LayerNorm front end, dropout 0.1; seed 0)."""
    return tiny_wavlm_dir


@pytest.fixture(scope="session")
def ext(tiny_dir):
    return SSLFeatureExtractor(str(tiny_dir))


def _signal(batch: int = 2, samples: int = 8000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    tone = torch.sin(2 * torch.pi * (200 + 300 * t) * t)
    return 0.3 * tone + 0.1 * torch.randn(batch, samples, generator=g)


# -- loading ---------------------------------------------------------------------------------------
def test_loads_from_local_folder_and_matches_the_saved_model(tiny_dir, ext):
    reference = build_tiny_wavlm(seed=0)  # same seed: same weights as the saved folder
    assert ext.source == str(tiny_dir) and ext.frame_hop == HOP and ext.receptive == 400
    x = _signal(1)
    feats, frames = ext(x)
    x_norm = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    expected = reference(x_norm).last_hidden_state
    assert feats.shape == expected.shape == (1, 24, 64) and frames.tolist() == [24]
    assert torch.allclose(feats, expected, atol=1e-5)


def test_bad_source_errors_name_the_source(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(SSLModelLoadError, match="no_such_model"):
        SSLFeatureExtractor(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SSLModelLoadError, match=r"empty.*config\.json"):
        SSLFeatureExtractor(str(empty))
    with pytest.raises(SSLModelLoadError, match=r"(?s)nobody/not-a-model.*network.*HF_HUB_OFFLINE"):
        SSLFeatureExtractor("nobody/not-a-model", cache_dir=tmp_path / "cache", local_files_only=True)


def test_rejects_other_rates_short_inputs_and_bad_layers(ext, tiny_dir):
    with pytest.raises(ValueError, match="16000 Hz.*resample"):
        SSLFeatureExtractor(str(tiny_dir), sample_rate=8000)
    with pytest.raises(ValueError, match="receptive field"):
        ext(torch.randn(1, 399))
    for bad in (3, -4, "first", [], [0, "1"]):
        with pytest.raises(ValueError, match="layer"):
            SSLFeatureExtractor(ext.model, layers=bad)


# -- frozen ------------------------------------------------------------------------------------------
def test_stays_in_eval_mode_whatever_train_is_called(ext):
    x = _signal(1)
    first, _ = ext(x)
    nn.ModuleDict({"ssl": ext}).train()  # what a Brain's modules.train() does
    assert ext.training and not any(m.training for m in ext.model.modules())
    ext.model.train()  # even when someone switches the inner model directly, forward runs it in eval
    again, _ = ext(x)
    assert not ext.model.training
    assert torch.equal(first, again)  # dropout 0.1 and LayerDrop 0.1 would make these differ
    ext.eval()


def test_gradient_reaches_the_input_never_the_weights(ext):
    assert all(not p.requires_grad for p in ext.model.parameters())
    assert list(ext.parameters()) == [] and ext.state_dict() == {}  # not trained, not checkpointed
    x = _signal(2).requires_grad_(True)
    feats, _ = ext(x, torch.tensor([1.0, 0.6]))
    feats.pow(2).sum().backward()
    assert x.grad is not None and x.grad[0].abs().sum() > 0
    assert torch.all(x.grad[1, 4800:] == 0)  # padding gets no gradient
    assert all(p.grad is None for p in ext.model.parameters())


def test_float32_under_autocast_and_after_dtype_casts(ext):
    x = _signal(1)
    plain, _ = ext(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto, _ = ext(x)
    assert auto.dtype == torch.float32 and torch.allclose(auto, plain, atol=1e-6)
    ext.double()  # the owner's casts reach the model; the next input decides its compute dtype again
    assert all(p.dtype == torch.float64 for p in ext.model.parameters())
    again, _ = ext(x)
    assert again.dtype == torch.float32 and all(p.dtype == torch.float32 for p in ext.model.parameters())
    assert torch.allclose(again, plain, atol=1e-6)
    half, _ = ext(x.to(torch.bfloat16))  # half-precision input: computed in float32
    assert half.dtype == torch.float32 and all(p.dtype == torch.float32 for p in ext.model.parameters())


# -- lengths, layers, normalisation -------------------------------------------------------------------
@pytest.mark.parametrize("layers", ["last", [0, -1]])
def test_padded_batch_matches_items_alone_over_valid_frames(ext, layers):
    extractor = SSLFeatureExtractor(ext.model, layers=layers)
    x = _signal(3)
    lengths = torch.tensor([1.0, 0.6, 0.3])
    counts = [8000, 4800, 2400]
    for i, n in enumerate(counts):  # padding content must not matter (normalisation, attention mask)
        x[i, n:] = 5 * torch.randn(8000 - n)
    feats, frames = extractor(x, lengths)
    assert frames.tolist() == [extractor.frames(n) for n in counts] == [24, 14, 7]
    for i, n in enumerate(counts):
        alone, alone_frames = extractor(x[i:i + 1, :n])
        f = int(frames[i])
        assert alone_frames.tolist() == [f] and alone.shape[-2] == f
        assert torch.allclose(feats[..., i, :f, :], alone[..., 0, :, :], atol=1e-4)
        assert torch.all(feats[..., i, f:, :] == 0)


def test_group_norm_model_uses_no_mask_and_per_item_is_exact():
    model = build_tiny_wavlm(norm="group")
    batched = SSLFeatureExtractor(model)
    exact = SSLFeatureExtractor(model, per_item=True)
    assert not batched.uses_attention_mask
    x = _signal(2)
    lengths = torch.tensor([1.0, 0.5])
    feats, frames = exact(x, lengths)
    approx, approx_frames = batched(x, lengths)
    alone, _ = exact(x[1:, :4000])
    assert torch.equal(frames, approx_frames) and frames.tolist() == [24, 12]
    assert torch.allclose(feats[1, :12], alone[0], atol=1e-5)
    assert torch.all(feats[1, 12:] == 0) and torch.all(approx[1, 12:] == 0)
    # a too-short item has no frames, in either mode
    short, short_frames = exact(x, torch.tensor([1.0, 0.02]))
    assert short_frames.tolist() == [24, 0] and torch.all(short[1] == 0)


def test_layer_selection_shapes_and_values(ext):
    reference = build_tiny_wavlm(seed=0)
    x = _signal(2)
    x_norm = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-7)
    out = reference(x_norm, output_hidden_states=True)
    hidden = out.hidden_states
    assert len(hidden) == 3  # CNN/projection output + 2 transformer layers
    cases = [
        ("last", out.last_hidden_state),
        (1, hidden[1]),
        (-1, hidden[-1]),
        ("average", torch.stack(hidden).mean(0)),
        ([0, 2], torch.stack([hidden[0], hidden[2]])),
    ]
    for layers, expected in cases:
        feats, frames = SSLFeatureExtractor(ext.model, layers=layers)(x)
        assert feats.shape == expected.shape == ((2, 2, 24, 64) if isinstance(layers, list) else (2, 24, 64))
        assert torch.allclose(feats, expected, atol=1e-5), layers
        assert frames.tolist() == [24, 24]


def test_normalisation_uses_valid_samples_only(ext):
    x = 3.0 + 2.0 * _signal(2)
    counts = torch.tensor([8000, 2500])
    x[1, 2500:] = 100.0
    y = ext.normalize_waveform(x, counts)
    assert torch.allclose(y[1, :2500].mean(), torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(y[1, :2500].var(unbiased=False), torch.tensor(1.0), atol=1e-4)
    assert torch.all(y[1, 2500:] == 0)
    # features: the DC offset and gain are normalised away; without normalisation they are not
    base, _ = ext(_signal(1))
    shifted, _ = ext(3.0 + 2.0 * _signal(1))
    raw = SSLFeatureExtractor(ext.model, normalize_input=False)
    assert torch.allclose(base, shifted, atol=1e-4)
    assert not torch.allclose(raw(_signal(1))[0], raw(3.0 + 2.0 * _signal(1))[0], atol=1e-2)


# -- losses ------------------------------------------------------------------------------------------
LOSSES = [SSLL1Loss, SSLMSELoss, SSLMSEPadLoss]


@pytest.mark.parametrize("cls", LOSSES, ids=lambda c: c.__name__)
def test_loss_zero_for_identical_positive_otherwise_and_reductions(ext, cls):
    loss = cls(ext, **({"seed": 0} if cls is SSLMSEPadLoss else {}))
    clean = _signal(2)
    lengths = torch.tensor([1.0, 0.7])
    same = loss(clean, clean, lengths, reduction="batch")
    noisy = (clean + 0.3 * torch.randn(2, 8000)).requires_grad_(True)
    worse, parts = loss(noisy, clean, lengths, reduction="batch", terms=True)
    assert same.shape == worse.shape == (2,)
    tolerance = 0.0 if cls is not SSLMSEPadLoss else 0.01 * float(worse.detach().min())
    assert torch.all(same <= tolerance) and torch.all(worse > 0)
    assert parts == {}  # one layer: no part besides the value itself
    mean = loss(noisy, clean, lengths)
    mean.backward()
    assert mean.dim() == 0 and noisy.grad.abs().sum() > 0
    assert all(p.grad is None for p in ext.model.parameters())
    if cls is not SSLMSEPadLoss:  # pad draws differ between calls
        assert torch.isclose(mean, worse.mean()) and torch.isclose(loss(noisy, clean, lengths, "sum"), worse.sum())
    with pytest.raises(ValueError, match="reduction"):
        loss(clean, clean, reduction="none")


@pytest.mark.parametrize("cls", LOSSES, ids=lambda c: c.__name__)
def test_loss_padding_never_contributes(ext, cls):
    kwargs = {"p_range": (0.04, 0.04)} if cls is SSLMSEPadLoss else {}
    loss = cls(ext, **kwargs)
    clean = _signal(2)
    pred = clean + 0.3 * torch.randn(2, 8000)
    lengths = torch.tensor([1.0, 0.5])
    base = loss(pred, clean, lengths, reduction="batch")
    pred2, clean2 = pred.clone(), clean.clone()
    pred2[1, 4000:] = 10 * torch.randn(4000)
    clean2[1, 4000:] = -3.0
    assert torch.allclose(base, loss(pred2, clean2, lengths, reduction="batch"), atol=1e-5)


def test_loss_layers_dim_reduction_and_construction(ext, tiny_dir):
    clean, pred = _signal(1), _signal(1, seed=1)
    both = SSLMSELoss(source=str(tiny_dir), layers=[1, 2])
    value, parts = both(pred, clean, terms=True)
    terms = {**{k: float(v) for k, v in parts.items()}, both.name: float(value)}
    assert set(terms) == {"ssl_mse", "ssl_mse_layer1", "ssl_mse_layer2"}
    assert terms["ssl_mse"] == pytest.approx((terms["ssl_mse_layer1"] + terms["ssl_mse_layer2"]) / 2)
    assert float(value) == pytest.approx(terms["ssl_mse"])
    summed = SSLMSELoss(ext, dim_reduction="sum")(pred, clean)
    assert float(summed) == pytest.approx(64 * float(SSLMSELoss(ext)(pred, clean)), rel=1e-5)
    with pytest.raises(ValueError, match="either an extractor or source"):
        SSLL1Loss(ext, layers=2)
    with pytest.raises(ValueError, match="dim_reduction"):
        SSLL1Loss(ext, dim_reduction="max")


# -- zero padding ------------------------------------------------------------------------------------
def test_pad_frames_arithmetic():
    assert pad_frames(16000, 0.02) == 1 and pad_frames(16000, 0.05) == 3  # 2.5 frames: halves round up
    assert pad_frames(160000, 0.03, HOP) == 15 and pad_frames(1000, 0.05, HOP) == 0
    lengths = torch.tensor([16000, 48000, 160000, 333333])
    for p in torch.linspace(0.02, 0.05, 7):
        frames = pad_frames(lengths, p.expand(4), HOP)
        assert frames.dtype == torch.long
        assert frames.tolist() == [pad_frames(int(n), float(p), HOP) for n in lengths]
        assert torch.all((frames * HOP - p * lengths).abs() <= HOP / 2 + 1e-6)  # nearest whole frame
    with pytest.raises(ValueError, match="hop"):
        pad_frames(100, 0.1, 0)


def test_pad_draws_are_within_2_to_5_percent_and_seeded(ext):
    counts = torch.full((2000,), 160000)
    draws = SSLMSEPadLoss(ext, seed=7).sample_pad_frames(counts)
    fraction = draws.double() * HOP / 160000
    assert fraction.min() >= 0.02 - 1e-9 and fraction.max() <= 0.05 + 1e-9
    assert draws.min() == 10 and draws.max() == 25 and len(draws.unique()) == 16
    assert torch.equal(draws, SSLMSEPadLoss(ext, seed=7).sample_pad_frames(counts))
    assert not torch.equal(draws, SSLMSEPadLoss(ext, seed=8).sample_pad_frames(counts))
    short = SSLMSEPadLoss(ext, seed=0).sample_pad_frames(torch.tensor([1000]))
    assert short.tolist() == [1]  # min_pad_frames
    for bad in ({"side": "middle"}, {"p_range": (0.05, 0.02)}, {"min_pad_frames": -1}):
        with pytest.raises(ValueError):
            SSLMSEPadLoss(ext, **bad)


@pytest.mark.parametrize("side", ["start", "end", "both"])
def test_pad_drops_exactly_the_padded_frames(ext, side):
    loss = SSLMSEPadLoss(ext, p_range=(0.12, 0.12), side=side)  # 0.12 * 8000 / 320 = 3 frames
    clean = _signal(2)
    counts = torch.tensor([8000, 5600])
    aligned, frames = loss._reference(clean, counts)
    assert loss.last_pad_frames.tolist() == [3, 2] and frames.tolist() == [24, 17]
    est, _ = ext.extract(clean, counts)
    assert aligned.shape[1:] == est.shape  # [1, B, F, D] vs [B, F, D]
    before = {"start": [3, 2], "end": [0, 0], "both": [1, 1]}[side]
    for i, (n, k, b) in enumerate(zip(counts.tolist(), loss.last_pad_frames.tolist(), before)):
        item = ext.normalize_waveform(clean[i:i + 1, :n], torch.tensor([n]))
        padded = torch.cat([torch.zeros(1, b * HOP), item, torch.zeros(1, (k - b) * HOP)], 1)
        alone, alone_frames = ext.extract(padded, None, normalize=False)
        f = int(frames[i])
        assert int(alone_frames) == f + k
        assert torch.allclose(aligned[0, i, :f], alone[0, b:b + f], atol=1e-4)


def test_pad_keeps_content_aligned_while_shifting_positions(ext):
    x = _signal(1, 16000)
    loss = SSLMSEPadLoss(ext, p_range=(0.06, 0.06))  # 3 frames at the start
    pad_value = float(loss(x, x))
    # the same padded reference compared frame by frame WITHOUT dropping the padded frames
    k = int(loss.last_pad_frames[0])
    assert k == 3
    padded = torch.cat([torch.zeros(1, k * HOP), ext.normalize_waveform(x, torch.tensor([16000]))], 1)
    ref, _ = ext.extract(padded, None, normalize=False)
    est, _ = ext(x)
    misaligned = float((ref[:, : est.shape[1]] - est).pow(2).mean())
    assert 0 < pad_value < 0.01 * misaligned
    # layer 0 is local (CNN + 16-frame positional conv): away from the start, features are identical
    local = SSLFeatureExtractor(ext.model, layers=0)
    aligned, _ = SSLMSEPadLoss(local, p_range=(0.06, 0.06))._reference(x, torch.tensor([16000]))
    alone, _ = local(x)
    assert torch.allclose(aligned[0, 0, 8:], alone[0, 8:], atol=1e-5)
    assert not torch.allclose(aligned[0, 0, :8], alone[0, :8], atol=1e-3)  # positions did change
