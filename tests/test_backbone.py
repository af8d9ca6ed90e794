"""SpectralUNetSE: encode/decode protocol, padding invariance, causality, sizes."""

import pytest
import torch

from sb_mal.models import SpectralUNetSE


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return SpectralUNetSE(channels=(8, 16), bottleneck_dim=32, rnn_layers=1).eval()


def test_forward_is_decode_of_encode(small):
    wav = torch.randn(2, 8000)
    lens = torch.tensor([1.0, 0.7])
    with torch.no_grad():
        a = small(wav, lens)
        enc = small.encode(wav, lens)
        b = small.decode(enc)
    assert torch.equal(a, b)
    assert set(enc.taps) == {"enc1", "enc2", "bottleneck"} == set(small.tap_names)
    assert enc.bottleneck.shape == (2, 8000 // 256 + 1, 32)
    assert enc.frame_mask.sum(1).tolist() == [32, int(round(0.7 * 8000)) // 256 + 1]


def test_padding_does_not_change_valid_output(small):
    torch.manual_seed(1)
    short = torch.randn(1, 5000)
    batch = torch.zeros(2, 8000)
    batch[0, :5000] = short[0]
    batch[1] = torch.randn(8000)
    with torch.no_grad():
        alone = small(short)
        padded = small(batch, torch.tensor([5000 / 8000, 1.0]))
        garbage = batch.clone()
        garbage[0, 5000:] = 10 * torch.randn(3000)  # whatever is in the padding
        padded2 = small(garbage, torch.tensor([5000 / 8000, 1.0]))
    # identical except where the last STFT window straddles the end (overlap-add normalisation)
    assert torch.allclose(padded[0, : 5000 - 256], alone[0, : 5000 - 256], atol=1e-5)
    # the content of the padding is ignored altogether
    assert torch.allclose(padded2[0, :5000], padded[0, :5000], atol=1e-6)


def test_causal_model_ignores_the_future():
    torch.manual_seed(0)
    model = SpectralUNetSE(channels=(8, 16), bottleneck_dim=32, rnn_layers=1, causal=True).eval()
    x = torch.randn(1, 8000)
    y = x.clone()
    y[:, 6000:] = torch.randn(1, 2000)
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, : 6000 - 512], b[:, : 6000 - 512], atol=1e-5)
    assert not torch.allclose(a[:, 6000:], b[:, 6000:], atol=1e-3)
    # the non-causal model does look ahead
    nc = SpectralUNetSE(channels=(8, 16), bottleneck_dim=32, rnn_layers=1).eval()
    with torch.no_grad():
        assert not torch.allclose(nc(x)[:, :4000], nc(y)[:, :4000], atol=1e-6)


def test_default_size_config_and_errors():
    model = SpectralUNetSE()
    n = sum(p.numel() for p in model.parameters())
    assert 1.0e6 <= n <= 2.0e6
    assert model.config["channels"] == [16, 32, 48, 64] and model.config["causal"] is False
    rebuilt = SpectralUNetSE(**model.config)
    assert sum(p.numel() for p in rebuilt.parameters()) == n
    with pytest.raises(ValueError, match=r"expects waveforms \[batch, samples\], got \(8000,\)"):
        model(torch.randn(8000))
    with pytest.raises(ValueError, match="at least one encoder block"):
        SpectralUNetSE(channels=())


def test_trains_on_a_toy_denoising_task(small):
    torch.manual_seed(0)
    model = SpectralUNetSE(channels=(8, 16), bottleneck_dim=32, rnn_layers=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = torch.arange(8000) / 16000
    clean = 0.3 * torch.sin(2 * torch.pi * 440 * t).repeat(4, 1)
    losses = []
    for _ in range(30):
        noisy = clean + 0.1 * torch.randn_like(clean)
        loss = (model(noisy) - clean).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
