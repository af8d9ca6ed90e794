"""Reconstruction losses: SpeechBrain signature, masking, reductions, reference values."""

import numpy as np
import pytest
import torch
from speechbrain.utils.metric_stats import MetricStats

from sb_mal.losses import MultiResolutionSTFTLoss, SISDRLoss, STFTLoss, WaveformL1, WaveformMSE, WeightedSum
from sb_mal.metrics.intrusive import si_sdr

LOSSES = [WaveformL1(), WaveformMSE(), SISDRLoss(), STFTLoss(512, 128), MultiResolutionSTFTLoss()]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: type(l).__name__)
def test_padding_never_contributes(loss):
    torch.manual_seed(0)
    target = torch.randn(2, 8000)
    pred = target + 0.1 * torch.randn(2, 8000)
    lens = torch.tensor([1.0, 0.5])
    base = loss(pred, target, lens, reduction="batch")
    pred2, target2 = pred.clone(), target.clone()
    pred2[1, 4000 + 600 :] = 5 * torch.randn(3400)  # beyond one STFT window of the boundary
    target2[1, 4000 + 600 :] = 0
    changed = loss(pred2, target2, lens, reduction="batch")
    assert torch.allclose(base, changed, atol=1e-5)
    assert base.shape == (2,)
    assert torch.isclose(loss(pred, target, lens), base.mean())


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: type(l).__name__)
def test_gradient_flows_and_better_is_lower(loss):
    torch.manual_seed(1)
    target = torch.randn(1, 8000)
    pred = (target + 0.3 * torch.randn(1, 8000)).requires_grad_(True)
    worse = loss(pred, target)
    worse.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    better = loss(target + 0.03 * torch.randn(1, 8000), target)
    assert better < worse


def test_sisdr_matches_metric_and_is_scale_invariant():
    rng = np.random.default_rng(0)
    t = rng.standard_normal(16000)
    p = t + 0.2 * rng.standard_normal(16000)
    ours = -SISDRLoss()(torch.tensor(p)[None].float(), torch.tensor(t)[None].float())
    assert float(ours) == pytest.approx(si_sdr(t, p), abs=1e-2)
    scaled = -SISDRLoss()(3 * torch.tensor(p)[None].float(), torch.tensor(t)[None].float())
    assert float(scaled) == pytest.approx(float(ours), abs=1e-3)


def test_shape_errors_name_shapes():
    with pytest.raises(ValueError, match=r"expected waveforms \[batch, samples\], got predictions \(10,\)"):
        WaveformL1()(torch.zeros(10), torch.zeros(10))
    with pytest.raises(ValueError, match="batch sizes differ"):
        WaveformL1()(torch.zeros(2, 10), torch.zeros(3, 10))
    with pytest.raises(ValueError, match="reduction must be"):
        WaveformL1()(torch.zeros(1, 10), torch.zeros(1, 10), reduction="avg")
    # a few samples of difference (STFT framing) are tolerated, as in SpeechBrain
    assert WaveformL1()(torch.zeros(1, 16000), torch.zeros(1, 16003)) == 0
    with pytest.raises(ValueError, match="predictions have 16000 samples but targets 32000"):
        WaveformL1()(torch.zeros(1, 16000), torch.zeros(1, 32000))


def test_weighted_sum():
    loss = WeightedSum({"l1": WaveformL1(), "mse": WaveformMSE(), "off": SISDRLoss()}, {"mse": 2.0, "off": 0.0})
    p, t = torch.zeros(2, 4), torch.ones(2, 4)
    assert float(loss(p, t)) == pytest.approx(3.0)
    value, parts = loss(p, t, terms=True)
    assert float(value) == pytest.approx(3.0) and {k: float(v) for k, v in parts.items()} == {"l1": 1.0, "mse": 1.0}
    with pytest.raises(ValueError, match=r"unknown loss terms \['nope'\]"):
        WeightedSum({"l1": WaveformL1()}, {"nope": 1.0})


def test_works_like_a_stock_speechbrain_cost():
    """As in recipes/Voicebank/enhance/*: MetricStats(metric=compute_cost).append(ids, pred, target, lens, reduction='batch')."""
    stats = MetricStats(metric=MultiResolutionSTFTLoss())
    t = torch.randn(3, 8000)
    stats.append(["a", "b", "c"], t + 0.1 * torch.randn(3, 8000), t, torch.tensor([1.0, 0.8, 0.6]), reduction="batch")
    assert len(stats.scores) == 3 and stats.summarize("average") > 0


def test_mean_reduction_weighs_every_utterance_the_same_unlike_speechbrains_length_weighted_mean():
    from speechbrain.nnet.losses import l1_loss

    pred = torch.zeros(2, 100)
    target = torch.cat([torch.ones(1, 100), 3 * torch.ones(1, 100)])
    lengths = torch.tensor([1.0, 0.2])  # item 0: 100 valid samples of error 1; item 1: 20 of error 3
    ours = WaveformL1()(pred, target, lengths)
    assert torch.isclose(ours, torch.tensor((1.0 + 3.0) / 2))  # the mean of the per-item means
    theirs = l1_loss(pred, target, lengths)
    assert torch.isclose(theirs, torch.tensor((100 * 1.0 + 20 * 3.0) / 120))  # weighted by valid length
    full = torch.ones(2)
    assert torch.isclose(WaveformL1()(pred, target, full), l1_loss(pred, target, full))  # equal lengths: the same


def test_spectra_instead_of_waveforms_name_the_recipe_setting():
    spectra = torch.rand(2, 63, 257)
    with pytest.raises(ValueError, match=r"waveform_target: True"):
        WaveformL1()(spectra, spectra)
    with pytest.raises(ValueError, match=r"expected waveforms") as err:
        WaveformL1()(torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5))
    assert "waveform_target" not in str(err.value)  # the hint only where it is the likely fix
