"""benchmarks/sprint.py (the GPU sprint) and benchmarks/sprint_pack.py: the smoke run of every arm on the
CPU, the plan and its budgets, the start gate of benchmarks/protocol.py, the state a call carries to the
next, the devset subset and its preloading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import protocol  # noqa: E402
import sprint  # noqa: E402
import sprint_pack  # noqa: E402


def full_config(**kw) -> sprint.Config:
    values = dict(smoke=False, seeds=sprint.SEEDS, scale=20, device="cuda:0", jobs=2, batch=sprint.GPU_BATCH,
                  test_pairs=60,
                  slots={"mal": 6, "codec": 8, "pift": 5, "okd": 15, "total": 14, "okd_least": 5}, okd_min_epochs=10,
                  okd_max_epochs=400,
                  okd_samples=48, probe_steps=40, codec_net_steps=40)
    values.update(kw)
    return sprint.Config(**values)


@pytest.mark.unit
@pytest.mark.parametrize("batch", [8, 32])
def test_budgets_are_twenty_times_the_cpu_ones_for_five_seeds(tmp_path, batch):
    """20 times the CPU runs' mixtures (their steps were of batch 8: MAL 200 + 150 per arm, fine-tuning 32,
    codec 240), in steps of the sprint's batch, which reaches every driver."""
    exps = {e.key: e for e in sprint.experiments(full_config(batch=batch), tmp_path, None)}
    mixtures = {e: {r.name.split("/")[-1]: r.steps * batch for r in x.runs} for e, x in exps.items() if e != "okd"}
    assert mixtures["mal"]["phase1"] == 20 * 200 * 8
    assert mixtures["mal"]["baseline"] == mixtures["mal"]["frozen"] == 20 * 150 * 8
    assert mixtures["pift"]["rec"] == mixtures["pift"]["resemblyzer_softdtw"] == 20 * 32 * 8
    assert mixtures["codec"]["P4_codec_nopred_magnitude_m1"] == mixtures["codec"]["P5_l1_mag"] == 20 * 240 * 8
    assert mixtures["codec"]["P1_codec_nopred_magnitude_m1"] == mixtures["codec"]["P1_l1_mag"] == 20 * 240 * 8
    # the corrected fine-tuning design: a feature model that passes the reachability check, relative gamma
    args = exps["pift"].args
    assert args[args.index("--encoders") + 1] == "resemblyzer"
    assert args[args.index("--sdtw-gamma-relative") + 1] == "0.1"
    for key in ("mal", "pift", "codec"):
        assert exps[key].args[exps[key].args.index("--batch") + 1] == str(batch)
    assert "--test_limit=60" in exps["mal"].overrides and "--test_limit=60" in exps["pift"].overrides
    assert len(exps["mal"].runs) == 5 * 5 and len(exps["pift"].runs) == 5 * 4 and len(exps["codec"].runs) == 1 + 5 * 5 * 2
    assert len(exps["okd"].runs) == 5 * 3  # OKD, MetricGAN+ on PESQ, MetricGAN+ on CSIG
    seeds = {r.name.split("/")[-2] for e in exps.values() for r in e.runs if "seed" in r.name}
    assert seeds == {f"seed{s}" for s in range(1, 6)}
    assert "--device=cuda:0" in exps["mal"].overrides and "--n_jobs=2" in exps["codec"].overrides
    assert exps["okd"].args[exps["okd"].args.index("--device") + 1] == "cuda:0"


