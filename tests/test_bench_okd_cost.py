"""benchmarks/bench_okd_cost.py and its helpers: the stage clock, the VoiceBank-layout folder, the
reading of a run's stages, the 750-epoch projection and, where SpeechBrain's repository is at hand,
the smoke run of all three systems."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_okd_cost as bench  # noqa: E402
from _sb_recipe import export_recipe, voicebank_layout  # noqa: E402
from _stage_clock import read_events  # noqa: E402

#: a git directory of SpeechBrain's repository ($SB_MAL_SPEECHBRAIN_GIT, else the machine's mirror)
SPEECHBRAIN_GIT = Path(os.environ.get("SB_MAL_SPEECHBRAIN_GIT", "/work/.mirror/speechbrain+speechbrain/repo"))
needs_speechbrain_git = pytest.mark.skipif(not (SPEECHBRAIN_GIT / "HEAD").exists(),
                                           reason=f"no SpeechBrain git directory at {SPEECHBRAIN_GIT}")


def ev(what, seconds, depth=1, epoch=2, **kw):
    return {"what": what, "seconds": seconds, "depth": depth, "epoch": epoch, **kw}


def speechbrain_epoch(epoch=2):
    """The events of one epoch of SpeechBrain's recipe: three inner passes in on_stage_start(TRAIN)."""
    return [ev("_fit_train", 10.0, 2, epoch, sub="CURRENT"), ev("_fit_train", 4.0, 2, epoch, sub="HISTORICAL"),
            ev("_fit_train", 7.0, 2, epoch, sub="CURRENT"),
            ev("on_stage_start", 21.5, 1, epoch, stage="TRAIN"), ev("on_stage_end", 0.5, 1, epoch, stage="TRAIN"),
            ev("_fit_train", 30.0, 1, epoch, sub="GENERATOR"),
            ev("probe", 0.2, 1, epoch, name=bench.CHECKPOINT_PROBE, items=None),
            ev("_fit_valid", 6.0, 1, epoch, sub="GENERATOR"),
            ev("on_stage_start", 1.0, 0, epoch, stage="TEST")]  # the test stage: not counted


def sbmal_epoch(epoch=3):
    probe = lambda m, s, n: ev("probe", s, 1, epoch, name=f"{bench.PHASE}.{m}", items=n)  # noqa: E731
    return [probe("enhance", 1.0, 100), probe("score", 3.0, 100), probe("update", 30.0, 300),
            probe("replay", 2.0, 40), probe("update", 14.0, 140), probe("update", 30.0, 300),
            ev("on_stage_end", 85.0, 1, epoch, stage="TRAIN"), ev("_fit_train", 100.0, 1, epoch),
            ev("probe", 0.3, 1, epoch, name=bench.CHECKPOINT_PROBE, items=None), ev("_fit_valid", 1.3, 1, epoch)]


def sbmal_pipelined_epoch(epoch=3, items=4):
    """The pipelined phase: stream_current holds one enhancement and one 3-pair update per utterance."""
    probe = lambda m, s, n: ev("probe", s, 1, epoch, name=f"{bench.PHASE}.{m}", items=n)  # noqa: E731
    inner = [e for _ in range(items) for e in (probe("enhance", 0.25, 1), probe("update", 0.5, 3))]
    return [*inner, probe("stream_current", 5.0, items), probe("replay", 2.0, 40), probe("update", 14.0, 140),
            probe("update", 6.0, 12), ev("on_stage_end", 30.0, 1, epoch, stage="TRAIN"),
            ev("_fit_train", 45.0, 1, epoch), ev("_fit_valid", 1.0, 1, epoch)]


@pytest.mark.unit
def test_the_pipelined_phase_counts_only_the_time_spent_waiting_for_targets():
    parts = bench.epoch_parts(sbmal_pipelined_epoch())
    m = bench.epoch_measures("metricgan_plus", 3, parts[3], samples=4)
    assert m["enhance"] == 1.0 and m["updates"] == 4 * 3 + 140 + 12
    assert m["score"] == pytest.approx(5.0 - 1.0 - 2.0)  # stream minus its enhancement and its own updates
    assert m["d_device"] == pytest.approx(30.0 - 2.0)


