"""Seconds per epoch of VoiceBank's MetricGAN+ schedule: sb_mal's MetricGAN+ and OKD (N=2) beside SpeechBrain's recipe.

Systems, each the recipe itself on one VoiceBank-layout folder (``_sb_recipe.voicebank_layout``:
``--train`` fixed devset training mixtures of 3 s, ``--valid`` devset valid pairs as the held-out
speakers p226/p287, a few test pairs; SpeechBrain's own ``voicebank_prepare.py`` and sb_mal's
``prepare_voicebank`` both read it):

- ``speechbrain``: SpeechBrain's ``recipes/Voicebank/enhance/MetricGAN`` (``hparams/train.yaml``), copied
  at run time from ``--speechbrain-recipe`` (a checkout) or exported from ``--speechbrain-git`` (a git
  directory of SpeechBrain's repository) into a temporary folder;
- ``metricgan_plus``: ``recipes/metricgan_okd/train.py hparams/voicebank/metricgan_plus.yaml``;
- ``okd_pesq_csig``: the same recipe with ``hparams/voicebank/okd_pesq_csig.yaml`` (two generators).

Every run trains ``--epochs`` epochs of ``--samples`` utterances (VoiceBank's schedule: 100 per
epoch) with each YAML's own validation (SpeechBrain: every epoch, PESQ and STOI; sb_mal: every
``valid_every`` epochs and at the last, five metrics) and metric jobs (``--n-jobs`` overrides both).
The systems run one after the other, ``--rounds`` times, in an order that rotates every round.

Each run goes through ``_stage_clock.py``, which writes the duration of every stage into the run's
own ``log.txt``: training and validation stage per epoch, the discriminator phase (SpeechBrain:
its three inner passes; sb_mal: its enhancement, scoring, updates and history replay) and each
checkpoint. Epoch 1 differs by design (sb_mal trains only the discriminator; the noisy inputs are
scored), so epochs 2.. are the timed ones.

The history replay makes an epoch grow: both recipes replay ``history_portion`` (0.2) of *every*
enhanced utterance of the earlier epochs, 20 more discriminator steps per epoch, so epoch 750 replays
about 15 000. The projection for ``--schedule-epochs`` (750) therefore sums the epochs:
``T(e) = base + r(e) * c_replay + V(e)``, with ``c_replay`` (seconds per replayed utterance, loading
included) and ``base`` measured in the timed epochs, ``r(e)`` each recipe's replay count, ``V(e)``
its validation scaled to VoiceBank's 770 validation utterances (measured seconds per utterance,
the checkpoint as measured) at its own frequency, plus the noisy inputs' scores of the 10 802
training utterances (about 10 790 are drawn at least once in 750 epochs; measured seconds per
utterance of the scoring).

The floor of sb_mal's epoch on this machine is computed from the measured parts: the work on the
device (generator steps, the discriminator phase's enhancement, updates and replay loading, the
validation's enhancement) cannot be shorter than itself, and the metric work (single-core seconds
per utterance of the targets and the validation metrics, measured here) shares the cores with it:
``floor = max(device, (device + metrics) / cores)`` on the CPU, ``max(device, metrics / cores)`` on a GPU.

Goals (issue 26): on 2 CPU cores, sb_mal's MetricGAN+ epoch at most 0.5x SpeechBrain's or within 10 %
of its floor; on one H100 (16 cores), MetricGAN+ 750 epochs in at most 1 h and OKD (N=2) in at most
1.5 h, projected, each at least 5x faster than SpeechBrain's recipe. ``--device cuda:0`` writes
section ``bench_okd_cost_cuda`` with the GPU named.

Usage: python benchmarks/bench_okd_cost.py --speechbrain-git DIR [--epochs 3] [--rounds 2] [--smoke]
       python benchmarks/bench_okd_cost.py --speechbrain-git DIR --prepare-only  (data + recipe for a GPU machine)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _results import DEVSET, add_results_option, header, update_section
from _sb_recipe import (
    copy_recipe,
    export_recipe,
    find_recipe,
    speechbrain_args,
    speechbrain_command,
    voicebank_layout,
)
from _stage_clock import read_events
from protocol import run_once

REPO = Path(__file__).resolve().parents[1]
CLOCK = Path(__file__).resolve().parent / "_stage_clock.py"
#: system -> (label, sb_mal YAML of hparams/voicebank or None for SpeechBrain's recipe)
SYSTEMS = {"speechbrain": ("SpeechBrain recipe (MetricGAN+)", None),
           "metricgan_plus": ("sb_mal MetricGAN+", "metricgan_plus.yaml"),
           "okd_pesq_csig": ("sb_mal OKD N=2 (PESQ, CSIG)", "okd_pesq_csig.yaml")}
PHASE = "sb_mal.brains.okd_discriminator:DiscriminatorPhase"
#: what the stage clock times inside sb_mal's discriminator phase (enhance, score, update, replay; the
#: pipelined phase's stream_current holds the enhancement, the waiting for targets and the first updates)
SBMAL_PROBES = [f"{PHASE}.{m}" for m in ("enhance", "score", "update", "replay", "stream_current")]
CHECKPOINT_PROBE = "speechbrain.utils.checkpoints:Checkpointer.save_and_keep_only"
#: VoiceBank-DEMAND (28 speakers): training utterances once p226/p287 are held out, and those held out
VOICEBANK_TRAIN, VOICEBANK_VALID = 10802, 770
#: single-core metric work per utterance measured here: targets of each system, validation of each recipe
TARGETS = {"speechbrain": ["pesq"], "metricgan_plus": ["pesq"], "okd_pesq_csig": ["pesq", "csig"]}
VALID_METRICS = {"speechbrain": ["pesq", "stoi"], "sb_mal": ["pesq", "csig", "cbak", "covl", "stoi"]}


# -- runs --------------------------------------------------------------------------------------------
def yaml_value(yaml: str, key: str, cast=float):
    """A top-level scalar of an sb_mal YAML of hparams/voicebank."""
    m = re.search(rf"^{key}:\s*([^\s#]+)", (REPO / "hparams/voicebank" / yaml).read_text(), re.MULTILINE)
    if not m:
        raise SystemExit(f"hparams/voicebank/{yaml}: no {key}")
    return cast(m.group(1))


def run_system(system: str, folder: Path, data: Path, recipe: Path | None, args) -> Path:
    """Train one system into ``folder``; returns its ``log.txt``."""
    out = folder / "out"
    clock = [sys.executable, str(CLOCK), "--probe", CHECKPOINT_PROBE]
    if system == "speechbrain":
        private = copy_recipe(recipe, folder / "recipe")
        sb = speechbrain_command(private, *speechbrain_args(data, out, args.samples, args.seed, args.device,
                                                            args.n_jobs, args.epochs, skip_prep=False))
        cmd, cwd = clock + sb[1:], private  # the recipe imports its data preparation from its folder
    else:
        yaml = SYSTEMS[system][1]
        cmd = clock + [a for p in SBMAL_PROBES for a in ("--probe", p)] + [
            str(REPO / "recipes/metricgan_okd/train.py"), str(REPO / "hparams/voicebank" / yaml),
            f"--data_folder={data}", "--download=False", f"--output_folder={out}", f"--seed={args.seed}",
            f"--samples_per_epoch={args.samples}", f"--number_of_epochs={args.epochs}", f"--device={args.device}",
            "--test_data=null", *([f"--n_jobs={args.n_jobs}"] if args.n_jobs is not None else [])]
        cwd = REPO
    run_once(cmd, folder, folder / "stdout.log", args.threads, outputs=("out/log.txt",), cwd=cwd)
    return out / "log.txt"


# -- reading a run ------------------------------------------------------------------------------------
def epoch_parts(events: list[dict]) -> dict[int, dict]:
    """Per epoch: ``train``, ``valid`` and ``d_phase`` seconds (the training stage's on_stage_start and
    on_stage_end), ``inner`` [(sub-stage, seconds)] of nested training stages, ``probes`` {name: [(seconds,
    items)]} and ``checkpoint`` seconds; only what ran inside ``fit`` (the test stage is left out)."""
    out: dict[int, dict] = defaultdict(lambda: {"train": 0.0, "valid": 0.0, "d_phase": 0.0, "checkpoint": 0.0,
                                                 "inner": [], "probes": defaultdict(list)})
    for ev in events:
        epoch, depth, what = ev.get("epoch"), ev.get("depth", 0), ev["what"]
        if epoch is None or depth < 1:
            continue
        part, s = out[int(epoch)], float(ev.get("seconds", 0.0))
        if what in ("_fit_train", "_fit_valid") and depth == 1:
            part["train" if what == "_fit_train" else "valid"] += s
        elif what == "_fit_train":
            part["inner"].append((ev.get("sub"), s))
        elif what in ("on_stage_start", "on_stage_end") and depth == 1 and ev.get("stage") == "TRAIN":
            part["d_phase"] += s
        elif what == "probe" and ev["name"] == CHECKPOINT_PROBE:
            part["checkpoint"] += s
        elif what == "probe":
            part["probes"][ev["name"].rsplit(".", 1)[1]].append((s, ev.get("items") or 0))
    return dict(out)


def replay_count(system: str, epoch: int, samples: int, portion: float = 0.2) -> int:
    """Utterances replayed from the history in ``epoch`` (no failed scores): SpeechBrain's history holds
    the epoch's own utterances when it is sampled, sb_mal's only the earlier epochs'."""
    held = samples * (epoch if system == "speechbrain" else epoch - 1)
    return max(1, round(portion * held)) if held else 0


