"""MetricGAN-OKD: models, targets, history buffer, OKD gradients, robustness, recipe integration."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sb_mal.brains.metric_history import MetricHistory
from sb_mal.metrics.targets import normalize_score
from sb_mal.models.metricgan import MetricDiscriminator, MetricGANGenerator
from sb_mal.models.okd_factory import make_discriminator, okd_modules

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--hidden_size=16", "--lin_dim=16", "--num_layers=1", "--d_channels=[4,4,4,4]"]


def test_model_sizes_come_from_the_constructor():
    g = MetricGANGenerator()
    assert sum(p.numel() for p in g.parameters()) == pytest.approx(1.89e6, rel=0.01)  # MetricGAN+ / OKD size
    causal = MetricGANGenerator(causal=True)
    assert sum(p.numel() for p in causal.parameters()) == pytest.approx(0.82e6, rel=0.02)
    small = MetricGANGenerator(n_fft=256, hidden_size=8, lin_dim=12, num_layers=1)
    assert small.bins == 129 and small.linear1.out_features == 12
    assert make_discriminator(2, 4, channels=(3, 3, 3, 3))(torch.rand(1, 30, 65), torch.rand(1, 30, 65)).shape == (1, 4)
    with pytest.raises(ValueError, match="3 outputs for 2 generators"):
        okd_modules(2, MetricDiscriminator(3))


def test_targets():
    assert normalize_score("pesq", 2.5) == pytest.approx(0.5)
    assert normalize_score("pesq", 4.64, "linear") == pytest.approx(1.0, abs=0.05)
    assert normalize_score("covl", 5.0) == 1.0 and normalize_score("stoi", 0.9) == 0.9
    assert math.isnan(normalize_score("pesq", math.nan))
    with pytest.raises(ValueError, match="no target normalisation"):
        normalize_score("wer", 0.1)


def test_discriminator_learns_to_predict_a_metric(devset_test_arrays):
    """Trained on devset (clean, noisy) pairs with their normalised PESQ, D's error falls."""
    from sb_mal.metrics import evaluate

    ids, noisy, clean = devset_test_arrays
    pesq = evaluate(noisy, clean, metrics=["pesq"], n_jobs=0).column("pesq")
    targets = [normalize_score("pesq", v) for v in pesq] + [1.0] * len(clean)
    g = MetricGANGenerator(hidden_size=8, num_layers=1, lin_dim=8)
    feats = [g.features(torch.as_tensor(w)[None])[0] for w in noisy + clean]
    refs = [g.features(torch.as_tensor(w)[None])[0] for w in clean + clean]
    torch.manual_seed(0)
    d = MetricDiscriminator(1, channels=(8, 8, 8, 8))
    opt = torch.optim.Adam(d.parameters(), lr=3e-3)

    def epoch_loss(train):
        total = 0.0
        for r, f, t in zip(refs, feats, targets):
            loss = (d(r[:, :150], f[:, :150])[0, 0] - t) ** 2
            if train:
                opt.zero_grad()
                loss.backward()
                opt.step()
            total += float(loss)
        return total / len(targets)

    before = epoch_loss(False)  # train mode throughout, as MetricGAN uses D (BatchNorm on the item)
    for _ in range(20):
        epoch_loss(True)
    assert epoch_loss(False) < 0.65 * before  # measured: 0.30 -> 0.17