@pytest.mark.unit
def test_replay_counts_follow_each_recipes_history():
    # SpeechBrain samples its history after adding the epoch's utterances, sb_mal before
    assert [bench.replay_count("speechbrain", e, 100) for e in (1, 2, 750)] == [20, 40, 15000]
    assert [bench.replay_count("metricgan_plus", e, 100) for e in (1, 2, 750)] == [0, 20, 14980]
    assert bench.replay_count("speechbrain", 1, 2) == 1  # at least one utterance, as both recipes do


@pytest.mark.unit
def test_speechbrain_epoch_parts_come_from_its_inner_passes():
    parts = bench.epoch_parts(speechbrain_epoch())
    m = bench.epoch_measures("speechbrain", 2, parts[2], samples=100)
    assert m["total"] == 36.0 and m["gen"] == 8.0 and m["d_phase"] == 22.0 and m["checkpoint"] == 0.2
    assert m["replayed"] == 40 and m["c_replay"] == pytest.approx(4.0 / 40)
    assert m["score"] == 3.0  # first pass (scores the enhanced signals) minus the second (reads them)


@pytest.mark.unit
def test_sbmal_epoch_parts_come_from_the_discriminator_probes():
    parts = bench.epoch_parts(sbmal_epoch())
    m = bench.epoch_measures("metricgan_plus", 3, parts[3], samples=100)
    assert m["gen"] == 15.0 and m["replayed"] == 40 and m["updates"] == 740
    assert m["c_update"] == pytest.approx(74.0 / 740) and m["c_load"] == pytest.approx(2.0 / 40)
    assert m["score"] == 3.0 and m["enhance"] == 1.0 and m["d_device"] == 82.0
    no_probes = bench.epoch_parts([e for e in sbmal_epoch() if e["what"] != "probe"])
    with pytest.raises(SystemExit, match="probes missing"):
        bench.epoch_measures("metricgan_plus", 3, no_probes[3], samples=100)


@pytest.mark.unit
def test_projection_sums_the_growing_replay_validation_and_noisy_scores():
    args = Namespace(schedule_epochs=20, samples=100, valid=10, voicebank_train=1000)
    measures = [{"train": 50.0 + 0.1 * r, "replayed": r, "c_replay": 0.1, "score": 5.0} for r in (20, 40)]
    valid = {"valid": [(11.0, 1.0)], "skip": [(2.0, 1.0)]}
    p = bench.project("metricgan_plus", measures, valid, args, valid_every=10)
    replayed = sum(bench.replay_count("metricgan_plus", e, 100) for e in range(1, 21))
    v770, skip770 = 10.0 * 77 + 1.0, 1.0 * 77 + 1.0
    noisy = 1000 * (1 - 0.9 ** 20) * 0.05
    total = 20 * 50.0 + 0.1 * replayed + 2 * v770 + 18 * skip770 + noisy
    assert p["validations"] == 2 and p["mean epoch s"] == pytest.approx(total / 20)
    assert p["projected h"] == pytest.approx(total / 3600)
    sb = bench.project("speechbrain", measures, {"valid": [(11.0, 1.0)]}, args, valid_every=1)
    assert sb["validations"] == 20 and sb["valid total s"] == pytest.approx(20 * v770)


@pytest.mark.unit
def test_noisy_inputs_drawn_in_a_schedule():
    assert bench.noisy_drawn(10802, 100, 1) == pytest.approx(100)
    assert 10700 < bench.noisy_drawn(10802, 100, 750) < 10802


