"""Model as Loss over models without the encode protocol: SpeechBrain's FCN and MetricGAN+ generator,
plain PyTorch modules; hooks, early stop, tuple/packed outputs, live encoder semantics, errors."""

import pytest
import torch
from speechbrain.lobes.models.MetricGAN import EnhancementGenerator
from speechbrain.nnet.CNN import Conv1d
from speechbrain.nnet.containers import Sequential
from torch import nn

from sb_mal.losses import Log1pMagnitude, ModelAsLoss, ModelAsLossError
from sb_mal.losses.reconstruction import WaveformL1
from sb_mal.models.frozen import FrozenNetworks

pytestmark = pytest.mark.unit


def fcn(seed=0, channels=8):
    torch.manual_seed(seed)
    model = Sequential(input_shape=[None, None, 1])
    model.append(Conv1d, out_channels=channels, kernel_size=9, layer_name="conv1")
    model.append(nn.LeakyReLU(0.3), layer_name="act1")
    model.append(Conv1d, out_channels=channels, kernel_size=9, layer_name="conv2")
    model.append(nn.LeakyReLU(0.3), layer_name="act2")
    model.append(Conv1d, out_channels=1, kernel_size=9, layer_name="conv_out")
    return model


def unsqueeze(wav):
    return wav.unsqueeze(-1)