def epoch_measures(system: str, epoch: int, part: dict, samples: int) -> dict:
    """The parts of one timed epoch, in seconds: generator steps, scoring of the epoch's targets, the
    replay (count and seconds per utterance), device work of the discriminator phase."""
    m = {"epoch": epoch, "total": part["train"] + part["valid"], "train": part["train"], "valid": part["valid"],
         "checkpoint": part["checkpoint"], "gen": part["train"] - part["d_phase"], "d_phase": part["d_phase"]}
    if system == "speechbrain":
        current = [s for sub, s in part["inner"] if sub == "CURRENT"]
        history = sum(s for sub, s in part["inner"] if sub == "HISTORICAL")
        m["replayed"] = replay_count(system, epoch, samples)
        m["c_replay"] = history / m["replayed"]
        # the two passes over the epoch's utterances differ only in the scoring (the second reads the scores)
        m["score"] = current[0] - current[-1] if len(current) == 2 else math.nan
        m["d_device"] = m["d_phase"] - m["score"]
        return m
    probes = part["probes"]
    updates, replay = probes.get("update", []), probes.get("replay", [])
    streamed = probes.get("stream_current", [])
    if not (updates and (probes.get("score") or streamed) and probes.get("enhance")):
        raise SystemExit(f"no timings of {PHASE}.update/score (or stream_current)/enhance in the log (probes "
                         "missing: did the discriminator phase move? update SBMAL_PROBES)")
    m["replayed"] = sum(n for _, n in replay)
    m["c_update"] = sum(s for s, _ in updates) / max(1, sum(n for _, n in updates))
    m["c_load"] = sum(s for s, _ in replay) / m["replayed"] if m["replayed"] else 0.0
    m["c_replay"] = m["c_update"] + m["c_load"]
    m["updates"] = sum(n for _, n in updates)
    m["enhance"] = sum(s for s, _ in probes["enhance"])
    if streamed:  # pipelined: the scoring not hidden behind enhancement and updates is the time waited for it
        # (the epoch's noisy inputs not yet scored included); the stream's own updates are the first calls,
        # one per enhanced utterance
        stream_updates = sum(s for s, _ in updates[:len(probes["enhance"])])
        m["score"] = max(0.0, sum(s for s, _ in streamed) - m["enhance"] - stream_updates)
        m["d_device"] = m["d_phase"] - m["score"]
        return m
    m["score"] = probes["score"][0][0]  # the epoch's enhanced utterances (noisy ones, if any, come after)
    m["d_device"] = m["d_phase"] - sum(s for s, _ in probes["score"])
    return m


