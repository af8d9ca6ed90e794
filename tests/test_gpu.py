"""GPU: every loss on CUDA equals its CPU value, under autocast too; a few steps of every recipe on cuda:0.

Skipped without a CUDA device (CI has none). The losses are built on the CPU and never moved by
hand: they must follow their inputs to the GPU, as in a stock recipe where ``compute_cost`` is not
in ``modules``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
from loss_zoo import LOSS_NAMES, loss_factories  # noqa: E402  (tests/ helper)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def exact_math():
    """No TF32 (SpeechBrain turns it on at import): CPU and GPU values must agree to float32 rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_on_cuda_equals_cpu_and_runs_under_autocast(name, tiny_wavlm_dir, exact_math):
    _check_loss_on_cuda(loss_factories(tiny_wavlm_dir)[name])


@pytest.mark.parametrize("source", ["torchfcpe", "resemblyzer"])
@pytest.mark.parametrize("loss_name", ["SSLMSELoss", "SSLSoftDTWLoss"])
def test_wheel_encoder_losses_on_cuda_equal_cpu(source, loss_name, exact_math):
    """The frozen feature models shipped in pip wheels (the `encoders` extra) as SSL-loss sources on CUDA."""
    import importlib.util

    from sb_mal import losses as L
    from sb_mal.models.extractors import build_frame_extractor

    if importlib.util.find_spec(source) is None:
        pytest.skip(f"{source} is not installed (extra `encoders`)")
    _check_loss_on_cuda(lambda: getattr(L, loss_name)(build_frame_extractor(source)))


def _check_loss_on_cuda(factory):
    g = torch.Generator().manual_seed(1)
    clean = 0.3 * torch.randn(3, 16000, generator=g)
    pred = clean + 0.1 * torch.randn(3, 16000, generator=g)
    lengths = torch.tensor([1.0, 0.8, 0.6])
    cpu_value = factory()(pred, clean, lengths, reduction="batch")
    loss = factory()  # a fresh copy built on the CPU; it must follow the inputs to the GPU
    dev = torch.device("cuda:0")
    if getattr(loss, "encoder", None) == "live":
        loss.model.to(dev)  # the live encoder is the recipe's own model, which the Brain puts on the device
    x = pred.to(dev).requires_grad_(True)
    value = loss(x, clean.to(dev), lengths.to(dev), reduction="batch")
    assert value.device.type == "cuda"
    assert torch.allclose(value.detach().cpu(), cpu_value, rtol=2e-3, atol=1e-4), (value, cpu_value)
    value.mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            mixed = loss(pred.to(dev), clean.to(dev), lengths.to(dev), reduction="batch")
        assert torch.isfinite(mixed).all(), (dtype, mixed)
        assert torch.allclose(mixed.float().cpu(), cpu_value, rtol=0.1, atol=2e-2), (dtype, mixed, cpu_value)
    from sb_mal.losses.reconstruction import loss_and_terms

    _, parts = loss_and_terms(loss, pred.to(dev), clean.to(dev), lengths.to(dev))
    assert all(v.device.type == "cuda" for v in parts.values())


def test_soft_dtw_on_cuda_equals_cpu(exact_math):
    from sb_mal.losses import soft_dtw

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 50, 16, generator=g), torch.randn(4, 40, 16, generator=g)
    n, m = torch.tensor([50, 45, 30, 20]), torch.tensor([40, 40, 35, 10])
    cpu = soft_dtw(x, y, n, m, gamma=0.1)
    xg = x.cuda().requires_grad_(True)
    gpu = soft_dtw(xg, y.cuda(), n.cuda(), m.cuda(), gamma=0.1)
    assert torch.allclose(gpu.detach().cpu(), cpu, rtol=1e-4, atol=1e-3)
    gpu.sum().backward()
    assert torch.isfinite(xg.grad).all()


