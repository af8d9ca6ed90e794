"""GPU sprint: the four experiments (MAL, position-invariant fine-tuning, the codec ladder, MetricGAN-OKD)
on one lent GPU machine, in device calls of at most 9 minutes, resumable from call to call.

What one call does (``python3 benchmarks/sprint.py``, run from the repository root):

1. installs the pack's wheels when the image lacks a package (``.sprint/wheels``, see
   benchmarks/sprint_pack.py; torch must be there already) and checks that CUDA answers;
2. restores the state a previous call returned (``.sprint/state/sprint_state.tar.gz``), so finished
   runs are not run again;
3. preloads the training data: the pack's devset subset with its training speech and noise decoded
   once to WAV in RAM (``/dev/shm``), all 16 cores decoding;
4. measures the step time of every kind of run still to do (each recipe for 2 short epochs, all at
   once, as the runs will share the GPU; earlier calls' measurements are kept), then prints the plan:
   runs, steps, seconds per step, minutes per run, when each stage should end, what this call should
   finish and how many calls the rest takes;
5. runs the experiment drivers (benchmarks/mal_experiment.py, pift_experiment.py, codec_ladder.py,
   okd_experiment.py) with ``--device=cuda:0``, several runs of each sharing the GPU, each run's
   metrics scored by ``--jobs`` worker processes, the noisy inputs scored on every core;
6. stops cleanly before the deadline: a run starts only if 1.1 times its expected length fits before the
   stop (each run's deadline in a file that ``$SB_MAL_NO_START_AFTER`` names, read by
   benchmarks/protocol.py; a driver skips a run too long for the rest of the call and goes on), the
   drivers are stopped ``--margin`` seconds before the end, and a driver that did not end by itself
   writes the tables of the runs finished so far (its ``--report-only``);
7. writes into the output folder (``$OUT`` on the device): ``sprint_state.tar.gz`` (the runs'
   results and logs, plus the checkpoints later runs start from; under 16 MiB), ``RESULTS_sprint.md``
   (the drivers' sections), ``sprint_log.txt`` and ``plan.json``.

Budgets (at least ``--scale`` = 20 times the training mixtures of the CPU experiments of
benchmarks/RESULTS.md, 5 seeds). The enhancement runs take ``--batch`` = 32 mixtures per step where the CPU
runs took 8: these networks are so small that a step of 8 leaves the GPU waiting on kernel launches, so the
same mixtures in a quarter of the steps cost far less time (5 times the CPU runs' steps, 20 times their
mixtures). Each MAL and fine-tuning run is scored on 60 test pairs (``--test-limit``; the CPU runs: 120), as
the codec ladder and OKD runs: scoring is most of a run's CPU time.

- MAL (mal_experiment.py): the reduced backbone of the CPU run; phase 1 8 epochs and phase 2 6 epochs
  of 200 x scale mixtures (1000 and 750 steps of batch 32 at scale 20) for the reconstruction-only
  baseline and the arms frozen (lambda 4, mean of the four taps), frozen_fe (lambda 1, bottleneck) and
  dynamic (lambda 4, four taps): the configurations the CPU run chose on validation (lambda 1 with the
  taps summed then), given with --arm-config, not tuned again. The deep-feature arm is left out: its
  FCPE encoder ships in a 40 MB wheel that does not fit the call beside the data.
- Position-invariant fine-tuning (pift_experiment.py): from each seed's MAL baseline, 4 epochs of
  64 x scale mixtures (160 steps of batch 32 at scale 20) for reconstruction only, ssl_mse, ssl_mse_pad and
  ssl_softdtw (input time-stretched 0.8-1.2, pitch kept; gamma 0.1 x the median frame-pair cost of the first
  batch) through Resemblyzer's speaker encoder (its LSTM weights are in the pack: 5.2 MiB; the FCPE wheel,
  40 MB, is too large to carry). Resemblyzer passes the reachability check of the corrected design; the
  random WavLM used before does not (its target is out of reach for any perturbation).
- Codec ladder (codec_ladder.py): P1 to P5 (the paper's gains are at the smallest), l1_mag against
  codec_nopred (multiplier 1), 12 epochs of
  160 x scale mixtures (1200 steps of batch 32 at scale 20), 60 test utterances with DNSMOS, as the CPU run; the
  codec net is trained on the GPU first, with PyTorch's deterministic algorithms (its 39 MB weights
  cannot be carried to a later call: a call that resumes unfinished ladder runs trains it again, same
  seed and data, and compares the weights' digest with the earlier trainings': the log and the
  sprint's section say whether they are the same).
- MetricGAN-OKD (okd_experiment.py): OKD (PESQ, CSIG) against MetricGAN+ trained on PESQ and MetricGAN+
  trained on CSIG (each OKD generator beside a single-metric system of its own target), 48 generator steps per
  epoch; it starts when the other three have nothing left to start and their runs still going leave
  ``--okd-min-parallel`` of the ``--slots`` free, that many runs at once, with as many epochs as the rest
  of the call allows (at least ``--okd-min-epochs``; otherwise it waits for more room or the next
  call); the number is then kept for every later call.

The data is what a call can carry beside the code: the 120 devset test pairs, 30 valid pairs, every
6th training utterance of each voice and the first 12 s of each of the 22 training noises (the pack
prints what it took; about 49 MiB with the wheels, 14 MiB left for the state). The sprint's own section
of RESULTS_sprint.md lists the calls, the data, the step times (measured or prior) and the runs done.
With the prior step times (batch 32 assumed to cost 1.5 times a step of batch 8) the first call finishes
62 of the 81 runs (MAL, fine-tuning and the codec ladder but a few runs) and about three more calls the
rest, most of it OKD's 15 runs of at least 10 epochs; the probes' measurements decide.

The one command on a lent device (``carry: [".sprint"]``, ``timeout_s`` 600; the files come back from
``$OUT``)::

    python3 benchmarks/sprint.py

Before the first call, on the CPU machine (downloads the wheels, builds pesq for CPython 3.12, cuts the
devset subset, checks that the working tree and the pack stay under 64 MiB)::

    python benchmarks/sprint.py --pack

After each call, on the CPU machine (keeps the state for the next call, merges the tables into the
results file as ``sprint_*`` sections; ``--write-results`` for the committed benchmarks/RESULTS.md)::

    python benchmarks/sprint.py --take <the call's files_at folder>

``--smoke`` runs every arm of the four experiments for a step or two on the CPU (a few minutes; OKD
starts with the others there), the same path end to end; ``--plan-only`` prints the plan and stops.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sprint_pack

REPO = Path(__file__).resolve().parents[1]
SEEDS = [1, 2, 3, 4, 5]
SMALL = ["--channels=[8,16,32]", "--bottleneck_dim=64", "--rnn_layers=1", "--segment_seconds=2.0"]
ALL_TAPS = "[enc1,enc2,enc3,bottleneck]"
#: MAL arms with the configurations the CPU run chose on validation (mean of the taps).
MAL_ARMS = {"frozen": {"lambda_mal": 4.0, "taps": ALL_TAPS}, "frozen_fe": {"lambda_mal": 1.0, "taps": "[bottleneck]"},
            "dynamic": {"lambda_mal": 4.0, "taps": ALL_TAPS}}
PIFT_LOSSES = ("mse", "pad", "softdtw")
#: The fine-tuning runs' frozen feature model: Resemblyzer's speaker encoder, whose weights the pack carries. It
#: passes the reachability check (a perfect enhancement of the time-stretched input scores below the noisy input;
#: tests/test_pift_reachability.py), which a WavLM with random weights fails.
PIFT_ENCODER = "resemblyzer"
#: The soft-DTW gamma of those runs, relative to the median frame-pair cost of their first batch.
PIFT_GAMMA_RELATIVE = 0.1
#: The driver's order: the largest first. P1-P3, where the paper reports the largest gains, after P4/P5.
CODEC_CAPACITIES = ("P5", "P4", "P3", "P2", "P1")
CODEC_ARMS = {"l1_mag": "l1_mag", "codec_nopred": "codec_nopred_magnitude_m1"}
#: OKD against MetricGAN+ like for like: each OKD generator beside a MetricGAN+ trained on its own target
#: (PESQ, CSIG); the driver's order (more generators first).
OKD_SYSTEMS = {"okd_pesq_csig": 2, "metricgan_plus": 1, "metricgan_plus_csig": 1}
#: Seconds per optimiser step of batch 8 (OKD: per generator step, batch 1) with a dozen runs sharing one
#: H100, used until a probe measures them: the GPU step costs of benchmarks/RESULTS.md (bench_mal_cost cuda,
#: bench_loss_step cuda, okd_experiment cuda) plus the mixing on one core and the sharing, rounded up.
PRIOR_STEP = {"mal_rec": 0.05, "mal_frozen": 0.07, "mal_frozen_fe": 0.065, "mal_dynamic": 0.075,
              "pift_rec": 0.05, "pift_mse": 0.08, "pift_pad": 0.085, "pift_softdtw": 0.2,
              "codec_P1": 0.035, "codec_P2": 0.035, "codec_P3": 0.035, "codec_P4": 0.04, "codec_P5": 0.05,
              "codec_term": 0.025, "codec_net": 0.1,
              "okd_metricgan_plus": 0.35, "okd_metricgan_plus_csig": 0.4, "okd_okd_pesq_csig": 0.6}
#: CPU smoke run: the same families at a few seconds a step on 2 busy cores.
SMOKE_STEP = {k: 2.0 for k in PRIOR_STEP}
#: The enhancement runs' default batch on the GPU: these networks are small enough that a step of batch 8
#: leaves the H100 waiting on kernel launches, so 4 times the mixtures per step cost far less than 4 times
#: the time; the budgets are counted in mixtures (at least 20 times the CPU runs'), in fewer, larger steps.
GPU_BATCH = 32
#: Extra cost of a step per extra batch of 8 (prior, until a probe measures it): batch 32 = 1.5 x batch 8.
BATCH_COST = 1 / 6
BATCHED_FAMILIES = ("mal_", "pift_", "codec_P", "codec_term")  # the codec net and OKD keep their own batches


def prior_steps(batch: int, smoke: bool = False) -> dict:
    """Prior seconds per step of every family at ``batch`` mixtures per enhancement step."""
    if smoke:
        return dict(SMOKE_STEP)
    factor = 1.0 + BATCH_COST * (batch / 8 - 1)
    return {k: v * factor if k.startswith(BATCHED_FAMILIES) else v for k, v in PRIOR_STEP.items()}
STARTUP_S = 15.0  # a recipe's start: imports, CUDA context, manifests
SAFETY = 1.1  # a run starts only if 1.1 times its expected length fits before the stop
VALID_S = 0.1  # one validation utterance (enhancement + PESQ + STOI) on one worker
OKD_VALID_S = 0.25  # PESQ, CSIG, CBAK, COVL, STOI
TEST_S = 0.6  # the intrusive suite + DNSMOS
CODEC_TEST_S = 0.5  # PESQ, STOI, ESTOI, SI-SDR + DNSMOS


def now() -> float:
    return time.time()


# -- what is to be run ----------------------------------------------------------------------------------
@dataclass
class Run:
    """One training run of a driver, for planning: its folder (relative to the driver's --out), family
    (whose step time it takes), size and the work around the steps."""

    name: str
    family: str
    steps: int
    wave: int = 0
    valid_s: float = 0.0  # validation seconds (one worker)
    test_s: float = 0.0  # test scoring seconds (one worker)
    output: str = "seconds"
    extra_step: str | None = None  # a second family added per step (the codec term)


@dataclass
class Experiment:
    key: str
    driver: str
    args: list[str]
    overrides: list[str]
    parallel: int
    runs: list[Run] = field(default_factory=list)
    label: str = ""


@dataclass
class Config:
    smoke: bool
    seeds: list[int]
    scale: int
    device: str
    jobs: int
    slots: dict
    okd_min_epochs: int
    okd_max_epochs: int
    okd_samples: int
    probe_steps: int
    codec_net_steps: int
    batch: int = 8
    test_pairs: int = 120


def experiments(cfg: Config, runs_dir: Path, okd_epochs: int | None) -> list[Experiment]:
    """The four drivers with their arguments and their runs (in each driver's own order)."""
    seeds = cfg.seeds
    s = cfg.scale
    dev = [f"--device={cfg.device}", f"--n_jobs={cfg.jobs}"]
    b = cfg.batch
    if cfg.smoke:  # a step or two of every arm, one test utterance, short segments
        mal_ex, e1, e2, mal_valid = 8, 1, 1, 1
        pift_ex, pift_ep, pift_valid, shift = 8, 1, 1, 1
        codec_ex, codec_ep, codec_valid, codec_test, codec_caps, codec_net_ep = 8, 1, 1, 1, ["P1"], 1
        test = 1
        tiny = ["--test_limit=1", "--segment_seconds=1.0"]
    else:
        mal_ex, e1, e2, mal_valid = 200 * s, 8, 6, 30
        pift_ex, pift_ep, pift_valid, shift = 64 * s, 4, 20, 20
        codec_ex, codec_ep, codec_valid, codec_test, codec_caps, codec_net_ep = 160 * s, 12, 20, 60, \
            list(CODEC_CAPACITIES), 20
        test = cfg.test_pairs
        tiny = [f"--test_limit={test}"]
    arm_config = json.dumps(MAL_ARMS)
    mal = Experiment("mal", "mal_experiment.py", [
        "--seeds", *map(str, seeds), "--epochs1", str(e1), "--epochs2", str(e2), "--examples", str(mal_ex),
        "--batch", str(b),
        "--valid-limit", str(mal_valid), "--arms", *MAL_ARMS, "--skip-tuning", "--arm-config", arm_config,
        "--deep-feature", "none"], [*dev, *tiny], cfg.slots["mal"], label="MAL")
    v1 = mal_valid * VALID_S
    for seed in seeds:
        mal.runs.append(Run(f"seed{seed}/phase1", "mal_rec", e1 * (mal_ex // b), 0, e1 * v1, 0.0, "save"))
    for seed in seeds:
        mal.runs.append(Run(f"seed{seed}/baseline", "mal_rec", e2 * (mal_ex // b), 1, e2 * v1, test * TEST_S,
                            "test_scores.csv"))
    for seed in seeds:
        for arm in MAL_ARMS:
            mal.runs.append(Run(f"seed{seed}/{arm}", f"mal_{arm}", e2 * (mal_ex // b), 1, e2 * v1, test * TEST_S,
                                "test_scores.csv"))
    pift = Experiment("pift", "pift_experiment.py", [
        "--start", str(runs_dir / "mal"), "--seeds", *map(str, seeds), "--encoders", PIFT_ENCODER, "--epochs",
        str(pift_ep), "--examples", str(pift_ex), "--batch", str(b), "--valid-limit", str(pift_valid),
        "--shift-limit", str(shift), "--sdtw-gamma-relative", str(PIFT_GAMMA_RELATIVE)],
        [*dev, *tiny], cfg.slots["pift"], label="position-invariant fine-tuning")
    v2 = pift_valid * VALID_S
    for seed in seeds:
        pift.runs.append(Run(f"seed{seed}/rec", "pift_rec", pift_ep * (pift_ex // b), 0, pift_ep * v2, test * TEST_S,
                             "test_scores.csv"))
    for seed in seeds:
        for loss in PIFT_LOSSES:
            pift.runs.append(Run(f"seed{seed}/{PIFT_ENCODER}_{loss}", f"pift_{loss}", pift_ep * (pift_ex // b), 0,
                                 pift_ep * v2, test * TEST_S, "test_scores.csv"))
    codec = Experiment("codec", "codec_ladder.py", [
        "--codec-run", str(runs_dir / "codec" / "codec_net"), "--codec-epochs", str(codec_net_ep), "--capacities",
        *codec_caps, "--arms", *CODEC_ARMS, "--multipliers", "1", "--seeds", *map(str, seeds), "--epochs",
        str(codec_ep), "--examples", str(codec_ex), "--batch", str(b), "--valid-size", str(codec_valid),
        "--test-size", str(codec_test),
        "--dnsmos"], [*dev, *(["--segment_seconds=1.0"] if cfg.smoke else [])], cfg.slots["codec"],
        label="codec ladder")
    codec.runs.append(Run("codec_net", "codec_net", cfg.codec_net_steps * codec_net_ep, 0, 0.0, 0.0,
                          "model_config.json"))
    for seed in seeds:
        for cap in codec_caps:
            for arm, folder in CODEC_ARMS.items():
                codec.runs.append(Run(f"speech/seed{seed}/{cap}_{folder}", f"codec_{cap if cap in CODEC_CAPACITIES else 'P4'}",
                                      codec_ep * (codec_ex // b), 1, codec_ep * codec_valid * VALID_S,
                                      codec_test * CODEC_TEST_S, "test_scores.csv",
                                      "codec_term" if arm != "l1_mag" else None))
    epochs = okd_epochs or cfg.okd_min_epochs
    okd_valid_every = 1 if cfg.smoke else 5
    okd_test, okd_valid = (1, 1) if cfg.smoke else (60, 20)
    okd = Experiment("okd", "okd_experiment.py", [
        "--seeds", *map(str, seeds), "--systems", *OKD_SYSTEMS, "--epochs", str(epochs), "--samples",
        str(cfg.okd_samples), "--valid-every", str(okd_valid_every), "--valid-limit", str(okd_valid), "--test-limit",
        str(okd_test), "--device", cfg.device, "--n-jobs", str(cfg.jobs)],
        ["--training_pool=16", "--segment_seconds=1.0"] if cfg.smoke else [], cfg.slots["okd"], label="MetricGAN-OKD")
    for seed in seeds:
        for system, gens in OKD_SYSTEMS.items():
            okd.runs.append(Run(f"seed{seed}/{system}", f"okd_{system}", epochs * cfg.okd_samples, 0,
                                (epochs // okd_valid_every) * okd_valid * gens * OKD_VALID_S,
                                okd_test * gens * TEST_S, "test_scores_g0.csv"))
    return [mal, pift, codec, okd]


def is_done(runs_dir: Path, exp: Experiment, run: Run) -> bool:
    folder = runs_dir / exp.key / run.name
    return (folder / "seconds").exists() and (folder / run.output).exists()


# -- timing ------------------------------------------------------------------------------------------------
def run_seconds(run: Run, steps: dict, jobs: int, step_count: int | None = None) -> float:
    """Expected wall seconds of ``run``: start-up, steps, validation and test (``jobs`` metric workers)."""
    per_step = steps[run.family] + (steps[run.extra_step] if run.extra_step else 0.0)
    return STARTUP_S + (run.steps if step_count is None else step_count) * per_step + (run.valid_s + run.test_s) / max(1, jobs)


def simulate(exps: list[Experiment], done: dict, steps: dict, jobs: int, start: float, stop: float,
             okd_start: float | None = None) -> dict:
    """Expected start and end (seconds from now) of every run not done, each driver on its own slots, waves in
    order (a driver starts a wave when the previous one has ended), position-invariant fine-tuning once MAL's
    baselines have ended, OKD at ``okd_start`` (None: not in this call). A run whose start would be later
    than ``stop`` less :data:`SAFETY` times its length is left for a later call (its driver's gate refuses it
    and goes on to the next)."""
    out = {}
    ends = {}

    def driver(exp: Experiment, t0: float) -> float:
        t = t0
        for wave in sorted({r.wave for r in exp.runs}):
            slots = [t] * max(1, exp.parallel)
            for run in [r for r in exp.runs if r.wave == wave]:
                if done[(exp.key, run.name)]:
                    continue
                length = run_seconds(run, steps, jobs)
                i = min(range(len(slots)), key=slots.__getitem__)
                begin = slots[i]
                fits = begin <= stop - SAFETY * length
                out[(exp.key, run.name)] = {"start": begin, "end": begin + length, "seconds": length,
                                            "this_call": fits}
                if fits:
                    slots[i] = begin + length
            t = max(slots)
        return t

    by_key = {e.key: e for e in exps}
    ends["mal"] = driver(by_key["mal"], start)
    ends["codec"] = driver(by_key["codec"], start)
    baselines = [out[("mal", r.name)]["end"] for r in by_key["mal"].runs if r.name.endswith("/baseline")
                 and ("mal", r.name) in out]
    if any(not out.get(("mal", r.name), {"this_call": True})["this_call"] for r in by_key["mal"].runs
           if r.name.endswith("/baseline")):
        pift_start = math.inf
    else:
        pift_start = max(baselines, default=start)
    for key, start in (("pift", pift_start if pift_start < math.inf else None), ("okd", okd_start)):
        if start is not None:
            ends[key] = driver(by_key[key], start)
            continue
        for run in by_key[key].runs:  # not started in this call
            if not done[(key, run.name)]:
                out[(key, run.name)] = {"start": math.inf, "end": math.inf, "seconds": run_seconds(run, steps, jobs),
                                        "this_call": False}
    return out


def okd_epochs_that_fit(okd: Experiment, cfg: Config, steps: dict, seconds_left: float,
                        parallel: int | None = None, runs: int | None = None) -> int:
    """The most OKD epochs (of ``okd_samples`` generator steps) that let ``runs`` OKD runs (default: all),
    ``parallel`` at a time (default: all at once), end within ``seconds_left`` (with :data:`SAFETY` to spare);
    0 if not even one."""
    runs = len(okd.runs) if runs is None else runs
    waves = math.ceil(runs / max(1, parallel or runs)) if runs else 1
    best = 0
    for epochs in range(1, cfg.okd_max_epochs + 1):
        longest = 0.0
        for run in okd.runs:
            gens = OKD_SYSTEMS[run.name.split("/")[1]]
            valid = (epochs // (1 if cfg.smoke else 5)) * (1 if cfg.smoke else 20) * gens * OKD_VALID_S
            longest = max(longest, STARTUP_S + epochs * cfg.okd_samples * steps[run.family]
                          + (valid + run.test_s) / max(1, cfg.jobs))
        if SAFETY * longest * waves > seconds_left:
            break
        best = epochs
    return best


def okd_slot(others: list[tuple[float, float]], t: float, slots: int, least: int) -> tuple[float, int]:
    """``(when, runs at once)`` for OKD: the first time from ``t`` at which the other runs still going
    (``others``: their (start, end)) leave at least ``least`` of ``slots`` free, and how many they leave."""
    for when in sorted({t} | {end for _, end in others if end > t}):
        busy = sum(1 for start, end in others if start <= when < end)
        if slots - busy >= least:
            return when, slots - busy
    return math.inf, 0


# -- probes: measured step times ----------------------------------------------------------------------------
_BAR = re.compile(r"(\d+)/(\d+) \[[\d:]+<[^,\]]*, *([\d.]+)(s/it|it/s)")
_OKD_EPOCH = re.compile(r"epoch: (\d+) - .*?train epoch_seconds: ([\d.e+-]+)")


def bar_seconds(text: str, total: int) -> float | None:
    """Seconds per step of the last finished progress bar of ``total`` steps in a recipe's output (tqdm's
    rate at the end of the second epoch: warm, without the first epoch's start)."""
    found = None
    for chunk in re.split(r"[\r\n]", text):
        for m in _BAR.finditer(chunk):
            if int(m[1]) == int(m[2]) == total:
                rate = float(m[3])
                found = rate if m[4] == "s/it" else (1.0 / rate if rate > 0 else None)
    return found


def okd_epoch_seconds(train_log: Path, epoch: int = 2) -> float | None:
    """``epoch_seconds`` of an OKD epoch from a run's train_log.txt."""
    if not train_log.exists():
        return None
    for m in _OKD_EPOCH.finditer(train_log.read_text()):
        if int(m[1]) == epoch:
            return float(m[2])
    return None


def probe_commands(cfg: Config, families: list[str], work: Path, data: Path, runs_dir: Path) -> dict:
    """family -> (command, folder, steps per epoch): each recipe for 2 short epochs (1 validation pair, no
    test), as the driver runs it."""
    py = sys.executable
    cmds = {}
    for fam in families:
        # OKD: generator steps (each with discriminator steps and metric targets), fewer of them
        k = max(2, cfg.probe_steps // 5) if fam.startswith("okd_") else cfg.probe_steps
        folder = work / "probe" / fam
        base = [f"--output_folder={folder}", f"--data_folder={data}", "--number_of_epochs=2", "--valid_limit=1",
                "--test_data=null", "--n_jobs=1", "--seed=1", f"--device={cfg.device}"]
        enh = [*base, f"--examples_per_epoch={cfg.batch * k}", f"--batch_size={cfg.batch}", *SMALL]
        if fam == "mal_rec":
            cmd = [py, "recipes/baseline/train.py", "hparams/folders/baseline.yaml", *enh]
        elif fam.startswith("mal_"):
            arm = fam[4:]
            cmd = [py, "recipes/mal/train.py", f"hparams/folders/mal_{arm}.yaml", *enh, "--phase1_epochs=0",
                   f"--lambda_mal={MAL_ARMS[arm]['lambda_mal']:g}", f"--mal_taps={MAL_ARMS[arm]['taps']}"]
        elif fam.startswith("pift_"):
            loss = fam[5:]
            cmd = [py, "recipes/pift/train.py", f"hparams/folders/pift_{'mse' if loss == 'rec' else loss}.yaml", *enh,
                   f"--init_from={runs_dir / 'mal' / 'seed1' / 'baseline'}", f"--ssl_source={PIFT_ENCODER}"]
            if loss == "softdtw":
                cmd.append(f"--sdtw_gamma_relative={PIFT_GAMMA_RELATIVE}")
            if loss == "rec":
                cmd += ["--lambda_ssl=0", "--lambda_rec=1"]
        elif fam.startswith("codec_P"):
            cmd = [py, "recipes/codec/train_separation.py", "hparams/folders/separation_speech.yaml", *base,
                   f"--examples_per_epoch={cfg.batch * k}", f"--batch_size={cfg.batch}", f"--capacity={fam[6:]}",
                   "--loss=l1_mag"]
        elif fam.startswith("okd_"):
            from okd_experiment import SYSTEMS

            _, _, yaml_name, system_overrides = SYSTEMS[fam[4:]]
            cmd = [py, "recipes/metricgan_okd/train.py", f"hparams/folders/{yaml_name}.yaml", *base,
                   f"--samples_per_epoch={k}", "--valid_every=2", *system_overrides]
            if cfg.smoke:
                cmd += ["--training_pool=16", "--segment_seconds=1.0"]
        else:
            continue
        if cfg.smoke and not fam.startswith("okd_"):
            cmd = _merge(cmd, ["--segment_seconds=1.0"])
        cmds[fam] = (cmd, folder, k)
    return cmds


def _merge(cmd: list[str], overrides: list[str]) -> list[str]:
    """protocol.merge_overrides (imported late: it needs sb_mal, whose packages may not be installed yet)."""
    from protocol import merge_overrides

    return merge_overrides(cmd, overrides)


def run_probes(cfg: Config, families: list[str], work: Path, data: Path, runs_dir: Path, env: dict,
               timeout: float, log) -> dict:
    """Measured seconds per step of ``families``, all probes at once; a probe that fails or cannot be read
    leaves its family to the prior (reported)."""
    cmds = probe_commands(cfg, families, work, data, runs_dir)
    procs = {}
    for fam, (cmd, folder, _) in cmds.items():
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        out = open(folder.parent / f"{fam}.log", "w")
        procs[fam] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True), out, time.monotonic())
    measured = {}
    deadline = time.monotonic() + timeout
    for fam, (proc, out, started) in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
        out.close()
        cmd, folder, k = cmds[fam]
        text = (folder.parent / f"{fam}.log").read_text(errors="replace")
        if fam.startswith("okd_"):
            epoch = okd_epoch_seconds(folder / "train_log.txt")
            value = epoch / k if epoch else None
        else:
            value = bar_seconds(text, k)
        wall = time.monotonic() - started
        if proc.returncode == 0 and value:
            measured[fam] = round(value, 4)
            log(f"probe {fam}: {value:.3f} s/step ({wall:.0f} s in all)")
        else:
            log(f"probe {fam}: not measured (exit {proc.returncode}; see {folder.parent / (fam + '.log')}), "
                "the prior is used")
    return measured


def _kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop ``proc`` and everything it started (its own process group): SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# -- the state ----------------------------------------------------------------------------------------------
def state_keeper(work: Path, exps: list[Experiment], cfg: Config, done: dict):
    """``keep(path relative to work)`` for :func:`sprint_pack.save_state`: results, logs and tables; no
    unfinished run (it starts again), no enhanced audio or OKD history, no checkpoint weights except those
    a run still to do starts from (a MAL phase-1 model while its phase-2 arms are not all done; a MAL
    baseline's best model while its fine-tuning runs are not all done) and the enhanced files of the shift
    study while it has not been made."""
    runs_dir = work / "runs"
    mal = next(e for e in exps if e.key == "mal")
    pift = next(e for e in exps if e.key == "pift")
    first = cfg.seeds[0]

    def pending(exp, prefix):
        return any(not done[(exp.key, r.name)] for r in exp.runs if r.name.startswith(prefix))

    need_phase1 = {s for s in cfg.seeds if pending(mal, f"seed{s}/") and any(
        not done[("mal", f"seed{s}/{n}")] for n in ["baseline", *MAL_ARMS])}
    need_base = {s for s in cfg.seeds if pending(pift, f"seed{s}/")}
    shift_pending = not (runs_dir / "pift" / f"shift_{PIFT_ENCODER}.json").exists()
    shift_limit = 1 if cfg.smoke else 20
    newest = {}
    best = {}
    for s in cfg.seeds:
        ckpts = sorted((runs_dir / "mal" / f"seed{s}" / "phase1" / "save").glob("CKPT+*"), key=lambda p: p.stat().st_mtime)
        if ckpts:
            newest[s] = ckpts[-1].name
        best[s] = _best_checkpoint(runs_dir / "mal" / f"seed{s}" / "baseline")
    shift_names = set(sorted(p.name for p in (runs_dir / "mal" / f"seed{first}" / "baseline" / "enhanced_test").glob("*"))
                      [:shift_limit]) if shift_pending else set()
    roots: dict = {}

    def run_root(rel: Path) -> Path | None:
        """The run folder (one holding train_command.txt) that ``rel`` lies in, if any."""
        for i in range(len(rel.parts) - 1, 1, -1):
            candidate = Path(*rel.parts[:i])
            if candidate not in roots:
                roots[candidate] = (work / candidate / "train_command.txt").exists()
            if roots[candidate]:
                return candidate
        return None

    def keep(rel: Path) -> bool:
        parts = rel.parts
        if rel.name == ".lock":
            return False
        if parts[0] != "runs":
            return True
        root = run_root(rel)
        if root is None:
            return True
        if not (work / root / "seconds").exists():
            return False  # an unfinished run starts again
        inner = rel.relative_to(root).parts
        mal_run = len(root.parts) == 4 and root.parts[1] == "mal"
        seed = int(root.parts[2][4:]) if mal_run and root.parts[2].startswith("seed") else None
        if inner[0] == "history":
            return False
        if inner[0].startswith("enhanced"):
            return root.parts[1:] == ("mal", f"seed{first}", "baseline") and parts[-1] in shift_names
        ckpt = inner[1] if len(inner) > 2 and inner[0] == "save" and inner[1].startswith("CKPT+") else None
        if mal_run and root.parts[3] == "baseline" and ckpt and seed in need_base and ckpt != best.get(seed):
            return False  # one loadable checkpoint left for the fine-tuning runs
        if rel.suffix == ".ckpt" and (work / rel).stat().st_size > 65536:
            if not (mal_run and rel.name == "model.ckpt"):
                return False
            if root.parts[3] == "phase1":
                return seed in need_phase1 and ckpt == newest.get(seed)
            if root.parts[3] == "baseline":
                return seed in need_base and ckpt == best.get(seed)
            return False
        return True

    return keep


def _best_checkpoint(run: Path, key: str = "pesq") -> str | None:
    """The CKPT folder of ``run`` with the highest validation ``key`` (what load_pretrained picks)."""
    import yaml

    scored = []
    for meta in (run / "save").glob("CKPT+*/CKPT.yaml"):
        values = yaml.safe_load(meta.read_text()) or {}
        if isinstance(values.get(key), (int, float)):
            scored.append((float(values[key]), meta.parent.name))
    return max(scored)[1] if scored else None


def prepare_resumed_codec(runs_dir: Path, codec: Experiment, done: dict, log) -> None:
    """A finished codec net whose weights stayed behind (not carried) is trained again when ladder runs remain."""
    net = runs_dir / "codec" / "codec_net"
    remaining = [r for r in codec.runs if r.name != "codec_net" and not done[("codec", r.name)]]
    if remaining and (net / "seconds").exists() and not list(net.glob("save/CKPT+*/model.ckpt")):
        log(f"codec net: its weights were not carried from the earlier call; trained again (same seed and data) for "
            f"the {len(remaining)} ladder runs left")
        old = runs_dir / "codec" / "codec_net_earlier_calls"
        old.mkdir(exist_ok=True)
        n = len(list(old.iterdir()))
        shutil.move(str(net), str(old / f"call{n + 1}"))
        (runs_dir / "codec" / "weights.json").unlink(missing_ok=True)
        done[("codec", "codec_net")] = False


# -- the call ------------------------------------------------------------------------------------------------
class Sprint:
    def __init__(self, args, cfg: Config):
        self.args, self.cfg = args, cfg
        self.t0 = now()
        self.deadline = self.t0 + args.minutes * 60
        self.exits: dict = {}
        self.stop = self.deadline - args.margin  # drivers are stopped here; reports and the state follow
        self.work = Path(args.work).resolve()
        self.out = Path(args.out).resolve()
        self.runs = self.work / "runs"
        self.work.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.work / "sprint_log.txt", "a")
        self.call_number = 1
        self.device_name = "CPU" if args.smoke else args.device
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_MODULE_LOADING="LAZY",
                        SB_MAL_BENCH_RESULTS=str(self.work / "RESULTS_sprint.md"))

    @property
    def probe_file(self) -> Path:
        """The measured step times (seconds per step by family), kept from call to call; one file per batch,
        since a step of another batch costs another time."""
        return self.work / f"probe_batch{self.cfg.batch}.json"

    def log(self, msg: str) -> None:
        line = f"[{(now() - self.t0) / 60:5.2f} min] {msg}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    # ---- setup
    def setup(self) -> Path:
        args, cfg = self.args, self.cfg
        self.log(f"sprint call: {'smoke, CPU' if cfg.smoke else cfg.device}, deadline {args.minutes:g} min, "
                 f"work {self.work}, out {self.out}")
        pack = Path(args.pack_dir).resolve()
        for note in sprint_pack.install_pack(pack, Path(args.site), self.env):
            self.log(note)
        if cfg.device.startswith("cuda") and args.plan_only:
            self.log(f"plan only: {cfg.device} is not asked for; the plan is made for it")
        elif cfg.device.startswith("cuda"):
            code = "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(0), torch.__version__)"
            found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env)
            if found.returncode != 0:
                raise SystemExit(f"no CUDA device answers ({cfg.device}); torch must be installed with CUDA "
                                 f"(the image's python3 has it): {found.stderr.strip()[-300:]}")
            self.log(f"device: {found.stdout.strip()}")
            self.device_name = found.stdout.strip()
        state = Path(args.state) if args.state else pack / "state" / "sprint_state.tar.gz"
        if not (self.work / "calls.json").exists() and state.exists():
            files = sprint_pack.restore_state(state, self.work)
            self.log(f"resumed: {files} files of the earlier calls from {state}")
        if args.smoke:
            source = Path(args.devset)
            data_src = self.work / "smoke_devset"
            if not (data_src / "SUBSET.json").exists():
                sprint_pack.make_subset(source, data_src, test_pairs=2, valid_pairs=2, heldout_per_voice=1,
                                        music_files=1, budget=0, speech_files=6, noise_seconds=20.0)
        else:
            data_src = Path(args.data).resolve()
            if not (data_src / "pairs" / "test").is_dir():
                raise SystemExit(f"{data_src}: no devset subset (make the pack: python benchmarks/sprint.py --pack)")
        self.data_src = data_src
        info = sprint_pack.preload(data_src, Path(args.preload_dir), os.cpu_count() or 1)
        self.log(f"training data preloaded: {info['files']} files, {info['minutes']} min of audio decoded to WAV in "
                 f"{args.preload_dir} ({info['seconds_to_decode']} s)")
        data = Path(args.preload_dir)
        self.env["SB_MAL_DEVSET"] = str(data)
        os.environ.update({k: self.env[k] for k in ("SB_MAL_DEVSET", "SB_MAL_BENCH_RESULTS", "PYTHONPATH")})
        return data

    # ---- main
    def run(self) -> int:
        args, cfg = self.args, self.cfg
        data = self.setup()
        calls = json.loads((self.work / "calls.json").read_text()) if (self.work / "calls.json").exists() else []
        self.call_number = len(calls) + 1
        call = {"call": self.call_number, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.t0)),
                "device": self.device_name}
        okd_file = self.work / "okd_epochs.json"
        okd_epochs = json.loads(okd_file.read_text())["epochs"] if okd_file.exists() else None
        if not cfg.smoke:
            cfg.codec_net_steps = max(1, int(_train_seconds(data) / 4.064 / 8))
        exps = experiments(cfg, self.runs, okd_epochs)
        done = {(e.key, r.name): is_done(self.runs, e, r) for e in exps for r in e.runs}
        prepare_resumed_codec(self.runs, exps[2], done, self.log)
        probe_file = self.probe_file
        measured = json.loads(probe_file.read_text()) if probe_file.exists() else {}
        steps = prior_steps(cfg.batch, cfg.smoke)
        steps.update(measured)
        families = self._to_probe(exps, done, measured)
        if families and not args.plan_only and not args.no_probe:
            self.log(f"probing {len(families)} kinds of run at once: {', '.join(sorted(families))}")
            measured.update(run_probes(cfg, sorted(families), self.work, data, self.runs, self.env,
                                       args.probe_timeout, self.log))
            probe_file.write_text(json.dumps(measured, indent=1))
            steps.update(measured)
            for folder in (self.work / "probe").glob("*"):
                if folder.is_dir():
                    shutil.rmtree(folder, ignore_errors=True)  # the probes' runs; their logs stay
        plan = self.plan(exps, done, steps, okd_epochs)
        if args.plan_only:
            return 0
        self.execute(exps, done, steps, plan)
        self.finish(exps, call, calls)
        return 0

    def _to_probe(self, exps, done, measured) -> list[str]:
        """The kinds of run to measure now: those of the experiments that start at once in this call (MAL and
        the codec ladder; the fine-tuning once MAL's baselines are done; OKD once nothing else is left), not
        measured by an earlier call. The smoke run measures one, to take the probe's path."""
        if self.cfg.smoke:
            return [] if "mal_rec" in measured else ["mal_rec"]
        pending = {e.key: {r.family for r in e.runs if not done[(e.key, r.name)]} for e in exps}
        starting = pending["mal"] | pending["codec"]
        if all(done[("mal", f"seed{s}/baseline")] for s in self.cfg.seeds):
            starting |= pending["pift"]
        if not (pending["mal"] or pending["codec"] or pending["pift"]):
            starting |= pending["okd"]
        return sorted(f for f in starting if f not in measured and f not in ("codec_net", "codec_term"))

    def plan(self, exps, done, steps, okd_epochs) -> dict:
        """Print and keep the plan: runs, steps, step times, minutes, this call's share, calls left."""
        cfg = self.cfg
        t = now() - self.t0
        stop = self.stop - self.t0
        left_after_others = self._okd_start(exps, done, steps, t, stop)
        sim = simulate(exps, done, steps, cfg.jobs, t, stop, okd_start=left_after_others)
        measured = set(json.loads(self.probe_file.read_text())) if self.probe_file.exists() else set()
        source = "measured by the probes" if measured else "priors"
        if measured and any(f not in measured for f in {r.family for e in exps for r in e.runs}):
            source = f"measured for {', '.join(sorted(measured))}, priors for the rest"
        head = (f"{'experiment, arm':<36}{'left/all':>12}{'steps/run':>11}{'s/step':>8}{'min/run':>9}{'parallel':>9}"
                f"{'ends (min)':>11}{'this call':>10}")
        lines = [f"plan (step times {source}; {cfg.jobs} metric workers per run; minutes from the call's start, "
                 f"drivers stopped at {stop / 60:.1f}):", head]
        for exp in exps:
            groups: dict = {}
            for run in exp.runs:  # the seeds of one arm together
                groups.setdefault(run.name.split("/")[-1], []).append(run)
            for name, runs in groups.items():
                left = [r for r in runs if not done[(exp.key, r.name)]]
                per = run_seconds(runs[0], steps, cfg.jobs) / 60
                ends = [sim[(exp.key, r.name)]["end"] for r in left if sim[(exp.key, r.name)]["this_call"]]
                now_ = len(ends)
                step_t = steps[runs[0].family] + (steps[runs[0].extra_step] if runs[0].extra_step else 0)
                end = max(ends) / 60 if ends and max(ends) < math.inf else None
                lines.append(f"{(exp.key + ' ' + name)[:35]:<36}{f'{len(left)}/{len(runs)}':>12}{runs[0].steps:>11}"
                             f"{step_t:>8.3f}{per:>9.1f}{exp.parallel:>9}"
                             f"{(f'{end:.1f}' if end is not None else '-'):>11}{now_:>10}")
        total_left = sum(1 for v in done.values() if not v)
        this_call = sum(1 for v in sim.values() if v["this_call"])
        calls_more = self._calls_after(exps, done, sim, steps)
        lines.append(f"this call: {this_call} of the {total_left} runs left"
                     + (f"; OKD starts at {left_after_others / 60:.1f} min with {self._okd_planned} epochs of "
                        f"{cfg.okd_samples} generator steps" if left_after_others is not None else
                        "; OKD waits (not enough of the call left once the others have started everything)"
                        if any(not done[("okd", r.name)] for r in exps[3].runs) else "")
                     + (f"; after it, about {calls_more} more call(s) of {self.args.minutes:g} min" if calls_more
                        is not None else "; a run is longer than a call: fewer runs at once or a longer call"))
        for line in lines:
            self.log(line)
        plan = {"steps": steps, "measured": sorted(measured), "runs": {f"{k[0]}/{k[1]}": v for k, v in sim.items()},
                "calls_after_this": calls_more, "okd_start": left_after_others, "okd_epochs": self._okd_planned}
        (self.work / "plan.json").write_text(json.dumps(plan, indent=1, default=str))
        return plan

    def _okd_start(self, exps, done, steps, t, stop) -> float | None:
        """When OKD starts in this call (seconds from the call's start), or None: once MAL, the fine-tuning and
        the codec ladder have nothing left to start (all done, or past their last start) and their runs still
        going leave at least --okd-min-parallel of the --slots free (OKD then runs that many at once), if the
        rest of the call holds at least --okd-min-epochs (the number of epochs is fixed at the first start)."""
        okd = exps[3]
        self._okd_planned = None
        pending = [r for r in okd.runs if not done[("okd", r.name)]]
        if not pending:
            return None
        sim = simulate(exps, done, steps, self.cfg.jobs, t, stop, okd_start=None)
        mine = [(v["start"], v["end"]) for k, v in sim.items() if k[0] != "okd" and v["this_call"]]
        if self.cfg.smoke:  # the smoke run starts it with the others
            begin, parallel = t, len(pending)
        else:
            begin, parallel = okd_slot(mine, max([a for a, _ in mine], default=t), self.cfg.slots["total"],
                                       self.cfg.slots["okd_least"])
            parallel = min(parallel, len(pending))
        if begin >= stop:
            return None
        okd.parallel = parallel
        fixed = json.loads((self.work / "okd_epochs.json").read_text())["epochs"] \
            if (self.work / "okd_epochs.json").exists() else None
        fit = okd_epochs_that_fit(okd, self.cfg, steps, stop - begin, parallel, len(pending))
        if fixed is not None:
            self._okd_planned = fixed
            return begin if fit >= fixed else None
        if fit < self.cfg.okd_min_epochs:
            return None
        self._okd_planned = fit
        return begin

    def _calls_after(self, exps, done, sim, steps) -> int | None:
        """Calls of the same length after this one until every run is done, the plan repeated (OKD starting
        in a call as this call's rule says); None if a run cannot fit a call."""
        left = dict(done)
        for k, v in sim.items():
            if v["this_call"]:
                left[k] = True
        calls = 0
        length = self.args.minutes * 60 - self.args.margin - 30
        okd = exps[3]
        kept = okd.parallel, self._okd_planned
        try:
            while not all(left.values()):
                calls += 1
                others = any(not v for k, v in left.items() if k[0] != "okd")
                begin = self._okd_start(exps, left, steps, 0.0, length) if others else 0.0
                s = simulate(exps, left, steps, self.cfg.jobs, 0.0, length, okd_start=begin)
                fitting = [k for k, v in s.items() if v["this_call"]]
                if not fitting or calls > 50:
                    return None
                for k in fitting:
                    left[k] = True
        finally:
            okd.parallel, self._okd_planned = kept
        return calls

    # ---- execution
    def _start_driver(self, exp: Experiment, done, steps, report_only: bool = False) -> subprocess.Popen:
        cmd = [sys.executable, f"benchmarks/{exp.driver}", "--out", str(self.runs / exp.key), "--parallel",
               str(exp.parallel), "--threads", "1", *exp.args, *(["--report-only"] if report_only else []),
               *exp.overrides]
        gate = "0" if report_only else str(self._write_gate(exp, done, steps))  # tables only: no run starts
        env = dict(self.env, SB_MAL_NO_START_AFTER=gate)
        logs = self.work / "drivers"
        logs.mkdir(exist_ok=True)
        out = open(logs / f"{exp.key}{'_report' if report_only else ''}.log", "a")
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def _deadline(self, run: Run, steps) -> float:
        """The last time ``run`` may start: the stop less :data:`SAFETY` times its expected length."""
        return self.stop - SAFETY * run_seconds(run, steps, self.cfg.jobs)

    def _can_start(self, exp: Experiment, done, steps) -> bool:
        """Whether ``exp``'s driver may still start a run: one not started whose deadline has not passed."""
        return any(not (self.runs / exp.key / r.name / "train_command.txt").exists()
                   and not is_done(self.runs, exp, r) and now() < self._deadline(r, steps) for r in exp.runs)

    def _write_gate(self, exp: Experiment, done, steps) -> Path:
        """The file ``$SB_MAL_NO_START_AFTER`` names for ``exp``'s driver (protocol.run_once reads it before each
        run): each run's :meth:`_deadline`, the stop for any other."""
        path = self.work / "gates" / f"{exp.key}.json"
        path.parent.mkdir(exist_ok=True)
        table = {str((self.runs / exp.key / r.name).resolve()): round(self._deadline(r, steps), 1) for r in exp.runs}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**table, "*": self.stop}))
        tmp.replace(path)
        return path

    def execute(self, exps, done, steps, plan) -> None:
        """Run the drivers until they are done or the call's stop: MAL and the codec ladder at once, the
        fine-tuning once MAL's baselines are done, OKD once the others have nothing left to start."""
        by = {e.key: e for e in exps}
        procs: dict = {}
        ended: set = set()
        okd_room = 0  # OKD is tried when the others leave more room than at its last try (_launch_okd: does it fit?)

        def pending(key):
            return any(not is_done(self.runs, by[key], r) for r in by[key].runs)

        net = None
        if pending("mal"):
            procs["mal"] = self._start_driver(by["mal"], done, steps)
            self.log(f"MAL: driver started ({by['mal'].parallel} runs at a time)")
        if pending("codec"):
            if (self.runs / "codec" / "codec_net" / "seconds").exists():
                procs["codec"] = self._start_driver(by["codec"], done, steps)
                self.log(f"codec ladder: driver started ({by['codec'].parallel} runs at a time)")
            elif now() < self._deadline(by["codec"].runs[0], steps):  # the codec net
                net = self._start_codec_net(by["codec"])
        while now() < self.stop:
            if net is not None and net.poll() is not None:
                if self._codec_net_done(net):
                    procs["codec"] = self._start_driver(by["codec"], done, steps)
                    self.log(f"codec ladder: driver started ({by['codec'].parallel} runs at a time)")
                net = None
            for key, proc in procs.items():
                if proc.poll() is not None and key not in ended:
                    ended.add(key)
                    self.log(f"{by[key].label}: driver ended (exit {proc.returncode}); "
                             f"{sum(is_done(self.runs, by[key], r) for r in by[key].runs)}/{len(by[key].runs)} runs done")
            mal_alive = "mal" in procs and procs["mal"].poll() is None
            baselines = all(is_done(self.runs, by["mal"], r) for r in by["mal"].runs if r.name.endswith("/baseline"))
            pift_waits = ("pift" not in procs and pending("pift") and (baselines or mal_alive)
                          and self._can_start(by["pift"], done, steps))
            if pift_waits and baselines:
                procs["pift"] = self._start_driver(by["pift"], done, steps)
                self.log(f"{by['pift'].label}: driver started (MAL's baselines are done)")
                pift_waits = False
            others_busy = net is not None or any(k != "okd" and p.poll() is None and self._can_start(by[k], done, steps)
                                                 for k, p in procs.items())
            going = self._in_flight([by[k] for k, p in procs.items() if k != "okd" and p.poll() is None])
            room = self.cfg.slots["total"] - going
            if ("okd" not in procs and pending("okd") and room > okd_room
                    and (self.cfg.smoke or (not others_busy and not pift_waits and room >= self.cfg.slots["okd_least"]))):
                okd_room = room
                proc = self._launch_okd(by, done, steps, room)
                if proc is not None:
                    procs["okd"] = proc
            if (all(p.poll() is not None for p in procs.values()) and net is None and not pift_waits
                    and ("okd" in procs or not pending("okd") or okd_room >= self.cfg.slots["total"])):
                break
            time.sleep(1.0 if self.cfg.smoke else 2.0)
        if net is not None and net.poll() is None:
            self.log("codec net: stopped at the call's stop")
            _kill_group(net)
        for key, proc in procs.items():
            if proc.poll() is None:
                self.log(f"{by[key].label}: stopped at the call's stop")
                _kill_group(proc)
        self.exits = {key: proc.returncode for key, proc in procs.items()}

    def _start_codec_net(self, codec: Experiment) -> subprocess.Popen:
        """Train the codec net (the command codec_ladder.py would run) with PyTorch's deterministic algorithms,
        so that a later call that must train it again (its weights are not carried) gets the same net; the
        weights' digest of every training is kept in codec_net.json and compared."""
        net = self.runs / "codec" / "codec_net"
        if net.exists():
            shutil.rmtree(net)  # an unfinished training starts again
        epochs = codec.args[codec.args.index("--codec-epochs") + 1]
        cmd = [sys.executable, "-c", CODEC_NET_WRAPPER, "recipes/codec/train_codec_net.py",
               "hparams/mp3codec/spectral.yaml", f"--data_folder={self.env['SB_MAL_DEVSET']}", f"--output_folder={net}",
               f"--number_of_epochs={epochs}", f"--device={self.cfg.device}"]
        logs = self.runs / "codec" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / "codec_net.log", "w")
        self._codec_net_started = time.monotonic()
        self.log(f"codec net: training ({epochs} epochs, deterministic algorithms) before the ladder")
        return subprocess.Popen(cmd, cwd=REPO, env=dict(self.env, CUBLAS_WORKSPACE_CONFIG=":4096:8"), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def _codec_net_done(self, proc: subprocess.Popen) -> bool:
        """Record a finished codec-net training as protocol.run_once does (its seconds) and its weights' digest."""
        net = self.runs / "codec" / "codec_net"
        if proc.returncode != 0 or not (net / "model_config.json").exists():
            self.log(f"codec net: training failed (exit {proc.returncode}; see {self.runs / 'codec/logs/codec_net.log'}); "
                     "no ladder run in this call")
            return False
        (net / "seconds").write_text(f"{time.monotonic() - self._codec_net_started:.1f}")
        record = self.work / "codec_net.json"
        trainings = json.loads(record.read_text()) if record.exists() else []
        digest = weights_digest(net)
        same = [t for t in trainings if t["sha256"] == digest]
        trainings.append({"call": self.call_number, "sha256": digest, "device": self.device_name,
                          "seconds": float((net / "seconds").read_text())})
        record.write_text(json.dumps(trainings, indent=1))
        if trainings[:-1]:
            self.log("codec net: trained again, " + ("the same weights as in call " + str(same[0]["call"]) if same else
                                                     "WEIGHTS DIFFER from the earlier calls' (runs of different calls "
                                                     "used different codec nets)"))
        self.log(f"codec net: trained in {trainings[-1]['seconds']:.0f} s, weights sha256 {digest[:16]}")
        return True

    def _in_flight(self, exps: list[Experiment]) -> int:
        """Runs of ``exps`` started and not finished (a folder with train_command.txt and no seconds)."""
        return sum(1 for e in exps for r in e.runs if (self.runs / e.key / r.name / "train_command.txt").exists()
                   and not (self.runs / e.key / r.name / "seconds").exists())

    def _launch_okd(self, by, done, steps, room: int) -> subprocess.Popen | None:
        """Start OKD now, ``room`` runs at a time (all of them in the smoke run): the epochs that fit the rest of
        the call (or those fixed by an earlier call), the noisy inputs scored first on every core. None when
        they do not fit."""
        okd = by["okd"]
        okd_file = self.work / "okd_epochs.json"
        pending = [r for r in okd.runs if not is_done(self.runs, okd, r)]
        parallel = len(pending) if self.cfg.smoke else max(1, min(room, len(pending)))
        fit = okd_epochs_that_fit(okd, self.cfg, steps, self.stop - now() - 20, parallel, len(pending))
        if okd_file.exists():
            epochs = json.loads(okd_file.read_text())["epochs"]
            if fit < epochs:
                self.log(f"MetricGAN-OKD: its {epochs} epochs (fixed by an earlier call) do not fit the rest of "
                         "this call: the next call")
                return None
        else:
            if fit < self.cfg.okd_min_epochs:
                self.log(f"MetricGAN-OKD: {fit} epochs fit the rest of this call, fewer than {self.cfg.okd_min_epochs}: "
                         "it waits for the next call")
                return None
            epochs = fit
            okd_file.write_text(json.dumps({"epochs": epochs, "samples": self.cfg.okd_samples,
                                            "chosen_in_call": self.call_number}))
        fresh = next(e for e in experiments(self.cfg, self.runs, epochs) if e.key == "okd")
        okd.args, okd.runs = fresh.args, fresh.runs
        okd.parallel = parallel
        self._score_noisy()
        proc = self._start_driver(okd, done, steps)
        self.log(f"MetricGAN-OKD: driver started, {parallel} of its {len(pending)} runs at once, {epochs} epochs x "
                 f"{self.cfg.okd_samples} generator steps")
        return proc

    def _score_noisy(self) -> None:
        """The noisy test inputs' scores for okd_experiment's tables, on every core (it would use one)."""
        target = self.runs / "okd" / "noisy_scores.csv"
        if target.exists():
            return
        from sb_mal.metrics import evaluate

        data = Path(self.env["SB_MAL_DEVSET"])
        noisy = sorted((data / "pairs" / "test" / "noisy").glob("*.flac"))[: (1 if self.cfg.smoke else 60)]
        ids = [p.stem for p in noisy]
        started = time.monotonic()
        result = evaluate([str(p) for p in noisy], [str(data / "pairs/test/clean" / p.name) for p in noisy],
                          metrics=["intrusive", "dnsmos"], n_jobs=os.cpu_count() or 1, ids=ids)
        target.parent.mkdir(parents=True, exist_ok=True)
        result.to_csv(target)
        self.log(f"noisy test inputs scored ({len(ids)} utterances, {time.monotonic() - started:.0f} s on "
                 f"{os.cpu_count()} cores)")

    def summary(self, exps, done, calls) -> None:
        """The sprint's own section of RESULTS_sprint.md: the calls, the data, the step times, what is done."""
        from _results import header, update_section

        measured = json.loads(self.probe_file.read_text()) if self.probe_file.exists() else {}
        steps = {**prior_steps(self.cfg.batch, self.cfg.smoke), **measured}
        subset_file = self.data_src / "SUBSET.json"
        subset = json.loads(subset_file.read_text()) if subset_file.exists() else {}
        lines = [header("GPU sprint: the four experiments in device calls (sprint.py)"),
                 ("- smoke run: every arm a step or two on the CPU, seed 1" if self.cfg.smoke else
                  f"- budgets: {self.cfg.scale} x the CPU experiments' training mixtures, in steps of batch "
                  f"{self.cfg.batch} (the CPU runs: 8), seeds {self.cfg.seeds}")
                 + "; each driver's own section has its protocol and tables",
                 "- calls: " + "; ".join(f"{c['call']}: {c['started']} to {c.get('ended', '?')} on {c.get('device')}, "
                                         f"{c.get('new', 0)} runs finished" for c in calls)]
        if subset:
            train = subset.get("speech/train", {})
            noise = subset.get("noise/train", {})
            lines.append(f"- data (what a call can carry): {subset.get('pairs/test')} test and {subset.get('pairs/valid')} "
                         f"valid devset pairs; {train.get('files')} of the {train.get('of')} training utterances "
                         f"(every {subset.get('speech/train every', '?')}th of each voice); the first "
                         f"{noise.get('seconds_each_at_most')} s of each of the {noise.get('files')} training noises; "
                         "training audio decoded once to WAV in RAM")
        okd_file = self.work / "okd_epochs.json"
        if okd_file.exists():
            okd = json.loads(okd_file.read_text())
            lines.append(f"- MetricGAN-OKD: {okd['epochs']} epochs x {okd['samples']} generator steps (what call "
                         f"{okd.get('chosen_in_call')} could hold)")
        net_file = self.work / "codec_net.json"
        if net_file.exists():
            nets = json.loads(net_file.read_text())
            same = len({n["sha256"] for n in nets}) == 1
            lines.append("- codec net: trained in call(s) " + ", ".join(str(n["call"]) for n in nets)
                         + ("" if len(nets) == 1 else " with the same weights" if same else
                            " with DIFFERENT weights: ladder runs of different calls used different nets"))
        lines += ["", "| experiment | runs done / all |", "|---|---|"]
        for exp in exps:
            lines.append(f"| {exp.label} | {sum(done[(exp.key, r.name)] for r in exp.runs)} / {len(exp.runs)} |")
        lines += ["", "| kind of run | seconds per step | from |", "|---|---|---|"]
        for fam in sorted({r.family for e in exps for r in e.runs} | {"codec_term"}):
            lines.append(f"| {fam} | {steps[fam]:.3f} | {'probe' if fam in measured else 'prior'} |")
        update_section("sprint", "\n".join(lines) + "\n")

    def finish(self, exps, call, calls) -> None:
        """Tables of the finished runs, the state, the outputs."""
        done = {(e.key, r.name): is_done(self.runs, e, r) for e in exps for r in e.runs}
        reports = []
        for exp in exps:  # a driver that ended by itself wrote its tables; one stopped or gated did not
            if self.exits.get(exp.key, 0) != 0 and any(done[(exp.key, r.name)] for r in exp.runs
                                                        if r.name != "codec_net"):
                reports.append((exp, self._start_driver(exp, done, {}, report_only=True)))
        for exp, proc in reports:
            try:
                proc.wait(timeout=max(5.0, self.deadline - now() - 20))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
            self.log(f"{exp.label}: tables written (exit {proc.returncode})")
        call["ended"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        call["finished"] = sorted(f"{k[0]}/{k[1]}" for k, v in done.items() if v)
        call["new"] = len(set(call["finished"]) - set(calls[-1]["finished"] if calls else []))
        calls.append(call)
        (self.work / "calls.json").write_text(json.dumps(calls, indent=1))
        try:
            self.summary(exps, done, calls)
        except Exception as err:  # noqa: BLE001 - the state matters more than the summary
            self.log(f"summary not written: {err!r}")
        keep = state_keeper(self.work, exps, self.cfg, done)
        size = sprint_pack.save_state(self.work, self.out / "sprint_state.tar.gz", keep,
                                      ["runs", "drivers", "probe", "calls.json", self.probe_file.name, "plan.json",
                                       "okd_epochs.json", "codec_net.json", "RESULTS_sprint.md", "figures",
                                       "sprint_log.txt"])
        left = sum(1 for v in done.values() if not v)
        self.log(f"state: {size / sprint_pack.MIB:.1f} MiB in {self.out / 'sprint_state.tar.gz'}; "
                 f"{len(done) - left} of {len(done)} runs done, {left} left"
                 + ("" if left == 0 else "; the next call continues (sprint.py --take, then the same command)"))
        if size > self.args.state_limit * sprint_pack.MIB:
            self.log(f"WARNING: the state is over {self.args.state_limit} MiB: the next call may not carry it with "
                     "the pack (make the pack again with a larger --state-reserve)")
        for name in ("RESULTS_sprint.md", "plan.json"):
            if (self.work / name).exists():
                shutil.copy2(self.work / name, self.out / name)
        self.log_file.flush()
        shutil.copy2(self.work / "sprint_log.txt", self.out / "sprint_log.txt")


#: Runs a recipe script (argv[1:]) with PyTorch's deterministic algorithms (warnings where an op has none).
CODEC_NET_WRAPPER = ("import runpy, sys, torch\n"
                     "torch.use_deterministic_algorithms(True, warn_only=True)\n"
                     "torch.backends.cudnn.benchmark = False\n"
                     "sys.argv = sys.argv[1:]\n"
                     "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def weights_digest(run: Path) -> str | None:
    """sha256 of the tensors (names and values) of a run's newest model.ckpt."""
    import hashlib

    import torch

    ckpts = sorted(run.glob("save/CKPT+*/model.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        return None
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        value = state[name]
        digest.update(value.detach().cpu().contiguous().numpy().tobytes() if hasattr(value, "numpy") else
                      repr(value).encode())
    return digest.hexdigest()


def _train_seconds(data: Path) -> float:
    """Seconds of codec-net training audio (music/train + speech/train) in the devset ``data``."""
    import soundfile as sf

    total = 0.0
    for rel in ("music/train", "speech/train"):
        for path in (data / rel).rglob("*"):
            if path.suffix in (".flac", ".wav"):
                info = sf.info(str(path))
                total += info.frames / info.samplerate
    return total


# -- the CPU side: pack and take -----------------------------------------------------------------------------
def do_pack(args) -> int:
    pack = Path(args.pack_dir).resolve()
    python312 = args.python312 or sprint_pack.find_python312()
    desc = sprint_pack.build_pack(pack, Path(args.devset), test_pairs=args.test_pairs, valid_pairs=args.valid_pairs,
                                  state_reserve_mib=args.state_reserve, python312=python312,
                                  with_wheels=not args.no_wheels)
    sizes = sprint_pack.carried_bytes(pack)
    print(json.dumps(desc, indent=1))
    total = sizes["total"] / sprint_pack.MIB
    print(f"a call carries {total:.1f} MiB (working tree {sizes['working tree'] / sprint_pack.MIB:.1f} + "
          f"{pack.name} {sizes['pack'] / sprint_pack.MIB:.1f}) of {sprint_pack.CARRY_LIMIT // sprint_pack.MIB} MiB, "
          f"{args.state_reserve:g} MiB of it kept for the state")
    if sizes["total"] > sprint_pack.CARRY_LIMIT:
        raise SystemExit("over the limit: fewer --test-pairs or --valid-pairs")
    print(f"device call: command `python3 benchmarks/sprint.py`, carry [\"{pack.relative_to(REPO)}\"], timeout_s 600")
    return 0


def do_take(args) -> int:
    """Keep a call's state for the next call and merge its tables into the results file as sprint_* sections."""
    src = Path(args.take)
    pack = Path(args.pack_dir).resolve()
    state = src / "sprint_state.tar.gz"
    if not state.exists():
        raise SystemExit(f"{state}: not found (the call's files_at folder holds sprint_state.tar.gz)")
    (pack / "state").mkdir(parents=True, exist_ok=True)
    shutil.copy2(state, pack / "state" / "sprint_state.tar.gz")
    print(f"state kept: {pack / 'state' / 'sprint_state.tar.gz'} ({state.stat().st_size / sprint_pack.MIB:.1f} MiB)")
    results = src / "RESULTS_sprint.md"
    if results.exists():
        from _results import update_section

        text = results.read_text()
        for name, body in re.findall(r"<!-- (\S+):start -->\n(.*?)\n<!-- \1:end -->", text, re.DOTALL):
            update_section(name if name.startswith("sprint") else f"sprint_{name}", body)
    sizes = sprint_pack.carried_bytes(pack)
    print(f"the next call carries {sizes['total'] / sprint_pack.MIB:.1f} MiB of {sprint_pack.CARRY_LIMIT // sprint_pack.MIB}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from _results import add_results_option

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.environ.get("OUT") or str(REPO / "results" / "sprint")
    parser.add_argument("--pack", action="store_true",
                        help="make the pack on this (CPU) machine: wheels, DNSMOS models, devset subset in --pack-dir")
    parser.add_argument("--take", metavar="FOLDER", default=None,
                        help="after a device call: keep FOLDER/sprint_state.tar.gz for the next call and merge "
                             "FOLDER/RESULTS_sprint.md into the results file as sprint_* sections")
    parser.add_argument("--smoke", action="store_true",
                        help="every arm of the four experiments for a step or two on the CPU (minutes)")
    parser.add_argument("--plan-only", action="store_true", help="print the plan (no probe, no run) and stop")
    parser.add_argument("--pack-dir", default=str(REPO / ".sprint"),
                        help="the pack folder, carried into a device call (default .sprint)")
    parser.add_argument("--data", default=None, help="the devset subset to train on (default: <pack-dir>/devset)")
    parser.add_argument("--devset", default=os.environ.get("SB_MAL_DEVSET", str(REPO.parent / "shared/data/devset")),
                        help="the whole devset, for --pack and --smoke (default $SB_MAL_DEVSET or ../shared/data/devset)")
    parser.add_argument("--out", default=default_out,
                        help="where the state, tables and log go (default $OUT, else results/sprint)")
    parser.add_argument("--work", default="/tmp/sb_mal_sprint",
                        help="the runs' folder on the machine (default /tmp/sb_mal_sprint)")
    parser.add_argument("--state", default=None,
                        help="the state to resume from (default <pack-dir>/state/sprint_state.tar.gz if present)")
    parser.add_argument("--site", default="/tmp/sb_mal_sprint_site",
                        help="where the pack's wheels are installed when needed (default /tmp/sb_mal_sprint_site)")
    parser.add_argument("--preload-dir", default=None,
                        help="where the training data is decoded to WAV (default /dev/shm/sb_mal_sprint_data, or "
                             "<work>/data when /dev/shm is missing)")
    parser.add_argument("--device", default="cuda:0", help="the runs' device (default cuda:0; --smoke: cpu)")
    parser.add_argument("--minutes", type=float, default=9.0,
                        help="the call's length, from the start to the last file written (default 9; --smoke 12)")
    parser.add_argument("--margin", type=float, default=50.0,
                        help="seconds kept at the end for the tables of stopped drivers and the state (default 50; "
                             "--smoke 45)")
    parser.add_argument("--scale", type=int, default=20,
                        help="budgets as multiples of the CPU experiments' (default 20, at least 20)")
    parser.add_argument("--batch", type=int, default=GPU_BATCH,
                        help=f"mixtures per step of the MAL, fine-tuning and codec ladder runs (default {GPU_BATCH}; "
                             "--smoke 4); the budgets are mixtures, so a larger batch means fewer steps")
    parser.add_argument("--test-limit", type=int, default=60,
                        help="devset test pairs each MAL and fine-tuning run is scored on (default 60, as the codec "
                             "ladder and OKD runs; the CPU runs: 120): the test scoring is most of a run's CPU time")
    parser.add_argument("--jobs", type=int, default=2,
                        help="metric worker processes per run (default 2; --smoke 0: in the run's process)")
    parser.add_argument("--mal-parallel", type=int, default=6, help="MAL runs at once on the GPU (default 6)")
    parser.add_argument("--codec-parallel", type=int, default=8, help="codec ladder runs at once (default 8)")
    parser.add_argument("--pift-parallel", type=int, default=5,
                        help="fine-tuning runs at once, once MAL's baselines are done (default 5)")
    parallel = parser.add_argument_group("runs at once")
    parallel.add_argument("--slots", type=int, default=14,
                          help="training runs at once in all, which OKD fills once the others have nothing left to "
                               "start (default 14, for 16 cores)")
    parallel.add_argument("--okd-min-parallel", type=int, default=5,
                          help="OKD starts once this many of the --slots are free (default 5: its 15 runs in 3 waves)")
    parser.add_argument("--okd-min-epochs", type=int, default=10,
                        help="OKD starts in a call only if at least this many epochs fit (default 10: the 432 "
                             "generator steps of the earlier GPU run)")
    parser.add_argument("--okd-max-epochs", type=int, default=400, help="OKD epochs at most (default 400)")
    parser.add_argument("--probe-steps", type=int, default=40,
                        help="steps per probe epoch (2 epochs; OKD: generator steps) (default 40; --smoke 2)")
    parser.add_argument("--probe-timeout", type=float, default=90.0, help="seconds the probes may take (default 90)")
    parser.add_argument("--no-probe", action="store_true", help="plan from the prior step times, no probe")
    parser.add_argument("--test-pairs", type=int, default=120, help="--pack: devset test pairs packed (default 120)")
    parser.add_argument("--valid-pairs", type=int, default=30, help="--pack: devset valid pairs packed (default 30)")
    parser.add_argument("--state-reserve", type=float, default=14.0,
                        help="--pack: MiB of the 64 a call carries that are left for the state (default 14)")
    parser.add_argument("--state-limit", type=float, default=14.0,
                        help="warn when the state is over this many MiB (default 14)")
    parser.add_argument("--python312", default=None, help="--pack: a CPython 3.12 to build pesq with (default: found)")
    parser.add_argument("--no-wheels", action="store_true", help="--pack: keep the wheels already in the pack")
    add_results_option(parser)
    return parser


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    if args.pack:
        return do_pack(args)
    if args.take:
        return do_take(args)
    if args.scale < 20 and not args.smoke:
        parser.error("--scale is at least 20 (the sprint's budgets are at least 20 times the CPU ones)")
    if args.smoke:
        args.device = "cpu"
        if "--minutes" not in sys.argv:
            args.minutes = 12.0
        if "--margin" not in sys.argv:
            args.margin = 45.0
        if "--probe-steps" not in sys.argv:
            args.probe_steps = 2
        args.jobs = 0 if "--jobs" not in sys.argv else args.jobs  # metrics in the run's own process
        if "--batch" not in sys.argv:
            args.batch = 4  # two steps of each epoch's 8 mixtures: the batch reaches the recipes
    args.data = args.data or str(Path(args.pack_dir) / "devset")
    if args.preload_dir is None:
        args.preload_dir = "/dev/shm/sb_mal_sprint_data" if Path("/dev/shm").is_dir() and not args.smoke \
            else str(Path(args.work) / "data")
    slots = {"mal": args.mal_parallel, "codec": args.codec_parallel, "pift": args.pift_parallel, "okd": 15,
             "total": args.slots, "okd_least": args.okd_min_parallel}
    if args.smoke:
        slots = {"mal": 2, "codec": 2, "pift": 4, "okd": 2, "total": 8, "okd_least": 2}
    cfg = Config(smoke=args.smoke, seeds=[1] if args.smoke else SEEDS, scale=args.scale, device=args.device,
                 jobs=args.jobs, slots=slots, okd_min_epochs=2 if args.smoke else args.okd_min_epochs,
                 okd_max_epochs=2 if args.smoke else args.okd_max_epochs, okd_samples=2 if args.smoke else 48,
                 probe_steps=args.probe_steps, codec_net_steps=1, batch=args.batch,
                 test_pairs=args.test_limit)
    return Sprint(args, cfg).run()


if __name__ == "__main__":
    sys.exit(main())
