"""Killed at any instant, a recipe resumes and finishes with exactly one log line per epoch.

Each recipe is killed once in the middle of a checkpoint write (made deterministic by
tests/killable.py), then several times at random instants (seeded), then run to the end.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KILLABLE = Path(__file__).with_name("killable.py")


EPOCHS = 4
RECIPES = {
    "baseline": ("recipes/baseline/train.py", "hparams/folders/baseline.yaml", [
        "--examples_per_epoch=8", "--batch_size=4", "--segment_seconds=1.0", "--valid_limit=2", "--test_limit=2",
        "--test_metrics=[pesq]", "--n_jobs=0", "--channels=[8,16]", "--bottleneck_dim=32", "--rnn_layers=1"]),
    # phase 2 from epoch 2: the slowed write is the first phase-2 checkpoint (with the encoder snapshot)
    "mal_phase2": ("recipes/mal/train.py", "hparams/folders/mal_frozen.yaml", [
        "--phase1_epochs=1", "--examples_per_epoch=8", "--batch_size=4", "--segment_seconds=1.0", "--valid_limit=2",
        "--test_limit=2", "--test_metrics=[pesq]", "--n_jobs=0", "--channels=[8,16]", "--bottleneck_dim=32",
        "--rnn_layers=1"]),
    "metricgan_okd": ("recipes/metricgan_okd/train.py", "hparams/folders/okd_pesq_csig.yaml", [
        "--samples_per_epoch=4", "--valid_limit=2", "--test_limit=2", "--test_metrics=[pesq]", "--n_jobs=0",
        "--valid_every=1", "--segment_seconds=1.0", "--hidden_size=16", "--lin_dim=16", "--num_layers=1",
        "--d_channels=[4,4,4,4]"]),
}
# with a metric worker: each validation is scored while the next epoch trains (valid_overlap), so kills also land
# while a checkpoint's scores are pending
RECIPES["metricgan_okd_overlap"] = (*RECIPES["metricgan_okd"][:2],
                                    [a if a != "--n_jobs=0" else "--n_jobs=1" for a in RECIPES["metricgan_okd"][2]])


def _command(name, devset, out):
    script, hparams, extra = RECIPES[name]
    return [sys.executable, str(KILLABLE), str(REPO / script), str(REPO / hparams), f"--data_folder={devset}",
            f"--output_folder={out}", f"--number_of_epochs={EPOCHS}", *extra]


def _start(cmd, cwd, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _epochs_logged(out):
    log = out / "train_log.txt"
    return [int(e) for e in re.findall(r"^epoch: (\d+)", log.read_text(), re.M)] if log.is_file() else []


@pytest.mark.recipe
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_killed_in_a_checkpoint_write_and_at_random_instants_resumes(name, devset, tmp_path):
    out = tmp_path / "run"
    cmd = _command(name, devset, out)
    # 1. killed while the second checkpoint's first file is being written (an empty .ckpt on disk)
    marker = tmp_path / "in_checkpoint_write"
    proc = _start(cmd, tmp_path, {"SB_MAL_SLOW_SAVE": f"2:{marker}"})
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not marker.exists():
        _kill(proc)
        pytest.fail(f"the run never reached its second checkpoint: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
    _kill(proc)
    torn = Path(marker.read_text().strip())
    assert torn.is_file() and torn.stat().st_size == 0  # the kill did land inside the write
    complete = sorted((out / "save").glob("CKPT+*"))
    assert len(complete) == 1 and all((c / "CKPT.yaml").is_file() for c in complete), complete  # only epoch 1
    assert _epochs_logged(out) == [1]
    # 2. killed at random instants (some before, some during training; seeded for reproducibility)
    rng = random.Random(f"{name}-kills")
    for _ in range(3):
        proc = _start(cmd, tmp_path)
        time.sleep(rng.uniform(4.0, 14.0))
        _kill(proc)
        epochs = _epochs_logged(out)
        assert epochs == list(range(1, len(epochs) + 1)), epochs  # never an epoch twice, never a gap
    # 3. the rerun finishes: every epoch logged exactly once, the test stage ran
    final = _start(cmd, tmp_path)
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err[-3000:]
    assert _epochs_logged(out) == list(range(1, EPOCHS + 1))
    assert list(out.glob("test_summary*.json"))
    assert not any((out / "save" / ".staging").glob("CKPT+*"))  # leftovers of killed writes are removed


@pytest.mark.integration
def test_a_kill_between_checkpoint_and_log_line_loses_no_line(devset, tmp_path):
    """The epoch's line travels in its checkpoint: recovery writes it if the kill came first."""
    import torch
    from speechbrain.utils.epoch_loop import EpochCounter
    from speechbrain.utils.train_logger import FileTrainLogger

    from sb_mal.brains import EnhanceBrain
    from sb_mal.checkpoints import AtomicCheckpointer
    from sb_mal.data.datasets import manifest_dataset
    from sb_mal.data.manifest import prepare_pairs
    from sb_mal.losses import WaveformL1
    from sb_mal.models import SpectralUNetSE

    manifest = tmp_path / "valid.json"
    prepare_pairs(devset / "pairs/valid/noisy", devset / "pairs/valid/clean", manifest)
    train = manifest_dataset(manifest, devset / "pairs/valid", segment_seconds=1.0, sort=False, limit=4)
    valid = manifest_dataset(manifest, devset / "pairs/valid", limit=2)
    log = tmp_path / "train_log.txt"

    def brain(limit):
        torch.manual_seed(0)
        model = SpectralUNetSE(channels=(4,), bottleneck_dim=8, rnn_layers=1)
        counter = EpochCounter(limit=limit)
        hparams = {"compute_cost": WaveformL1(), "epoch_counter": counter, "valid_metrics": [], "n_jobs": 0,
                   "ckpt_key": "loss", "train_logger": FileTrainLogger(str(log))}
        ckpt = AtomicCheckpointer(tmp_path / "save", {"model": model, "counter": counter})
        b = EnhanceBrain(modules={"model": model}, opt_class=lambda p: torch.optim.Adam(p, lr=1e-3), hparams=hparams,
                         run_opts={"device": "cpu", "noprogressbar": True}, checkpointer=ckpt)
        return b, counter

    kwargs = {"train_loader_kwargs": {"batch_size": 2}, "valid_loader_kwargs": {"batch_size": 2}}
    first, counter = brain(limit=2)

    def killed_after_checkpoint():
        if counter.current == 2:
            with open(log, "a", encoding="utf-8") as fout:
                fout.write("epoch: 2 - train lo")  # the line torn by the kill
            raise KeyboardInterrupt("killed between the checkpoint and the log line")
        type(first.epoch_log).commit(first.epoch_log)

    first.epoch_log.commit = killed_after_checkpoint
    with pytest.raises(KeyboardInterrupt):
        first.fit(counter, train, valid, **kwargs)
    saved = [int((c / "counter.ckpt").read_text()) for c in (tmp_path / "save").glob("CKPT+*")]
    assert 2 in saved, saved  # epoch 2's checkpoint was saved before the kill
    second, counter = brain(limit=3)
    second.fit(counter, train, valid, **kwargs)  # resumes after epoch 2, runs epoch 3
    lines = log.read_text().splitlines()
    assert [int(re.match(r"epoch: (\d+) - train loss", line).group(1)) for line in lines] == [1, 2, 3], lines