# -- projection ---------------------------------------------------------------------------------------
def noisy_drawn(train: int, samples: int, epochs: int) -> float:
    """Expected training utterances drawn at least once in ``epochs`` draws of ``samples`` of ``train``
    (each scored once as a noisy input by both recipes, which cache those scores)."""
    return train * (1.0 - (1.0 - samples / train) ** epochs)


def validating(system: str, epoch: int, last: int, valid_every: int) -> bool:
    return system == "speechbrain" or epoch % valid_every == 0 or epoch == last


def project(system: str, measures: list[dict], valid_measures: dict[str, list[tuple[float, float]]], args,
            valid_every: int) -> dict:
    """Seconds of the ``args.schedule_epochs``-epoch schedule (see the module docstring) and its parts.

    ``measures``: the timed epochs of every run; ``valid_measures``: {"valid"/"skip": [(stage seconds,
    checkpoint seconds)]} of every epoch (validating or not)."""
    E, s = args.schedule_epochs, args.samples
    c_rep = statistics.median(m["c_replay"] for m in measures)
    base = statistics.median(m["train"] - m["replayed"] * c_rep for m in measures)
    replayed = sum(replay_count(system, e, s) for e in range(1, E + 1))
    scale = VOICEBANK_VALID / args.valid

    def valid_cost(kind: str) -> float:
        pairs = valid_measures.get(kind) or []
        if not pairs:
            return math.nan
        ckpt = statistics.median(c for _, c in pairs)
        return statistics.median(v - c for v, c in pairs) * scale + ckpt

    n_valid = sum(validating(system, e, E, valid_every) for e in range(1, E + 1))
    valid_total = n_valid * valid_cost("valid") + (E - n_valid) * (valid_cost("skip") if n_valid < E else 0.0)
    score_per_utt = statistics.median(m["score"] for m in measures) / s
    noisy = noisy_drawn(args.voicebank_train, s, E) * score_per_utt
    total = E * base + c_rep * replayed + valid_total + noisy
    first = base + c_rep * replay_count(system, 2, s) + (valid_cost("valid") if validating(system, 2, E, valid_every)
                                                          else valid_cost("skip"))
    last = base + c_rep * replay_count(system, E, s) + valid_cost("valid")
    return {"mean epoch s": total / E, "projected h": total / 3600, "base s": base, "c_replay": c_rep,
            "replayed": replayed, "valid total s": valid_total, "valid s": valid_cost("valid"),
            "noisy total s": noisy, "epoch 2 s": first, f"epoch {E} s": last, "validations": n_valid,
            "score per utt": score_per_utt}


