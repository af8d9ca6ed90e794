"""Separation ladder P1..P5, SeparationBrain's loss choice, the separation recipe and MUSDB18-HQ preparation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sb_mal.brains.enhance import model_config
from sb_mal.brains.separation import build_named_cost
from sb_mal.data.musdb import prepare_musdb18hq
from sb_mal.losses import CodecApproximationLoss, WaveformL1
from sb_mal.models import LADDER, SeparationUNet, SpectralCodecNet, ladder_table

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "codec" / "train_separation.py"


def test_ladder_grows_and_keeps_shapes():
    rows = ladder_table()
    assert [r["name"] for r in rows] == ["P1", "P2", "P3", "P4", "P5"]
    counts = [r["parameters"] for r in rows]
    assert all(a < b for a, b in zip(counts, counts[1:])), counts
    for name in LADDER:
        net = SeparationUNet.from_capacity(name).eval()
        for samples in (8000, 8000 + 37):
            out = net(torch.randn(2, samples), torch.tensor([1.0, 0.5]))
            assert out.shape == (2, samples) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="unknown capacity 'P9'"):
        SeparationUNet.from_capacity("P9")


def test_padding_does_not_change_an_item():
    torch.manual_seed(0)
    net = SeparationUNet.from_capacity("P3").eval()
    short = torch.randn(1, 6000)
    batch = torch.cat((torch.cat((short, torch.zeros(1, 4000)), 1), torch.randn(1, 10000)))
    with torch.no_grad():
        alone = net(short)
        batched = net(batch, torch.tensor([0.6, 1.0]))
    # the tail of the valid part sees the padded frame through the centred STFT; compare the rest
    assert torch.allclose(batched[0, :5000], alone[0, :5000], atol=1e-4)
    assert batched[0, 6000 + 1024:].abs().max() < 1e-6  # frames of the padding are masked out


def test_mask_cannot_amplify():
    net = SeparationUNet.from_capacity("P1").eval()
    mix = torch.randn(1, 16000)
    with torch.no_grad():
        out = net(mix)
    assert out.pow(2).sum() <= mix.pow(2).sum() * 1.01  # a [0, 1] magnitude mask with the mixture phase


def test_codec_loss_trains_the_separator_not_the_codec_net():
    codec = SpectralCodecNet(filters=4, levels=3)
    loss = CodecApproximationLoss(codec)
    net = SeparationUNet.from_capacity("P2")
    mix, target = torch.randn(2, 8192), torch.randn(2, 8192)
    value = loss(net(mix), target)
    value.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert any(float(p.grad.abs().sum()) > 0 for p in net.parameters())
    assert all(p.grad is None for p in codec.parameters())


def test_named_costs():
    assert isinstance(build_named_cost({"l1": WaveformL1}, "l1"), WaveformL1)
    with pytest.raises(ValueError, match="loss='mse' is not one of the YAML's costs"):
        build_named_cost({"l1": WaveformL1}, "mse")
    with pytest.raises(ValueError, match="needs `costs`"):
        build_named_cost(None, "l1")
    with pytest.raises(ValueError, match="no codec-net run given"):
        CodecApproximationLoss.from_pretrained(None)


@pytest.fixture(scope="module")
def codec_run(tmp_path_factory):
    """A run folder holding an (untrained) tiny spectral codec net, as recipes/codec/train_codec_net.py writes it."""
    from speechbrain.utils.checkpoints import Checkpointer

    run = tmp_path_factory.mktemp("codec_run")
    net = SpectralCodecNet(filters=4, levels=3)
    (run / "model_config.json").write_text(json.dumps({**model_config(net), "sample_rate": 16000}))
    Checkpointer(run / "save", {"model": net}).save_checkpoint(meta={"loss": 1.0})
    return run


def _recipe(yaml_name, args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(RECIPE), str(REPO / "hparams" / yaml_name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("yaml_name,loss,sizes", [
    ("folders/separation_speech.yaml", "l1", ["--valid_limit=4", "--test_limit=2"]),
    ("folders/separation_music.yaml", "codec", ["--valid_items=4", "--test_items=2"]),
])
@pytest.mark.recipe
def test_recipe_debug(devset, tmp_path, codec_run, yaml_name, loss, sizes):
    out = tmp_path / "run"
    args = [f"--data_folder={devset}", f"--output_folder={out}", "--debug", "--capacity=P1", f"--loss={loss}",
            f"--codec_run={codec_run}", "--n_jobs=0", "--test_metrics=[pesq,stoi,si_sdr]", *sizes]
    proc = _recipe(yaml_name, args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "test_summary.json").read_text())
    assert summary["counts"]["pesq"] >= 1 and np.isfinite(summary["means"]["si_sdr"])
    log = (out / "train_log.txt").read_text()
    if loss == "codec":  # the codec loss's terms are logged
        assert "train codec_l1" in log and "train feat_enc1" in log
    cfg = json.loads((out / "model_config.json").read_text())
    assert cfg["class"].endswith("SeparationUNet") and cfg["kwargs"]["depth"] == LADDER["P1"][0]


@pytest.mark.recipe
def test_recipe_codec_without_a_codec_run_names_the_key(devset, tmp_path):
    proc = _recipe("folders/separation_speech.yaml",
                   [f"--data_folder={devset}", f"--output_folder={tmp_path / 'run'}", "--debug", "--loss=codec"], tmp_path)
    assert proc.returncode != 0 and "no codec-net run given (set `codec_run`" in proc.stdout + proc.stderr


# -- MUSDB18-HQ -----------------------------------------------------------------------------------
def _musdb_fixture(root: Path, rate: int = 44100) -> None:
    """3 training and 1 test track of 2 s stereo stems; the last training track's second half has silent vocals."""
    rng = np.random.default_rng(0)
    tracks = [("train", "Artist A - Song One"), ("train", "Artist B - Song Two"), ("train", "Artist C - Song Three"),
              ("test", "Artist D - Song Four")]
    for k, (split, track) in enumerate(tracks):
        folder = root / split / track
        folder.mkdir(parents=True)
        vocals = 0.1 * rng.standard_normal((2 * rate, 2))
        if k == 2:
            vocals[rate:] = 0.0
        accompaniment = 0.1 * rng.standard_normal((2 * rate, 2))
        sf.write(folder / "vocals.wav", vocals, rate)
        sf.write(folder / "drums.wav", accompaniment, rate)
        sf.write(folder / "mixture.wav", vocals + accompaniment, rate)