def test_history_survives_a_checkpoint_round_trip(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    h = MetricHistory(tmp_path / "hist")
    rng = np.random.default_rng(0)
    for e in (1, 2):
        h.add(f"u{e}", e, rng.standard_normal(1600).astype(np.float32) * 0.1, np.zeros(1600, np.float32), [0.2 * e, 0.5])
    h.noisy_targets["u1"] = [0.1, 0.2]
    ckpt = Checkpointer(tmp_path / "save", {"history": h})
    ckpt.save_checkpoint()
    restored = MetricHistory(tmp_path / "hist")
    Checkpointer(tmp_path / "save", {"history": restored}).recover_if_possible()
    assert restored.entries == h.entries and restored.noisy_targets == {"u1": [0.1, 0.2]}
    clean, enh = restored.load_audio(restored.entries[1])
    assert enh.shape == (1600,) and np.abs(enh).max() > 0
    os.unlink(h.entries[0]["path"])  # a lost file is dropped on load, not fatal
    again = MetricHistory(tmp_path / "hist")
    Checkpointer(tmp_path / "save", {"history": again}).recover_if_possible()
    assert [e["id"] for e in again.entries] == ["u2"]


def run_recipe(devset, out, *extra, yaml="okd_pesq_csig.yaml", env=None, launcher=None, sizes=SMALL):
    cmd = [*(launcher or [sys.executable]), str(REPO / "recipes/metricgan_okd/train.py"), str(REPO / "hparams/folders" / yaml),
           f"--data_folder={devset}", f"--output_folder={out}", "--samples_per_epoch=4", "--valid_limit=2",
           "--test_limit=2", "--test_metrics=[pesq,stoi]", "--n_jobs=0", "--valid_every=1", "--segment_seconds=2.0",
           *sizes]
    given = {e.split("=", 1)[0] for e in extra}  # an override given here replaces the default above
    cmd = [c for c in cmd if c.split("=", 1)[0] not in given] + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=out.parent,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


@pytest.mark.recipe
def test_recipe_end_to_end_logs_the_metric_share_and_tests_every_generator(devset, tmp_path):
    out = tmp_path / "okd"
    proc = run_recipe(devset, out, "--number_of_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "train_log.txt").read_text()
    epoch2 = [line for line in log.splitlines() if line.startswith("epoch: 2")][0]
    assert "train generator_0_loss" in epoch2
    epoch_s, metric_s = (float(re.search(rf"train {key}: ([0-9.e+-]+)", epoch2).group(1))
                         for key in ("epoch_seconds", "metric_seconds"))
    assert 0 < metric_s < epoch_s  # the metric share of the epoch's wall time is logged
    for i in (0, 1):
        assert json.loads((out / f"test_summary_g{i}.json").read_text())["counts"]["pesq"] == 2
    cfg = json.loads((out / "model_config.json").read_text())
    assert cfg["class"].endswith("MetricGANGenerator") and cfg["recoverables"] == {"pesq": "generator_0", "csig": "generator_1"}
    assert len(list((out / "history").glob("*@1.flac"))) == 4


def test_n1_alpha0_is_the_metricgan_plus_configuration(devset):
    """The MetricGAN+ YAML is the OKD YAML with one generator (PESQ) and alpha = 0: same code, same settings."""
    from sb_mal.run import load_recipe_hparams

    def load(name, *extra):
        return load_recipe_hparams([str(REPO / "hparams/folders" / name), f"--data_folder={devset}", *extra])[3]

    plus = load("metricgan_plus.yaml")
    okd = load("okd_pesq_csig.yaml", "--target_metrics=[pesq]", "--num_generators=1", "--alpha=0.0")
    assert plus["alpha"] == okd["alpha"] == 0.0 and plus["target_metrics"] == okd["target_metrics"] == ["pesq"]
    assert sorted(plus["modules"]) == sorted(okd["modules"]) == ["discriminator", "generator_0"]
    assert plus["modules"]["generator_0"].config == okd["modules"]["generator_0"].config
    assert plus["modules"]["discriminator"].config == okd["modules"]["discriminator"].config
    for key in ("samples_per_epoch", "history_portion", "g_lr", "d_lr", "pesq_mapping", "batch_size"):
        assert plus[key] == okd[key], key


@pytest.mark.recipe
def test_ddp_two_processes_gloo(devset, tmp_path):
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = run_recipe(devset, out, "--number_of_epochs=2", "--distributed_backend=gloo", launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (out / "train_log.txt").read_text()
    assert len(re.findall(r"^epoch: \d+", log, re.M)) == 2
    # the epoch's 4 draws are split over the 2 ranks and gathered into one shared history
    assert len(list((out / "history").glob("*@1.flac"))) == 4
    assert json.loads((out / "test_summary_g0.json").read_text())["counts"]["pesq"] == 2


SB_MODULES = ["--generator_class=!name:speechbrain.lobes.models.MetricGAN.EnhancementGenerator",
              "--discriminator_class=!name:speechbrain.lobes.models.MetricGAN.MetricDiscriminator"]


def test_speechbrain_metricgan_modules_are_selectable_in_the_yaml():
    """SpeechBrain's EnhancementGenerator / MetricDiscriminator, built from the YAML's class keys."""
    from speechbrain.lobes.models.MetricGAN import EnhancementGenerator, MetricDiscriminator as SBDiscriminator

    from sb_mal.models import SpeechBrainDiscriminator, SpeechBrainGenerator
    from sb_mal.run import load_recipe_hparams

    hp = load_recipe_hparams([str(REPO / "hparams/mini/okd_pesq_csig.yaml"), *SB_MODULES])[3]
    gens = [hp["modules"][f"generator_{i}"] for i in range(2)]
    disc = hp["modules"]["discriminator"]
    assert all(isinstance(g, SpeechBrainGenerator) and isinstance(g.net, EnhancementGenerator) for g in gens)
    assert isinstance(disc, SpeechBrainDiscriminator) and all(isinstance(d, SBDiscriminator) for d in disc.discriminators)
    assert len(disc.discriminators) == 2  # one per target metric: SpeechBrain's D has a single output
    # the adapter computes SpeechBrain's mask on SpeechBrain's features (log1p of the Hamming STFT magnitude)
    from speechbrain.processing.features import STFT, spectral_magnitude

    wav = 0.1 * torch.randn(1, 16000)
    feats, _, valid = gens[0].features(wav)
    sb_feats = torch.log1p(spectral_magnitude(STFT(16000, win_length=32, hop_length=16, n_fft=512,
                                                   window_fn=torch.hamming_window)(wav), power=0.5))
    assert feats.shape == sb_feats.shape and torch.allclose(feats, sb_feats, atol=1e-4)
    with torch.no_grad():
        expected = gens[0].net(feats, torch.ones(1)).clamp(min=0.05)
        assert torch.allclose(gens[0].mask(feats, valid), expected)
    with pytest.raises(ValueError, match="fixes its linear layers to 400-300-257"):
        load_recipe_hparams([str(REPO / "hparams/mini/okd_pesq_csig.yaml"), *SB_MODULES, "--hidden_size=16"])


@pytest.mark.recipe
def test_okd_recipe_with_speechbrain_modules_trains_and_exports(devset, tmp_path):
    from sb_mal.inference import Enhancer, export_run

    out = tmp_path / "okd_sb"
    sizes = ["--num_layers=1", "--d_channels=[4,4,4,4]"]
    proc = run_recipe(devset, out, "--number_of_epochs=2", *SB_MODULES, sizes=sizes)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "train_log.txt").read_text()
    assert "train generator_1_loss" in [line for line in log.splitlines() if line.startswith("epoch: 2")][0]
    cfg = json.loads((out / "model_config.json").read_text())
    assert cfg["class"] == "sb_mal.models.speechbrain_metricgan.SpeechBrainGenerator"
    folder = export_run(out, tmp_path / "exported", key="g1_csig", recoverable="generator_1")
    enhancer = Enhancer.from_hparams(source=str(folder), run_opts={"device": "cpu"})
    assert type(enhancer.mods.enhance_model.net).__name__ == "EnhancementGenerator"
    assert enhancer.enhance_batch(torch.randn(1, 8000)).shape == (1, 8000)


def test_running_totals_survive_a_resume_and_recoverable_names_do_not_clash(tmp_path):
    from speechbrain.utils.checkpoints import Checkpointer

    from sb_mal.brains.recoverables import RunningTotals, register

    totals = RunningTotals(metric_seconds=0.0)
    totals.add("metric_seconds", 12.5)
    ckpt = Checkpointer(tmp_path / "save")
    register(ckpt, {"totals": totals}, "test")
    ckpt.save_checkpoint()
    resumed = RunningTotals(metric_seconds=0.0)
    again = Checkpointer(tmp_path / "save")
    register(again, {"totals": resumed}, "test")
    again.recover_if_possible()
    assert resumed["metric_seconds"] == 12.5
    register(again, {"totals": resumed}, "test")  # the same object again: fine
    with pytest.raises(ValueError, match="already has a recoverable 'totals' .*needs that name for its dict"):
        register(again, {"totals": {}}, "OKD")


# -- the Brain's own generator step and discriminator phase ------------------------------------------------
def _okd_brain(tmp_path, alpha, grad_accumulation=1, seed=0, **extra):
    import speechbrain as sb
    from speechbrain.utils.epoch_loop import EpochCounter

    from sb_mal.brains import MetricGANOKDBrain

    torch.manual_seed(seed)
    counter = EpochCounter(limit=5)
    counter.current = 2  # generators train from epoch 2
    mods = okd_modules(2, MetricDiscriminator(2, channels=(4, 4, 4, 4)), hidden_size=8, num_layers=1, lin_dim=8)
    hparams = {"target_metrics": ["pesq", "csig"], "alpha": alpha, "epoch_counter": counter,
               "g_opt_class": lambda p: torch.optim.Adam(p, lr=1e-2), "d_opt_class": lambda p: torch.optim.Adam(p, lr=1e-2),
               "output_folder": str(tmp_path), "n_jobs": 0, **extra}
    brain = MetricGANOKDBrain(modules=mods, hparams=hparams, run_opts={"device": "cpu", "noprogressbar": True,
                                                                      "grad_accumulation_factor": grad_accumulation})
    brain.init_optimizers()
    brain.on_stage_start(sb.Stage.TRAIN, 2)
    return brain


def _batch(n=2, samples=8000, seed=0):
    from speechbrain.dataio.batch import PaddedBatch

    g = torch.Generator().manual_seed(seed)
    clean = 0.3 * torch.randn(n, samples, generator=g)
    return PaddedBatch([{"id": f"u{i}", "noisy_sig": clean[i] + 0.2 * torch.randn(samples, generator=g),
                         "clean_sig": clean[i]} for i in range(n)])


def _gap(brain, batch):
    with torch.no_grad():
        noisy, lens = batch.noisy_sig
        a, b = (brain.modules[f"generator_{i}"](noisy, lens, output="features")[0] for i in range(2))
        return float(((a - b) ** 2).mean())


def test_distillation_pulls_the_generators_together_through_the_brain(tmp_path):
    """The KD term, exercised by the Brain's fit_batch: with alpha > 0 the generators' outputs converge."""
    batch = _batch()
    gaps = {}
    for alpha in (0.0, 20.0):
        brain = _okd_brain(tmp_path / str(alpha), alpha)
        before = _gap(brain, batch)
        for _ in range(15):
            loss = brain.fit_batch(batch)
            assert torch.isfinite(loss)
        gaps[alpha] = _gap(brain, batch) / before
    assert gaps[20.0] < 0.5 * gaps[0.0], gaps
    assert brain.optimizer_step == 15


def test_the_brains_objective_gives_each_generator_its_own_distillation_gradient(tmp_path):
    """The Brain's compute_objectives: on generator i's output, the gradient of sum_i L_Gi is that of
    MSE(D_i, 1) plus alpha x the gradient of MSE(G_i, G_j) with the peer G_j held fixed. Without the
    peer's detach the term of L_Gj would pull G_i back and cancel the distillation gradient."""
    import speechbrain as sb

    batch = _batch()
    grads = {}
    for alpha in (0.0, 5.0):
        brain = _okd_brain(tmp_path / str(alpha), alpha)
        enhanced, valid = brain.compute_forward(batch, sb.Stage.TRAIN)
        total = brain.compute_objectives((enhanced, valid), batch, sb.Stage.TRAIN)
        grads[alpha] = torch.autograd.grad(total, enhanced)
    e0, e1 = (e.detach() for e in enhanced)
    m = valid[:, :, None].to(e0.dtype)
    count = m.sum() * e0.shape[2]
    for mine, peer, i in ((e0, e1, 0), (e1, e0, 1)):
        expected = 5.0 * 2 * (mine - peer) * m / count
        assert expected.abs().max() > 0
        torch.testing.assert_close(grads[5.0][i] - grads[0.0][i], expected, rtol=1e-4, atol=1e-7)


def test_the_discriminator_step_goes_through_speechbrains_optimizers_step(tmp_path, monkeypatch):
    """A discriminator update moves the discriminator only, counts as an optimiser step, and runs
    SpeechBrain's clipping on the discriminator's parameters."""
    brain = _okd_brain(tmp_path, 5.0)
    brain.fit_batch(_batch())  # a generator step leaves gradients in the discriminator
    assert any(p.grad is not None for p in brain.modules.discriminator.parameters())
    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, norm: clipped.append(list(params)) or
                        real_clip(clipped[-1], norm))
    gens = {n: [p.detach().clone() for p in brain.modules[n].parameters()] for n in brain.gen_names}
    disc = [p.detach().clone() for p in brain.modules.discriminator.parameters()]
    steps = brain.optimizer_step
    wav = 0.3 * torch.randn(8000).numpy()
    loss = brain.discriminator_loss(wav, wav + 0.1, [0.5, 0.5])
    brain.discriminator_step(loss)
    assert brain.optimizer_step == steps + 1
    assert any(not torch.equal(a, b) for a, b in zip(disc, brain.modules.discriminator.parameters()))
    for n in brain.gen_names:
        assert all(torch.equal(a, b) for a, b in zip(gens[n], brain.modules[n].parameters()))
    assert [len(c) for c in clipped] == [len(disc)]
    assert all(p.grad is None for p in brain.modules.discriminator.parameters())  # zeroed after the step


def test_generator_step_accumulates_gradients_as_speechbrain_does(tmp_path):
    brain = _okd_brain(tmp_path, 5.0, grad_accumulation=2)
    g0 = brain.modules.generator_0
    d_before = [p.detach().clone() for p in brain.modules.discriminator.parameters()]
    before = [p.detach().clone() for p in g0.parameters()]
    brain.step = 1
    brain.fit_batch(_batch())  # step 1 of 2: gradients accumulate, no update
    assert all(torch.equal(a, b) for a, b in zip(before, g0.parameters()))
    brain.step = 2
    brain.fit_batch(_batch(seed=1))
    assert any(not torch.equal(a, b) for a, b in zip(before, g0.parameters()))
    assert brain.optimizer_step == 1
    # the generator step never moves the discriminator
    assert all(torch.equal(a, b) for a, b in zip(d_before, brain.modules.discriminator.parameters()))


@pytest.mark.parametrize("pipelined", [False, True])
def test_discriminator_phase_skips_an_utterance_whose_metric_failed(tmp_path, monkeypatch, pipelined):
    from sb_mal.metrics import pool, stream

    batch = _batch(n=3, samples=16000)
    failing = batch.clean_sig[0][1].numpy()  # u1's reference: its CSIG fails, whatever is compared with it

    def fake_score(enhanced, clean, rate, metrics):
        fails = np.array_equal(np.asarray(clean), failing)
        return {m: (math.nan if fails and m == "csig" else 2.5) for m in metrics}, (["csig failed"] if fails else [])

    monkeypatch.setattr(pool, "score_utterance", fake_score)
    monkeypatch.setattr(stream, "score_utterance", fake_score)
    brain = _okd_brain(tmp_path, 5.0, d_pipeline=pipelined, score_cache="off")
    brain.fit_batch(batch)
    d_before = [p.detach().clone() for p in brain.modules.discriminator.parameters()]
    stats = brain.discriminator_phase.run(2, brain._current)
    assert stats["d_skipped"] == 1 and math.isfinite(stats["d_loss_current"])
    assert sorted(e["id"] for e in brain.history.entries) == ["u0", "u2"]  # the failed one never enters the history
    assert any(not torch.equal(a, b) for a, b in zip(d_before, brain.modules.discriminator.parameters()))
    assert stats["d_target_csig"] == pytest.approx(0.375)  # (2.5 - 1) / 4, the NaN left out


@pytest.mark.recipe
def test_max_train_minutes_stops_the_okd_recipe_after_the_epoch_that_passes_it(devset, tmp_path):
    out = tmp_path / "okd"
    proc = run_recipe(devset, out, "--number_of_epochs=3", "--max_train_minutes=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "train_log.txt").read_text()
    assert [int(e) for e in re.findall(r"^epoch: (\d+)", log, re.M)] == [1]  # the budget ended it after epoch 1
    assert json.loads((out / "test_summary_g0.json").read_text())["counts"]["pesq"] == 2


def test_warm_start_loads_one_pretrained_generator_into_every_generator(tmp_path):
    """init_generators_from: every generator starts from the same pretrained weights, on a fresh run only."""
    import json

    from speechbrain.utils.checkpoints import Checkpointer

    from sb_mal.models import MetricGANGenerator

    torch.manual_seed(3)
    pre = MetricGANGenerator(hidden_size=8, num_layers=1, lin_dim=8)
    run = tmp_path / "pretrained"
    run.mkdir()
    (run / "model_config.json").write_text(json.dumps({"class": "sb_mal.models.metricgan.MetricGANGenerator",
                                                       "kwargs": pre.config, "sample_rate": 16000}))
    Checkpointer(run / "save", {"model": pre}).save_checkpoint(meta={"pesq": 2.0})
    brain = _okd_brain(tmp_path / "okd", 5.0)
    brain.hparams.init_generators_from = str(run)
    brain.hparams.epoch_counter.current = 0
    brain.on_fit_start()
    for i in range(2):
        gen = brain.modules[f"generator_{i}"]
        assert all(torch.equal(a, b) for a, b in zip(gen.state_dict().values(), pre.state_dict().values()))
    brain.fit_batch(_batch())  # epoch 0 < 2: nothing trains yet; a resumed run (epoch > 0) is not re-initialised
    with torch.no_grad():
        for p in brain.modules.generator_0.parameters():
            p.add_(1.0)
    brain.hparams.epoch_counter.current = 3
    brain.on_fit_start()
    assert not torch.equal(next(brain.modules.generator_0.parameters()), next(pre.parameters()))
    wrong = _okd_brain(tmp_path / "okd2", 5.0)
    wrong.hparams.init_generators_from = str(run)
    wrong.modules.generator_0 = MetricGANGenerator(hidden_size=16, num_layers=1, lin_dim=8)
    with pytest.raises(ValueError, match="does not fit generator_0"):
        wrong.warm_start(str(run))


@pytest.mark.parametrize("n_jobs", [0, 2])
def test_the_pipelined_discriminator_phase_equals_the_sequential_one(devset_test_arrays, tmp_path, n_jobs):
    """Same seed, same real utterances: streaming the targets through the pool while the discriminator
    learns gives the same targets, the same history and bitwise the same discriminator weights as
    enhancing, scoring and updating one after the other. A second epoch takes the noisy targets from
    the cross-run cache (no noisy input scored again)."""
    from speechbrain.dataio.batch import PaddedBatch

    ids, noisy, clean = devset_test_arrays
    n = min(len(x) for x in noisy + clean)
    batch = PaddedBatch([{"id": u, "noisy_sig": torch.as_tensor(x[:n]).float(), "clean_sig": torch.as_tensor(c[:n]).float()}
                         for u, x, c in zip(ids, noisy, clean)])
    runs = {}
    for pipelined in (False, True):
        brain = _okd_brain(tmp_path / f"p{pipelined}", 5.0, n_jobs=n_jobs, d_pipeline=pipelined,
                           score_cache=str(tmp_path / f"cache{pipelined}.sqlite"))
        brain.fit_batch(batch)
        order = []  # the pipeline interleaves: a discriminator update comes before the last enhancement
        for name in ("enhance_for_discriminator", "discriminator_step"):
            setattr(brain, name, (lambda real, name: lambda *a: order.append(name) or real(*a))(getattr(brain, name), name))
        stats = brain.discriminator_phase.run(2, brain._current)
        last_enhancement = max(i for i, n in enumerate(order) if n == "enhance_for_discriminator")
        assert ("discriminator_step" in order[:last_enhancement]) == pipelined, order
        scored = []  # noisy inputs scored in the second run
        brain.discriminator_phase._remember_noisy = lambda utterance, row: scored.append(utterance[0])
        brain.history.noisy_targets.clear()  # as in a new run on the same data: the cache has them
        again = brain.discriminator_phase.run(3, brain._current)
        runs[pipelined] = (stats, again, [p.detach().clone() for p in brain.modules.discriminator.parameters()],
                           [e["targets"] for e in brain.history.entries], dict(brain.history.noisy_targets), scored)
    (s0, a0, w0, t0, n0, scored0), (s1, a1, w1, t1, n1, scored1) = runs[False], runs[True]
    assert s0["d_skipped"] == 0 and math.isfinite(s0["d_loss_current"])
    assert s0 == s1 and a0 == a1
    assert t0 == t1 and n0 == n1 and len(n0) == len(ids) and len(t0) == 2 * len(ids)
    assert all(torch.equal(a, b) for a, b in zip(w0, w1))
    assert scored0 == scored1 == []



def _valid_lines(out: Path) -> dict[int, str]:
    """epoch -> the validation part of its train-log line (train stats hold wall times, which differ)."""
    lines = {}
    log = out / "train_log.txt"
    for line in (log.read_text() if log.exists() else "").splitlines():
        m = re.match(r"epoch: (\d+) - .* - (valid .*)$", line)
        if m:
            assert int(m[1]) not in lines, f"epoch {m[1]} logged twice"
            lines[int(m[1])] = m[2]
    return lines


def _metas_raw(out: Path) -> list[dict]:
    import yaml

    return [yaml.safe_load((c / "CKPT.yaml").read_text()) for c in sorted((out / "save").glob("CKPT+*"))]


def _metas(out: Path) -> list[dict]:
    return sorted(({k: v for k, v in m.items() if k != "unixtime"} for m in _metas_raw(out)), key=lambda m: m["g0_pesq"])


@pytest.mark.recipe
def test_validation_scored_while_the_next_epoch_trains_equals_waiting_for_it(devset, tmp_path):
    """``valid_overlap``: the recipe with one metric worker, validation every epoch. Scored while the next
    epoch's generators train, the validation gives the same log lines, the same checkpoint meta (so the
    same checkpoints kept and tested) and the same test scores as waiting for it; some utterances are in
    before the scores are asked for. A run stopped while a checkpoint's scores were pending validates that
    checkpoint again on resume: the same meta and one log line."""
    runs = {}
    for overlap in (False, True):
        out = tmp_path / f"overlap_{overlap}"
        proc = run_recipe(devset, out, "--number_of_epochs=3", "--n_jobs=1", "--valid_limit=3",
                          f"--valid_overlap={overlap}", "--score_cache=off")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[overlap] = out
    waited, overlapped = runs[False], runs[True]
    assert sorted(_valid_lines(waited)) == [1, 2, 3]
    assert _valid_lines(overlapped) == _valid_lines(waited)
    assert _metas(overlapped) == _metas(waited) and not any("valid_pending" in m for m in _metas(overlapped))
    for i in (0, 1):
        assert (overlapped / f"test_scores_g{i}.csv").read_text() == (waited / f"test_scores_g{i}.csv").read_text()
    log = (overlapped / "log.txt").read_text()
    early = [int(n) for n in re.findall(r"epoch [12]'s validation: (\d+) of 6 utterances scored while", log)]
    assert len(early) == 2 and sum(early) > 0, early  # epochs 1 and 2 overlapped (3 is the last: it waits)
    assert "scored while the next epoch trained" not in (waited / "log.txt").read_text()

    # killed in epoch 2 while epoch 1's scores were still coming: resumed, epoch 1's checkpoint is validated
    # again and training goes on; the log, the meta and the test scores are those of the run that waited
    wrapper = tmp_path / "killed_while_pending.py"
    wrapper.write_text(
        "import os, runpy, sys\n"
        "from sb_mal.brains.okd_validation import OverlappedValidation\n"
        "real = OverlappedValidation.finish_validation\n"
        "def finish(self):\n"
        "    if self._pending_valid is not None:\n"
        "        os._exit(9)\n"
        "    real(self)\n"
        "OverlappedValidation.finish_validation = finish\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    killed = tmp_path / "killed"
    args = ["--number_of_epochs=3", "--n_jobs=1", "--valid_limit=3", "--valid_overlap=True", "--score_cache=off"]
    proc = run_recipe(devset, killed, *args, launcher=[sys.executable, str(wrapper)])
    assert proc.returncode == 9, proc.stderr[-3000:]
    assert _valid_lines(killed) == {} and [m.get("valid_pending") for m in _metas_raw(killed)] == [1]
    proc = run_recipe(devset, killed, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "validating its checkpoint again" in (killed / "log.txt").read_text()
    assert _valid_lines(killed) == _valid_lines(waited)
    assert _metas(killed) == _metas(waited)
    for i in (0, 1):
        assert (killed / f"test_scores_g{i}.csv").read_text() == (waited / f"test_scores_g{i}.csv").read_text()

    # a stop while epoch 3's scores were pending: its checkpoint as it was then, its line not yet written
    import yaml

    latest = max((overlapped / "save").glob("CKPT+*"), key=lambda c: yaml.safe_load((c / "CKPT.yaml").read_text())["unixtime"])
    meta = yaml.safe_load((latest / "CKPT.yaml").read_text())
    scored = {k: v for k, v in meta.items() if k.startswith("g")}
    meta.update({k: float("-inf") for k in scored}, valid_pending=3)
    (latest / "CKPT.yaml").write_text("# yamllint disable\n" + yaml.dump(meta))
    entry = json.loads((latest / "epoch_log.ckpt").read_text())
    assert entry["meta"] == {"epoch": 3}
    del entry["stats"]["valid_stats"]
    (latest / "epoch_log.ckpt").write_text(json.dumps({**entry, "pending": True}))
    lines = (overlapped / "train_log.txt").read_text().splitlines()
    (overlapped / "train_log.txt").write_text("\n".join(x for x in lines if not x.startswith("epoch: 3")) + "\n")
    proc = run_recipe(devset, overlapped, "--number_of_epochs=3", "--n_jobs=1", "--valid_limit=3",
                      "--valid_overlap=True", "--score_cache=off")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = yaml.safe_load((latest / "CKPT.yaml").read_text())
    assert "valid_pending" not in again and {k: again[k] for k in scored} == scored
    assert _valid_lines(overlapped) == _valid_lines(waited)
