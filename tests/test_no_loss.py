"""No trained weights are ever lost: pruning, recovery, export, a twin run on one folder, a full disk."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from speechbrain.utils.epoch_loop import EpochCounter

from sb_mal.checkpoints import AtomicCheckpointer
from sb_mal.fileio import FolderLock, FolderLockedError

REPO = Path(__file__).resolve().parents[1]


def _checkpointer(folder: Path, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 4)
    counter = EpochCounter(limit=100)
    opt = torch.optim.Adam(model.parameters())
    return AtomicCheckpointer(folder, {"model": model, "counter": counter, "optimizer": opt}), model, counter


def _plant(folder: Path, name: str, meta: dict, model_bytes: bytes | None, counter: int = 9) -> Path:
    """A checkpoint folder as a copied run, a damaged disk or SpeechBrain's own torn write leaves it."""
    ckpt = folder / f"CKPT+{name}"
    ckpt.mkdir(parents=True)
    (ckpt / "CKPT.yaml").write_text(yaml.safe_dump({"end-of-epoch": True, **meta}))
    if model_bytes is not None:
        (ckpt / "model.ckpt").write_bytes(model_bytes)
    (ckpt / "counter.ckpt").write_text(str(counter))
    return ckpt


@pytest.mark.unit
def test_pruning_keeps_the_new_and_the_best_loadable_checkpoints(tmp_path):
    save = tmp_path / "save"
    ckpt, model, counter = _checkpointer(save)
    counter.current = 1
    ckpt.save_and_keep_only(meta={"loss": 0.8}, min_keys=["loss"], num_to_keep=1)
    good = sorted(save.glob("CKPT+*"))
    future = time.time() + 10 ** 7  # a run folder copied from a machine whose clock is ahead
    damaged = _plant(save, "9999-damaged", {"loss": -1.0, "unixtime": future}, b"\x00not a checkpoint")
    torn = _plant(save, "9999-torn", {"loss": -2.0, "unixtime": future + 1}, None)  # SpeechBrain's own torn write
    recovered = ckpt.recover_if_possible(min_key="loss")  # skips both, loads the good one
    assert recovered is not None and recovered.path == good[0]
    counter.current = 2
    with torch.no_grad():
        model.weight.add_(1.0)
    ckpt.save_and_keep_only(meta={"loss": 0.9}, min_keys=["loss"], num_to_keep=1)
    kept = sorted(p.name for p in save.glob("CKPT+*"))
    fresh = [p for p in save.glob("CKPT+*") if p not in (good[0], damaged, torn)]
    assert len(fresh) == 1, kept
    assert good[0].name in kept, f"the best loadable checkpoint was deleted: {kept}"
    assert damaged.is_dir() and torn.is_dir()  # left in place, never used
    # the next save prunes the older good one by its score, never the fresh ones
    counter.current = 3
    ckpt.save_and_keep_only(meta={"loss": 0.5}, min_keys=["loss"], num_to_keep=1)
    names = {p.name for p in save.glob("CKPT+*")}
    assert fresh[0].name not in names and good[0].name not in names, names  # 0.8, 0.9: neither best nor newest
    second, model2, counter2 = _checkpointer(save, seed=1)
    assert second.recover_if_possible(min_key="loss") is not None and counter2.current == 3
    assert torch.equal(model2.weight, model.weight)


