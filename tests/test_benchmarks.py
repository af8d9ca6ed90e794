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


def test_pift_experiment_reports_the_soft_dtw_settings_each_run_used(tmp_path):
    """The section says how the ssl_softdtw runs perturbed the input and set gamma, read from the runs' saved
    hyperparameters (an old run without the option: resampling) and their train logs (the measured gamma)."""
    import pift_experiment

    for seed, extra, log in ((1, "speed_perturb_mode: stretch  # pitch kept\nsdtw_gamma_relative: 0.1\n",
                              "epoch: 1 - train loss: 1.0, train sdtw_gamma: 3.21e-02 - valid loss: 1.0\n"),
                             (2, "speed_perturb_mode: stretch\nsdtw_gamma_relative: 0.1\n",
                              "epoch: 1 - train loss: 1.0, train sdtw_gamma: 4.50e-02 - valid loss: 1.0\n")):
        folder = tmp_path / f"seed{seed}" / "resemblyzer_softdtw"
        folder.mkdir(parents=True)
        (folder / "hyperparams.yaml").write_text(f"seed: {seed}\nsdtw_gamma: 0.1  # cost units\n{extra}")
        (folder / "train_log.txt").write_text(log)
    text = pift_experiment.softdtw_settings(tmp_path, [1, 2, 3], "resemblyzer")
    assert text == ("speed perturbation by stretch; gamma 0.1 x the median frame-pair cost of the first batch "
                    "(measured gamma seed 1: 0.0321, seed 2: 0.045)")
    old = tmp_path / "seed1" / "torchfcpe_softdtw"
    old.mkdir()
    (old / "hyperparams.yaml").write_text("sdtw_gamma: 0.1\n")
    assert pift_experiment.softdtw_settings(tmp_path, [1], "torchfcpe") == (
        "speed perturbation by resample (before the option existed); gamma 0.1 in cost units")
    assert pift_experiment.softdtw_settings(tmp_path, [1], "wavlm_random") == "no run yet"


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


def test_per_seed_differences_show_whether_every_seed_agrees(tmp_path):
    """The mean paired difference of each seed, over the utterances both arms scored (a NaN score is left out),
    and the line that says how many seeds are above 0."""
    import protocol

    def scores(name: str, values: dict) -> Path:
        path = tmp_path / f"{name}.csv"
        path.write_text("id,pesq,stoi\n" + "".join(f"{u},{p},0.9\n" for u, p in values.items()))
        return path

    base = {1: scores("b1", {"a": 1.0, "b": 2.0, "c": 1.5}), 2: scores("b2", {"a": 1.0, "b": 2.0, "c": 1.0})}
    arm = {1: scores("a1", {"a": 1.5, "b": 2.1, "c": "nan"}), 2: scores("a2", {"a": 0.9, "b": 1.9, "d": 3.0}),
           3: scores("a3", {"a": 5.0})}
    diffs = protocol.per_seed_differences(base, arm)
    assert set(diffs) == {1, 2}  # seed 3 has no baseline
    assert diffs[1] == pytest.approx(0.3) and diffs[2] == pytest.approx(-0.1)
    line = protocol.per_seed_line("MAL frozen", base, arm)
    assert line == "- MAL frozen, PESQ per seed: +0.300 (seed 1), -0.100 (seed 2); 1 of 2 seeds above 0"


def test_mal_experiment_report_goes_to_its_section_with_the_seeds_one_by_one(tmp_path, monkeypatch):
    """``--section`` keeps a rerun of some arms beside the main table; the report lists each seed's difference."""
    import mal_experiment

    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n\n<!-- mal_experiment:start -->\nthe main table\n<!-- mal_experiment:end -->\n")
    monkeypatch.setenv("SB_MAL_BENCH_RESULTS", str(results))
    out = tmp_path / "runs"
    for seed, gain in ((1, 0.2), (2, -0.1), (3, 0.1)):
        for name, shift in (("baseline", 0.0), ("frozen_fe", gain)):
            folder = out / f"seed{seed}" / name
            folder.mkdir(parents=True)
            rows = "".join(f"u{i},{1.5 + 0.1 * i + shift},0.9\n" for i in range(6))
            (folder / "test_scores.csv").write_text("id," + ",".join(["pesq", "stoi"]) + "\n" + rows)
            (folder / "seconds").write_text("60")
    monkeypatch.setattr(mal_experiment, "METRICS", ["pesq", "stoi"])
    args = mal_experiment.build_parser().parse_args(["--seeds", "1", "2", "3", "--arms", "frozen_fe", "--skip-tuning",
                                                     "--section", "mal_experiment_variants", "--report-only"])
    tuned = {"frozen_fe": {"lambda_mal": 1.0, "taps": "[bottleneck]", "given": True}}
    mal_experiment.report(out, args, tuned, lambda s, name, test: (out / f"seed{s}" / name / "test_scores.csv").exists())
    text = results.read_text()
    assert "the main table" in text  # the main section is untouched
    block = text.split("<!-- mal_experiment_variants:start -->")[1].split("<!-- mal_experiment_variants:end -->")[0]
    assert "MAL frozen_fe (lambda 1, mean of taps [bottleneck])" in block
    assert "+0.200 (seed 1), -0.100 (seed 2), +0.100 (seed 3); 2 of 3 seeds above 0" in block


def test_pift_shift_figure_of_a_second_section_leaves_the_first_sections_figure(tmp_path, monkeypatch):
    """A rerun written to another --section draws its own shift figure; the main section's stays as it was."""
    import pift_experiment

    monkeypatch.setenv("SB_MAL_BENCH_RESULTS", str(tmp_path / "RESULTS.md"))
    rows = [{"mode": m, "loss": loss, "shift_ms": ms, "relative": 1.0 + ms / 100, "n": 2}
            for m in ("delay", "pad") for loss in ("ssl_mse", "ssl_mse_pad", "ssl_softdtw", "ssl_dtw")
            for ms in (0, 20, 50, 100)]
    main = pift_experiment.shift_table(rows, "resemblyzer", 2)
    first = (tmp_path / "figures" / "pift_shift_resemblyzer.png").read_bytes()
    other = pift_experiment.shift_table([{**r, "relative": 2.0} for r in rows], "resemblyzer", 2, "pift_rerun")
    assert "figures/pift_shift_resemblyzer.png" in main and "figures/pift_rerun_shift_resemblyzer.png" in other
    assert (tmp_path / "figures" / "pift_shift_resemblyzer.png").read_bytes() == first
    assert (tmp_path / "figures" / "pift_rerun_shift_resemblyzer.png").exists()
