"""The pretrained encoders inside pip wheels (torchfcpe, Resemblyzer) as frozen frame-feature models.

Each is checked against the package's own computation on real devset speech, so a wrong front end,
a wrong weight mapping or a wrong layer shows up as a numeric difference.
"""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from sb_mal.losses.ssl import SSLL1Loss, SSLMSEPadLoss, SSLSoftDTWLoss
from sb_mal.models.extractors import build_frame_extractor
from sb_mal.models.frame_features import FCPEFeatureExtractor, FrameFeatureExtractor, ResemblyzerFeatureExtractor

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def speech(devset) -> torch.Tensor:
    """2 s of real clean speech, [1, 32000]."""
    wav, rate = sf.read(sorted((devset / "pairs" / "valid" / "clean").glob("*.flac"))[0], dtype="float32")
    assert rate == 16000
    return torch.from_numpy(wav[:32000])[None]


@pytest.fixture(scope="module")
def fcpe():
    pytest.importorskip("torchfcpe", reason="the encoders extra is not installed")
    return FCPEFeatureExtractor()


@pytest.fixture(scope="module")
def resemblyzer():
    if importlib.util.find_spec("resemblyzer") is None:
        pytest.skip("the encoders extra (Resemblyzer) is not installed")
    return ResemblyzerFeatureExtractor()


# -- torchfcpe --------------------------------------------------------------------------------------
def test_fcpe_front_end_and_weights_reproduce_torchfcpe_pitch(fcpe, speech):
    from torchfcpe import spawn_bundled_infer_model

    reference = spawn_bundled_infer_model("cpu")
    with torch.no_grad():
        mel_ref = reference.wav2mel(speech[..., None], 16000)
        assert torch.allclose(fcpe.log_mel(speech), mel_ref, atol=1e-4)
        f0_ref = reference.infer(speech[..., None], 16000)
        feats, frames = fcpe(speech)
        latent = torch.sigmoid(fcpe.model.output_proj(feats))
        f0 = fcpe.model.cent_to_f0(fcpe.model.latent2cents_local_decoder(latent, threshold=0.006))
    assert feats.shape == (1, 201, 512) and frames.tolist() == [201]
    voiced = f0_ref[0, :, 0] > 0
    assert voiced.sum() > 50  # real speech: the comparison covers voiced frames
    assert torch.allclose(f0, f0_ref, atol=0.05)


def test_fcpe_layers_gradient_and_state(fcpe, speech):
    ext = FCPEFeatureExtractor(layers=[0, 3, -1])
    x = speech.clone().requires_grad_(True)
    feats, _ = ext(x)
    assert feats.shape == (3, 1, 201, 512)
    with torch.no_grad():
        last = fcpe.model.net.encoder_layers[-1]
        assert torch.equal(feats[2], ext.extract(speech)[0][2]) and not torch.equal(feats[0], feats[2])
        assert last is not None
    feats.sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in ext.model.parameters())
    assert list(ext.state_dict()) == [] and list(ext.parameters()) == []
    with pytest.raises(ValueError, match="layer index 7 out of range"):
        FCPEFeatureExtractor(layers=7)


def test_fcpe_padding_leaves_frames_away_from_the_end_unchanged(fcpe, speech):
    batch = torch.cat([speech, torch.cat([speech[:, :16000], torch.zeros(1, 16000)], 1)])
    with torch.no_grad():
        feats, frames = fcpe.extract(batch, torch.tensor([32000, 16000]))
        alone, alone_frames = fcpe.extract(speech[:, :16000])
    assert frames.tolist() == [201, 101] and alone_frames.tolist() == [101]
    assert feats[1, 101:].abs().max() == 0  # padded frames are zero
    # the GroupNorm of the input stack uses valid frames only, and the convolutions reach +-92 frames:
    # frames more than 92 before the end are those of the item alone, up to the GroupNorm statistics'
    # share of the last frames (with nn.GroupNorm over the padded length they differ by ~30 %)
    relative = (feats[1, :101] - alone[0]).abs().mean(-1) / alone[0].abs().mean(-1)
    assert relative[:8].max() < 0.01
    assert relative[95:].min() > 0.1  # near the end they differ