@pytest.mark.unit
def test_plan_keeps_runs_that_cannot_finish_for_the_next_call(tmp_path):
    cfg = full_config()
    exps = sprint.experiments(cfg, tmp_path, None)
    done = {(e.key, r.name): False for e in exps for r in e.runs}
    steps = sprint.prior_steps(cfg.batch)
    sim = sprint.simulate(exps, done, steps, cfg.jobs, 0.0, 8 * 60.0)
    for item in sim.values():  # nothing planned for this call ends after the stop
        assert not item["this_call"] or item["end"] <= 8 * 60.0
    assert any(v["this_call"] for v in sim.values()) and not all(v["this_call"] for v in sim.values())
    phase1 = [sim[("mal", f"seed{s}/phase1")] for s in cfg.seeds]
    baseline = sim[("mal", "seed1/baseline")]
    assert all(p["start"] == 0.0 for p in phase1) and baseline["start"] >= max(p["end"] for p in phase1)
    assert all(not v["this_call"] for k, v in sim.items() if k[0] == "okd")  # OKD not planned: waits
    # with everything but OKD done, OKD gets the whole call and as many epochs as fit
    only_okd = {k: k[0] != "okd" for k in done}
    okd = next(e for e in exps if e.key == "okd")
    epochs = sprint.okd_epochs_that_fit(okd, cfg, steps, 8 * 60.0)
    assert epochs >= cfg.okd_min_epochs
    longer = sprint.experiments(cfg, tmp_path, epochs + 1)
    assert sprint.SAFETY * max(sprint.run_seconds(r, steps, cfg.jobs) for r in longer[3].runs) > 8 * 60.0
    sim = sprint.simulate(sprint.experiments(cfg, tmp_path, epochs), only_okd, steps, cfg.jobs, 0.0, 8 * 60.0,
                          okd_start=0.0)
    assert all(v["this_call"] for v in sim.values()) and len(sim) == 15


@pytest.mark.unit
def test_step_times_are_read_from_the_recipes_output(tmp_path):
    bars = ("\r  0%|          | 0/40 [00:00<?, ?it/s]\r 50%|#####     | 20/40 [00:01<00:01, 14.2it/s, train_loss=1]"
            "\r100%|##########| 40/40 [00:02<00:00, 15.0it/s, train_loss=1]\n"
            "100%|##########| 1/1 [00:00<00:00,  2.45it/s]\n"
            "\r100%|##########| 40/40 [00:02<00:00, 20.0it/s, train_loss=0.9]\n")
    assert sprint.bar_seconds(bars, 40) == pytest.approx(0.05)  # the second epoch's bar
    assert sprint.bar_seconds("100%|##| 2/2 [00:07<00:00,  3.56s/it, train_loss=2.19]", 2) == pytest.approx(3.56)
    assert sprint.bar_seconds(bars, 7) is None
    log = tmp_path / "train_log.txt"
    log.write_text("epoch: 1 - train d_loss_current: 1.07e-01, train epoch_seconds: 1.42e+02, train metric_seconds: 24\n"
                   "epoch: 2 - train generator_0_loss: 7.12e-01, train epoch_seconds: 1.51e+02, train metric_seconds: 15"
                   " - valid g0_pesq: 1.12\n")
    assert sprint.okd_epoch_seconds(log) == pytest.approx(151.0)
    assert sprint.okd_epoch_seconds(tmp_path / "absent.txt") is None


