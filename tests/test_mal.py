"""Model as Loss: no collapse, variant semantics, phase-2 resume, stock-recipe use, recipe integration."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter
from speechbrain.utils.metric_stats import MetricStats

from sb_mal.brains import MALBrain
from sb_mal.data.datasets import manifest_dataset
from sb_mal.data.manifest import prepare_pairs
from sb_mal.losses import ModelAsLoss, MultiResolutionSTFTLoss, WaveformL1, WeightedSum
from sb_mal.models import SpectralUNetSE

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
SMALL = ["--channels=[8,16]", "--bottleneck_dim=32", "--rnn_layers=1"]  # a small backbone keeps runs short


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return SpectralUNetSE(channels=(8, 16), bottleneck_dim=32, rnn_layers=1)


@pytest.mark.parametrize("encoder", ["snapshot", "live"])
def test_no_gradient_reaches_the_loss_encoder(encoder):
    model = tiny_model()
    mal = ModelAsLoss(model, taps=["enc1", "bottleneck"], encoder=encoder)
    clean = torch.randn(2, 8000)
    enhanced = (clean + 0.2 * torch.randn(2, 8000)).requires_grad_(True)
    loss = mal(enhanced, clean, torch.tensor([1.0, 0.6]))
    loss.backward()
    assert loss > 0 and enhanced.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in mal.parameters())
    assert set(mal(enhanced, clean, terms=True)[1]) == {"mal_enc1", "mal_bottleneck"}


def test_live_encoder_gets_gradient_only_through_the_enhanced_signal():
    """In a training step, the encoder's gradient equals that of a loss whose encoder is a constant copy."""
    model = tiny_model()
    noisy, clean = torch.randn(2, 8000), torch.randn(2, 8000)
    live = ModelAsLoss(model, encoder="live")
    live(model(noisy), clean).backward()
    g_live = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    frozen_copy = ModelAsLoss(model, encoder="snapshot")  # same weights, but a separate frozen module
    frozen_copy(model(noisy), clean).backward()
    for a, p in zip(g_live, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_padding_and_snapshot_independence():
    model = tiny_model()
    mal = ModelAsLoss(model, encoder="snapshot")
    clean = torch.randn(1, 8000)
    pred = clean + 0.1 * torch.randn(1, 8000)
    before = mal(pred, clean)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # the model moves on; the snapshot does not
    assert torch.equal(mal(pred, clean), before)
    batch_p, batch_c = torch.zeros(2, 12000), torch.zeros(2, 12000)
    batch_p[0, :8000], batch_c[0, :8000] = pred[0], clean[0]
    batch_p[0, 8000:] = torch.randn(4000)  # garbage in the padding
    batch_p[1], batch_c[1] = torch.randn(12000), torch.randn(12000)
    per_item = mal(batch_p, batch_c, torch.tensor([8000 / 12000, 1.0]), reduction="batch")
    assert torch.allclose(per_item[0], before, atol=1e-5)
    with pytest.raises(RuntimeError, match="no encoder snapshot yet"):
        ModelAsLoss(model, snapshot_now=False)(pred, clean)
    with pytest.raises(ValueError, match=r"tap\(s\) \['enc9'\] not found in SpectralUNetSE; it offers encoder taps"):
        ModelAsLoss(model, taps=["enc9"])


def test_stock_speechbrain_recipe_style_use():
    """One YAML entry, used the way recipes/Voicebank/enhance/waveform_map uses compute_cost."""
    hparams = load_hyperpyyaml("""
model: !new:sb_mal.models.SpectralUNetSE
    channels: [8, 16]
    bottleneck_dim: 32
    rnn_layers: 1
compute_cost: !new:sb_mal.losses.ModelAsLoss
    model: !ref <model>
    encoder: live
""")
    cost = hparams["compute_cost"]
    noisy, clean, lens = torch.randn(3, 8000), torch.randn(3, 8000), torch.tensor([1.0, 0.9, 0.5])
    enhanced = hparams["model"](noisy, lens)
    loss = cost(enhanced, clean, lens)
    loss.backward()
    stats = MetricStats(metric=cost)
    stats.append(["a", "b", "c"], enhanced.detach(), clean, lens, reduction="batch")
    assert len(stats.scores) == 3 and stats.summarize("average") > 0


@pytest.fixture(scope="module")
def pair_sets(devset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    manifest = folder / "valid.json"
    prepare_pairs(devset / "pairs/valid/noisy", devset / "pairs/valid/clean", manifest)
    train = manifest_dataset(manifest, devset / "pairs/valid", segment_seconds=1.0, sort=False, limit=8)
    valid = manifest_dataset(manifest, devset / "pairs/valid", limit=2)
    return train, valid


def make_brain(variant, tmp_path, phase1=1, epochs=1):
    model = tiny_model()
    counter = EpochCounter(limit=epochs)
    hparams = {
        "variant": variant, "phase1_epochs": phase1, "lambda_mal": 10.0, "lambda_rec": 1.0,
        "rec_cost": WeightedSum({"l1": WaveformL1(), "mrstft": MultiResolutionSTFTLoss()}),
        "epoch_counter": counter, "valid_metrics": [], "n_jobs": 0,
    }
    ckpt = Checkpointer(tmp_path / "save", {"model": model, "counter": counter})
    brain = MALBrain(modules={"model": model}, opt_class=lambda p: torch.optim.Adam(p, lr=3e-3), hparams=hparams,
                     run_opts={"device": "cpu", "noprogressbar": True}, checkpointer=ckpt)
    return brain, model, counter


def _params(modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


def _changed(before, modules):
    after = _params(modules)
    return any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("variant", ["frozen", "frozen_fe", "dynamic"])
def test_variant_semantics(variant, pair_sets, tmp_path):
    train, valid = pair_sets
    brain, model, counter = make_brain(variant, tmp_path)
    loader = {"batch_size": 4}
    brain.fit(counter, train, valid, train_loader_kwargs=loader, valid_loader_kwargs={"batch_size": 2})  # phase 1
    enc0, dec0 = _params(model.encoder_modules()), _params(model.decoder_modules())
    assert not brain.in_phase2()
    counter.limit = 2
    brain.fit(counter, train, valid, train_loader_kwargs=loader, valid_loader_kwargs={"batch_size": 2})  # phase 2
    assert brain.in_phase2()
    assert _changed(dec0, model.decoder_modules())
    assert _changed(enc0, model.encoder_modules()) == (variant != "frozen_fe")
    if variant == "dynamic":
        assert brain.mal_loss.encoder == "live"
    else:  # the snapshot holds the encoder as it was at the end of phase 1
        snap = brain.mal_loss.snapshot.model
        assert all(torch.equal(a, b) for a, b in zip(enc0, _params(snap.encoder_modules())))
        assert all(not p.requires_grad for p in snap.parameters())


def _run_recipe(devset, out, epochs, variant="frozen"):
    cmd = [sys.executable, str(REPO / "recipes/mal/train.py"), str(REPO / f"hparams/folders/mal_{variant}.yaml"),
           f"--data_folder={devset}", f"--output_folder={out}", f"--number_of_epochs={epochs}", "--phase1_epochs=1",
           "--examples_per_epoch=8", "--batch_size=4", "--segment_seconds=1.0", "--valid_limit=2", "--test_limit=2",
           "--test_metrics=[pesq]", "--n_jobs=0", *SMALL]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out.parent, env=ENV)


@pytest.mark.recipe
def test_resume_in_phase2_keeps_the_snapshot(devset, tmp_path):
    out = tmp_path / "run"
    first = _run_recipe(devset, out, epochs=2)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "encoder snapshot taken" in first.stderr + first.stdout
    snap1 = torch.load(sorted(out.glob("save/CKPT+*/mal_loss.ckpt"))[-1])
    second = _run_recipe(devset, out, epochs=3)  # resumes at epoch 3, in phase 2
    assert second.returncode == 0, second.stderr[-3000:]
    assert "encoder snapshot taken" not in second.stderr + second.stdout
    log = (out / "train_log.txt").read_text()
    assert [int(e) for e in re.findall(r"^epoch: (\d+)", log, re.M)] == [1, 2, 3]
    assert "train mal" in [line for line in log.splitlines() if line.startswith("epoch: 3")][0]
    ckpts = sorted(out.glob("save/CKPT+*/mal_loss.ckpt"))
    snap2 = torch.load(ckpts[-1])
    assert snap1.keys() == snap2.keys() and all(torch.equal(snap1[k], snap2[k]) for k in snap1)
    assert bool(snap2["snapshot_taken"])
    # a MAL run exports and loads like any other model
    from sb_mal.inference import Enhancer, export_run

    exported = export_run(out, tmp_path / "exported")
    enhancer = Enhancer.from_hparams(source=str(exported), savedir=str(tmp_path / "cache"))
    assert enhancer.enhance_batch(torch.randn(1, 8000)).shape == (1, 8000)


@pytest.mark.recipe
def test_dynamic_variant_debug_run_loss_goes_down_and_reaches_phase_2(devset, tmp_path):
    out = tmp_path / "dbg"
    cmd = [sys.executable, str(REPO / "recipes/mal/train.py"), str(REPO / "hparams/folders/mal_dynamic.yaml"),
           f"--data_folder={devset}", f"--output_folder={out}", "--debug", "--debug_batches=10", "--debug_epochs=3",
           "--phase1_epochs=2", "--examples_per_epoch=40", "--batch_size=4", "--segment_seconds=1.0",
           "--valid_limit=4", "--test_limit=2", "--test_metrics=[pesq]", "--n_jobs=0", "--lr=0.003", *SMALL]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "train_log.txt").read_text()
    train = [float(x) for x in re.findall(r"train rec: ([0-9.e+-]+)", log)]
    assert len(train) == 3 and min(train[1:]) < train[0], train
    assert "valid mal" in log  # phase 2 reached


@pytest.mark.recipe
def test_ssl_l1_baseline_from_the_same_recipe(devset, tmp_path):
    """The WavLM deep-feature baseline runs through the MAL recipe with a local (tiny, random) WavLM."""
    from sb_mal.models import build_tiny_wavlm

    wavlm = tmp_path / "tiny_wavlm"
    build_tiny_wavlm(wavlm)
    out = tmp_path / "ssl"
    cmd = [sys.executable, str(REPO / "recipes/mal/train.py"), str(REPO / "hparams/folders/mal_ssl_l1.yaml"),
           f"--data_folder={devset}", f"--output_folder={out}", f"--ssl_source={wavlm}", "--debug", "--debug_batches=2",
           "--debug_epochs=2", "--phase1_epochs=1", "--examples_per_epoch=8", "--batch_size=4", "--segment_seconds=1.0",
           "--valid_limit=2", "--test_limit=2", "--test_metrics=[pesq]", "--n_jobs=0", *SMALL]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=dict(ENV, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = [line for line in (out / "train_log.txt").read_text().splitlines() if line.startswith("epoch:")]
    assert len(epochs) == 2
    assert "train mal" not in epochs[0] and "train mal" in epochs[1]  # the SSL term is on in phase 2 only


@pytest.mark.parametrize("variant", ["frozen_fe", "dynamic"])
def test_mal_brain_over_a_model_without_the_encode_protocol(variant, pair_sets, tmp_path):
    """MALBrain with sb_mal's MetricGAN generator (waveform in and out, no encode()): module-path taps."""
    from sb_mal.models import MetricGANGenerator

    train, valid = pair_sets
    torch.manual_seed(0)
    model = MetricGANGenerator(hidden_size=16, num_layers=1, lin_dim=16)
    counter = EpochCounter(limit=1)
    hparams = {"variant": variant, "phase1_epochs": 1, "lambda_mal": 10.0, "lambda_rec": 1.0,
               "rec_cost": WaveformL1(), "mal_taps": ["lstm"], "encoder_prefixes": ["lstm"],
               "epoch_counter": counter, "valid_metrics": [], "n_jobs": 0}
    brain = MALBrain(modules={"model": model}, opt_class=lambda p: torch.optim.Adam(p, lr=3e-3), hparams=hparams,
                     run_opts={"device": "cpu", "noprogressbar": True},
                     checkpointer=Checkpointer(tmp_path / "save", {"model": model, "counter": counter}))
    brain.fit(counter, train, valid, train_loader_kwargs={"batch_size": 4}, valid_loader_kwargs={"batch_size": 2})
    lstm0, head0 = _params([model.lstm]), _params([model.linear1, model.linear2])
    counter.limit = 2
    brain.fit(counter, train, valid, train_loader_kwargs={"batch_size": 4}, valid_loader_kwargs={"batch_size": 2})
    assert brain.mal_loss.taps == ["lstm"] and not brain.mal_loss.protocol
    assert _changed(head0, [model.linear1, model.linear2])
    assert _changed(lstm0, [model.lstm]) == (variant == "dynamic")
    assert "mal" in brain.train_stats and brain.train_stats["mal"] > 0


def test_taps_are_combined_by_their_mean_so_adding_taps_does_not_scale_the_loss():
    """Four taps weigh as much as one: L_mal is the mean of the per-tap terms (it used to be their sum)."""
    model = tiny_model()
    clean = torch.randn(2, 8000)
    enhanced = clean + 0.3 * torch.randn(2, 8000)
    taps = ["enc1", "enc2", "bottleneck"]
    mal = ModelAsLoss(model, taps=taps, encoder="live")
    value, parts = mal(enhanced, clean, terms=True)
    value, per_tap = float(value), [float(parts[f"mal_{t}"]) for t in taps]
    assert value == pytest.approx(sum(per_tap) / 3, rel=1e-5)
    assert value < sum(per_tap) * 0.9  # the old sum would be 3x
    weighted = ModelAsLoss(model, taps=taps, encoder="live", tap_weights={"bottleneck": 2.0})
    assert float(weighted(enhanced, clean)) == pytest.approx((per_tap[0] + per_tap[1] + 2 * per_tap[2]) / 4, rel=1e-5)
    with pytest.raises(ValueError, match="tap_weights for \\['enc9'\\]"):
        ModelAsLoss(model, taps=taps, encoder="live", tap_weights={"enc9": 1.0})


def test_gradient_share_logged_once_at_the_start_of_phase2(pair_sets, tmp_path, monkeypatch):
    """MALBrain measures ||lambda*grad L_mal|| / ||grad L_rec|| on the decoder once, writes it for the experiment."""
    import json

    import sb_mal.brains.mal as mal_module

    calls = []
    real = mal_module.gradient_share

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mal_module, "gradient_share", counting)
    train, valid = pair_sets
    brain, model, counter = make_brain("frozen", tmp_path)
    brain.hparams.output_folder = str(tmp_path)
    loader = {"batch_size": 4}
    brain.fit(counter, train, valid, train_loader_kwargs=loader, valid_loader_kwargs={"batch_size": 2})  # phase 1
    assert not calls and not (tmp_path / mal_module.GRADIENT_SHARE_FILE).exists()
    counter.limit = 3
    brain.fit(counter, train, valid, train_loader_kwargs=loader, valid_loader_kwargs={"batch_size": 2})  # phase 2
    assert len(calls) == 1  # two phase-2 epochs of two batches: measured once
    share = json.loads((tmp_path / mal_module.GRADIENT_SHARE_FILE).read_text())
    assert share["epoch"] == 2 and share["lambda_mal"] == 10.0
    assert share["share"] == pytest.approx(10.0 * share["mal_grad_norm"] / share["rec_grad_norm"])
    assert 0 < share["share"] < 1e3 and share["rec_grad_norm"] > 0
    # a fresh Brain over the same folder (a resume) reads the file instead of measuring again
    brain2, _, counter2 = make_brain("frozen", tmp_path)
    brain2.hparams.output_folder = str(tmp_path)
    counter2.limit = 4
    brain2.fit(counter2, train, valid, train_loader_kwargs=loader, valid_loader_kwargs={"batch_size": 2})
    assert len(calls) == 1 and brain2.grad_share == share


def test_gradient_share_matches_the_decoder_gradients():
    from sb_mal.brains.mal import decoder_parameters, gradient_share

    model = tiny_model()
    noisy, clean = torch.randn(2, 8000), torch.randn(2, 8000)
    mal = ModelAsLoss(model, encoder="snapshot")
    rec_cost = WaveformL1()
    out = model(noisy)
    params = decoder_parameters(model)
    share = gradient_share(rec_cost(out, clean), mal(out, clean), params, lambda_mal=3.0)
    rec_cost(model(noisy), clean).backward()
    expected = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    assert share["rec_grad_norm"] == pytest.approx(float(expected), rel=1e-4)
    assert share["share"] == pytest.approx(3.0 * share["share_per_lambda"])
    enc = {id(p) for m in model.encoder_modules() for p in m.parameters()}
    assert params and not any(id(p) in enc for p in params)