def floor(measures: list[dict], proj: dict, metric_cpu: dict, system: str, args) -> dict:
    """The lowest mean epoch sb_mal's schedule allows on this machine, from measured parts (docstring):
    ``floor s`` with the trainer on ``args.threads`` thread(s) as measured, ``all cores s`` if its CPU
    work spread perfectly over every core (CPU runs only)."""
    E, s = args.schedule_epochs, args.samples
    med = lambda key: statistics.median(m[key] for m in measures)
    gens = 2 if system == "okd_pesq_csig" else 1
    mean_replay = proj["replayed"] / E
    enhance_per_utt = med("enhance") / s
    validations = proj["validations"] / E  # per epoch
    device = {"generator steps": med("gen"), "enhancement": med("enhance"),
              "D updates": med("c_update") * (med("updates") - med("replayed") + mean_replay),
              "replay loading": med("c_load") * mean_replay,
              "validation enhancement": validations * VOICEBANK_VALID * gens * enhance_per_utt}
    metrics = {"targets": (s + noisy_drawn(args.voicebank_train, s, E) / E) * metric_cpu[system],
               "validation metrics": validations * VOICEBANK_VALID * gens * metric_cpu["valid sb_mal"]}
    dev, met = sum(device.values()), sum(metrics.values())
    cores = os.cpu_count() or 1
    if args.device == "cpu":
        cpu_work = dev * args.threads + met
        return {"device": device, "metrics": metrics, "cores": cores, "floor s": max(dev, cpu_work / cores),
                "all cores s": cpu_work / cores}
    return {"device": device, "metrics": metrics, "cores": cores, "floor s": max(dev, met / cores)}


