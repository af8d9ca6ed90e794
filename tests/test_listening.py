"""Listening enhancement: the equal-power rule, the noise at the utterance's SNR, the OKD Brain in
``task: listening`` and its recipes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sb_mal.listening import equal_power, noise_at_snr, utterance_snr

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--hidden_size=16", "--lin_dim=16", "--num_layers=1", "--d_channels=[4,4,4,4]"]


@pytest.mark.unit
def test_equal_power_holds_exactly_over_the_valid_samples():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 4000, generator=g, dtype=torch.float64)
    m = 5 * torch.randn(3, 4000, generator=g, dtype=torch.float64)
    lens = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    out = equal_power(m, s, lens)
    for b, n in enumerate((4000, 2000, 1000)):
        assert torch.allclose(out[b, :n].pow(2).sum(), s[b, :n].pow(2).sum(), rtol=1e-12)
        assert n == 4000 or out[b, n:].abs().max() == 0
    assert equal_power(torch.zeros(1, 100), torch.ones(1, 100)).abs().max() == 0  # silence stays silence
    x = m.clone().requires_grad_(True)
    equal_power(x, s, lens).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.unit
def test_noise_is_rescaled_to_the_utterance_snr():
    g = torch.Generator().manual_seed(1)
    s, n = torch.randn(2, 8000, generator=g, dtype=torch.float64), torch.randn(2, 8000, generator=g, dtype=torch.float64)
    scaled = noise_at_snr(n, s, [-10.0, 5.0])
    snr = 10 * torch.log10(s.pow(2).sum(1) / scaled.pow(2).sum(1))
    assert torch.allclose(snr, torch.tensor([-10.0, 5.0], dtype=torch.float64))
    padded = noise_at_snr(torch.cat([n, 100 * torch.ones(2, 2000, dtype=n.dtype)], 1),
                          torch.cat([s, torch.zeros(2, 2000, dtype=s.dtype)], 1), [0.0, 0.0],
                          torch.tensor([0.8, 0.8], dtype=torch.float64))  # valid: the first 8000 of 10000
    assert torch.allclose(padded[:, :8000].pow(2).sum(1), s.pow(2).sum(1)) and padded[:, 8000:].abs().max() == 0
    fixed = {utterance_snr("u", (-10, 5), (-5, 0, 5), seed=k) for k in range(3)}
    assert len(fixed) == 1 and fixed <= {-5.0, 0.0, 5.0}  # evaluation: fixed by the id, whatever the seed
    train = {utterance_snr("u", (-10, 5), (-5, 0, 5), seed=0, epoch=e) for e in range(1, 6)}
    assert len(train) == 5 and all(-10 <= v <= 5 for v in train)  # training: new every epoch


def _le_brain(tmp_path, targets=("siib",), **extra):
    import speechbrain as sb
    from speechbrain.utils.epoch_loop import EpochCounter

    from sb_mal.brains import MetricGANOKDBrain
    from sb_mal.models.metricgan import MetricDiscriminator
    from sb_mal.models.okd_factory import okd_modules

    torch.manual_seed(0)
    counter = EpochCounter(limit=5)
    counter.current = 2
    n = len(targets)
    mods = okd_modules(n, MetricDiscriminator(n, channels=(4, 4, 4, 4)), hidden_size=8, num_layers=1, lin_dim=8)
    hparams = {"target_metrics": list(targets), "alpha": 5.0, "epoch_counter": counter, "task": "listening",
               "g_opt_class": lambda p: torch.optim.Adam(p, lr=1e-2), "d_opt_class": lambda p: torch.optim.Adam(p, lr=1e-2),
               "output_folder": str(tmp_path), "n_jobs": 0, **extra}
    brain = MetricGANOKDBrain(modules=mods, hparams=hparams, run_opts={"device": "cpu", "noprogressbar": True})
    brain.init_optimizers()
    brain.on_stage_start(sb.Stage.TRAIN, 2)
    return brain


@pytest.mark.integration
def test_brain_modifies_clean_speech_at_equal_power_and_adds_the_noise(tmp_path):
    from speechbrain.dataio.batch import PaddedBatch

    brain = _le_brain(tmp_path, ("siib", "estoi"))
    g = torch.Generator().manual_seed(2)
    clean = 0.3 * torch.randn(2, 8000, generator=g)
    noise = 0.1 * torch.randn(2, 8000, generator=g)
    batch = PaddedBatch([{"id": f"u{i}", "noisy_sig": clean[i] + noise[i], "clean_sig": clean[i]} for i in range(2)])
    import speechbrain as sb

    batch = brain._listening_batch(batch, sb.Stage.TEST)
    noisy, lens = batch.noisy_sig
    for i in range(2):  # the noise now sits at the utterance's evaluation SNR
        snr = 10 * torch.log10(clean[i].pow(2).sum() / (noisy[i] - clean[i]).pow(2).sum())
        assert float(snr) == pytest.approx(utterance_snr(f"u{i}", [-10, 5], [-5, 0, 5]), abs=1e-3)
    with torch.no_grad():
        out = brain._enhance(0, noisy, clean, lens)
        modified = out - (noisy - clean)  # m: what the generator made of the clean speech
    assert torch.allclose(modified.pow(2).sum(1), clean.pow(2).sum(1), rtol=1e-4)
    assert not torch.allclose(modified, clean, atol=1e-3)
    # a generator step moves the generators, with the metric discriminator scoring m + n
    before = [p.detach().clone() for p in brain.modules.generator_0.parameters()]
    assert torch.isfinite(brain.fit_batch(batch))
    assert any(not torch.equal(a, b) for a, b in zip(before, brain.modules.generator_0.parameters()))


@pytest.mark.unit
def test_a_listening_yaml_with_a_quality_target_is_an_error_naming_it(tmp_path):
    from sb_mal.brains.hparams import HParamsError

    with pytest.raises(HParamsError, match=r"target_metrics: \['pesq'\] not an intelligibility metric"):
        _le_brain(tmp_path, ("pesq",))


@pytest.mark.unit
@pytest.mark.parametrize("key, value", [("le_eval_snrs", ["low", 0.0]), ("le_snr_range", [-10.0, "5 dB"])])
def test_a_listening_yaml_with_a_non_numeric_snr_is_an_error_naming_the_key(tmp_path, key, value):
    from sb_mal.brains.hparams import HParamsError

    with pytest.raises(HParamsError, match=rf"{key} must be a list of numbers, got {re.escape(repr(value))}"):
        _le_brain(tmp_path, **{key: value})


@pytest.mark.unit
def test_listening_enhancer_keeps_the_callers_chunking_and_equal_power(tmp_path):
    import numpy as np
    import soundfile as sf

    from sb_mal.inference.enhancer import Enhancer

    class Tilt(torch.nn.Module):
        def forward(self, wav, lengths=None):
            return torch.cat([wav[..., :1], wav[..., 1:] - 0.9 * wav[..., :-1]], -1)

    enh = Enhancer(modules={"enhance_model": Tilt()}, hparams={"sample_rate": 16000, "task": "listening"},
                   run_opts={"device": "cpu"})
    wav = 0.1 * np.random.default_rng(0).standard_normal(40000).astype("float32")
    sf.write(tmp_path / "s.wav", wav, 16000)
    # a short chunk needs a short overlap: the caller's overlap must reach the one-pass listening path
    out = enh.enhance_file(tmp_path / "s.wav", tmp_path / "m.wav", chunk_seconds=0.5, overlap_seconds=0.1)
    assert float(out.pow(2).sum()) == pytest.approx(float(np.sum(wav.astype(np.float64) ** 2)), rel=1e-5)
    assert sf.info(tmp_path / "m.wav").frames == wav.size


@pytest.mark.unit
def test_history_replays_pairs_at_the_level_their_targets_were_computed_at(tmp_path):
    import numpy as np

    from sb_mal.brains.metric_history import MetricHistory

    history = MetricHistory(tmp_path / "history", 16000)
    rng = np.random.default_rng(0)
    clean, heard = 0.5 * rng.standard_normal(16000), 0.9 * rng.standard_normal(16000)  # peaks above 1
    history.add("u1", 1, heard, clean, [0.5])
    back_clean, back_heard = history.load_audio(history.entries[0])
    assert np.abs(back_heard).max() > 1.5
    assert np.allclose(back_heard, heard, atol=2e-4 * np.abs(heard).max())
    assert np.allclose(back_clean, clean, atol=2e-4 * np.abs(heard).max())


@pytest.mark.recipe
def test_two_epoch_listening_recipe_on_the_mini_corpus(tmp_path, capsys):
    out = tmp_path / "le"
    cmd = [sys.executable, str(REPO / "recipes/metricgan_okd/train.py"), str(REPO / "hparams/mini/le_okd_siib_estoi.yaml"),
           f"--output_folder={out}", "--number_of_epochs=2", "--samples_per_epoch=4", "--valid_limit=2",
           "--test_limit=3", "--n_jobs=0", "--valid_every=1", *SMALL]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "train_log.txt").read_text()
    assert "valid g0_siib" in log and "valid g1_estoi" in log
    for i in (0, 1):
        summary = json.loads((out / f"test_summary_g{i}.json").read_text())
        assert {"stoi", "estoi", "siib"} <= set(summary["means"])
    assert json.loads((out / "model_config.json").read_text())["task"] == "listening"
    # exported and used by `sb-mal enhance`: clean speech in, speech at the same power out
    import numpy as np
    import soundfile as sf

    from sb_mal.cli import main

    model = tmp_path / "le_model"
    assert main(["export", str(out), "-o", str(model), "--key", "g0_siib", "--recoverable", "generator_0"]) == 0
    assert "task: listening" in (model / "hyperparams.yaml").read_text()
    assert "It does not remove noise" in (model / "README.md").read_text()
    speech = tmp_path / "speech"
    speech.mkdir()
    rng = np.random.default_rng(0)
    wav = (0.2 * np.sin(2 * np.pi * 200 * np.arange(24000) / 16000) * (1 + rng.random(24000))).astype("float32")
    sf.write(speech / "s.wav", wav, 16000)
    notice = "listening-enhancement model: the inputs must be clean speech"
    capsys.readouterr()
    assert main(["enhance", str(speech), "-o", str(tmp_path / "modified"), "--source", str(model)]) == 0
    assert notice in capsys.readouterr().err  # the reminder that outputs are not denoised...
    modified, _ = sf.read(tmp_path / "modified" / "s.wav")
    assert np.sum(modified**2) == pytest.approx(np.sum(wav.astype(np.float64) ** 2), rel=2e-3)  # 16-bit file
    assert main(["enhance", str(speech), "-o", str(tmp_path / "quiet"), "--source", str(model), "-q"]) == 0
    assert notice not in capsys.readouterr().err  # ...which -q leaves out


@pytest.mark.integration
def test_missing_noise_folder_is_an_error_naming_it(devset, tmp_path):
    missing = tmp_path / "no_such_noise"
    cmd = [sys.executable, str(REPO / "recipes/metricgan_okd/train.py"), str(REPO / "hparams/folders/le_metricgan_plus.yaml"),
           f"--data_folder={devset}", f"--noise_folder={missing}", f"--output_folder={tmp_path / 'out'}",
           "--number_of_epochs=1", "--n_jobs=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert str(missing) in last, last
