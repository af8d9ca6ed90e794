"""Codec-net training recipe (CodecNetBrain), loading the result as a loss, the imitation report and figure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from sb_mal.brains.codec import CodecNetBrain
from sb_mal.data.mp3 import Mp3PairDataset, mp3_roundtrip
from sb_mal.evaluation.codec_imitation import (
    imitation_report,
    log_spectral_distance,
    save_imitation_figure,
)
from sb_mal.losses import CodecApproximationLoss
from sb_mal.models.codec_net import SpectralCodecNet, TimeCodecNet

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "codec" / "train_codec_net.py"


def _folders(devset):
    """Small held-apart folders: music to train on, music + French speech to validate, French speech to test."""
    return [f"--source_folders=[{devset}/music/train]",
            f"--valid_folders=[{devset}/music/test,{devset}/speech/valid/fr]",
            f"--test_folders=[{devset}/speech/test/fr]"]


def run_recipe(yaml_name, args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(RECIPE), str(REPO / "hparams" / "mp3codec" / yaml_name), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def checkpoint_metas(run: Path) -> list[tuple[Path, dict]]:
    """(folder, CKPT.yaml meta) of every checkpoint, oldest first."""
    found = [(c, yaml.safe_load((c / "CKPT.yaml").read_text())) for c in (run / "save").glob("CKPT+*")]
    return sorted(found, key=lambda cm: cm[1]["unixtime"])


@pytest.fixture(scope="module")
def mp3_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mp3_cache")


@pytest.fixture(scope="module")
def spectral_run(devset, mp3_cache, tmp_path_factory):
    """A tiny spectral codec net trained 4 debug epochs x 6 steps; every epoch's checkpoint kept."""
    tmp = tmp_path_factory.mktemp("spectral")
    out = tmp / "run"
    proc = run_recipe("spectral.yaml", [
        f"--data_folder={devset}", f"--output_folder={out}", f"--mp3_cache={mp3_cache}", *_folders(devset),
        "--filters=4", "--levels=3", "--segment_samples=16384", "--batch_size=4", "--lr=0.003", "--valid_items=8",
        "--keep_checkpoints=4", "--debug", "--debug_persistently", "--debug_batches=6", "--debug_epochs=4"], tmp)
    return out, proc


@pytest.mark.recipe
def test_spectral_recipe_trains_and_valid_l1_goes_down(spectral_run):
    out, proc = spectral_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    metas = [m for _, m in checkpoint_metas(out)]
    assert len(metas) == 4
    losses = [m["loss"] for m in metas]
    assert losses[-1] < losses[0], losses
    # the identity baseline is measured on the same fixed held-out items every epoch
    identity = [m["identity_l1"] for m in metas]
    assert max(identity) - min(identity) < 1e-9 and identity[0] > 0.01
    for m in metas:
        assert m["ratio"] == pytest.approx(m["loss"] / m["identity_l1"], rel=1e-9)
        assert m["l1"] == pytest.approx(m["loss"], rel=1e-9)
    log = (out / "train_log.txt").read_text()
    assert "valid identity_l1" in log and "train identity_l1" in log and "pesq" not in log
    cfg = json.loads((out / "model_config.json").read_text())
    assert cfg["class"] == "sb_mal.models.codec_net.SpectralCodecNet" and cfg["sample_rate"] == 16000
    assert cfg["kwargs"]["filters"] == 4 and cfg["kwargs"]["levels"] == 3
    # test stage: whole files, one per batch, 6 debug batches
    summary = json.loads((out / "test_summary.json").read_text())
    assert summary["n_utterances"] == 6
    assert summary["means"]["ratio"] == pytest.approx(summary["means"]["l1"] / summary["means"]["identity_l1"])
    assert (out / "test_scores.csv").read_text().splitlines()[0] == "id,l1,identity_l1"