def metric_seconds(data: Path, count: int) -> dict:
    """Single-core seconds per utterance of each metric set (TARGETS, VALID_METRICS) on the first
    ``count`` training pairs of the VoiceBank-layout folder ``data`` (noisy against clean), median
    over utterances."""
    import torch

    from sb_mal.audio import read_audio
    from sb_mal.metrics import evaluate

    torch.set_num_threads(1)
    noisy_files = sorted((data / "noisy_trainset_28spk_wav_16k").glob("*.wav"))[:count]
    pairs = [tuple(read_audio(data / f"{kind}_trainset_28spk_wav_16k" / f.name, 16000, as_numpy=True)[0]
                   for kind in ("noisy", "clean")) for f in noisy_files]
    sets = {**TARGETS, **{f"valid {k}": v for k, v in VALID_METRICS.items()}}
    out = {}
    for key, names in sets.items():
        evaluate([pairs[0][0]], [pairs[0][1]], 16000, metrics=names, n_jobs=0)  # warm-up (imports, caches)
        times = []
        for noisy, clean in pairs:
            t0 = time.perf_counter()
            evaluate([noisy], [clean], 16000, metrics=names, n_jobs=0)
            times.append(time.perf_counter() - t0)
        out[key] = statistics.median(times)
    return out


# -- report -------------------------------------------------------------------------------------------
def _range(values) -> str:
    return f"{min(values):.1f}-{max(values):.1f}" if values else ""


def system_rows(results: dict, metric_cpu: dict, args) -> tuple[list[dict], list[dict], list[str]]:
    """(epoch table rows, parts table rows, floor lines) from ``results[system] = [(measures, valid)]``."""
    rows, parts, lines, proj = [], [], [], {}
    for system, runs in results.items():
        label = SYSTEMS[system][0]
        measures = [m for ms, _ in runs for m in ms]
        valid = defaultdict(list)
        for _, v in runs:
            for kind, pairs in v.items():
                valid[kind] += pairs
        every = 1 if system == "speechbrain" else yaml_value(SYSTEMS[system][1], "valid_every", int)
        p = proj[system] = project(system, measures, valid, args, every)
        per_run = [project(system, ms, v, args, every)["projected h"] for ms, v in runs]
        totals = [m["total"] for m in measures]
        rows.append({"system": label, "timed epochs": len(measures), "epoch s": statistics.median(totals),
                     "epoch range s": _range(totals), "training s": statistics.median(m["train"] for m in measures),
                     "generator steps s": statistics.median(m["gen"] for m in measures),
                     "D phase s": statistics.median(m["d_phase"] for m in measures),
                     f"validation s ({args.valid} utt.)": statistics.median(v for v, _ in valid["valid"]),
                     f"VoiceBank epoch s (mean of {args.schedule_epochs})": p["mean epoch s"],
                     "epoch 2 -> last s": f"{p['epoch 2 s']:.0f} -> {p[f'epoch {args.schedule_epochs} s']:.0f}",
                     f"projected h ({args.schedule_epochs} epochs)": p["projected h"],
                     "runs' projections h": _range(per_run)})
        parts.append({"system": label, "generator step s": statistics.median(m["gen"] for m in measures) / args.samples,
                      "replay s/utt.": p["c_replay"], "scoring s/utt.": p["score per utt"],
                      "D device s/epoch": statistics.median(m["d_device"] for m in measures),
                      "validation s/utt.": (p["valid s"] - statistics.median(c for _, c in valid["valid"]))
                      / VOICEBANK_VALID,
                      "checkpoint s": statistics.median(m["checkpoint"] for m in measures),
                      "validations": p["validations"], "valid total h": p["valid total s"] / 3600,
                      "noisy scores h": p["noisy total s"] / 3600,
                      "replay h": p["c_replay"] * p["replayed"] / 3600,
                      "replay share": p["c_replay"] * p["replayed"] / 3600 / p["projected h"]})
    sb = proj.get("speechbrain")
    for row, system in zip(rows, results):
        if sb:
            row["ratio to SpeechBrain (measured)"] = row["epoch s"] / rows[list(results).index("speechbrain")]["epoch s"]
            row["ratio to SpeechBrain (VoiceBank)"] = proj[system]["mean epoch s"] / sb["mean epoch s"]
        if system == "speechbrain":
            continue
        measures = [m for ms, _ in results[system] for m in ms]
        f = floor(measures, proj[system], metric_cpu, system, args)
        dev = " + ".join(f"{k} {v:.1f}" for k, v in f["device"].items())
        met = " + ".join(f"{k} {v:.1f}" for k, v in f["metrics"].items())
        mean = proj[system]["mean epoch s"]
        line = (f"- {SYSTEMS[system][0]}, floor of the VoiceBank epoch (mean of {args.schedule_epochs}): device "
                f"{sum(f['device'].values()):.1f} s ({dev}); metrics {sum(f['metrics'].values()):.1f} s of one core "
                f"({met}); ")
        if args.device == "cpu":
            line += (f"floor with the trainer on {args.threads} thread(s) = max(device, (device x {args.threads} + "
                     f"metrics) / {f['cores']} cores) = {f['floor s']:.1f} s; projected epoch {mean:.1f} s = "
                     f"{mean / f['floor s']:.2f}x that floor; with every core's time used (perfect parallel scaling)"
                     f" the floor is {f['all cores s']:.1f} s ({mean / f['all cores s']:.2f}x)")
        else:
            line += (f"floor = max(device, metrics / {f['cores']} cores) = {f['floor s']:.1f} s; projected epoch "
                     f"{mean:.1f} s = {mean / f['floor s']:.2f}x the floor")
        if sb:
            line += f"; 0.5x SpeechBrain's epoch = {0.5 * sb['mean epoch s']:.1f} s"
        lines.append(line)
        proj[system]["floor"] = f
    return rows, parts, lines, proj