@pytest.mark.integration
def test_stage_clock_times_every_stage_of_a_brain_into_its_log(tmp_path):
    """The shim runs a script as __main__ and logs nested stages, hooks and probes with their epoch."""
    script = tmp_path / "train.py"
    script.write_text(f'''
import logging, statistics, sys, torch
import speechbrain as sb
logging.basicConfig(filename={str(tmp_path / "log.txt")!r}, level=logging.INFO)

class Inner(sb.Brain):
    def compute_forward(self, batch, stage):
        return self.modules.lin(batch)
    def compute_objectives(self, out, batch, stage):
        return out.pow(2).mean()
    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN and getattr(self, "outer", True):
            self.outer = False
            self.fit(range(1), [torch.ones(1, 2)])  # a nested stage, as SpeechBrain's MetricGAN recipe has
            self.outer = True
        statistics.median([1.0, 2.0, 3.0])

brain = Inner(modules={{"lin": torch.nn.Linear(2, 1)}}, opt_class=lambda p: torch.optim.SGD(p, 0.1))
brain.fit(sb.utils.epoch_loop.EpochCounter(2), [torch.ones(1, 2)], [torch.ones(1, 2)])
assert __name__ == "__main__" and sys.argv[1:] == ["--flag"]
''')
    cmd = [sys.executable, str(REPO / "benchmarks/_stage_clock.py"), "--probe", "statistics:median", "--probe",
           "nowhere:Nothing.at_all", str(script), "--flag"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nowhere:Nothing.at_all not found" in proc.stderr
    events = read_events(tmp_path / "log.txt")
    train = [(e["depth"], e["epoch"]) for e in events if e["what"] == "_fit_train"]
    assert train == [(2, 1), (1, 1), (2, 2), (1, 2)]  # nested pass first (it ends first), epochs of the outer loop
    assert sum(e["what"] == "_fit_valid" and e["depth"] == 1 for e in events) == 2
    starts = [e for e in events if e["what"] == "on_stage_start" and e["stage"] == "TRAIN" and e["depth"] == 1]
    assert len(starts) == 2 and all(e["seconds"] > 0 for e in starts)
    probes = [e for e in events if e["what"] == "probe"]
    assert probes and all(e["name"] == "statistics:median" and e["items"] == 3 for e in probes)
    assert {e["epoch"] for e in probes} == {1, 2}
    assert [e["name"] for e in events if e["what"] == "probe missing"] == ["nowhere:Nothing.at_all"]


@pytest.mark.integration
@needs_speechbrain_git
def test_voicebank_layout_is_read_by_both_preparations(tmp_path, devset):
    """SpeechBrain's own voicebank_prepare.py (exported from its repository) and sb_mal's
    prepare_voicebank find the same training, validation (p226/p287) and test utterances."""
    from sb_mal.data.manifest import load_manifest
    from sb_mal.data.voicebank import prepare_voicebank

    data = voicebank_layout(tmp_path / "vb", devset, train=3, valid=2, test=1)
    assert json.loads((data / "layout.json").read_text())["valid"] == 2
    recipe = export_recipe(SPEECHBRAIN_GIT, tmp_path / "export")
    code = (f"import sys; sys.path.insert(0, {str(recipe)!r}); from voicebank_prepare import prepare_voicebank; "
            f"prepare_voicebank({str(data)!r}, {str(data)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = {s: sorted(json.loads((data / f"{s}.json").read_text())) for s in ("train", "valid", "test")}
    paths = prepare_voicebank(data, data / "manifests", download=False, progress=False)
    ours = {s: sorted(load_manifest(p, str(data))) for s, p in paths.items()}
    assert theirs == ours
    assert len(ours["train"]) == 3 and all(u[:4] in ("p226", "p287") for u in ours["valid"]) and len(ours["test"]) == 1


@pytest.mark.recipe
@needs_speechbrain_git
def test_smoke_run_of_the_three_systems(tmp_path):
    """``--smoke``: every system trains 2 epochs of 4 utterances and the report has a row for each."""
    env = dict(os.environ, SB_MAL_BENCH_RESULTS=str(tmp_path / "RESULTS.md"))
    cmd = [sys.executable, str(REPO / "benchmarks/bench_okd_cost.py"), "--smoke", "--speechbrain-git",
           str(SPEECHBRAIN_GIT), "--data", str(tmp_path / "vb")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for label, _ in bench.SYSTEMS.values():
        row = next(line for line in proc.stdout.splitlines() if line.startswith(f"| {label} "))
        assert float(row.split("|")[3]) > 0  # a measured epoch
    assert "floor of the VoiceBank epoch" in proc.stdout and not (tmp_path / "RESULTS.md").exists()