# -- recipes -------------------------------------------------------------------------------------------
def _run(script, yaml, out, *extra, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(REPO / "recipes" / script), str(REPO / "hparams" / yaml), f"--output_folder={out}",
           "--device=cuda:0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=out.parent, env=env)


def _epochs(out: Path) -> list[str]:
    return [line for line in (out / "train_log.txt").read_text().splitlines() if re.match(r"^epoch: \d", line)]


FOLDERS = ["--valid_limit=2", "--test_limit=2", "--test_metrics=[pesq,stoi]", "--n_jobs=0"]


@pytest.fixture(scope="module")
def baseline_run(devset, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "baseline"
    proc = _run("baseline/train.py", "folders/baseline.yaml", out, f"--data_folder={devset}", "--number_of_epochs=1",
                "--examples_per_epoch=16", "--precision=bf16", "--channels=[8,16]", "--bottleneck_dim=32", "--rnn_layers=1",
                *FOLDERS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.recipe
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_baseline_and_mal_recipes_on_cuda(devset, tmp_path, precision, baseline_run):
    assert len(_epochs(baseline_run)) == 1 and (baseline_run / "test_summary.json").is_file()
    out = tmp_path / "mal"
    proc = _run("mal/train.py", "folders/mal_dynamic.yaml", out, f"--data_folder={devset}", "--number_of_epochs=2",
                "--phase1_epochs=1", "--examples_per_epoch=16", f"--precision={precision}", "--channels=[8,16]",
                "--bottleneck_dim=32", "--rnn_layers=1", *FOLDERS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = _epochs(out)
    assert len(epochs) == 2 and "train mal:" in epochs[1]
    value = float(re.search(r"train mal: ([0-9.e+-]+)", epochs[1]).group(1))
    assert math.isfinite(value) and value > 0


@pytest.mark.recipe
def test_pift_recipe_on_cuda(devset, tmp_path, baseline_run, tiny_wavlm_dir):
    out = tmp_path / "pift"
    proc = _run("pift/train.py", "folders/pift_softdtw.yaml", out, f"--data_folder={devset}", "--number_of_epochs=1",
                f"--init_from={baseline_run}", f"--ssl_source={tiny_wavlm_dir}", "--examples_per_epoch=8",
                "--precision=bf16", "--channels=[8,16]", "--bottleneck_dim=32", "--rnn_layers=1", *FOLDERS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_epochs(out)) == 1


@pytest.mark.recipe
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_okd_recipe_on_cuda_with_speechbrain_modules(devset, tmp_path, precision):
    out = tmp_path / "okd"
    proc = _run("metricgan_okd/train.py", "folders/okd_pesq_csig.yaml", out, f"--data_folder={devset}",
                "--number_of_epochs=2", "--samples_per_epoch=4", "--valid_every=1", "--segment_seconds=2.0",
                f"--precision={precision}", "--num_layers=1", "--d_channels=[4,4,4,4]", *FOLDERS,
                "--generator_class=!name:speechbrain.lobes.models.MetricGAN.EnhancementGenerator",
                "--discriminator_class=!name:speechbrain.lobes.models.MetricGAN.MetricDiscriminator")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_epochs(out)) == 2
    assert json.loads((out / "test_summary_g1.json").read_text())["counts"]["pesq"] == 2


@pytest.mark.recipe
def test_listening_enhancement_recipe_on_cuda(devset, tmp_path):
    out = tmp_path / "le"
    proc = _run("metricgan_okd/train.py", "folders/le_okd_siib_estoi.yaml", out, f"--data_folder={devset}",
                "--number_of_epochs=2", "--samples_per_epoch=4", "--valid_every=1", "--segment_seconds=2.0",
                "--precision=bf16", "--num_layers=1", "--d_channels=[4,4,4,4]", "--valid_limit=2", "--test_limit=2",
                "--n_jobs=0", "--test_metrics=[siib,estoi]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_epochs(out)) == 2
    summary = json.loads((out / "test_summary_g0.json").read_text())
    assert summary["counts"]["estoi"] == 2 and math.isfinite(summary["means"]["estoi"])


@pytest.mark.recipe
def test_codec_net_and_separation_recipes_on_cuda(devset, tmp_path):
    codec = tmp_path / "codec"
    proc = _run("codec/train_codec_net.py", "mp3codec/spectral.yaml", codec, f"--data_folder={devset}",
                "--number_of_epochs=1", "--filters=4", "--levels=3", "--examples_per_epoch=8", "--valid_items=4",
                "--test_items=2",
                "--precision=bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sep = tmp_path / "sep"
    proc = _run("codec/train_separation.py", "folders/separation_speech.yaml", sep, f"--data_folder={devset}",
                "--number_of_epochs=1", "--capacity=P2", "--loss=codec", f"--codec_run={codec}", "--examples_per_epoch=8",
                "--precision=bf16", "--valid_limit=2", "--test_limit=2", "--n_jobs=0",
                "--test_metrics=[pesq,stoi]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_epochs(sep)) == 1
