"""SpeechBrain's own model folders in sb_mal's tools, and sb_mal's folders in SpeechBrain's loaders.

The folders are built in SpeechBrain's hub layouts with random weights (tests/sb_folders.py); the
reference is SpeechBrain's own interface on the same folder.
"""

import shutil

import pytest
import soundfile as sf
import torch
from speechbrain.inference.enhancement import SpectralMaskEnhancement, WaveformEnhancement
from speechbrain.inference.interfaces import foreign_class

from conftest import make_run  # noqa: E402  (shared test helpers)
from sb_folders import spectral_mask_folder, waveform_folder  # noqa: E402
from sb_mal.cli import main as cli_main
from sb_mal.evaluation.iterative import load_enhancers
from sb_mal.inference import Enhancer, export_run
from sb_mal.losses import ModelAsLoss

pytestmark = pytest.mark.integration


def _noisy(batch=2, samples=16000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, samples, generator=g)


@pytest.mark.parametrize("with_sample_rate", [True, False])
def test_spectral_mask_folder_runs_as_speechbrain_runs_it(tmp_path, with_sample_rate):
    folder = spectral_mask_folder(tmp_path / "metricgan", with_sample_rate=with_sample_rate)
    ours = Enhancer.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    theirs = SpectralMaskEnhancement.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    assert ours.layout == "spectral_mask" and ours.sample_rate == 16000
    noisy = _noisy()
    lengths = torch.tensor([1.0, 1.0])
    expected = theirs.enhance_batch(noisy, lengths=lengths)
    got = ours.enhance_batch(noisy, lengths)
    assert got.shape == noisy.shape
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    assert not torch.allclose(got, noisy, atol=1e-3)  # the mask did something


def test_waveform_folder_runs_as_speechbrain_runs_it(tmp_path):
    folder = waveform_folder(tmp_path / "resnet")
    ours = Enhancer.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    theirs = WaveformEnhancement.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    assert ours.layout == "waveform" and not ours._model_takes_lengths
    noisy = _noisy()
    expected = theirs.enhance_batch(noisy)
    got = ours.enhance_batch(noisy)
    n = min(expected.shape[1], got.shape[1])
    assert got.shape == noisy.shape
    assert torch.allclose(got[:, :n], expected[:, :n], atol=1e-5)


def test_incomplete_spectral_mask_folder_is_an_error_naming_the_keys(tmp_path):
    folder = spectral_mask_folder(tmp_path / "broken")
    text = (folder / "hyperparams.yaml").read_text()
    (folder / "hyperparams.yaml").write_text(text.replace("spectral_magnitude: !name:", "spectral_mag: !name:"))
    with pytest.raises(ValueError, match=r"needs \['compute_stft', 'spectral_magnitude', 'resynth'\]"):
        Enhancer.from_hparams(source=str(folder))


def test_cli_enhance_evaluate_and_iterate_take_speechbrain_folders(tmp_path, devset_test_pairs):
    folder = spectral_mask_folder(tmp_path / "metricgan")
    clean_dir, noisy_dir = tmp_path / "clean", tmp_path / "noisy"
    clean_dir.mkdir()
    noisy_dir.mkdir()
    for uid, noisy, clean in devset_test_pairs[:2]:
        shutil.copy(noisy, noisy_dir / f"{uid}.flac")
        shutil.copy(clean, clean_dir / f"{uid}.flac")
    out = tmp_path / "enhanced"
    assert cli_main(["enhance", str(noisy_dir), "-o", str(out), "--source", str(folder), "--device", "cpu",
                     "-q"]) == 0
    enhanced = sorted(out.glob("*.wav"))
    assert len(enhanced) == 2 and sf.info(str(enhanced[0])).samplerate == 16000

    report = tmp_path / "eval"
    assert cli_main(["evaluate", "--clean", str(clean_dir), "--noisy", str(noisy_dir), "--source",
                     f"metricgan={folder}", "--metrics", "stoi", "--jobs", "0", "--device", "cpu",
                     "-o", str(report)]) == 0
    assert (report / "metricgan_scores.csv").is_file() and len(list((report / "enhanced_metricgan").glob("*.wav"))) == 2

    runs = load_enhancers({"sb": str(folder)}, device="cpu")
    wav = _noisy(1)[0].numpy()
    assert runs["sb"](wav).shape == wav.shape


def test_exported_folder_loads_with_speechbrains_foreign_class(tmp_path):
    run, _ = make_run(tmp_path / "run")
    folder = export_run(run, tmp_path / "exported")
    theirs = foreign_class(source=str(folder), pymodule_file="custom.py", classname="CustomInterface",
                           run_opts={"device": "cpu"})
    ours = Enhancer.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    assert isinstance(theirs, Enhancer)
    noisy = _noisy()
    assert torch.equal(theirs.enhance_batch(noisy), ours.enhance_batch(noisy))


def test_model_as_loss_from_a_speechbrain_spectral_mask_folder(tmp_path):
    folder = spectral_mask_folder(tmp_path / "metricgan")
    loss = ModelAsLoss.from_pretrained(str(folder), taps=["blstm"], run_opts={"device": "cpu"})
    clean = _noisy(seed=1)
    assert float(loss(clean, clean)) < 1e-6  # the LSTM with and without autograd: equal up to rounding
    enhanced = (clean + 0.05 * torch.randn_like(clean)).requires_grad_(True)
    value = loss(enhanced, clean, torch.tensor([1.0, 0.7]))
    value.backward()
    assert value > 0 and enhanced.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
