"""Diagnostics that separate "too small a budget" from "something is wrong", one per paradigm.

Each is a function with a small command that writes its own section of the results file
(``results/benchmarks/RESULTS.md``; the committed ``benchmarks/RESULTS.md`` with ``--write-results``):

``mal``  (:func:`mal_ranking`)
    Does the phase-1 encoder's L_mal measure quality? On the devset validation pairs, L_mal (the
    snapshot of a phase-1 model of ``mal_experiment.py``: its latest checkpoint, which phase 2 starts
    from) of the clean speech (0
    by construction), the phase-1 output and the noisy input against the clean reference: the share
    of pairs ranked clean < output < noisy, and the Spearman correlation of L_mal with PESQ across the
    pairs (the outputs alone, and outputs and noisy inputs pooled). A loss that tracks quality
    correlates negatively with PESQ.
``codec``  (:func:`codec_masking`)
    Has the codec net learned what MP3 discards? For clean utterances, the MP3-coded version (16
    kbps, what the net imitates) and the clean speech plus additive noise scaled to the *same*
    waveform L1 error: the codec loss's feature term (layer set F) and prediction term for both. A
    net that has learned masking penalises the coded speech far less than the noise (ratio << 1).
``okd``  (:func:`okd_d_correlation`, :func:`okd_d_curve`)
    Has the discriminator learned the metric? MetricGAN+ (or OKD) trained in stages (the recipe
    resumes); after each stage, the Spearman correlation between D's predicted (normalised) score
    and the true normalised metric of held-out enhanced utterances (validation pairs the run does not
    validate on), for each generator's target.

``pift``  (:func:`pift_reachability`)
    Can a perfect enhancer reach the soft-DTW target under speed perturbation? Through each frozen
    feature model, the loss of the clean speech perturbed by each factor (what a perfect enhancement
    of the perturbed input is) against the loss of the untouched noisy input, for the pitch-preserving
    time stretch and for resampling; and of the clean speech delayed by 2.5 ms (sub-frame shift).

Usage:
    python benchmarks/diagnostics.py pift [--pairs 6] [--encoders torchfcpe resemblyzer wavlm_random]
    python benchmarks/diagnostics.py mal [--runs results/mal_experiment] [--seeds 1 2 3]
    python benchmarks/diagnostics.py codec [--codec-run results/codec_ladder/codec_net] [--utterances 30]
    python benchmarks/diagnostics.py okd [--out results/okd_diagnostic] [--epochs 2 5 10 20] [--systems metricgan_plus]
        [--section diagnostic_okd]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from _results import DEVSET, add_results_option, header, update_section

REPO = Path(__file__).resolve().parents[1]


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length sequences (NaN pairs left out).

    Example
    -------
    >>> spearman([1, 2, 3, 4], [10, 20, 30, 25]), spearman([1, 2, 3], [3, 2, 1])
    (0.8, -1.0)
    """
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return math.nan
    return float(spearmanr(a[keep], b[keep]).statistic)