@pytest.mark.unit
def test_no_run_starts_after_the_gate(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    cmd = [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('x')"]
    monkeypatch.setenv(protocol.NO_START_AFTER, f"{time.time() - 1:.0f}")
    with pytest.raises(protocol.NotStarted):
        protocol.run_once(cmd, tmp_path / "run", tmp_path / "log.txt", outputs=())
    assert not marker.exists()
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "seconds").write_text("12.5")  # a finished run still answers
    assert protocol.run_once(cmd, tmp_path / "done", tmp_path / "log.txt", outputs=()) == 12.5
    gate = tmp_path / "gate"  # a file holding the time: read before each run, so the caller can move it
    gate.write_text(f"{time.time() - 1:.1f}")
    monkeypatch.setenv(protocol.NO_START_AFTER, str(gate))
    with pytest.raises(protocol.NotStarted):
        protocol.run_once(cmd, tmp_path / "run", tmp_path / "log.txt", outputs=())
    # or a table: each run folder its own time, "*" any other
    gate.write_text(json.dumps({str((tmp_path / "run").resolve()): time.time() - 1, "*": time.time() + 600}))
    with pytest.raises(protocol.NotStarted):
        protocol.run_once(cmd, tmp_path / "run", tmp_path / "log.txt", outputs=())
    assert protocol.no_start_after(tmp_path / "other") > time.time()
    gate.write_text(json.dumps({str((tmp_path / "run").resolve()): time.time() + 600}))
    protocol.run_once(cmd, tmp_path / "run", tmp_path / "log.txt", outputs=())
    assert marker.exists() and (tmp_path / "run" / "seconds").exists()
    assert protocol.no_start_after(tmp_path / "other") is None
    assert protocol.merge_overrides(["a.py", "--n_jobs=1", "--seed=2"], ["--n_jobs=4", "--device=cuda:0"]) == \
        ["a.py", "--seed=2", "--n_jobs=4", "--device=cuda:0"]


def _run(folder: Path, finished: bool, ckpts: dict | None = None, enhanced: int = 0) -> None:
    folder.mkdir(parents=True)
    (folder / "train_command.txt").write_text("python train.py\n")
    (folder / "log.txt").write_text("log\n")
    (folder / ".lock").write_text("host 1 0\n")
    if finished:
        (folder / "seconds").write_text("1.0")
        (folder / "test_scores.csv").write_text("id,pesq\na,1.0\n")
    for i, (name, pesq) in enumerate((ckpts or {}).items()):
        ckpt = folder / "save" / name
        ckpt.mkdir(parents=True)
        (ckpt / "CKPT.yaml").write_text(f"pesq: {pesq}\n" if pesq is not None else "end-of-epoch: true\n")
        (ckpt / "model.ckpt").write_bytes(b"0" * 100_000)
        (ckpt / "optimizer.ckpt").write_bytes(b"0" * 200_000)
        (ckpt / "counter.ckpt").write_text("1")
        os.utime(ckpt, (1_000 + i, 1_000 + i))
    for i in range(enhanced):
        (folder / "enhanced_test").mkdir(exist_ok=True)
        (folder / "enhanced_test" / f"u{i:02d}.wav").write_bytes(b"RIFF")


@pytest.mark.unit
def test_state_keeps_results_and_the_models_later_runs_start_from(tmp_path):
    cfg = full_config(seeds=[1, 2])
    work = tmp_path / "work"
    runs = work / "runs"
    for seed in (1, 2):
        _run(runs / "mal" / f"seed{seed}" / "phase1", True, {"CKPT+a": None, "CKPT+b": None})
        _run(runs / "mal" / f"seed{seed}" / "baseline", True, {"CKPT+x": 1.5, "CKPT+y": 2.5}, enhanced=25)
    _run(runs / "mal" / "seed1" / "frozen", False, {"CKPT+f": 1.0})  # unfinished: seed 1 still needs phase 1
    for arm in ("frozen", "frozen_fe", "dynamic"):
        if arm != "frozen":
            _run(runs / "mal" / "seed1" / arm, True, {"CKPT+z": 1.0})
        _run(runs / "mal" / "seed2" / arm, True, {"CKPT+z": 1.0})
    for loss in ("rec", "resemblyzer_mse", "resemblyzer_pad", "resemblyzer_softdtw"):
        _run(runs / "pift" / "seed1" / loss, True, {"CKPT+p": 1.0})  # seed 1's fine-tuning done, seed 2's not
    _run(runs / "okd" / "seed1" / "metricgan_plus", True)
    (runs / "okd" / "seed1" / "metricgan_plus" / "history").mkdir()
    (runs / "okd" / "seed1" / "metricgan_plus" / "history" / "h.wav").write_bytes(b"RIFF")
    (runs / "mal" / "tuned.json").write_text("{}")
    (runs / "mal" / "logs").mkdir()
    (runs / "mal" / "logs" / "frozen_2.log").write_text("start\n" + "x" * 400_000 + "\nthe end\n")
    (work / "calls.json").write_text("[]")
    exps = sprint.experiments(cfg, runs, None)
    done = {(e.key, r.name): sprint.is_done(runs, e, r) for e in exps for r in e.runs}
    keep = sprint.state_keeper(work, exps, cfg, done)
    kept = {str(p.relative_to(work)) for p in work.rglob("*") if p.is_file() and keep(p.relative_to(work))}
    assert "runs/mal/seed1/phase1/save/CKPT+b/model.ckpt" in kept  # seed 1's frozen arm starts from it
    assert "runs/mal/seed1/phase1/save/CKPT+a/model.ckpt" not in kept  # not the newest
    assert "runs/mal/seed2/phase1/save/CKPT+b/model.ckpt" not in kept  # seed 2's arms are all done
    assert "runs/mal/seed2/phase1/save/CKPT+b/CKPT.yaml" in kept  # the driver still finds a checkpoint
    assert "runs/mal/seed2/baseline/save/CKPT+y/model.ckpt" in kept  # seed 2's fine-tuning starts from the best
    assert not any(k.startswith("runs/mal/seed2/baseline/save/CKPT+x") for k in kept)  # one loadable checkpoint
    assert "runs/mal/seed1/baseline/save/CKPT+y/model.ckpt" not in kept  # seed 1's fine-tuning is done
    assert not any("optimizer.ckpt" in k or k.endswith(".lock") or "/history/" in k for k in kept)
    assert not any(k.startswith("runs/mal/seed1/frozen/") for k in kept)  # unfinished: runs again
    shift = sorted(k for k in kept if "enhanced_test" in k)  # the shift study has not run: its 20 files stay
    assert len(shift) == 20 and all(k.startswith("runs/mal/seed1/baseline/enhanced_test/") for k in shift)
    assert {"runs/mal/tuned.json", "calls.json", "runs/mal/seed2/frozen/test_scores.csv"} <= kept
    dest = tmp_path / "out" / "sprint_state.tar.gz"
    size = sprint_pack.save_state(work, dest, keep, ["runs", "calls.json"])
    assert size == dest.stat().st_size and size < 250_000
    again = tmp_path / "again"
    assert sprint_pack.restore_state(dest, again) == len(kept)
    assert {str(p.relative_to(again)) for p in again.rglob("*") if p.is_file()} == kept
    log = (again / "runs/mal/logs/frozen_2.log").read_text()  # a long log keeps its end
    assert log.endswith("the end\n") and "start\n" not in log and len(log) < 300_000
    newest = max((again / "runs/mal/seed1/phase1/save").glob("CKPT+*"), key=lambda p: p.stat().st_mtime)
    assert newest.name == "CKPT+b"  # modification times travel: mal_experiment picks the newest


@pytest.mark.integration
def test_subset_fits_its_budget_and_preloads_the_same_samples(tmp_path, devset):
    import soundfile as sf

    subset = tmp_path / "subset"
    taken = sprint_pack.make_subset(devset, subset, test_pairs=3, valid_pairs=2, heldout_per_voice=1, music_files=1,
                                    budget=int(3 * sprint_pack.MIB))
    assert taken["pairs/test"] == 3 and taken["pairs/valid"] == 2
    assert sprint_pack.folder_bytes(subset) <= 3 * sprint_pack.MIB
    assert taken["noise/train"]["files"] == len(list((devset / "noise" / "train").glob("*.flac")))
    assert 0 < taken["speech/train"]["files"] < taken["speech/train"]["of"]
    for voice in ("fr", "it", "ru"):
        assert list((subset / "speech" / "train" / voice).glob("*.flac"))
    data = tmp_path / "data"
    info = sprint_pack.preload(subset, data, jobs=2)
    assert info["files"] == taken["speech/train"]["files"] + taken["noise/train"]["files"]
    flac = sorted((subset / "noise" / "train").glob("*.flac"))[0]
    a, _ = sf.read(str(flac), dtype="int16")
    b, _ = sf.read(str(data / "noise" / "train" / flac.with_suffix(".wav").name), dtype="int16")
    assert np.array_equal(a, b)
    assert (data / "pairs").is_symlink() and len(list((data / "pairs" / "test" / "noisy").glob("*.flac"))) == 3
    assert (data / "speech" / "valid").is_symlink() and not (data / "speech" / "train").is_symlink()
    assert sprint_pack.preload(subset, data, jobs=2) == info  # done once


@pytest.mark.integration
def test_packed_resemblyzer_weights_give_the_installed_encoders_features(tmp_path):
    """The pack carries only the LSTM tensors of Resemblyzer's pretrained.pt (a third of the file); the
    extractor built from them computes the same features as from the installed package's file."""
    import torch

    import importlib.util

    if importlib.util.find_spec("resemblyzer") is None:  # found, not imported: the package imports pkg_resources
        pytest.skip("Resemblyzer is not installed")
    from sb_mal.models.frame_features import ResemblyzerFeatureExtractor

    sprint_pack.copy_resemblyzer_weights(tmp_path / "site")
    packed = tmp_path / "site" / "resemblyzer" / "pretrained.pt"
    assert not (tmp_path / "site" / "resemblyzer" / "__init__.py").exists()  # an installed package still wins
    assert packed.stat().st_size < 6 * 2**20
    wav = torch.randn(2, 16000) * 0.1
    installed = ResemblyzerFeatureExtractor().eval()
    carried = ResemblyzerFeatureExtractor(weights=packed).eval()
    with torch.no_grad():
        assert torch.equal(installed(wav)[0], carried(wav)[0])


@pytest.mark.integration
def test_plan_only_plans_a_gpu_call_on_a_machine_without_one(tmp_path, devset):
    """``--plan-only`` prints the plan of a device call (cuda:0, every arm, 5 seeds) where no GPU answers, so
    the next person can see what a lent call will do before it is lent; nothing is trained or probed."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the planning on a machine without a GPU")
    subset = tmp_path / "subset"
    sprint_pack.make_subset(devset, subset, test_pairs=2, valid_pairs=2, heldout_per_voice=1, music_files=1,
                            budget=0, speech_files=6, noise_seconds=20.0)
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "SB_MAL_BENCH_RESULTS")}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/sprint.py"), "--plan-only", "--data", str(subset),
                           "--pack-dir", str(tmp_path / "no_pack"), "--work", str(work), "--out", str(tmp_path / "out"),
                           "--preload-dir", str(tmp_path / "preloaded")], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "plan only: cuda:0" in proc.stdout and "plan (step times priors" in proc.stdout
    assert "this call:" in proc.stdout and "of the 111 runs left" in proc.stdout
    assert "probing" not in proc.stdout and not any(work.rglob("CKPT*.yaml"))


@pytest.mark.recipe
def test_smoke_runs_every_arm_on_the_cpu_and_a_second_call_resumes(tmp_path, devset):
    """``--smoke``: the four drivers, every arm a step or two, in one call of under 5 minutes on the CPU; a
    second call from the returned state finds nothing left."""
    work, out = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks/sprint.py"), "--smoke", "--devset", str(devset), "--work", str(work),
           "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "SB_MAL_BENCH_RESULTS")}
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert wall < 300
    assert "plan (step times" in proc.stdout and "probe mal_rec:" in proc.stdout
    cfg = sprint.Config(smoke=True, seeds=[1], scale=20, device="cpu", jobs=0,
                        slots=dict.fromkeys(("mal", "codec", "pift", "okd"), 2), okd_min_epochs=2, okd_max_epochs=2,
                        okd_samples=2, probe_steps=2, codec_net_steps=1, batch=4)
    exps = sprint.experiments(cfg, work / "runs", 2)
    for folder in ("mal/seed1/frozen", "pift/seed1/resemblyzer_softdtw", "codec/speech/seed1/P1_l1_mag"):
        assert "--batch_size=4" in (work / "runs" / folder / "train_command.txt").read_text(), folder
    missing = [f"{e.key}/{r.name}" for e in exps for r in e.runs if not sprint.is_done(work / "runs", e, r)]
    assert not missing, missing
    assert {p.name for p in out.iterdir()} == {"sprint_state.tar.gz", "RESULTS_sprint.md", "sprint_log.txt",
                                                "plan.json"}
    results = (out / "RESULTS_sprint.md").read_text()
    for section in ("mal_experiment", "pift_experiment", "codec_ladder", "okd_experiment"):
        assert f"<!-- {section}:start -->" in results
    assert "MAL frozen_fe" in results and "ssl_softdtw" in results and "codec_nopred" in results
    assert "steps of batch 4" in results and "(batch 4, " in results
    assert "OKD (PESQ, CSIG) G1 (CSIG)" in results
    calls = json.loads((work / "calls.json").read_text())
    assert len(calls) == 1 and len(calls[0]["finished"]) == 15
    again = subprocess.run([*cmd[:-4], "--work", str(tmp_path / "work2"), "--out", str(tmp_path / "out2"), "--state",
                            str(out / "sprint_state.tar.gz"), "--plan-only"], capture_output=True, text=True, cwd=REPO,
                           env=env, timeout=120)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed:" in again.stdout and "this call: 0 of the 0 runs left" in again.stdout