def goal_lines(proj: dict, args) -> list[str]:
    """The issue's goals, met or not, from the projections (and the floors of ``system_rows``)."""
    sb, out = proj.get("speechbrain"), []
    if args.device == "cpu" and "metricgan_plus" in proj:
        mine = proj["metricgan_plus"]["mean epoch s"]
        of_floor = mine / proj["metricgan_plus"]["floor"]["floor s"]
        if sb:
            out.append(f"- goal (CPU): MetricGAN+ epoch <= 0.5x SpeechBrain's: "
                       f"{'met' if mine <= 0.5 * sb['mean epoch s'] else 'NOT met'} "
                       f"({mine / sb['mean epoch s']:.2f}x)")
        out.append(f"- goal (CPU), otherwise: within 10 % of the floor with the trainer on {args.threads} thread(s): "
                   f"{'met' if of_floor <= 1.1 else 'NOT met'} ({of_floor:.2f}x; floor line below)")
    if args.device != "cpu":
        for system, hours in (("metricgan_plus", 1.0), ("okd_pesq_csig", 1.5)):
            if system in proj:
                h = proj[system]["projected h"]
                faster = f", {sb['projected h'] / h:.1f}x faster than SpeechBrain's (goal >= 5x)" if sb else ""
                out.append(f"- goal (GPU): {SYSTEMS[system][0]} {args.schedule_epochs} epochs in <= {hours} h: "
                           f"{'met' if h <= hours else 'NOT met'} ({h:.2f} h projected){faster}")
    return out