def test_musdb_preparation(tmp_path):
    root, out = tmp_path / "musdb18hq", tmp_path / "prepared"
    _musdb_fixture(root)
    before = {p: p.stat().st_mtime for p in root.rglob("*.wav")}
    counts = prepare_musdb18hq(root, out, chunk_seconds=1.0, num_valid=1, progress=False)
    # train: A, B (2 chunks each); valid: C (1 of 2 chunks: the silent-vocals one is left out); test: D (2)
    assert counts == {"train": 4, "valid": 1, "test": 2}
    test = json.loads((out / "test.json").read_text())
    entry = test["Artist_D_-_Song_Four__000"]
    assert entry["mix_wav"].startswith("{data_root}/test/") and entry["track"] == "Artist D - Song Four"
    mix, rate = sf.read(entry["mix_wav"].replace("{data_root}", str(out)))
    src, _ = sf.read(entry["source_wav"].replace("{data_root}", str(out)))
    assert rate == 16000 and mix.ndim == 1 and mix.shape == src.shape == (16000,)
    # the chunk is the downmixed, resampled stem at the same place
    ref, ref_rate = sf.read(root / "test" / "Artist D - Song Four" / "vocals.wav")
    from sb_mal.audio import resample

    expected = resample(torch.as_tensor(ref.mean(axis=1), dtype=torch.float32), ref_rate, 16000).numpy()[:16000]
    assert np.corrcoef(expected, src)[0, 1] > 0.999
    assert {p: p.stat().st_mtime for p in root.rglob("*.wav")} == before  # the corpus is never written
    again = prepare_musdb18hq(root, out, chunk_seconds=1.0, num_valid=1, progress=False)  # skipped: same options
    assert again == counts
    drums = prepare_musdb18hq(root, tmp_path / "drums", source="drums", chunk_seconds=1.0, valid_tracks=["Artist A - Song One"],
                              progress=False)
    assert drums == {"train": 4, "valid": 2, "test": 2}


def test_musdb_errors(tmp_path):
    root = tmp_path / "musdb18hq"
    with pytest.raises(FileNotFoundError, match="train"):
        prepare_musdb18hq(root, tmp_path / "out", progress=False)
    _musdb_fixture(root)
    with pytest.raises(ValueError, match="not training tracks"):
        prepare_musdb18hq(root, tmp_path / "out", valid_tracks=["Nobody - Nothing"], progress=False)
    with pytest.raises(ValueError, match="inside the corpus"):
        prepare_musdb18hq(root, root / "prepared", progress=False)
    with pytest.raises(ValueError, match="source must be one of"):
        prepare_musdb18hq(root, tmp_path / "out", source="guitar", progress=False)
    os.unlink(root / "train" / "Artist B - Song Two" / "vocals.wav")
    with pytest.raises(Exception, match="Artist B - Song Two"):
        prepare_musdb18hq(root, tmp_path / "out", chunk_seconds=1.0, num_valid=1, progress=False)
