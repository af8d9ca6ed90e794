"""Conformance: every sb_mal loss, dropped into a SpeechBrain-template recipe with the README's YAML entry.

The recipe (tests/stock_recipe/train.py) follows SpeechBrain's Voicebank enhancement templates:
``<models[model]>``, ``compute_cost`` called twice per step (loss and ``MetricStats``) and kept out of
``modules``, waveform_map and spectral_mask (waveform targets). The YAML entries are read from the
README (blocks marked ``<!-- stock-recipe: ... -->``), so the README shows what is run here.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from conftest import make_run  # noqa: E402  (shared test helpers)

REPO = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO / "tests" / "stock_recipe"
MARKER = re.compile(r"<!-- stock-recipe: (.+?) -->\s*\n```yaml\n(.*?)```", re.S)

pytestmark = pytest.mark.recipe

#: every loss the README must show in a stock recipe (by the class or constructor its entry names)
REQUIRED = {"ModelAsLoss", "ModelAsLoss.from_pretrained", "CodecApproximationLoss.from_pretrained", "SSLL1Loss",
            "SSLMSELoss", "SSLMSEPadLoss", "SSLSoftDTWLoss", "MultiResolutionSTFTLoss", "WeightedSum"}


def readme_entries() -> list[tuple[str, str, str, str]]:
    """``(id, recipe, model, yaml)`` for every marked block of the README, once per recipe named."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for n, (targets, block) in enumerate(MARKER.findall(text)):
        for target in targets.split(";"):
            recipe, model = target.split()
            loss = re.search(r"sb_mal\.losses\.([\w.]+)", block).group(1)
            out.append((f"{n:02d}-{loss}-{recipe}-{model}", recipe, model, block))
    return out


ENTRIES = readme_entries()


def test_the_readme_shows_every_loss_in_both_stock_recipes():
    losses = {}
    for _, recipe, _, block in ENTRIES:
        loss = re.search(r"sb_mal\.losses\.([\w.]+)", block).group(1)
        losses.setdefault(loss, set()).add(recipe)
    assert REQUIRED <= set(losses), REQUIRED - set(losses)
    assert all(recipes == {"waveform_map", "spectral_mask"} for recipes in losses.values()), losses
    assert all(block.startswith("compute_cost:") for *_, block in ENTRIES)


def _voicebank_layout(root: Path, devset) -> Path:
    """A VoiceBank-DEMAND folder (16 kHz copies, as SpeechBrain's noisy-vctk-16k) from devset pairs."""
    from sb_mal.audio import read_audio, write_audio

    pairs = sorted((devset / "pairs" / "valid" / "noisy").glob("*.flac"))[:8]
    names = {"clean_trainset_28spk_wav_16k": ["p250_001", "p250_002", "p250_003", "p250_004", "p226_001",
                                              "p287_001"],
             "clean_testset_wav_16k": ["p232_001", "p232_002"]}
    k = 0
    for clean_folder, utts in names.items():
        for utt in utts:
            noisy, _ = read_audio(pairs[k], 16000)
            clean, _ = read_audio(devset / "pairs" / "valid" / "clean" / pairs[k].name, 16000)
            n = min(len(noisy), 24000)  # 1.5 s keeps every run short
            write_audio(root / clean_folder / f"{utt}.wav", clean[:n], 16000)
            write_audio(root / clean_folder.replace("clean_", "noisy_") / f"{utt}.wav", noisy[:n], 16000)
            k += 1
    return root


@pytest.fixture(scope="module")
def fixtures(devset, tmp_path_factory, tiny_wavlm_dir):
    """The VoiceBank folder and what the README's placeholders stand for (offline stand-ins)."""
    from speechbrain.utils.checkpoints import Checkpointer

    from sb_mal.brains.enhance import model_config
    from sb_mal.inference import export_run
    from sb_mal.models.codec_net import SpectralCodecNet

    root = tmp_path_factory.mktemp("stock")
    vb = _voicebank_layout(root / "voicebank", devset)
    run, _ = make_run(root / "unet_run")
    exported = export_run(run, root / "exported")
    codec_run = root / "codec_run"
    codec_run.mkdir()
    net = SpectralCodecNet(filters=4, levels=3)
    (codec_run / "model_config.json").write_text(json.dumps({**model_config(net), "sample_rate": 16000}))
    Checkpointer(codec_run / "save", {"model": net}).save_checkpoint(meta={"loss": 1.0})
    from sb_folders import spectral_mask_folder

    placeholders = {"my_exported_model": str(exported), "results/mp3codec/spectral/1234": str(codec_run),
                    "microsoft/wavlm-base-plus": str(tiny_wavlm_dir),
                    "my_speechbrain_model": str(spectral_mask_folder(root / "speechbrain_model"))}
    return vb, placeholders


