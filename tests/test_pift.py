"""Position-invariant SSL fine-tuning: Brain, recipe, shift robustness, LibriSpeech+DEMAND prep, ASR hook."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.epoch_loop import EpochCounter

from conftest import make_run, tiny_unet  # noqa: E402  (shared test helpers)
from sb_mal.audio import read_audio, write_audio
from sb_mal.brains.pift import SPEED_FACTORS, PositionInvariantBrain, speed_perturb
from sb_mal.checkpoints import ExportError, load_pretrained
from sb_mal.losses.reconstruction import terms_to_floats
from sb_mal.losses import SSLMSELoss, SSLMSEPadLoss, SSLSoftDTWLoss, WaveformL1
from sb_mal.models import SSLFeatureExtractor

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--channels=[8,16]", "--bottleneck_dim=32", "--rnn_layers=1"]
LOSSES = {"mse": SSLMSELoss, "pad": SSLMSEPadLoss, "softdtw": SSLSoftDTWLoss}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wavlm_dir(tiny_wavlm_dir):
    return tiny_wavlm_dir


@pytest.fixture(scope="module")
def ext(wavlm_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return SSLFeatureExtractor(str(wavlm_dir))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("pretrained") / "run")


@pytest.fixture(scope="module")
def batch(devset):
    """Two real noisy/clean pairs, 1.0 s and 0.75 s (padded batch)."""
    items = []
    for i, n in enumerate((16000, 12000)):
        noisy, _ = read_audio(devset / f"pairs/valid/noisy/valid_00{i}.flac")
        clean, _ = read_audio(devset / f"pairs/valid/clean/valid_00{i}.flac")
        items.append({"id": f"u{i}", "noisy_sig": noisy[:n], "clean_sig": clean[:n]})
    return PaddedBatch(items)


def make_brain(loss, checkpointer=None, **hparams):
    counter = EpochCounter(1)
    counter.current = 1
    brain = PositionInvariantBrain(modules={"model": tiny_unet()}, opt_class=lambda p: torch.optim.Adam(p, 3e-3),
                                   hparams={"ssl_loss": loss, "init_from": "unused", "epoch_counter": counter,
                                            "valid_metrics": [], "n_jobs": 0, **hparams},
                                   run_opts={"device": "cpu", "noprogressbar": True}, checkpointer=checkpointer)
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    return brain


# -- speed perturbation and the Brain ---------------------------------------------------------------
def _peak_hz(wav: torch.Tensor, margin: int = 2000) -> float:
    seg = wav[margin:-margin]
    spectrum = torch.fft.rfft(seg * torch.hann_window(seg.shape[0]), n=1 << 17).abs()
    return float(spectrum.argmax()) * 16000 / (1 << 17)


def test_speed_perturb_resample_mode_changes_length_and_pitch_by_the_factor():
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * math.pi * 400 * t)[None]
    for factor in SPEED_FACTORS:
        out = speed_perturb(tone, factor, mode="resample")
        assert out.shape[1] == math.ceil(16000 / factor)
        assert abs(_peak_hz(out[0]) - 400 * factor) < 5, factor  # resampling shifts the pitch too


@pytest.mark.unit
def test_time_stretch_keeps_the_pitch_and_scales_the_length():
    """Acceptance (issue 24): a 200 Hz tone, 16 kHz, 2 s, stretched at rate 1.2: dominant frequency within 2 %,
    length 1/1.2 of the input within 1 %; batches [B, T] and single waveforms [T] alike."""
    from sb_mal.dsp import time_stretch

    t = torch.arange(32000) / 16000
    tone = torch.sin(2 * math.pi * 200 * t)
    out = time_stretch(tone, 1.2, 16000)
    assert abs(out.shape[0] - 32000 / 1.2) <= 0.01 * 32000 / 1.2
    assert abs(_peak_hz(out) - 200) <= 0.02 * 200
    batch = torch.stack([tone, torch.sin(2 * math.pi * 300 * t)])
    stretched = time_stretch(batch, 1.2, 16000)
    assert stretched.shape == (2, out.shape[0]) and torch.allclose(stretched[0], out, atol=1e-5)
    assert abs(_peak_hz(stretched[1]) - 300) <= 6
    for rate in (0.8, 0.9, 1.1):
        assert abs(_peak_hz(time_stretch(tone, rate)) - 200) <= 4, rate
    # the Brain's default speed perturbation is this stretch, resampling only on request
    for factor in SPEED_FACTORS:
        assert speed_perturb(tone[None], factor).shape[1] == round(32000 / factor)
    assert abs(_peak_hz(speed_perturb(tone[None], 1.2)[0]) - 200) <= 4
    assert abs(_peak_hz(speed_perturb(tone[None], 1.2, mode="resample")[0]) - 240) <= 4
    with pytest.raises(ValueError, match="rate must be in"):
        time_stretch(tone, 0.1)


def test_training_input_is_speed_perturbed_and_the_loss_takes_the_length_mismatch(ext, batch):
    loss = SSLSoftDTWLoss(ext)
    brain = make_brain(loss)
    assert brain.speed_perturb and brain.speed_factors == SPEED_FACTORS and brain.speed_perturb_mode == "stretch"
    clean, lens = batch.clean_sig
    drawn = []
    for step in range(1, 6):
        brain.step = step
        factor = brain.speed_factor(1, step)
        assert factor == make_brain(loss).speed_factor(1, step)  # a function of (seed, epoch, step)
        out = brain.compute_forward(batch, sb.Stage.TRAIN)
        assert brain.last_speed_factor == factor and out.shape[1] == round(16000 / factor)  # time stretch
        value = brain.compute_objectives(out, batch, sb.Stage.TRAIN)
        expected = loss(out, clean, lens, target_length=lens)  # lengths relative to each side
        assert torch.isfinite(value) and torch.allclose(value, expected)
        drawn.append(factor)
    assert len(set(brain.speed_factor(1, s) for s in range(1, 40))) >= 5
    assert brain.stage_terms.means()["ssl"] > 0
    valid = brain.compute_forward(batch, sb.Stage.VALID)
    assert valid.shape == clean.shape and brain.last_speed_factor == 1.0


@pytest.mark.parametrize("name", ["mse", "pad", "softdtw"])
def test_fine_tuning_lowers_the_ssl_loss_on_a_fixed_batch(name, ext, batch):
    """Measured (20 steps, lr 3e-3): softdtw 0.34 -> 0.25, mse 0.30 -> 0.22, pad 0.30 -> 0.22."""
    kwargs = {"seed": 0} if name == "pad" else {}
    brain = make_brain(LOSSES[name](ext, **kwargs), speed_factors=[0.9])
    brain.init_optimizers()
    before = [p.clone() for p in ext.model.parameters()]
    values = []
    for step in range(1, 21):
        brain.step = step
        values.append(float(brain.fit_batch(batch)))
    assert values[-1] < 0.85 * values[0], values
    assert all(torch.equal(a, b) for a, b in zip(before, ext.model.parameters()))  # the SSL model is frozen
    assert not any(p is q for p in brain.modules.parameters() for q in ext.model.parameters())


def test_reconstruction_term_is_computed_on_the_unperturbed_input(ext, batch):
    brain = make_brain(SSLSoftDTWLoss(ext), rec_cost=WaveformL1(), lambda_rec=0.5, speed_factors=[0.8])
    brain.step = 1
    out = brain.compute_forward(batch, sb.Stage.TRAIN)
    clean, lens = batch.clean_sig
    assert out.shape[1] == 20000
    loss, terms = brain.compute_loss(out, clean, lens, sb.Stage.TRAIN)
    terms = terms_to_floats(terms)  # the Brain keeps them as device tensors (no host sync per step)
    noisy, _ = batch.noisy_sig
    with torch.no_grad():
        rec = float(WaveformL1()(brain.modules.model(noisy, lens), clean, lens))
    assert terms["rec"] == pytest.approx(rec, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(terms["ssl"] + 0.5 * rec, rel=1e-5)
    _, valid_terms = brain.compute_loss(brain.compute_forward(batch, sb.Stage.VALID), clean, lens, sb.Stage.VALID)
    valid_terms = terms_to_floats(valid_terms)
    assert valid_terms["ssl_dtw"] == pytest.approx(valid_terms["ssl"], rel=1e-4)  # same divergence, unperturbed


def test_relative_gamma_is_measured_once_and_resumes_from_the_checkpoint(ext, batch, tmp_path):
    """gamma_relative: gamma = k x the median frame-pair cost of the first batch, then fixed; checkpointed by the Brain."""
    from speechbrain.utils.checkpoints import Checkpointer

    loss = SSLSoftDTWLoss(ext, gamma_relative=0.1)
    assert loss.gamma_state is not None and not loss.gamma_state.measured
    brain = make_brain(loss, Checkpointer(tmp_path / "save"), speed_factors=[1.0])
    brain.init_optimizers()
    brain.step = 1
    brain.fit_batch(batch)
    state = loss.gamma_state
    assert state.measured and int(state.observed) == 1
    assert loss.current_gamma > 0 and loss.current_gamma != 0.1
    gamma = loss.current_gamma
    for step in range(2, 4):  # later batches do not move it
        brain.step = step
        brain.fit_batch(batch)
    assert loss.current_gamma == gamma and int(state.observed) == 1
    assert brain.stage_terms.means()["sdtw_gamma"] == pytest.approx(gamma)  # in the train log, as used
    brain.checkpointer.save_checkpoint()
    resumed_loss = SSLSoftDTWLoss(ext, gamma_relative=0.1)
    resumed = make_brain(resumed_loss, Checkpointer(tmp_path / "save"), speed_factors=[1.0])
    resumed.checkpointer.recover_if_possible()
    assert resumed_loss.gamma_state.measured and resumed_loss.current_gamma == gamma
    with pytest.raises(ValueError, match="gamma_relative must be positive"):
        SSLSoftDTWLoss(ext, gamma_relative=0.0)


def test_relative_gamma_value_is_the_median_pair_cost(ext):
    torch.manual_seed(0)
    clean, enhanced = torch.randn(2, 8000), torch.randn(2, 8000)
    loss = SSLSoftDTWLoss(ext, gamma_relative=0.5)
    loss(enhanced, clean)
    est, n = ext.extract(enhanced)
    ref, m = ext.extract(clean)
    scale = est.shape[-1] ** -0.5
    from sb_mal.losses.soft_dtw import pairwise_cost

    cost = pairwise_cost(est * scale, ref * scale)
    assert loss.current_gamma == pytest.approx(0.5 * float(cost.flatten().median()), rel=1e-4)


def test_configuration_errors(ext):
    with pytest.raises(ValueError, match="init_from"):
        make_brain(SSLMSELoss(ext), init_from=None)
    with pytest.raises(ValueError, match="target_length"):
        make_brain(SSLMSELoss(ext), speed_perturb=True)
    with pytest.raises(ValueError, match="rec_cost"):
        make_brain(SSLMSELoss(ext), lambda_rec=1.0)
    with pytest.raises(ValueError, match="ssl_loss"):
        make_brain(None)
    assert not make_brain(SSLMSEPadLoss(ext)).speed_perturb


def test_init_from_run_checkpoint_file_and_exported_folder(pretrained, tmp_path, ext):
    from sb_mal.inference import export_run

    run, states = pretrained
    ckpts = {p.name.split("+")[-1]: p for p in (run / "save").glob("CKPT+*")}

    def same(state, ref):
        return state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)

    def state(source):
        return load_pretrained(source).model.state_dict()

    assert same(state(run), states["b"])  # best validation PESQ
    assert same(state(ckpts["a"]), states["a"])
    assert same(state(ckpts["a"] / "model.ckpt"), states["a"])
    exported = export_run(run, tmp_path / "exported")
    found = load_pretrained(exported)
    assert same(found.model.state_dict(), states["b"]) and found.kind == "exported"
    (exported / "export_info.json").unlink()  # then the folder's hyperparams.yaml builds the model
    found = load_pretrained(exported)
    assert same(found.model.state_dict(), states["b"]) and found.kind == "model_folder"
    with pytest.raises(ExportError, match="no-such-run: no such file or folder"):
        load_pretrained(tmp_path / "no-such-run")
    brain = make_brain(SSLMSELoss(ext), init_from=str(run))
    brain.modules.model = torch.nn.ModuleDict({"x": torch.nn.Linear(2, 2)})  # not the pretrained architecture
    with pytest.raises(ValueError, match="init_from=.*same model sizes"):
        brain.load_pretrained()


# -- the recipe, end to end ---------------------------------------------------------------------------
@pytest.mark.recipe
@pytest.mark.parametrize("name", ["mse", "pad", "softdtw"])
def test_recipe_debug_run_for_each_loss(name, devset, pretrained, wavlm_dir, tmp_path):
    run, _ = pretrained
    out = tmp_path / "pift"
    cmd = [sys.executable, str(REPO / "recipes/pift/train.py"), str(REPO / f"hparams/folders/pift_{name}.yaml"),
           f"--data_folder={devset}", f"--output_folder={out}", f"--init_from={run}", f"--ssl_source={wavlm_dir}",
           "--debug", "--debug_batches=3", "--debug_epochs=2", "--examples_per_epoch=12", "--batch_size=4",
           "--segment_seconds=1.0", "--valid_limit=2", "--test_limit=2", "--test_metrics=[pesq]", "--n_jobs=0",
           "--lr=0.001", *SMALL]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"PIFT: model initialised from checkpoint .*CKPT\+b", proc.stderr + proc.stdout)
    lines = (out / "train_log.txt").read_text().splitlines()
    epochs = [line for line in lines if line.startswith("epoch:")]
    assert len(epochs) == 2
    for line in epochs:
        for key in ("train ssl", "valid ssl", "valid ssl_dtw", "valid pesq"):
            value = float(re.search(rf"{key}: ([0-9.e+-]+)", line).group(1))
            assert math.isfinite(value) and value > 0, (key, line)
    assert any(line.startswith("epoch loaded") and "test ssl_dtw" in line for line in lines)
    assert json.loads((out / "test_summary.json").read_text())["n_utterances"] == 2


def test_all_pift_yamls_load(wavlm_dir, tmp_path):
    from hyperpyyaml import load_hyperpyyaml

    for dataset in ("mini", "folders", "librispeech_demand"):
        for name, cls in LOSSES.items():
            path = REPO / f"hparams/{dataset}/pift_{name}.yaml"
            text = path.read_text()
            assert "ssl_source: microsoft/wavlm-base-plus" in text and "lr: 0.0001" in text
            overrides = {"ssl_source": str(wavlm_dir), "init_from": "x", "output_folder": str(tmp_path / "o")}
            if dataset != "mini":
                overrides["data_folder"] = str(tmp_path)
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("HF_HUB_OFFLINE", "1")
                hparams = load_hyperpyyaml(text, overrides)
            assert type(hparams["ssl_loss"]) is cls, path
            assert hparams["speed_perturb"] == (name == "softdtw") and hparams["lambda_rec"] == 0.0
            assert "ssl_loss" not in hparams["modules"] and hparams["init_from"] == "x"


# -- shift robustness ---------------------------------------------------------------------------------
def test_shift_robustness_softdtw_barely_changes_while_mse_does(ext, devset, tmp_path):
    """Oracle 'enhanced' = clean, shifted by whole SSL frames; values relative to the noisy input.

    Measured (tiny random WavLM, 2 x 2 s): ssl_softdtw 0.02 / 0.05 / 0.08 (delay 20 / 40 / 60 ms),
    ssl_dtw about the same, ssl_mse 1.38 / 1.43 / 1.42. A half-frame shift (10 ms) costs soft-DTW
    about as much as the noise (1.1): frames cannot be re-aligned below the hop.
    """
    from sb_mal.evaluation.shift import evaluate_shift_robustness, save_shift_plot, write_shift_csv

    pairs = []
    for i in range(2):
        clean, _ = read_audio(devset / f"pairs/test/clean/test_00{i}.flac")
        noisy, _ = read_audio(devset / f"pairs/test/noisy/test_00{i}.flac")
        pairs.append((clean[:32000], clean[:32000], noisy[:32000]))
    rows = evaluate_shift_robustness(pairs, extractor=ext, shifts_ms=[0, 20, 40, 60])
    rel = {(r["mode"], r["loss"], r["shift_ms"]): r["relative"] for r in rows}
    assert len(rows) == 2 * 4 * 4 and all(r["n"] == 2 for r in rows)
    for shift in (20.0, 40.0, 60.0):
        for mode in ("delay", "pad"):
            assert rel[mode, "ssl_softdtw", shift] < 0.2 and rel[mode, "ssl_dtw", shift] < 0.2, (mode, shift)
            assert rel[mode, "ssl_mse", shift] > 1.0 and rel[mode, "ssl_mse_pad", shift] > 1.0
            assert rel[mode, "ssl_softdtw", shift] < 0.15 * rel[mode, "ssl_mse", shift]
    assert rel["delay", "ssl_mse", 0.0] == 0.0 and rel["delay", "ssl_softdtw", 0.0] < 1e-4
    save_shift_plot(tmp_path / "shift.png", rows)
    write_shift_csv(tmp_path / "shift.csv", rows)
    assert (tmp_path / "shift.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "shift.csv").read_text().splitlines()[0].startswith("mode,loss,shift_ms")
    assert not list(tmp_path.glob(".tmp-*"))


def test_shift_curves_pass_lengths_and_crop_for_frame_aligned_losses():
    from sb_mal.evaluation.shift import shift_curves

    seen = []

    class Aligned(torch.nn.Module):
        def forward(self, predictions, targets, length=None, reduction="mean"):
            seen.append(("aligned", predictions.shape[1], length.tolist()))
            return predictions[:, :10].abs().mean()

    class Flexible(torch.nn.Module):
        def forward(self, predictions, targets, length=None, reduction="mean", target_length=None):
            seen.append(("flexible", predictions.shape[1], [round(v, 4) for v in length.tolist()],
                         target_length.tolist()))
            return torch.tensor(1.0)

    clean = torch.ones(2, 1000)
    rows = shift_curves({"a": Aligned(), "f": Flexible()}, clean, clean, shifts_ms=[0, 10], mode="pad",
                        lengths=torch.tensor([1.0, 0.5]), normalize=None)
    assert ("aligned", 1000, [1.0, 0.5]) in seen and ("aligned", 1160, [1.0, 0.5]) not in seen
    assert ("flexible", 1160, [1.0, round(660 / 1160, 4)], [1.0, 0.5]) in seen  # 160 zeros in front
    assert [r["value"] for r in rows if r["loss"] == "a"] == [1.0, pytest.approx(0.0)]  # delayed: zeros first


def test_dtw_path_cost_matches_brute_force():
    from sb_mal.evaluation.shift import dtw_path_cost

    def brute(c, i=0, j=0):
        n, m = c.shape
        if (i, j) == (n - 1, m - 1):
            return c[i, j], 1
        options = [brute(c, a, b) for a, b in ((i + 1, j + 1), (i + 1, j), (i, j + 1)) if a < n and b < m]
        cost, cells = min(options)
        return c[i, j] + cost, cells + 1

    rng = np.random.default_rng(0)
    for shape in ((1, 1), (3, 4), (5, 2), (4, 4)):
        c = rng.random(shape)
        total, cells = dtw_path_cost(c)
        ref_total, ref_cells = brute(c)
        assert total == pytest.approx(ref_total) and cells == ref_cells


# -- LibriSpeech + DEMAND --------------------------------------------------------------------------------
def make_corpus(root: Path, loud: str | None = None) -> tuple[Path, Path]:
    """Tiny LibriSpeech (3 subsets) and DEMAND (18 types, 4 s each) layouts; ``loud`` clips when mixed."""
    from sb_mal.data.librispeech_demand import SEEN_NOISES, UNSEEN_NOISES

    rng = np.random.default_rng(1)
    ls = root / "LibriSpeech"
    layout = {"train-clean-100": [("19", "198", 3), ("26", "495", 2)], "dev-clean": [("84", "121", 2)],
              "test-clean": [("61", "70968", 3)]}
    for subset, chapters in layout.items():
        for spk, chap, count in chapters:
            folder = ls / subset / spk / chap
            lines = []
            for k in range(count):
                uid = f"{spk}-{chap}-{k:04d}"
                t = np.arange(int(16000 * (0.6 + 0.2 * k))) / 16000
                wav = 0.1 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t))
                wav = wav + 0.01 * rng.standard_normal(len(t))
                write_audio(folder / f"{uid}.flac", wav * (9.0 if uid == loud else 1.0), 16000)
                lines.append(f"{uid} WORDS OF {uid.replace('-', ' ')}")
            (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    demand = root / "DEMAND"
    for noise in SEEN_NOISES + UNSEEN_NOISES:
        write_audio(demand / noise / "ch01.wav", 0.05 * rng.standard_normal(64000), 16000)
    return ls, demand


def _snr(noisy_path, clean_path):
    from sb_mal.data.mixing import active_speech_power

    noisy, _ = read_audio(noisy_path, as_numpy=True)
    clean, _ = read_audio(clean_path, as_numpy=True)
    return 10 * np.log10(active_speech_power(clean) / np.mean((noisy - clean) ** 2))


def test_librispeech_demand_prep_snr_splits_and_noise_portions(tmp_path):
    from sb_mal.data.librispeech_demand import NOISE_PORTIONS, SEEN_NOISES, UNSEEN_NOISES, prepare_librispeech_demand
    from sb_mal.data.manifest import load_manifest

    ls, demand = make_corpus(tmp_path, loud="61-70968-0002")
    out = tmp_path / "mix"
    paths = prepare_librispeech_demand(ls, demand, out, download=False, progress=False)
    assert sorted(paths) == ["test_clean", "test_seen", "test_unseen", "train", "valid"]
    sizes = {"train": 5, "valid": 2, "test_seen": 3, "test_unseen": 3, "test_clean": 3}
    for split, path in paths.items():
        manifest = load_manifest(path, out)
        assert len(manifest) == sizes[split], split
        for uid, e in manifest.items():
            assert e["words"] == f"WORDS OF {uid.replace('-', ' ')}" and e["speaker"] == uid.split("-")[0]
            if split == "test_clean":
                assert e["noisy_wav"] == e["clean_wav"] and "LibriSpeech/test-clean" in e["noisy_wav"]
                continue
            assert e["noise_type"] in (UNSEEN_NOISES if split == "test_unseen" else SEEN_NOISES)
            assert e["snr_db"] in (20.0, 10.0, 5.0)
            assert abs(_snr(e["noisy_wav"], e["clean_wav"]) - e["snr_db"]) < 0.5, (uid, e)
            low, high = NOISE_PORTIONS[split]
            assert low * 4.0 <= e["noise_start"] < high * 4.0
            assert e["noisy_wav"].startswith(str(out / split / "noisy"))
            assert e["length"] == pytest.approx(0.6 + 0.2 * int(uid[-1]), abs=1e-4)
    loud = load_manifest(paths["test_seen"], out)["61-70968-0002"]
    assert loud["clean_wav"].startswith(str(out))  # scaled to avoid clipping: its own clean copy
    assert json.loads(Path(paths["train"]).read_text())["19-198-0000"]["noisy_wav"].startswith("{data_root}/")
    assert not list(out.rglob(".tmp-*"))


def test_librispeech_demand_prep_is_deterministic_and_resumes_after_a_crash(tmp_path, monkeypatch):
    import sb_mal.data.librispeech_demand as lsd

    ls, demand = make_corpus(tmp_path)
    lsd.prepare_librispeech_demand(ls, demand, tmp_path / "a", download=False, progress=False)
    real_write, calls = lsd.write_audio, []

    def crashing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 6:
            raise KeyboardInterrupt("killed")
        real_write(path, *args, **kwargs)

    monkeypatch.setattr(lsd, "write_audio", crashing)
    with pytest.raises(KeyboardInterrupt):
        lsd.prepare_librispeech_demand(ls, demand, tmp_path / "b", download=False, progress=False)
    assert not (tmp_path / "b/train.json").exists()
    assert not list((tmp_path / "b").rglob(".tmp-*"))
    calls.clear()
    monkeypatch.setattr(lsd, "write_audio", lambda p, *a, **k: (calls.append(p), real_write(p, *a, **k)))
    lsd.prepare_librispeech_demand(ls, demand, tmp_path / "b", download=False, progress=False)
    assert len(calls) == 13 - 5  # 13 mixtures (+1 scaled clean copy: none here); 5 finished before the crash
    for split in ("train", "valid", "test_seen", "test_unseen", "test_clean"):
        assert (tmp_path / f"a/{split}.json").read_text() == (tmp_path / f"b/{split}.json").read_text(), split
    for noisy in (tmp_path / "a").rglob("*.flac"):
        twin = tmp_path / "b" / noisy.relative_to(tmp_path / "a")
        assert np.array_equal(read_audio(noisy, as_numpy=True)[0], read_audio(twin, as_numpy=True)[0])
    calls.clear()
    lsd.prepare_librispeech_demand(ls, demand, tmp_path / "b", download=False, progress=False)
    assert not calls  # up to date
    small = lsd.prepare_librispeech_demand(ls, demand, tmp_path / "b", download=False, progress=False,
                                           limits={"train": 2})
    subset = json.loads(Path(small["train"]).read_text())
    full = json.loads((tmp_path / "a/train.json").read_text())
    assert len(subset) == 2 and all(subset[u] == full[u] for u in subset)
    with pytest.raises(ValueError, match="overlap"):
        lsd.prepare_librispeech_demand(ls, demand, tmp_path / "c", seen_noises=["NPARK"], download=False)
    with pytest.raises(FileNotFoundError, match="openslr.org/resources/12/train-clean-360.tar.gz"):
        lsd.prepare_librispeech_demand(ls, demand, tmp_path / "c", subsets={"train": "train-clean-360"},
                                       download=False)


def test_librispeech_demand_download_uses_the_real_urls(tmp_path, monkeypatch):
    import shutil

    from speechbrain.utils import data_utils

    import sb_mal.data.librispeech_demand as lsd

    source_ls, source_demand = make_corpus(tmp_path / "source")
    urls = []

    def fake_download(url, dest, unpack=False, dest_unpack=None, **kwargs):
        urls.append(url)
        Path(dest).write_bytes(b"archive")
        name = url.rsplit("/", 1)[-1]
        if name.endswith(".tar.gz"):
            shutil.copytree(source_ls / name[: -len(".tar.gz")], Path(dest_unpack) / "LibriSpeech" / name[: -7])
        else:
            noise = name[: -len("_16k.zip")]
            shutil.copytree(source_demand / noise, Path(dest_unpack) / noise)

    monkeypatch.setattr(data_utils, "download_file", fake_download)
    paths = lsd.prepare_librispeech_demand(tmp_path / "ls", tmp_path / "demand", tmp_path / "mix", progress=False)
    expected = [f"https://www.openslr.org/resources/12/{s}.tar.gz"
                for s in ("dev-clean", "test-clean", "train-clean-100")]
    expected += [f"https://zenodo.org/records/1227121/files/{n}_16k.zip"
                 for n in sorted(lsd.SEEN_NOISES + lsd.UNSEEN_NOISES)]
    assert urls == expected
    assert (tmp_path / "ls/train-clean-100/19/198/19-198-0000.flac").is_file()
    assert (tmp_path / "demand/DKITCHEN/ch01.wav").is_file()
    assert not list((tmp_path / "ls").glob("*.tar.gz")) and not list((tmp_path / "demand").glob(".unpack-*"))
    assert len(json.loads(Path(paths["train"]).read_text())) == 5
    urls.clear()
    lsd.prepare_librispeech_demand(tmp_path / "ls", tmp_path / "demand", tmp_path / "mix2", progress=False)
    assert urls == []  # present now: nothing downloaded


# -- downstream ASR ------------------------------------------------------------------------------------
STANDIN = '''
import torch

class Energy(torch.nn.Module):
    def forward(self, wavs, wav_lens):
        return wavs.pow(2).mean(1).sqrt()

class Decoder(torch.nn.Module):
    def __init__(self, loud):
        super().__init__()
        self.loud = list(loud)
    def forward(self, energy, wav_lens):
        return [self.loud if float(e) > 0.01 else [] for e in energy], None, None, None

def greedy(energy, wav_lens, loud):
    return [loud if float(e) > 0.01 else [] for e in energy]

class Tokenizer:
    def __init__(self, words):
        self.words = list(words)
    def decode_ids(self, ids):
        return " ".join(self.words[i] for i in ids)
'''
ENCDEC_YAML = """words: [the, cat, sat]
tokenizer: !new:standin_asr.Tokenizer
    words: !ref <words>