def prepare_elsewhere(data: Path, recipe: Path | None) -> None:
    """What a machine without the devset or SpeechBrain's repository needs, under results/bench_okd_cost:
    the recipe, the data folder (already there) and a small devset (a few speech and noise files: what
    bench_mal_cost.py's batch draws from; point $SB_MAL_DEVSET at it)."""
    root = REPO / "results/bench_okd_cost"
    if recipe is not None:
        shutil.rmtree(root / "speechbrain_recipe", ignore_errors=True)
        copy_recipe(recipe, root / "speechbrain_recipe")
    small = root / "devset"
    for sub, count in (("speech/train", 60), ("noise/train", 4)):
        for f in sorted((DEVSET / sub).rglob("*.flac"))[:count]:
            target = small / f.relative_to(DEVSET)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    rel = lambda p: os.path.relpath(p, REPO)
    print(f"prepared under {rel(root)} (carry it):\n  SB_MAL_DEVSET={rel(small)} python benchmarks/bench_mal_cost.py "
          f"--device cuda:0\n  python benchmarks/bench_okd_cost.py --device cuda:0 --speechbrain-recipe "
          f"{rel(root / 'speechbrain_recipe')} --data {rel(data)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--speechbrain-recipe", default=None,
                       help="SpeechBrain's recipes/Voicebank/enhance/MetricGAN (or a checkout holding it); copied "
                            "into a temporary folder for each run")
    where.add_argument("--speechbrain-git", default=None,
                       help="a git directory of SpeechBrain's repository; the recipe is exported from it at run time")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS), help="systems to run")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (epochs 2.. are timed)")
    parser.add_argument("--samples", type=int, default=100,
                        help="utterances per epoch (VoiceBank's schedule: 100); the training pool holds as many")
    parser.add_argument("--valid", type=int, default=60,
                        help="validation utterances (devset valid pairs, at most 3 s); scaled to VoiceBank's 770")
    parser.add_argument("--test", type=int, default=2, help="test utterances (the end-of-run test is not timed)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per system, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--n-jobs", type=int, default=None,
                        help="metric worker processes of every recipe (default: each YAML's own: SpeechBrain 1, sb_mal 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (a GPU run writes bench_okd_cost_cuda)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of every run")
    parser.add_argument("--schedule-epochs", type=int, default=750, help="epochs of the projected schedule")
    parser.add_argument("--voicebank-train", type=int, default=VOICEBANK_TRAIN,
                        help="training utterances of the projected corpus (their noisy inputs are scored once each)")
    parser.add_argument("--metric-utterances", type=int, default=8,
                        help="utterances on which the single-core metric seconds are measured")
    parser.add_argument("--data", default=str(REPO / "results/bench_okd_cost/voicebank"),
                        help="the VoiceBank-layout folder (written from the devset when absent or different)")
    parser.add_argument("--keep-runs", default=None, help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write the data folder, the recipe (results/bench_okd_cost/speechbrain_recipe) and a "
                             "small devset (results/bench_okd_cost/devset): what a GPU machine needs; then stop")
    parser.add_argument("--smoke", action="store_true",
                        help="2 epochs of 4 utterances, 2 validation and 1 test utterance, 1 round, no results file written")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the runs kept in --keep-runs DIR (same options as the run)")
    parser.add_argument("--no-write", action="store_true", help="print only (no results file written)")
    return add_results_option(parser)


def read_run(system: str, log: Path, args) -> tuple[list[dict], dict]:
    """``(timed epochs' measures, {"valid"/"skip": [(validation stage s, checkpoint s)]})`` of one run."""
    parts = epoch_parts(read_events(log))
    every = 1 if system == "speechbrain" else yaml_value(SYSTEMS[system][1], "valid_every", int)
    measures = [epoch_measures(system, e, parts[e], args.samples) for e in sorted(parts) if e >= 2]
    valid = defaultdict(list)
    for e, part in parts.items():
        valid["valid" if validating(system, e, args.epochs, every) else "skip"].append((part["valid"],
                                                                                       part["checkpoint"]))
    return measures, dict(valid)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.samples, args.valid, args.test, args.rounds = 2, 4, 2, 1, 1
        args.metric_utterances, args.no_write = 2, True
        args.data = str(Path(args.data).with_name("voicebank_smoke"))
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (epoch 1 is not timed)")
    if args.report_only and not args.keep_runs:
        parser.error("--report-only reads the runs of --keep-runs DIR")
    runs_root = Path(args.keep_runs) if args.keep_runs else None
    if args.report_only:
        info = json.loads((runs_root / "run_info.json").read_text())
        results = {s: [read_run(s, runs_root / f"{s}_{r}" / "out" / "log.txt", args) for r in range(args.rounds)]
                   for s in args.systems}
    else:
        info, results = run_all(args, parser)
        if info is None:  # --prepare-only
            return
    report(results, info, args)