@pytest.mark.unit
def test_a_full_disk_at_a_checkpoint_is_named_and_loses_nothing(tmp_path):
    script = f"""
import resource, signal, sys, torch
sys.path.insert(0, {str(REPO)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from speechbrain.utils.epoch_loop import EpochCounter
from sb_mal.checkpoints import AtomicCheckpointer, CheckpointWriteError
model = torch.nn.Linear(200, 200)
ckpt = AtomicCheckpointer({str(tmp_path / 'save')!r}, {{"model": model, "counter": EpochCounter(3)}})
ckpt.save_checkpoint(meta={{"loss": 1.0}})
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))  # files past 50 kB cannot be written: a full disk
try:
    ckpt.save_checkpoint(meta={{"loss": 0.5}})
except CheckpointWriteError as err:
    print("ERROR", err)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip()
    assert line.startswith("ERROR") and "File too large" in line and str(tmp_path / "save") in line, line
    assert "intact" in line and "\n" not in line
    folders = list((tmp_path / "save").glob("CKPT+*"))
    assert len(folders) == 1 and not list((tmp_path / "save" / ".staging").glob("*"))
    again = AtomicCheckpointer(tmp_path / "save", {"model": torch.nn.Linear(200, 200), "counter": EpochCounter(3)})
    assert again.recover_if_possible() is not None


@pytest.mark.unit
def test_a_folder_lock_names_the_holder_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        f"import sys, time; sys.path.insert(0, {str(REPO)!r})\nfrom sb_mal.fileio import FolderLock\n"
        f"lock = FolderLock({str(folder)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=rf"{re.escape(str(folder))} is in use by another run "
                                                    rf"\(host .*, pid {holder.pid}"):
            FolderLock(folder).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with FolderLock(folder):  # the holder died without releasing: stale, taken over with a warning
        pass
    assert f"pid {holder.pid}" in caplog.text and "stale lock" in caplog.text


def _baseline_cmd(devset, out, epochs):
    return [sys.executable, str(REPO / "recipes/baseline/train.py"), str(REPO / "hparams/folders/baseline.yaml"),
            f"--data_folder={devset}", f"--output_folder={out}", f"--number_of_epochs={epochs}",
            "--examples_per_epoch=4", "--batch_size=2", "--segment_seconds=1.0", "--valid_limit=2", "--test_limit=2",
            "--test_metrics=[pesq]", "--valid_metrics=[pesq]", "--n_jobs=0", "--channels=[4]", "--bottleneck_dim=8",
            "--rnn_layers=1"]


@pytest.mark.recipe
def test_a_twin_run_on_one_folder_stops_at_once_and_a_damaged_best_costs_nothing(devset, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(_baseline_cmd(devset, out, 3), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / ".lock").is_file() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.1)
    twin = subprocess.run(_baseline_cmd(devset, out, 3), env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    assert twin.returncode != 0
    assert "Traceback" not in twin.stderr, twin.stderr[-3000:]
    err = [line for line in twin.stderr.strip().splitlines() if "torchvision is not available" not in line]
    assert len(err) == 1 and f"{out} is in use by another run" in err[0] and f"pid {first.pid}" in err[0], err
    log = (out / "train_log.txt").read_text()
    assert [int(e) for e in re.findall(r"^epoch: (\d+)", log, re.M)] == [1, 2, 3]  # each epoch once
    # a damaged checkpoint claiming the best score, stamped ahead of the clock, then two more runs
    save = out / "save"
    _plant(save, "9999-12-31+23-59-59+00", {"pesq": 4.5, "unixtime": time.time() + 10 ** 7}, b"torn", counter=3)
    for epochs in (4, 5):
        rerun = subprocess.run(_baseline_cmd(devset, out, epochs), env=env, cwd=tmp_path, capture_output=True,
                               text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (out / "train_log.txt").read_text()
    assert [int(e) for e in re.findall(r"^epoch: (\d+)", log, re.M)] == [1, 2, 3, 4, 5]
    counters = sorted(int((c / "counter.ckpt").read_text()) for c in save.glob("CKPT+*") if "9999" not in c.name)
    assert 5 in counters, counters  # the newest checkpoint survived its own pruning
    export = subprocess.run([sys.executable, "-m", "sb_mal.cli", "export", str(out), "-o", str(tmp_path / "model")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr
    assert "9999" not in json.loads((tmp_path / "model" / "export_info.json").read_text())["checkpoint"]


@pytest.mark.integration
def test_values_that_cannot_train_are_one_line_naming_file_and_key(devset, tmp_path):
    hparams = REPO / "hparams/folders/mal_frozen.yaml"
    for override, expected in [("--lambda_mal=.nan", "lambda_mal must be finite"),
                               ("--lambda_mal=.inf", "lambda_mal must be finite"),
                               ("--batch_size=0", "batch_size must be >= 1"),
                               ("--segment_seconds=0", "segment_seconds must be > 0"),
                               ("--lr=-1e-3", "lr must be > 0"),
                               ("--max_train_minutes=.nan", "max_train_minutes must be finite")]:
        out = subprocess.run([sys.executable, str(REPO / "recipes/mal/train.py"), str(hparams),
                              f"--data_folder={devset}", f"--output_folder={tmp_path / 'run'}", override],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
        lines = [line for line in out.stderr.strip().splitlines() if "torchvision is not available" not in line]
        assert out.returncode != 0 and len(lines) == 1, (override, out.stderr[-2000:])
        assert lines[0] == f"error: {hparams}: {expected}, got {lines[0].split(', got ')[-1]}" and expected in lines[0]
    assert not list((tmp_path / "run").rglob("CKPT+*"))  # nothing trained


@pytest.mark.integration
def test_a_missing_cuda_device_is_one_line(tmp_path, devset):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = subprocess.run([sys.executable, str(REPO / "recipes/baseline/train.py"),
                          str(REPO / "hparams/folders/baseline.yaml"), f"--data_folder={devset}",
                          f"--output_folder={tmp_path / 'run'}", "--device=cuda:0"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [line for line in out.stderr.strip().splitlines() if "torchvision is not available" not in line]
    assert out.returncode != 0 and len(lines) == 1 and "--device cuda:0" in lines[0] and "CUDA" in lines[0], lines


@pytest.mark.recipe
def test_a_full_disk_during_training_is_one_line_and_resumable(devset, tmp_path):
    out = tmp_path / "run"
    cmd = _baseline_cmd(devset, out, 2)
    cmd = [c for c in cmd if not c.startswith(("--channels", "--bottleneck_dim"))] + ["--channels=[16,32]",
                                                                                      "--bottleneck_dim=64"]
    script = ("import resource, runpy, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))\n"
              f"sys.argv = {cmd[1:]!r}\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = [line for line in proc.stderr.strip().splitlines() if "torchvision is not available" not in line]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith(f"error: cannot write a checkpoint in {out / 'save'}: ") and "File too large" in \
        lines[-1], lines[-3:]
    assert not list((out / "save").glob("CKPT+*")) and not list((out / "save" / ".staging").glob("*"))
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # with room again, the same command trains to the end