# -- Resemblyzer -----------------------------------------------------------------------------------
def test_resemblyzer_front_end_matches_librosa_and_layers_match_the_packaged_lstm(resemblyzer, speech):
    librosa = pytest.importorskip("librosa")
    mel_ref = librosa.feature.melspectrogram(y=speech[0].numpy(), sr=16000, n_fft=400, hop_length=160, n_mels=40).T
    with torch.no_grad():
        mel = resemblyzer.power_mel(speech)[0].numpy()
    assert mel.shape == mel_ref.shape == (201, 40)
    assert np.allclose(mel, mel_ref, rtol=1e-4, atol=1e-4 * np.abs(mel_ref).max())
    path = importlib.util.find_spec("resemblyzer").submodule_search_locations[0] + "/pretrained.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
    lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
    lstm.load_state_dict({k[len("lstm."):]: v for k, v in state.items() if k.startswith("lstm.")})
    ext = ResemblyzerFeatureExtractor(layers="last", normalize_input=False)
    with torch.no_grad():
        out, _ = lstm(torch.from_numpy(mel_ref)[None])
        feats, frames = ext(speech)
    assert frames.tolist() == [201]
    assert torch.allclose(feats, out, atol=1e-4)


def test_resemblyzer_lstms_run_in_train_mode_for_cudnn_and_stay_frozen(resemblyzer, speech):
    """cuDNN cannot backpropagate through an RNN in eval mode: the frozen LSTMs run in train mode
    (dropout 0, the same function) during extraction, and are back in eval mode afterwards."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, _: seen.append((m.training, m.dropout))) for m in resemblyzer._lstms]
    try:
        resemblyzer(speech[:, :16000])
    finally:
        for h in hooks:
            h.remove()
    assert seen and all(training and dropout == 0 for training, dropout in seen)
    assert not any(m.training for m in resemblyzer._lstms)
    assert not any(p.requires_grad for p in resemblyzer._lstms.parameters())


def test_resemblyzer_is_causal_and_level_normalised(resemblyzer, speech):
    batch = torch.cat([speech, torch.cat([speech[:, :16000], torch.zeros(1, 16000)], 1)])
    with torch.no_grad():
        feats, frames = resemblyzer.extract(batch, torch.tensor([32000, 16000]))
        alone, _ = resemblyzer.extract(speech[:, :16000])
        louder, _ = resemblyzer.extract(4 * speech[:, :16000])
    assert frames.tolist() == [201, 101]
    # trailing padding changes no valid frame except the last, whose centred window reaches into it
    assert torch.allclose(feats[1, :100], alone[0, :100], atol=1e-5)
    assert torch.allclose(louder, alone, atol=1e-5)  # -30 dBFS input normalisation


# -- through the losses ----------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["torchfcpe", "resemblyzer"])
def test_feature_losses_accept_wheel_encoders_by_name(source, speech):
    if importlib.util.find_spec(source) is None:
        pytest.skip(f"{source} is not installed")
    noisy = speech + 0.05 * torch.randn_like(speech, generator=None)
    shifted = torch.cat([torch.zeros(1, 800), speech[:, :-800]], 1)
    l1 = SSLL1Loss(source=source)
    assert isinstance(l1.extractor, FrameFeatureExtractor) and l1.extractor.source == source
    assert float(l1(speech, speech)) < 1e-6 < float(l1(noisy, speech))
    sdtw = SSLSoftDTWLoss(l1.extractor)
    # soft-DTW forgives a 50 ms shift far more than the frame-aligned distance does
    assert float(sdtw(shifted, speech)) < 0.5 * float(SSLL1Loss(l1.extractor)(shifted, speech))
    pad = SSLMSEPadLoss(l1.extractor, seed=0)
    est = noisy.clone().requires_grad_(True)
    value = pad(est, speech)
    value.backward()
    assert float(value.detach()) > 0 and est.grad.abs().sum() > 0


def test_build_frame_extractor_dispatch_and_bad_weights(tmp_path):
    pytest.importorskip("torchfcpe")
    assert isinstance(build_frame_extractor("TorchFCPE"), FCPEFeatureExtractor)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": __import__("os").getcwd}, f)  # a callable: refused by weights_only
    with pytest.raises(OSError, match="evil.pt: could not be read as plain tensors"):
        FCPEFeatureExtractor(weights=evil)
    with pytest.raises(ValueError, match="16000 Hz"):
        FCPEFeatureExtractor(sample_rate=8000)