def _valid_pairs(start: int = 0, limit: int | None = None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(id, noisy, clean) of the devset validation pairs ``start .. start + limit``."""
    from sb_mal.audio import read_audio

    noisy = sorted((DEVSET / "pairs/valid/noisy").glob("*.flac"))[start:]
    noisy = noisy[:limit] if limit else noisy
    return [(p.stem, read_audio(p, 16000)[0], read_audio(DEVSET / "pairs/valid/clean" / p.name, 16000)[0])
            for p in noisy]


# -- MAL ---------------------------------------------------------------------------------------------
def mal_ranking(phase1: Path, taps: list[str], pairs: int = 30) -> dict:
    """L_mal of the phase-1 model ``phase1`` (a run folder or one of its ``CKPT+*`` folders) on the first
    ``pairs`` validation pairs (see the module docstring). Returns the per-pair values and the summary
    numbers."""
    from sb_mal.checkpoints import load_pretrained
    from sb_mal.losses import ModelAsLoss
    from sb_mal.metrics import evaluate

    model = load_pretrained(phase1).model.eval()
    mal = ModelAsLoss(model, taps=taps, encoder="snapshot", snapshot_now=True)
    rows = []
    with torch.no_grad():
        for uid, noisy, clean in _valid_pairs(0, pairs):
            enhanced = model(noisy[None], torch.ones(1))[0]
            rows.append({"id": uid, "enhanced": enhanced.numpy(), "noisy": noisy.numpy(), "clean": clean.numpy(),
                         "mal_clean": float(mal(clean[None], clean[None])),
                         "mal_enhanced": float(mal(enhanced[None], clean[None])),
                         "mal_noisy": float(mal(noisy[None], clean[None]))})
    scores = evaluate([r["enhanced"] for r in rows] + [r["noisy"] for r in rows], [r["clean"] for r in rows] * 2,
                      16000, metrics=["pesq"], n_jobs=1)
    pesq = [row["pesq"] for row in scores.rows]
    n = len(rows)
    for r, p_enh, p_noisy in zip(rows, pesq[:n], pesq[n:]):
        r.update(pesq_enhanced=p_enh, pesq_noisy=p_noisy)
        for key in ("enhanced", "noisy", "clean"):
            r.pop(key)
    ordered = sum(r["mal_clean"] < r["mal_enhanced"] < r["mal_noisy"] for r in rows)
    return {
        "pairs": n, "taps": taps, "ranked_clean_output_noisy": ordered,
        "mean_mal": {k: float(np.mean([r[f"mal_{k}"] for r in rows])) for k in ("clean", "enhanced", "noisy")},
        "mean_pesq": {k: float(np.nanmean([r[f"pesq_{k}"] for r in rows])) for k in ("enhanced", "noisy")},
        "spearman_outputs": spearman([r["mal_enhanced"] for r in rows], [r["pesq_enhanced"] for r in rows]),
        "spearman_pooled": spearman([r["mal_enhanced"] for r in rows] + [r["mal_noisy"] for r in rows],
                                    [r["pesq_enhanced"] for r in rows] + [r["pesq_noisy"] for r in rows]),
        "rows": rows,
    }


def mal_main(args) -> None:
    runs = (REPO / args.runs).resolve()
    lines = []
    for seed in args.seeds:
        phase1 = runs / f"seed{seed}" / "phase1"
        if not (phase1 / "seconds").exists():
            print(f"seed {seed}: no finished phase-1 run in {phase1}")
            continue
        from mal_experiment import measured_share

        start = max((phase1 / "save").glob("CKPT+*"), key=lambda p: p.stat().st_mtime)  # what phase 2 starts from
        for taps in (["bottleneck"], ["enc1", "enc2", "enc3", "bottleneck"]):
            out = mal_ranking(start, taps, args.pairs)
            out["share_per_lambda"] = measured_share(start, f"[{','.join(taps)}]", seed)["share_per_lambda"]
            (phase1 / f"diagnostic_mal_{'_'.join(taps)}.json").write_text(json.dumps(out, indent=1))
            m, p = out["mean_mal"], out["mean_pesq"]
            lines.append(f"| {seed} | {', '.join(taps)} | {out['ranked_clean_output_noisy']} / {out['pairs']} | "
                         f"{m['enhanced']:.4f} | {m['noisy']:.4f} | {p['enhanced']:.3f} | {p['noisy']:.3f} | "
                         f"{out['spearman_outputs']:+.2f} | {out['spearman_pooled']:+.2f} | "
                         f"{out['share_per_lambda']:.4f} | {0.5 / out['share_per_lambda']:.1f} |")
    if not lines:
        return
    body = (header("Diagnostic: does the phase-1 encoder's L_mal measure quality? (diagnostics.py mal)")
            + f"- models: the phase-1 runs of mal_experiment.py in `{args.runs}` (reduced backbone, 8 epochs x 25 steps), "
            "the latest checkpoint (the one phase 2 starts from and snapshots); taps combined by their mean\n"
            f"- data: the first {args.pairs} devset validation pairs; L_mal of the clean speech is 0 by construction\n"
            "- ranked: pairs with L_mal(clean) < L_mal(phase-1 output) < L_mal(noisy input); Spearman: L_mal against "
            "PESQ across the pairs, for the outputs alone and for outputs and noisy inputs pooled (negative = L_mal "
            "falls as PESQ rises)\n"
            "- gradient share per unit of lambda: ||grad L_mal|| / ||grad L_rec|| on the decoder at lambda 1 (4 batches "
            "of 8 devset training mixtures, mal_experiment.measured_share); lambda for a share of 0.5 = 0.5 / it\n\n"
            "| seed | taps | ranked | mean L_mal output | mean L_mal noisy | PESQ output | PESQ noisy | Spearman "
            "(outputs) | Spearman (pooled) | share per unit lambda | lambda for share 0.5 |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    print(body)
    update_section("diagnostic_mal", body)


# -- codec -------------------------------------------------------------------------------------------
def codec_masking(codec_run: Path, utterances: int = 30, noise: str = "white", seed: int = 0) -> dict:
    """Codec terms of MP3-coded clean speech against clean speech plus noise at the same waveform L1
    (see the module docstring). ``noise``: ``white`` (Gaussian) or ``devset`` (devset noise/train
    recordings). Returns per-utterance terms and their medians and ratios."""
    from sb_mal.audio import read_audio
    from sb_mal.data.mp3 import mp3_roundtrip
    from sb_mal.losses import CodecApproximationLoss

    loss = CodecApproximationLoss.from_pretrained(codec_run, layers="F", la=1.0, lb=1.0, lc=1.0)
    rng = np.random.default_rng(seed)
    noise_files = sorted((DEVSET / "noise/train").rglob("*.flac"))
    rows = []
    for uid, _, clean in _valid_pairs(0, utterances):
        clean = clean[: 16000 * 4]
        coded = torch.from_numpy(np.asarray(mp3_roundtrip(clean.numpy(), 16000), dtype=np.float32))
        target_l1 = float((coded - clean).abs().mean())
        if noise == "white":
            n = torch.from_numpy(rng.standard_normal(clean.shape[0]).astype(np.float32))
        else:
            rec = read_audio(noise_files[int(rng.integers(len(noise_files)))], 16000)[0]
            start = int(rng.integers(max(1, rec.shape[0] - clean.shape[0])))
            n = rec[start:start + clean.shape[0]]
            n = torch.nn.functional.pad(n, (0, clean.shape[0] - n.shape[0]))
        noisy = clean + n * (target_l1 / float(n.abs().mean()))
        row = {"id": uid, "wave_l1": target_l1}
        with torch.no_grad():
            for name, x in (("mp3", coded), ("noise", noisy)):
                t = {k: float(v) for k, v in loss(x[None], clean[None], terms=True)[1].items()}
                row.update({f"{name}_features": t["features"], f"{name}_prediction": t["codec_l1"],
                            f"{name}_wave_l1": t["wave_l1"]})
        rows.append(row)
    med = lambda k: float(np.median([r[k] for r in rows]))  # noqa: E731
    return {"utterances": len(rows), "noise": noise, "rows": rows,
            "median": {k: med(k) for k in ("mp3_features", "noise_features", "mp3_prediction", "noise_prediction",
                                           "mp3_wave_l1", "noise_wave_l1")},
            "feature_ratio_median": float(np.median([r["mp3_features"] / r["noise_features"] for r in rows])),
            "prediction_ratio_median": float(np.median([r["mp3_prediction"] / r["noise_prediction"] for r in rows])),
            "mp3_below_noise": sum(r["mp3_features"] < r["noise_features"] for r in rows)}


def codec_main(args) -> None:
    run = (REPO / args.codec_run).resolve()
    lines = []
    for noise in ("white", "devset"):
        out = codec_masking(run, args.utterances, noise)
        (run / f"diagnostic_codec_{noise}.json").write_text(json.dumps(out, indent=1))
        m = out["median"]
        lines.append(f"| {noise} | {m['mp3_wave_l1']:.4f} / {m['noise_wave_l1']:.4f} | {m['mp3_features']:.4f} | "
                     f"{m['noise_features']:.4f} | {out['feature_ratio_median']:.3f} | {out['mp3_below_noise']} / "
                     f"{out['utterances']} | {m['mp3_prediction']:.4f} | {m['noise_prediction']:.4f} | "
                     f"{out['prediction_ratio_median']:.3f} |")
    body = (header("Diagnostic: does the codec net penalise what MP3 discards less than noise? (diagnostics.py codec)")
            + f"- codec net: `{args.codec_run}`; terms of CodecApproximationLoss (layer set F, unweighted) against the "
            f"clean reference; the first {args.utterances} devset validation utterances (first 4 s), MP3 16 kbps "
            "(LAME q2, delay removed) vs the clean speech plus noise scaled to the same waveform L1 as the MP3 "
            "version\n- ratio: median over utterances of term(MP3) / term(noise); below 1: the coded speech costs less "
            "than noise of equal waveform error\n\n"
            "| noise | median wave L1 (MP3 / noise) | feature term MP3 | feature term noise | feature ratio | MP3 "
            "below noise | prediction term MP3 | prediction term noise | prediction ratio |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    print(body)
    update_section("diagnostic_codec", body)


# -- position-invariant fine-tuning -------------------------------------------------------------------
PIFT_FACTORS = (0.8, 0.9, 1.1, 1.2)


def pift_reachability(source: str, pairs: int = 6, gamma: float = 0.1, gamma_relative: float | None = None) -> dict:
    """Soft-DTW SSL loss (``source``'s features) against the clean reference of: the noisy input, the
    clean speech time-stretched and resampled by each of :data:`PIFT_FACTORS`, the clean speech delayed
    by 40 samples; means over the first ``pairs`` validation pairs (whole utterances)."""
    from sb_mal.brains.pift import speed_perturb
    from sb_mal.losses import SSLSoftDTWLoss
    from sb_mal.models.extractors import build_frame_extractor

    extractor = build_frame_extractor(source, None)
    data = _valid_pairs(0, pairs)

    def mean(fn) -> float:
        values = []
        with torch.no_grad():
            for _, noisy, clean in data:
                # a fresh loss per pair: a relative gamma is measured on that pair's noisy input
                loss = SSLSoftDTWLoss(extractor, gamma=gamma, gamma_relative=gamma_relative)
                if gamma_relative is not None:
                    loss(noisy[None], clean[None])
                values.append(float(loss(fn(noisy, clean)[None], clean[None])))
        return float(np.mean(values))

    return {"noisy": mean(lambda n, c: n),
            "stretch": {f: mean(lambda n, c, f=f: speed_perturb(c, f, mode="stretch")) for f in PIFT_FACTORS},
            "resample": {f: mean(lambda n, c, f=f: speed_perturb(c, f, mode="resample")) for f in PIFT_FACTORS},
            "delay_2.5ms": mean(lambda n, c: torch.nn.functional.pad(c, (40, 0))), "pairs": len(data)}


def pift_main(args) -> None:
    lines = []
    folder = Path("/tmp") if args.wavlm_folder is None else Path(args.wavlm_folder)
    for name in args.encoders:
        source = name
        if name == "wavlm_random":  # the random WavLM of pift_experiment.py (4 layers, hidden 128, seed 0)
            from sb_mal.models import build_tiny_wavlm

            source = str(folder / "wavlm_random_L4_H128")
            if not Path(source, "config.json").exists():
                build_tiny_wavlm(source, num_layers=4, hidden_size=128, dropout=0.0)
        for label, rel in (("0.1 (absolute)", None), ("0.1 x median pair cost", 0.1)):
            r = pift_reachability(source, args.pairs, gamma_relative=rel)
            fmt = lambda d: " / ".join(f"{d[f]:.3f}" for f in PIFT_FACTORS)  # noqa: E731
            reach = "yes" if max(r["stretch"].values()) < r["noisy"] else "no"
            lines.append(f"| {name} | {label} | {r['noisy']:.3f} | {fmt(r['stretch'])} | {fmt(r['resample'])} | "
                         f"{r['delay_2.5ms']:.3f} | {reach} |")
    body = (header("Diagnostic: can a perfect enhancer reach the soft-DTW target under speed perturbation? "
                   "(diagnostics.py pift)")
            + f"- soft-DTW SSL loss (SSLSoftDTWLoss, last layer) against the clean reference, mean over the first "
            f"{args.pairs} devset validation pairs (whole utterances); a perfect enhancement of the input perturbed by "
            "f is the clean speech perturbed by f; factors 0.8 / 0.9 / 1.1 / 1.2; stretch = sb_mal.dsp.time_stretch "
            "(pitch kept), resample = tempo and pitch (the earlier speed perturbation); delay = the clean speech 40 "
            "samples late\n"
            "- reachable: every stretched value below the noisy input's\n\n"
            "| feature model | gamma | noisy input | stretched clean | resampled clean | clean delayed 2.5 ms | "
            "reachable (stretch) |\n|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    print(body)
    update_section("diagnostic_pift", body)


# -- MetricGAN-OKD -----------------------------------------------------------------------------------
def _latest_checkpoint(run: Path) -> Path:
    import yaml

    ckpts = [(yaml.safe_load((c / "CKPT.yaml").read_text()) or {}, c) for c in (run / "save").glob("CKPT+*")]
    if not ckpts:
        raise SystemExit(f"{run}: no checkpoint")
    return max(ckpts, key=lambda mc: mc[0].get("unixtime", 0))[1]


def okd_d_correlation(run: Path, targets: list[str], start: int = 20, count: int = 30,
                      d_channels=(15, 15, 15, 15), pesq_mapping: str = "sigmoid") -> dict:
    """Spearman correlation, per generator ``i``, between the discriminator's output ``i`` and the true
    normalised ``targets[i]`` of generator ``i``'s enhanced held-out utterances (validation pairs
    ``start .. start + count``; the run validates on the first ``start``), at the run's latest checkpoint."""
    from sb_mal.checkpoints import load_pretrained
    from sb_mal.metrics import evaluate
    from sb_mal.metrics.targets import normalize_score
    from sb_mal.models.okd_factory import make_discriminator

    ckpt = _latest_checkpoint(run)
    disc = make_discriminator(version=2, num_outputs=len(targets), channels=list(d_channels))
    disc.load_state_dict(torch.load(ckpt / "discriminator.ckpt", map_location="cpu"), strict=True)
    disc.train()  # as the Brain scores with it: train mode (its input BatchNorm on the batch), one utterance at a time
    pairs = _valid_pairs(start, count)
    out = {"checkpoint": ckpt.name, "epoch": None, "by_target": {}}
    counter = ckpt / "counter.ckpt"
    if counter.exists():
        out["epoch"] = int(counter.read_text().strip())
    for i, metric in enumerate(targets):
        gen = load_pretrained(run, checkpoint=ckpt, recoverable=f"generator_{i}").model.eval()
        enhanced, predicted = [], []
        with torch.no_grad():
            for _, noisy, clean in pairs:
                enh = gen(noisy[None], torch.ones(1))[0]
                ref_feats = gen.features(clean[None])[0]
                enh_feats = gen.features(enh[None])[0]
                predicted.append(float(disc(ref_feats, enh_feats)[0, i]))
                enhanced.append(enh.numpy())
        scores = evaluate(enhanced, [c.numpy() for _, _, c in pairs], 16000, metrics=[metric], n_jobs=1)
        true = [normalize_score(metric, row[metric], pesq_mapping) for row in scores.rows]
        out["by_target"][metric] = {"spearman": spearman(predicted, true), "mean_predicted": float(np.mean(predicted)),
                                    "mean_true": float(np.nanmean(true)), "utterances": len(pairs)}
    return out


def okd_d_curve(out: Path, system: str, epochs: list[int], samples: int, seed: int, threads: int,
                valid_limit: int = 20, held_out: int = 30) -> list[dict]:
    """Train ``system`` (an okd_experiment.py system) in stages up to each of ``epochs`` (the recipe
    resumes), measuring :func:`okd_d_correlation` after each; resumable (each stage's result is cached)."""
    from okd_experiment import SYSTEMS
    from protocol import run_once

    _, targets, yaml_name, overrides = SYSTEMS[system]
    run = out / system / f"seed{seed}"
    curve = []
    for epochs_done in epochs:
        cached = run / f"d_correlation_epoch{epochs_done}.json"
        if not cached.exists():
            stage = run / f"stage{epochs_done}"  # run_once's marker folder of this stage
            cmd = [sys.executable, "recipes/metricgan_okd/train.py", f"hparams/folders/{yaml_name}.yaml",
                   f"--data_folder={DEVSET}", f"--output_folder={run}", f"--seed={seed}", *overrides,
                   f"--number_of_epochs={epochs_done}", f"--samples_per_epoch={samples}", f"--valid_every={epochs_done}",
                   f"--valid_limit={valid_limit}", "--test_data=null", "--n_jobs=1"]
            run_once(cmd, stage, out / "logs" / f"{system}_{seed}_epoch{epochs_done}.log", threads, outputs=())
            result = okd_d_correlation(run, targets, start=valid_limit, count=held_out)
            result["epochs"] = epochs_done
            cached.write_text(json.dumps(result, indent=1))
        curve.append(json.loads(cached.read_text()))
    return curve


def okd_main(args) -> None:
    out = (REPO / args.out).resolve()
    lines = []
    for system in args.systems:
        for item in okd_d_curve(out, system, args.epochs, args.samples, args.seed, args.threads):
            for metric, r in item["by_target"].items():
                lines.append(f"| {system} | {metric} | {item['epochs']} | {(item['epochs'] - 1) * args.samples} | "
                             f"{r['spearman']:+.2f} | {r['mean_predicted']:.3f} | {r['mean_true']:.3f} | "
                             f"{r['utterances']} |")
    body = (header("Diagnostic: has the discriminator learned the metric? (diagnostics.py okd)")
            + f"- runs: recipes/metricgan_okd/train.py (hparams/folders YAML sizes), seed {args.seed}, {args.samples} "
            "utterances per epoch, trained in stages (the recipe resumes); after each stage, the latest checkpoint's "
            "discriminator and generators\n"
            "- held-out: devset validation pairs 20-49 (the runs validate on the first 20), enhanced by each generator; "
            "Spearman between D's output for the generator's target and the true normalised metric (PESQ: "
            "1/(1+e^(-1.5(x-2.5))), composites (x-1)/4)\n\n"
            "| system | target | epochs | generator steps | Spearman | mean D output | mean true (normalised) | "
            "utterances |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
    print(body)
    update_section(args.section, body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="which", required=True,
                                help="the diagnostic to run (each has its own --help)")
    p = sub.add_parser("pift", help="soft-DTW loss of a perfect output of the perturbed input vs the noisy input")
    p.add_argument("--pairs", type=int, default=6, help="devset validation pairs (default 6)")
    p.add_argument("--encoders", nargs="+", default=["torchfcpe", "resemblyzer", "wavlm_random"],
                   help="frozen feature models the loss is computed through: torchfcpe, resemblyzer, wavlm_random "
                        "(a random 4-layer WavLM, as in pift_experiment.py) or any SSL source (hub id or folder) "
                        "(default: the first three)")
    p.add_argument("--wavlm-folder", default=None, help="where the random WavLM is built (default /tmp)")
    p = sub.add_parser("mal", help="L_mal of the phase-1 encoder against quality")
    p.add_argument("--runs", default="results/mal_experiment",
                   help="the --out folder of mal_experiment.py (default results/mal_experiment)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                   help="seeds whose finished phase-1 runs are read (default: 1 2 3)")
    p.add_argument("--pairs", type=int, default=30, help="devset validation pairs (default 30)")
    p = sub.add_parser("codec", help="codec terms of MP3-coded speech against noise at equal waveform L1")
    p.add_argument("--codec-run", default="results/codec_ladder/codec_net",
                   help="a trained codec-net run folder (default: the one codec_ladder.py trains, "
                        "results/codec_ladder/codec_net)")
    p.add_argument("--utterances", type=int, default=30,
                   help="devset validation utterances, first 4 s of each (default 30)")
    p = sub.add_parser("okd", help="discriminator predictions against the true metric during training")
    p.add_argument("--out", default="results/okd_diagnostic",
                   help="folder of the staged runs, resumable (default results/okd_diagnostic)")
    p.add_argument("--systems", nargs="+", default=["metricgan_plus"],
                   help="systems of okd_experiment.py to train, e.g. metricgan_plus okd_pesq_csig "
                        "(default: metricgan_plus)")
    p.add_argument("--epochs", type=int, nargs="+", default=[2, 5, 10, 20],
                   help="stages: cumulative epochs after which D is measured (default: 2 5 10 20)")
    p.add_argument("--samples", type=int, default=48, help="utterances per epoch (generator steps) (default 48)")
    p.add_argument("--seed", type=int, default=1, help="seed of the runs (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    p.add_argument("--section", default="diagnostic_okd",
                   help="the results section (default diagnostic_okd; another name keeps a second system's curve "
                        "beside the first)")
    for p in sub.choices.values():
        add_results_option(p)
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"pift": pift_main, "mal": mal_main, "codec": codec_main, "okd": okd_main}[args.which](args)


if __name__ == "__main__":
    main()