def _hparams_with(tmp: Path, recipe: str, model: str, entry: str, placeholders: dict) -> Path:
    """The recipe's YAML with the README's entry as ``compute_cost`` and the chosen model include."""
    folder = tmp / "hparams"
    shutil.copytree(RECIPE_DIR / "hparams", folder)
    text = (folder / f"{recipe}.yaml").read_text()
    for key, value in placeholders.items():
        entry = entry.replace(key, value)
    for key in re.findall(r"^(\w+):", entry, re.M):  # the entry replaces the recipe's own entries of its keys
        text, n = re.subn(rf"^{key}:.*\n(?:[ #].*\n|\n)*", "", text, flags=re.M)
        assert n == 1, key
    text += "\n" + entry
    text, n = re.subn(r"^models: !include:models/\w+\.yaml", f"models: !include:models/{model}.yaml", text, flags=re.M)
    assert n == 1
    path = folder / f"{recipe}.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("entry_id,recipe,model,entry", ENTRIES, ids=[e[0] for e in ENTRIES])
def test_readme_entry_trains_in_the_stock_recipe(entry_id, recipe, model, entry, fixtures, tmp_path, one_thread):
    import sys

    sys.path.insert(0, str(RECIPE_DIR))
    try:
        import train as stock_train
    finally:
        sys.path.remove(str(RECIPE_DIR))
    vb, placeholders = fixtures
    hparams_file = _hparams_with(tmp_path, recipe, model, entry, placeholders)
    args = [str(hparams_file), f"--data_folder={vb}", f"--output_folder={tmp_path / 'out'}", "--device=cpu",
            "--noprogressbar"]
    brain = stock_train.main(args)

    # the cost was computed for the loss and again by MetricStats, outside `modules`
    assert "compute_cost" not in brain.modules
    assert len(brain.loss_metric.scores) == 2  # test set: one score per utterance, through the cost
    assert all(math.isfinite(float(s)) for s in brain.loss_metric.scores)
    assert math.isfinite(brain.test_stats["loss"]) and math.isfinite(brain.test_stats["pesq"])
    log = (tmp_path / "out" / "train_log.txt").read_text()
    assert "Epoch: 1" in log and "train loss" in log
    train_loss = float(re.search(r"train loss: ([-\d.e+]+)", log).group(1))
    assert math.isfinite(train_loss)

    # the model was trained through the loss (same seed, same init: the weights moved)
    with open(hparams_file) as fin:
        fresh = load_hyperpyyaml(fin, {"data_folder": str(vb), "output_folder": str(tmp_path / "fresh")})
    moved = [not torch.equal(a.detach().cpu(), b.detach().cpu())
             for a, b in zip(brain.modules.model.parameters(), fresh["models"]["model"].parameters())]
    assert any(moved)
    # an entry that adds the loss to the recoverables: its snapshot is in the checkpoint
    if "mal_loss: !ref <compute_cost>" in entry:
        saved = list((tmp_path / "out" / "save").glob("CKPT+*/mal_loss.ckpt"))
        assert saved and any(k.startswith("snapshot") for k in torch.load(saved[0]))
    # the loss networks stayed frozen and received no gradient
    cost = brain.hparams.compute_cost
    if isinstance(cost, torch.nn.Module):
        assert all(p.grad is None for p in cost.parameters())
        if hasattr(cost, "encoder_prefixes") and not cost.train_encoder:
            frozen = [p for name in cost.encoder_prefixes for p in brain.modules.model.get_submodule(name).parameters()]
            assert frozen and not any(p.requires_grad for p in frozen)