encoder: !new:standin_asr.Energy
decoder: !new:standin_asr.Decoder
    loud: [0, 1, 2]
modules:
    encoder: !ref <encoder>
    decoder: !ref <decoder>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables: {}
"""


@pytest.fixture()
def asr_folder(tmp_path, monkeypatch):
    """A stand-in ASR model that says 'the cat sat' for audible input and nothing for near-silence."""
    (tmp_path / "standin_asr.py").write_text(STANDIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "asr"
    folder.mkdir()
    (folder / "hyperparams.yaml").write_text(ENCDEC_YAML)
    return folder


def test_asr_wer_matches_hand_computation(asr_folder, tmp_path):
    from sb_mal.evaluation.asr import evaluate_asr, load_asr

    asr = load_asr(asr_folder)
    assert type(asr).__name__ == "EncoderDecoderASR"
    refs = {"u1": "The cat sat.", "u2": "THE DOG SAT", "u3": "the cat sat on the mat", "u4": "CAT", "u5": "hello world"}
    manifest, enhanced = {}, tmp_path / "enhanced_test"
    rng = np.random.default_rng(0)
    for uid, words in refs.items():
        level = 1e-4 if uid == "u5" else 0.2  # u5 is (nearly) silent after "enhancement"
        write_audio(enhanced / f"{uid}.wav", level * rng.standard_normal(8000), 16000)
        write_audio(tmp_path / "noisy" / f"{uid}.wav", 0.2 * rng.standard_normal(8000), 16000)
        manifest[uid] = {"noisy_wav": str(tmp_path / "noisy" / f"{uid}.wav"), "words": words}
    result = evaluate_asr(asr, manifest, audio_folder=enhanced, batch_size=2, output_folder=tmp_path, name="enh")
    # u1: 0 errors / 3; u2: 1 sub / 3; u3: 3 del / 6; u4: 2 ins / 1; u5: 2 del / 2 -> 8 / 15
    assert (result.errors, result.words, result.insertions, result.deletions, result.substitutions) == (8, 15, 2, 5, 1)
    assert result.wer == pytest.approx(100 * 8 / 15) and result.ser == pytest.approx(80.0)
    assert {r["id"]: r["hypothesis"] for r in result.rows}["u5"] == ""
    saved = json.loads((tmp_path / "enh_wer.json").read_text())
    assert saved["wer"] == pytest.approx(53.333, abs=1e-3) and len(saved["utterances"]) == 5
    assert (tmp_path / "enh_wer.csv").read_text().splitlines()[0].startswith("id,errors,words")
    noisy = evaluate_asr(asr, manifest, audio_key="noisy_wav")  # all audible: u5 "hello world" -> 2 sub + 1 ins
    assert noisy.deletions == 3 and noisy.substitutions == 1 + 2 and noisy.insertions == 2 + 1
    silenced = evaluate_asr(asr, manifest, audio_key="noisy_wav", enhance=lambda wav, lens: wav * 0)
    assert silenced.wer == pytest.approx(100.0) and silenced.deletions == 15
    with pytest.raises(ValueError, match="no 'words'"):
        evaluate_asr(asr, {"x": {"noisy_wav": manifest["u1"]["noisy_wav"]}})


def test_load_asr_detects_a_ctc_encoder_model(asr_folder, tmp_path):
    from sb_mal.evaluation.asr import evaluate_asr, load_asr

    ctc = tmp_path / "ctc"
    ctc.mkdir()
    (ctc / "hyperparams.yaml").write_text(ENCDEC_YAML.replace(
        "decoder: !new:standin_asr.Decoder\n    loud: [0, 1, 2]\n", "").replace("    decoder: !ref <decoder>\n", "")
        + "decoding_function: !name:standin_asr.greedy\n    loud: [1]\n")
    asr = load_asr(ctc)
    assert type(asr).__name__ == "EncoderASR"
    write_audio(tmp_path / "a.wav", 0.2 * np.random.default_rng(0).standard_normal(8000), 16000)
    result = evaluate_asr(asr, {"a": {"noisy_wav": str(tmp_path / "a.wav"), "words": "cat"}})
    assert result.wer == 0.0 and result.rows[0]["hypothesis"] == "CAT"
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_asr(tmp_path / "missing" / "model")