def run_all(args, parser) -> tuple[dict | None, dict]:
    """Every run of every round (interleaved); ``(run info, results)``: the metric timings, load averages
    and GPU name in ``run_info.json`` beside the runs (for ``--report-only``)."""
    data = voicebank_layout(Path(args.data), DEVSET, args.samples, args.valid, args.test)
    tmp = Path(tempfile.mkdtemp(prefix="bench_okd_cost_"))
    recipe = None
    if "speechbrain" in args.systems:
        if args.speechbrain_git:
            recipe = export_recipe(args.speechbrain_git, tmp / "export")
        elif args.speechbrain_recipe:
            recipe = find_recipe(args.speechbrain_recipe, "--speechbrain-recipe")
        else:
            parser.error("the speechbrain system needs --speechbrain-recipe PATH or --speechbrain-git DIR "
                         "(or leave it out with --systems)")
    if args.prepare_only:
        prepare_elsewhere(data, recipe)
        shutil.rmtree(tmp, ignore_errors=True)
        return None, {}
    info = {"gpu": None}
    if args.device != "cpu":
        import torch

        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        print(f"GPU: {info['gpu']}")
    info["metric_cpu"] = metric_seconds(data, args.metric_utterances)
    print("single-core metric seconds per utterance: "
          + ", ".join(f"{k} {v:.3f}" for k, v in info["metric_cpu"].items()))
    runs_root = Path(args.keep_runs) if args.keep_runs else tmp / "runs"
    info["loads"] = [os.getloadavg()[0]]
    results: dict[str, list] = {s: [] for s in args.systems}
    try:
        for r in range(args.rounds):
            order = args.systems[r % len(args.systems):] + args.systems[:r % len(args.systems)]
            for system in order:
                folder = runs_root / f"{system}_{r}"
                shutil.rmtree(folder, ignore_errors=True)
                started = time.monotonic()
                log = run_system(system, folder, data, recipe, args)
                info["loads"].append(os.getloadavg()[0])
                measures, valid = read_run(system, log, args)
                results[system].append((measures, valid))
                print(f"round {r + 1}, {SYSTEMS[system][0]}: " + ", ".join(
                    f"epoch {m['epoch']} {m['total']:.1f} s (train {m['train']:.1f}, valid {m['valid']:.1f})"
                    for m in measures) + f"; run {time.monotonic() - started:.0f} s", flush=True)
        runs_root.mkdir(parents=True, exist_ok=True)
        (runs_root / "run_info.json").write_text(json.dumps(info, indent=1))
    finally:
        if not args.keep_runs:
            shutil.rmtree(tmp, ignore_errors=True)
    return info, results


def report(results: dict, info: dict, args) -> None:
    """Print the tables and write the RESULTS.md section of the device."""
    from sb_mal.metrics import format_table

    metric_cpu, loads, gpu = info["metric_cpu"], info["loads"], info["gpu"]
    rows, parts, floors, proj = system_rows(results, metric_cpu, args)
    body = (header(f"MetricGAN+ / OKD epoch cost against SpeechBrain's recipe, {args.device.split(':')[0]} "
                   "(bench_okd_cost.py)", args.report_only)
            + (f"- accelerator: {args.device} ({gpu}); the metrics run on the CPU\n" if gpu else "")
            + f"- data: one VoiceBank-layout folder from the devset ({args.samples} training mixtures of 3 s, "
              f"{args.valid} valid pairs as p226/p287, {args.test} test pairs); {args.samples} utterances per epoch, "
              f"batch 1; each recipe's own validation (SpeechBrain every epoch: PESQ, STOI; sb_mal every "
              f"valid_every and at the last: 5 metrics) and metric jobs"
              + (f" (--n-jobs {args.n_jobs})" if args.n_jobs is not None else "")
            + f"; {args.threads} torch thread(s) per run\n"
            + f"- {args.rounds} round(s) of {args.epochs}-epoch runs, systems interleaved; epochs 2..{args.epochs} "
              "timed by the stage clock in each run's log.txt (training + validation stage)\n"
            + f"- projection to {args.schedule_epochs} epochs of VoiceBank (history replay growing 20 utterances per "
              f"epoch, validation scaled to {VOICEBANK_VALID} utterances at each YAML's frequency, noisy inputs of "
              f"{args.voicebank_train} training utterances scored once): see the module docstring; the runs' "
              "projections: each run's own parts projected alone\n"
            + f"- 1-min load average ({os.cpu_count()} cores): {min(loads):.2f}-{max(loads):.2f}\n"
            + "- single-core metric seconds per utterance (3 s): " + ", ".join(f"{k} {v:.3f}"
                                                                             for k, v in metric_cpu.items()) + "\n"
            + "\n".join(goal_lines(proj, args)) + "\n\n"
            + format_table(rows, list(rows[0]))
            + "\n\nParts (medians of the timed epochs; h: hours of the projected schedule):\n\n"
            + format_table(parts, list(parts[0])) + "\n\n" + "\n".join(floors) + "\n")
    print(body)
    if not args.no_write:
        update_section("bench_okd_cost" if args.device == "cpu" else f"bench_okd_cost_{args.device.split(':')[0]}",
                       body)


if __name__ == "__main__":
    main()
