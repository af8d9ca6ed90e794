"""How well a trained codec-approximation network imitates 16 kbps MP3 on held-out devset audio.

Trains nothing: ``--run`` is the output folder of ``recipes/codec/train_codec_net.py`` (its
checkpoint with the lowest validation loss is used). For held-out devset music (music/test) and
speech (speech/test), each file MP3-coded whole: the L1 of the network's imitation to the coded
signal in the network's training domain, against the identity map (network = input), their ratio
(< 1: the network has learnt something about the codec), and log-spectral distances (dB). Writes
``<run>/imitation_report.json`` (per file), the figure ``figures/codec_imitation.png`` (input / MP3 /
network, one music and one speech excerpt) and the ``codec_imitation`` section of the results file
(``results/benchmarks/RESULTS.md``; the committed ``benchmarks/RESULTS.md`` with ``--write-results``).

Usage: python benchmarks/bench_codec_imitation.py --run results/mp3codec/spectral/1234
       [--max-seconds 10] [--speech-limit N] [--threads 1] [--note "short smoke run"] [--no-write]
       [--write-results]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from _results import DEVSET, add_results_option, figures_dir, header, update_section
from sb_mal.audio import list_audio_files, read_audio
from sb_mal.checkpoints import load_pretrained
from sb_mal.evaluation.codec_imitation import imitation_report, save_imitation_figure
from sb_mal.fileio import atomic_write_text
from sb_mal.metrics import format_table

FIGURE = "codec_imitation.png"  # in the figures folder of the results file
COLUMNS = ["set", "files", "seconds", "net L1", "identity L1", "ratio", "net LSD dB", "identity LSD dB"]


def excerpt(path: str, rate: int, start_s: float, seconds: float):
    wav, _ = read_audio(path, rate, as_numpy=True)
    start = int(start_s * rate) if len(wav) > int((start_s + seconds) * rate) else 0
    return wav[start : start + int(seconds * rate)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="codec-net training run folder (model_config.json + save/)")
    parser.add_argument("--max-seconds", type=float, default=None, help="score only the first SECONDS of each file (default: whole files)")
    parser.add_argument("--speech-limit", type=int, default=None, help="score only the first N speech test files (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--note", default="", help="a line added to the section (e.g. 'short smoke run')")
    parser.add_argument("--no-write", action="store_true", help="print only; write neither the results file nor the figure")
    add_results_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    found = load_pretrained(run, key="loss", mode="min")
    net, ckpt, meta, rate = found.model, found.checkpoint, found.meta, found.sample_rate or 16000
    music = list_audio_files(DEVSET / "music" / "test")
    speech = list_audio_files(DEVSET / "speech" / "test")[: args.speech_limit]
    reports, rows = {}, []
    for name, files in (("music/test", music), ("speech/test", speech)):
        rep = imitation_report(net, files, sample_rate=rate, max_seconds=args.max_seconds, progress=True)
        reports[name] = rep
        m = rep["mean"]
        rows.append({"set": name, "files": rep["n_items"], "seconds": f"{rep['seconds']:.0f}",
                     "net L1": f"{m['net_l1']:.4f}", "identity L1": f"{m['identity_l1']:.4f}",
                     "ratio": f"{m['ratio']:.3f}", "net LSD dB": f"{m['net_lsd_db']:.2f}",
                     "identity LSD dB": f"{m['identity_lsd_db']:.2f}"})
    table = format_table(rows, COLUMNS)
    cfg = net.config
    valid = ", ".join(f"{k} {meta[k]:.4f}" for k in ("loss", "identity_l1", "ratio")
                      if isinstance(meta.get(k), float))
    cut = f", first {args.max_seconds:g} s of each" if args.max_seconds else ""
    body = (header("Codec imitation (bench_codec_imitation.py)")
            + (f"- note: {args.note}\n" if args.note else "")
            + f"- run: `{os.path.relpath(run)}`, checkpoint `{ckpt.name}` (lowest validation loss; {valid})\n"
            + f"- network: {type(net).__name__} {json.dumps(cfg)}, "
            + f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters\n"
            + f"- held-out devset files MP3-coded whole (16 kbps, LAME q2){cut}; L1 in the network's training "
            + "domain; ratio = net L1 / identity L1 (< 1: better than the identity map); "
            + "LSD on |STFT| 1024/512 in dB, floor -80 dB\n\n" + table + "\n")
    if not args.no_write:
        figure = figures_dir() / FIGURE
        waves = [excerpt(music[0], rate, 5.0, 4.0), excerpt(speech[0], rate, 0.0, 4.0)]
        save_imitation_figure(figure, waves, net, sample_rate=rate,
                              row_labels=[f"music {Path(music[0]).stem[:14]}", f"speech {Path(speech[0]).stem[:14]}"],
                              title=f"{type(net).__name__} imitating MP3 16 kbps (held-out devset)")
        body += (f"\nFigure (input / MP3 / network, {figure.stat().st_size // 1024} kB): "
                 f"![codec imitation](figures/{FIGURE})\n")
        atomic_write_text(run / "imitation_report.json", json.dumps(reports, indent=1) + "\n")
    print(body)
    if not args.no_write:
        update_section("codec_imitation", body)


if __name__ == "__main__":
    main()