@pytest.mark.recipe
def test_from_pretrained_loads_the_lowest_loss_checkpoint_strictly(spectral_run, devset):
    out, proc = spectral_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    metas = checkpoint_metas(out)
    best = min(metas, key=lambda cm: cm[1]["loss"])[0]
    loss = CodecApproximationLoss.from_pretrained(out)
    net = loss.codec_net
    assert isinstance(net, SpectralCodecNet) and net.config["filters"] == 4
    saved = torch.load(best / "model.ckpt", map_location="cpu")
    state = net.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in state)
    worst = max(metas, key=lambda cm: cm[1]["loss"])[0]
    other = torch.load(worst / "model.ckpt", map_location="cpu")
    assert any(not torch.equal(other[k], state[k]) for k in state if state[k].is_floating_point())

    clean, _ = sf.read(sorted((devset / "speech" / "test" / "it").glob("*.flac"))[0], dtype="float32")
    clean = torch.from_numpy(clean[:16000])[None].repeat(2, 1)
    enhanced = (clean + 0.01 * torch.randn_like(clean)).requires_grad_(True)
    value = loss(enhanced, clean, torch.tensor([1.0, 0.7]))
    assert torch.isfinite(value) and value > 0
    value.backward()
    assert torch.isfinite(enhanced.grad).all() and enhanced.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in net.parameters())
    assert float(loss(clean, clean)) == 0.0


