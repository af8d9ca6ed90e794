"""The experiment drivers' designs (benchmarks/): arms, grids and defaults that the evidence depends on."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

pytestmark = pytest.mark.unit


def test_codec_ladder_baseline_is_magnitude_l1_with_p4_p5_and_multiplier_1():
    import codec_ladder

    args = codec_ladder.build_parser().parse_args([])
    assert codec_ladder.BASELINE == "l1_mag" and codec_ladder.ARMS[0] == "l1_mag" and "l1" in codec_ladder.ARMS
    assert {"P4", "P5"} <= set(args.capacities) and 1.0 in args.multipliers and args.codec_base == "magnitude"
    assert len(args.seeds) >= 3
    weights = {"lb": 2.0, "lc": 0.5}
    assert codec_ladder.arm_overrides("l1_mag", "magnitude", 1.0, weights) == ["--loss=l1_mag"]
    assert codec_ladder.arm_overrides("l1", "magnitude", 1.0, weights) == ["--loss=l1"]
    assert codec_ladder.arm_overrides("codec_nopred", "magnitude", 1.0, weights) == [
        "--loss=codec", "--codec_base=magnitude", "--codec_lb=0", "--codec_lc=0.5"]
    assert codec_ladder.arm_overrides("codec", "waveform", 3.0, weights)[1:3] == ["--codec_base=waveform",
                                                                                  "--codec_lb=6"]
    # runs with another base or multiplier never share a folder
    assert len({codec_ladder.run_name("P4", "codec", b, m) for b in ("magnitude", "waveform") for m in (1, 3)}) == 4


def test_mal_experiment_grid_includes_lambda_0_and_arms_can_be_given():
    import mal_experiment

    parser = mal_experiment.build_parser()
    args = parser.parse_args([])
    assert 0.0 in args.lambdas and len(args.seeds) >= 5
    given = parser.parse_args(["--arms", "frozen", "--skip-tuning", "--arm-config",
                               '{"frozen": {"lambda_mal": 4, "taps": "[enc1,enc2,enc3,bottleneck]"}}',
                               "--target-share", "0.5"])
    assert given.arms == ["frozen"] and given.arm_config["frozen"]["lambda_mal"] == 4 and given.target_share == 0.5


def test_okd_experiment_compares_like_for_like_with_three_seeds():
    import okd_experiment

    args = okd_experiment.build_parser().parse_args([])
    assert len(args.seeds) >= 3 and {"metricgan_plus", "metricgan_plus_csig", "okd_pesq_csig"} <= set(args.systems)
    assert not args.warm_start  # the departure is opt-in
    # each OKD generator's reference is MetricGAN+ trained on that generator's own metric
    _, targets, _, _ = okd_experiment.SYSTEMS["okd_pesq_csig"]
    refs = [okd_experiment.single_metric_baseline(m) for m in targets]
    assert refs == ["metricgan_plus", "metricgan_plus_csig"]
    assert okd_experiment.SYSTEMS["metricgan_plus_csig"][1:] == (["csig"], "metricgan_plus", ["--target_metrics=[csig]"])
    assert okd_experiment.section_name("cpu", warm=True) == "okd_experiment_warm"


def test_a_driver_prints_its_overall_progress_as_runs_start_and_end(tmp_path, capsys):
    """run_once reports each run against the planned total, with the time so far and the time left;
    a run found finished (a resumed driver) counts as done."""
    import protocol

    protocol.PROGRESS.plan(3)
    quick = [sys.executable, "-c", "pass"]
    protocol.run_once(quick, tmp_path / "a", tmp_path / "a.log", outputs=())
    protocol.run_once(quick, tmp_path / "a", tmp_path / "a.log", outputs=())  # already done
    with pytest.raises(SystemExit, match="b.log"):
        protocol.run_once([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "b", tmp_path / "b.log", outputs=())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[runs 0/3] started") and str(tmp_path / "a") in lines[0]
    assert lines[1].startswith("[runs 1/3] finished") and "min to go" in lines[1]
    assert lines[2].startswith("[runs 2/3] already done")
    assert lines[3].startswith("[runs 2/3] started") and lines[4].startswith("[runs 2/3] failed")