def signals(batch=2, samples=8000, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(batch, samples, generator=g)
    return clean, clean + 0.3 * torch.randn(batch, samples, generator=g)


def test_forward_stops_after_the_last_tap():
    model = fcn()
    calls = []
    model.conv_out.register_forward_hook(lambda *a: calls.append("conv_out"))
    model.conv2.register_forward_hook(lambda *a: calls.append("conv2"))
    loss = ModelAsLoss(model, taps=["act1"], encoder="live", input_fn=unsqueeze)
    clean, noisy = signals()
    loss(noisy, clean)
    assert calls == []  # neither conv2 nor the output layer ran
    loss = ModelAsLoss(model, taps=["act1", "conv2"], encoder="snapshot", input_fn=unsqueeze)
    calls.clear()
    loss(noisy, clean)
    assert "conv_out" not in calls


def test_value_is_the_masked_mean_l1_of_the_tap():
    model = fcn()
    loss = ModelAsLoss(model, taps=["act1"], encoder="live", input_fn=unsqueeze)
    clean, noisy = signals(samples=4000)
    lengths = torch.tensor([1.0, 0.5])
    captured = {}
    model.act1.register_forward_hook(lambda m, a, out: captured.setdefault(len(captured), out.detach()))
    with torch.no_grad():
        model(unsqueeze(clean))
        model(unsqueeze(noisy))
    ref, est = captured[0], captured[1]  # [B, T, C], channels last
    expected = torch.stack([(est[0] - ref[0]).abs().mean(), (est[1, :2000] - ref[1, :2000]).abs().mean()])
    got = loss(noisy, clean, lengths, reduction="batch")
    assert torch.allclose(got, expected, atol=1e-6)
    assert set(loss(noisy, clean, lengths, terms=True)[1]) == {"mal_act1"}


def test_live_encoder_can_be_called_twice_before_backward_and_sends_no_gradient_into_its_weights():
    """SpeechBrain's templates compute the cost for the loss and again in MetricStats before backward()."""
    model = fcn()
    loss = ModelAsLoss(model, taps=["act2"], encoder="live", input_fn=unsqueeze)
    clean, noisy = signals()
    enhanced = model(unsqueeze(noisy))[:, :, 0]
    first = loss(enhanced, clean)
    second = loss(enhanced, clean, reduction="batch")  # as MetricStats.append does
    (first + second.mean()).backward()
    # the gradient equals that of the same objective through a frozen copy (weights enter as constants)
    g_live = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    frozen = ModelAsLoss(model, taps=["act2"], encoder="snapshot", input_fn=unsqueeze)
    enhanced = model(unsqueeze(noisy))[:, :, 0]
    (frozen(enhanced, clean) + frozen(enhanced, clean, reduction="batch").mean()).backward()
    for a, p in zip(g_live, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_live_encoder_sees_the_weights_of_the_moment():
    model = fcn()
    live = ModelAsLoss(model, taps=["act2"], encoder="live", input_fn=unsqueeze)
    snap = ModelAsLoss(model, taps=["act2"], encoder="snapshot", input_fn=unsqueeze)
    clean, noisy = signals()
    before_live, before_snap = live(noisy, clean), snap(noisy, clean)
    with torch.no_grad():
        model.conv1.conv.weight.mul_(2.0)
    assert not torch.allclose(live(noisy, clean), before_live)
    assert torch.equal(snap(noisy, clean), before_snap)


def test_metricgan_generator_tuple_outputs_lengths_and_train_mode_untouched():
    torch.manual_seed(0)
    gen = EnhancementGenerator(num_layers=1)
    gen.train()
    loss = ModelAsLoss(gen, taps=["blstm"], encoder="live", input_fn=Log1pMagnitude())
    assert loss.pass_lengths  # its forward takes lengths
    clean, noisy = signals(samples=16000)
    enhanced = noisy.clone().requires_grad_(True)
    value = loss(enhanced, clean, torch.tensor([1.0, 0.6]))
    value.backward()
    assert value > 0 and enhanced.grad.abs().sum() > 0
    assert all(p.grad is None for p in gen.parameters())
    assert gen.training and all(m.training for m in gen.modules())  # eval only inside the loss


def test_packed_sequence_taps_are_unpacked():
    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(1, 4, batch_first=True)

        def forward(self, x, lengths):
            n = torch.round(lengths * x.shape[1]).long()
            packed = nn.utils.rnn.pack_padded_sequence(x, n, batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            return nn.utils.rnn.pad_packed_sequence(out, batch_first=True)[0]

    loss = ModelAsLoss(Packed(), taps=["rnn"], encoder="snapshot", input_fn=unsqueeze)
    clean, noisy = signals(samples=400)
    assert loss(noisy, clean, torch.tensor([1.0, 0.5]), reduction="batch").shape == (2,)


def test_frozen_fe_freezes_the_named_encoder_when_the_snapshot_is_taken():
    model = fcn()
    loss = ModelAsLoss(model, taps=["act2"], encoder="snapshot", input_fn=unsqueeze, train_encoder=False,
                       encoder_prefixes=["conv1", "conv2"], snapshot_now="first_call")
    assert all(p.requires_grad for p in model.parameters())
    clean, noisy = signals()
    loss(noisy, clean)
    assert not any(p.requires_grad for n in ("conv1", "conv2") for p in model.get_submodule(n).parameters())
    assert all(p.requires_grad for p in model.conv_out.parameters())


def test_errors_name_the_model_and_the_tap():
    model = fcn()
    with pytest.raises(ValueError, match=r"tap\(s\) \['conv9'\] not found in Sequential; it offers module paths "
                                         r"\[conv1, conv1\.conv, act1"):
        ModelAsLoss(model, taps=["conv9"])
    with pytest.raises(ValueError, match="Sequential has no encode\\(\\) method, so give `taps`"):
        ModelAsLoss(model)
    with pytest.raises(ValueError, match="train_encoder=False .* needs encoder_prefixes"):
        ModelAsLoss(model, taps=["act1"], train_encoder=False)
    clean, noisy = signals()
    wrong_shape = ModelAsLoss(model, taps=["act1"], encoder="live")  # no input_fn: [B, T] instead of [B, T, 1]
    with pytest.raises(ModelAsLossError, match=r"Sequential failed on the input given by input_fn \(tensor of "
                                               r"shape \(2, 8000\)\)"):
        wrong_shape(noisy, clean)
    dropped_batch = ModelAsLoss(model, taps=["act1"], encoder="live", input_fn=lambda w: w.reshape(-1, 1, 1))
    with pytest.raises(ModelAsLossError, match=r"input_fn returned tensor of shape \(16000, 1, 1\) for waveforms "
                                               r"of shape \(2, 8000\)"):
        dropped_batch(noisy, clean)

    class DictOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(1, 2)

        def forward(self, x):
            return {"h": self.enc(x)}

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = DictOut()

        def forward(self, x):
            return self.inner(x)["h"]

    not_tensor = ModelAsLoss(Wrapper(), taps=["inner"], encoder="live", input_fn=unsqueeze)
    with pytest.raises(ModelAsLossError, match="tap 'inner' of Wrapper produced a dict, not a tensor"):
        not_tensor(noisy, clean)


@pytest.fixture()
def every_network_loss(tiny_wavlm_dir):
    """One instance of every sb_mal loss that owns a frozen network, with waveforms it accepts."""
    from sb_mal.losses import CodecApproximationLoss, SSLMSELoss, SSLSoftDTWLoss
    from sb_mal.models.codec_net import SpectralCodecNet

    torch.manual_seed(0)
    return {
        "ModelAsLoss": ModelAsLoss(fcn(), taps=["act1"], input_fn=unsqueeze),
        "CodecApproximationLoss": CodecApproximationLoss(SpectralCodecNet(filters=4, levels=2).eval()),
        "SSLMSELoss": SSLMSELoss(source=str(tiny_wavlm_dir)),
        "SSLSoftDTWLoss": SSLSoftDTWLoss(source=str(tiny_wavlm_dir)),
    }


def test_losses_follow_their_inputs_device_and_dtype_by_one_mechanism(every_network_loss):
    clean, noisy = signals(samples=4000)
    for name, loss in every_network_loss.items():
        owners = [m for m in loss.modules() if isinstance(m, FrozenNetworks)]  # the loss or its feature extractor
        nets = [net for owner in owners for net in owner.frozen_networks()]
        assert nets, f"{name} declares no frozen network"
        value64 = loss(noisy.double(), clean.double())
        dtypes = {p.dtype for net in nets for p in net.parameters()}
        assert value64.dtype == torch.float64 and dtypes == {torch.float64}, (name, dtypes)
        value32 = loss(noisy, clean)
        dtypes = {p.dtype for net in nets for p in net.parameters()}
        assert value32.dtype == torch.float32 and dtypes == {torch.float32}, (name, dtypes)
        assert torch.allclose(value32.double(), value64, rtol=1e-3, atol=1e-5), (name, float(value32), float(value64))
    assert not isinstance(WaveformL1(), FrozenNetworks)  # nothing to move


def test_recurrent_taps_run_without_dropout_and_leave_the_model_as_it_was():
    """RNNs run in train mode with dropout 0 inside the loss (cuDNN backpropagates only in train mode):
    the same function as eval mode, and the model's own mode and dropout are restored."""

    class Rec(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(1, 8, num_layers=2, dropout=0.5, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    torch.manual_seed(0)
    model = Rec().train()
    loss = ModelAsLoss(model, taps=["rnn"], encoder="live", input_fn=unsqueeze)
    clean, noisy = signals(samples=300)
    first, second = loss(noisy, clean), loss(noisy, clean)
    assert torch.equal(first, second)  # no dropout
    with torch.no_grad():
        model.eval()
        expected = (model(unsqueeze(noisy)) - model(unsqueeze(clean))).abs().mean()
        model.train()
    assert torch.allclose(first, expected, atol=1e-6)
    assert model.training and model.rnn.training and model.rnn.dropout == 0.5


def test_speechbrain_generator_mask_covers_every_frame():
    from sb_mal.models import SpeechBrainGenerator

    g = SpeechBrainGenerator(num_layers=1)
    wav = torch.randn(1, 8000)
    assert g(wav, torch.tensor([0.9])).shape == (1, 8000)  # SpeechBrain's LSTM unpacks to the valid length


def _through_detached_views(loss):
    """The live encoder as it ran before constant_weights: ``torch.func.functional_call`` with detached
    copies of the weights (the reference the faster path must equal)."""
    from sb_mal.losses.model_taps import loss_mode

    def features(wav, lengths):
        x = loss._model_input(wav)
        live = loss._live[0]
        params = {f"model.{n}": p.detach() for n, p in live.model.named_parameters()}
        with loss_mode(live.model):
            return torch.func.functional_call(live, params, (x, lengths, loss), strict=False)

    return features


@pytest.mark.parametrize("kind", ["metricgan_hooks", "backbone_encode"])
def test_live_encoder_equals_detached_views_and_restores_requires_grad(kind, monkeypatch):
    """The live encoder runs the model itself with its weights as constants (no functional_call, no
    copies): the loss value and the gradient reaching the enhanced signal equal those of the former
    functional_call path, no weight gets a gradient, and frozen weights stay frozen."""
    from sb_mal.models import SpectralUNetSE

    torch.manual_seed(0)
    if kind == "metricgan_hooks":
        model = EnhancementGenerator(num_layers=2)
        make = lambda: ModelAsLoss(model, taps=["blstm"], encoder="live", input_fn=Log1pMagnitude())
        frozen_part = model.linear1
    else:
        model = SpectralUNetSE(channels=(8, 16), bottleneck_dim=32)
        make = lambda: ModelAsLoss(model, taps=["enc2", "bottleneck"], encoder="live")
        frozen_part = model.encoder_blocks[0]
    frozen_part.requires_grad_(False)  # as frozen_fe leaves part of a model
    flags = [p.requires_grad for p in model.parameters()]
    clean, noisy = signals(samples=8000)
    lengths = torch.tensor([1.0, 0.7])
    results = []
    for path in ("constant weights", "detached views"):
        loss = make()
        if path == "detached views":
            monkeypatch.setattr(loss, "_features", _through_detached_views(loss))
        enhanced = noisy.clone().requires_grad_(True)
        value = loss(enhanced, clean, lengths, reduction="batch")
        value.sum().backward()
        assert all(p.grad is None for p in model.parameters())
        assert [p.requires_grad for p in model.parameters()] == flags
        results.append((value.detach(), enhanced.grad))
    (v_new, g_new), (v_ref, g_ref) = results
    assert torch.equal(v_new, v_ref)
    assert torch.allclose(g_new, g_ref, rtol=1e-5, atol=1e-9) and g_new.abs().sum() > 0


def test_live_encoder_restores_requires_grad_when_the_model_fails():
    model = fcn()
    loss = ModelAsLoss(model, taps=["act1"], encoder="live")  # no input_fn: the conv net rejects [B, T]
    clean, noisy = signals(samples=800)
    with pytest.raises(ModelAsLossError):
        loss(noisy.requires_grad_(True), clean)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_snapshot_of_a_model_on_the_gpu_keeps_cudnn_flat_rnn_weights():
    """A snapshot deep-copied from a model already on the GPU gets one flat weight buffer per RNN, so
    cuDNN does not compact a copy of the weights at every call (it warns when it has to)."""
    import warnings

    torch.manual_seed(0)
    gen = EnhancementGenerator(num_layers=2).cuda()
    features = Log1pMagnitude().cuda()
    clean, noisy = (x.cuda() for x in signals(samples=8000))
    for encoder in ("snapshot", "live"):
        loss = ModelAsLoss(gen, taps=["blstm"], encoder=encoder, input_fn=features)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="RNN module weights are not part of single contiguous")
            loss(noisy.requires_grad_(True), clean).backward()
