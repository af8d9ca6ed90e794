"""Baseline recipe end to end on devset audio: loss goes down, DDP with gloo, bf16, atomic checkpoints.

(Kills at chosen and random instants, for this and the other recipes: tests/test_kill_resume.py.)
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "baseline" / "train.py"
HPARAMS = REPO / "hparams" / "folders" / "baseline.yaml"

# A small but real configuration: devset speech + noise mixed on the fly, 4 valid and 4 test pairs.
TINY = [
    "--examples_per_epoch=16", "--batch_size=4", "--segment_seconds=1.0", "--valid_limit=4", "--test_limit=4",
    "--test_metrics=[pesq,stoi]", "--n_jobs=0", "--lr=0.003",
]

pytestmark = pytest.mark.recipe


def run(args, cwd, env_extra=None, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(RECIPE), str(HPARAMS), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def valid_losses(log: Path) -> list[float]:
    return [float(m) for m in re.findall(r"valid loss: ([0-9.e+-]+)", log.read_text())]


def test_debug_run_end_to_end_loss_goes_down(devset, tmp_path):
    out = tmp_path / "run"
    proc = run([f"--data_folder={devset}", f"--output_folder={out}", "--debug", "--debug_persistently", "--debug_batches=6",
                "--debug_epochs=3", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = valid_losses(out / "train_log.txt")
    assert len(losses) == 3
    assert losses[-1] < losses[0], losses
    summary = json.loads((out / "test_summary.json").read_text())
    assert summary["n_utterances"] == 4 and summary["counts"]["pesq"] == 4
    assert len(list((out / "enhanced_test").glob("*.wav"))) == 4
    cfg = json.loads((out / "model_config.json").read_text())
    assert cfg["class"] == "sb_mal.models.backbone.SpectralUNetSE" and cfg["sample_rate"] == 16000
    # the exported folder's model card carries the run's test results, for the checkpoint they were measured on
    from sb_mal.cli import main

    assert main(["export", str(out), "-o", str(tmp_path / "model")]) == 0
    info = json.loads((tmp_path / "model" / "export_info.json").read_text())
    assert summary["checkpoint"] == info["checkpoint"]
    card = (tmp_path / "model" / "README.md").read_text()
    front = card.split("---")[1]
    assert "- audio-to-audio" in front and "- speech-enhancement" in front and "- speechbrain" in front
    header, _, row = [line for line in card.splitlines() if line.startswith("| ") and "Test" in line or
                      re.match(r"\| \d\d-\d\d-\d\d \|", line) or line.startswith("|---|---|---")][:3]
    assert header == "| Release | Test PESQ | Test STOI |"
    assert [float(v) for v in row.strip("|").split("|")[1:]] == [round(summary["means"][m], 3) for m in ("pesq", "stoi")]
    assert (out / "train_command.txt").read_text().strip() in card and "--examples_per_epoch=16" in card


def test_ddp_two_processes_gloo(devset, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(RECIPE), str(HPARAMS), f"--data_folder={devset}", f"--output_folder={out}",
           "--distributed_backend=gloo", "--number_of_epochs=1", *TINY]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(valid_losses(out / "train_log.txt")) == 1
    summary = json.loads((out / "test_summary.json").read_text())
    # each rank scored half of the test set; the gathered summary has all of it
    assert summary["n_utterances"] == 4 and summary["counts"]["pesq"] == 4
    assert len(list((out / "save").glob("CKPT+*"))) == 1


@pytest.mark.unit
def test_a_finished_distributed_rank_skips_interpreter_finalization(monkeypatch):
    """PyTorch keeps a DDP-used gloo group alive past destroy_process_group, and its threads can abort a
    finished rank at interpreter exit: `main` ends a clean distributed run with os._exit(0) instead."""
    import sb_mal.run as run

    calls = []
    monkeypatch.setattr(run, "run_recipe", lambda brain_class, script: calls.append(("run", brain_class, script)))
    monkeypatch.setattr(run.os, "_exit", lambda code: calls.append(("exit", code)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    run.main("Brain", "train.py")
    assert calls == [("run", "Brain", "train.py"), ("exit", 0)]
    calls.clear()
    monkeypatch.setenv("WORLD_SIZE", "1")
    run.main("Brain", "train.py")
    assert calls == [("run", "Brain", "train.py")]  # a single process exits normally


def test_bf16_precision_flag(devset, tmp_path):
    out = tmp_path / "bf16"
    proc = run([f"--data_folder={devset}", f"--output_folder={out}", "--debug", "--debug_batches=2",
                "--debug_epochs=1", "--precision=bf16", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(valid_losses(out / "train_log.txt")) == 1


def test_checkpoints_are_complete_or_absent_and_recovery_skips_a_damaged_one(tmp_path, caplog):
    """A checkpoint folder appears only once every file is written; a damaged one is skipped on recovery."""
    import torch
    from speechbrain.utils.epoch_loop import EpochCounter

    from sb_mal.checkpoints import AtomicCheckpointer

    model, counter = torch.nn.Linear(2, 2), EpochCounter(5)
    ckpt = AtomicCheckpointer(tmp_path / "save", {"model": model, "counter": counter})
    seen = []

    def slow_save(obj, path):  # look at the folder while a file is being written
        seen.append(sorted(p.name for p in (tmp_path / "save").glob("CKPT+*")))
        torch.save(obj.state_dict(), path)

    ckpt.add_recoverable("probe", torch.nn.Linear(1, 1), custom_save_hook=slow_save)
    counter.current = 1
    first = ckpt.save_checkpoint(meta={"pesq": 1.0}, name="a")
    assert seen == [[]] and (first.path / "model.ckpt").is_file() and first.path.name == "CKPT+a"
    with torch.no_grad():
        model.weight.fill_(3.0)
    counter.current = 2
    second = ckpt.save_checkpoint(meta={"pesq": 2.0}, name="b")
    assert seen[-1] == ["CKPT+a"]  # while b was written, only a was visible
    (second.path / "model.ckpt").write_bytes(b"")  # damaged (e.g. a disk error)
    with torch.no_grad():
        model.weight.fill_(0.0)
    counter.current = 0
    again = AtomicCheckpointer(tmp_path / "save", {"model": model, "counter": counter})
    again.add_recoverable("probe", torch.nn.Linear(1, 1), custom_load_hook=lambda obj, path, end_of_epoch=True: None)
    with caplog.at_level("WARNING"):
        chosen = again.recover_if_possible(max_key="pesq")
    assert chosen.path.name == "CKPT+a" and "CKPT+b cannot be loaded" in caplog.text
    assert float(model.weight[0, 0]) not in (0.0, 3.0) and counter.current == 1  # a's state
    assert not any((tmp_path / "save" / ".staging").iterdir())