@pytest.mark.recipe
def test_time_recipe_trains_and_loads_as_a_loss(devset, mp3_cache, tmp_path):
    out = tmp_path / "run"
    proc = run_recipe("time.yaml", [
        f"--data_folder={devset}", f"--output_folder={out}", f"--mp3_cache={mp3_cache}", *_folders(devset),
        "--filters=4", "--levels=3", "--segment_samples=4096", "--batch_size=4", "--valid_items=4",
        "--debug", "--debug_persistently", "--debug_batches=2", "--debug_epochs=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(checkpoint_metas(out)) == 1  # keep_checkpoints: 1
    cfg = json.loads((out / "model_config.json").read_text())
    assert cfg["class"] == "sb_mal.models.codec_net.TimeCodecNet" and cfg["kwargs"]["levels"] == 3
    loss = CodecApproximationLoss.from_pretrained(out, layers="F")
    clean = 0.1 * torch.randn(2, 4000)
    enhanced = (clean + 0.01 * torch.randn_like(clean)).requires_grad_(True)
    value = loss(enhanced, clean)
    value.backward()
    assert torch.isfinite(value) and enhanced.grad.abs().sum() > 0


@pytest.mark.recipe
def test_ddp_two_processes_gloo_without_sync_batchnorm(devset, mp3_cache, tmp_path):
    # SpeechBrain converts BatchNorm to SyncBatchNorm under DDP, which cannot run on CPU; the Brain
    # wraps plain DDP with gloo
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(RECIPE),
           str(REPO / "hparams" / "mp3codec" / "spectral.yaml"), f"--data_folder={devset}", f"--output_folder={out}",
           f"--mp3_cache={mp3_cache}", *_folders(devset), "--distributed_backend=gloo", "--filters=4", "--levels=3",
           "--segment_samples=16384", "--batch_size=2", "--examples_per_epoch=8", "--valid_items=4",
           "--test_items=2", "--number_of_epochs=1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (meta,) = [m for _, m in checkpoint_metas(out)]
    assert meta["identity_l1"] > 0 and meta["ratio"] == pytest.approx(meta["loss"] / meta["identity_l1"])
    assert json.loads((out / "test_summary.json").read_text())["n_utterances"] == 2


def test_brain_objective_is_fit_loss_and_validates_its_hparams():
    from speechbrain.dataio.batch import PaddedBatch

    torch.manual_seed(0)
    net = SpectralCodecNet(filters=4, levels=2).eval()
    brain = CodecNetBrain({"model": net}, run_opts={"noprogressbar": True})
    assert brain.hparams.ckpt_key == "loss"
    x = [0.1 * torch.randn(6000), 0.1 * torch.randn(4000)]
    batch = PaddedBatch([{"id": str(i), "noisy_sig": w, "clean_sig": 0.7 * w} for i, w in enumerate(x)])
    with torch.no_grad():
        net_l1, identity = brain.compute_forward(batch, "valid")
        original, lens = batch.noisy_sig
        expected = net.fit_loss(original, batch.clean_sig[0], lens)
    assert torch.allclose(net_l1, expected) and (identity > 0).all()
    with pytest.raises(ValueError, match="ckpt_key"):
        CodecNetBrain({"model": net}, hparams={"ckpt_key": "pesq"})
    with pytest.raises(TypeError, match="SpectralCodecNet or TimeCodecNet"):
        CodecNetBrain({"model": torch.nn.Linear(2, 2)})


def _numpy_codec_domain(x, y, n_fft=1024, hop=512, compress=0.3):
    """Independent (numpy) normalised compressed magnitudes of input and coded signal, SpectralCodecNet style."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann

    def mag(w):
        w = np.pad(w.astype(np.float64), n_fft // 2)
        frames = np.stack([w[i : i + n_fft] for i in range(0, len(w) - n_fft + 1, hop)])
        return np.abs(np.fft.rfft(frames * window, axis=1)).T  # [bins, frames]

    mx, my = mag(x), mag(y)
    scale = max(mx[:-1].max(), 1e-3 * window.sum())
    return (mx[:-1] / scale) ** compress, np.clip((my[:-1] / scale) ** compress, 0, 1), mx, my, window


def test_imitation_report_identity_baseline_matches_independent_computation(devset):
    files = [sorted((devset / "music" / "test").glob("*.flac"))[1],
             *(sorted((devset / "speech" / "test" / v).glob("*.flac"))[3] for v in ("fr", "ru"))]
    torch.manual_seed(0)
    net = SpectralCodecNet(filters=4, levels=2)
    rep = imitation_report(net, files, max_seconds=3.0)
    assert rep["n_items"] == 3 and [r["id"] for r in rep["items"]] == [f"{p.parent.name}/{p.stem}" for p in files]
    assert net.training  # the mode is restored
    net.eval()
    for path, row in zip(files, rep["items"]):
        wav, rate = sf.read(path, dtype="float32")
        assert rate == 16000
        coded = mp3_roundtrip(wav)[:48000]  # coded whole, then cut
        wav = wav[:48000]
        s, t, mx, my, window = _numpy_codec_domain(wav, coded)
        assert row["identity_l1"] == pytest.approx(np.abs(s - t).mean(), rel=1e-4)
        full = window.sum() / 2
        db = lambda m: 20 * np.log10(np.maximum(m / full, 1e-4))  # noqa: E731
        lsd = np.sqrt(((db(mx) - db(my)) ** 2).mean(axis=0)).mean()
        assert row["identity_lsd_db"] == pytest.approx(lsd, rel=1e-4)
        x, y = torch.from_numpy(wav)[None], torch.from_numpy(coded)[None]
        with torch.no_grad():
            assert row["net_l1"] == pytest.approx(float(net.fit_loss(x, y)), rel=1e-5)
            imitated = net.imitate(x)[0].numpy()
            assert row["net_lsd_db"] == pytest.approx(log_spectral_distance(imitated, coded), rel=1e-5)
        assert row["ratio"] == pytest.approx(row["net_l1"] / row["identity_l1"])
    assert rep["mean"]["identity_l1"] == pytest.approx(np.mean([r["identity_l1"] for r in rep["items"]]))
    # 16 kbps MP3 removes everything above ~5.5 kHz: the identity map is measurably wrong
    assert all(r["identity_l1"] > 0.01 and r["identity_lsd_db"] > 1.0 for r in rep["items"])

    # time net: identity = mean |x - clip(coded)| on the waveform; a dataset source gives the same numbers
    pairs = Mp3PairDataset(devset / "speech" / "test" / "fr", segment_samples=None, num_items=2)
    time_rep = imitation_report(TimeCodecNet(filters=2, levels=2), pairs, lsd=False)
    first, second = pairs[0], pairs[1]
    for item, row in zip((first, second), time_rep["items"]):
        expected = float((item["noisy_sig"] - item["clean_sig"].clamp(-1, 1)).abs().mean())
        assert row["identity_l1"] == pytest.approx(expected, rel=1e-5) and row["id"] == item["id"]
    from_files = imitation_report(TimeCodecNet(filters=2, levels=2), [first["source"], second["source"]], lsd=False)
    assert [r["identity_l1"] for r in from_files["items"]] == pytest.approx(
        [r["identity_l1"] for r in time_rep["items"]])


def test_imitation_figure_is_written_small(devset, tmp_path):
    music, _ = sf.read(sorted((devset / "music" / "test").glob("*.flac"))[0], dtype="float32")
    speech, _ = sf.read(sorted((devset / "speech" / "test" / "fr").glob("*.flac"))[0], dtype="float32")
    png = tmp_path / "imitation.png"
    save_imitation_figure(png, [music[80000:144000], speech[:64000]], SpectralCodecNet(filters=4, levels=2),
                          row_labels=["music", "speech"], title="tiny net")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(data) < 200_000
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.shape[1] > image.shape[0] and image[..., :3].std() > 0.05  # wide grid, not blank
    with pytest.raises(ValueError, match="row_labels"):
        save_imitation_figure(tmp_path / "x.png", [music[:8000]], SpectralCodecNet(filters=4, levels=2),
                              row_labels=["a", "b"])
