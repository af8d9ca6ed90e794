"""The ``sb-mal`` command line.

Subcommands
-----------
``sb-mal demo``       train the baseline briefly, continue it with and without Model as Loss, compare
``sb-mal evaluate``   score noisy and/or enhanced audio against clean references
``sb-mal prepare``    write SpeechBrain manifests (folders of pairs, VoiceBank-DEMAND, mini corpus)
``sb-mal export``     turn a training run into an inference folder (publish it with ``hf upload``)
``sb-mal enhance``    enhance audio files or folders with an exported model
``sb-mal iterate``    self-consistency study: enhance K times, metrics and spectrograms per pass
``sb-mal taps``       list a model's module paths (Model-as-Loss taps) with the shape each produces

Run ``sb-mal <command> --help`` for the options of each.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sb_mal.cli.common import CommandError
from sb_mal.cli.corpus import cmd_demo, cmd_prepare
from sb_mal.cli.evaluate import cmd_evaluate
from sb_mal.cli.models import cmd_enhance, cmd_export, cmd_iterate
from sb_mal.cli.taps import add_parser as add_taps_parser

__all__ = ["CommandError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sb-mal`` (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="sb-mal", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    de = sub.add_parser("demo", help="train the baseline on the mini corpus, continue it with and without Model as "
                                      "Loss, show them side by side (about 7 min on 2 CPU cores; the plan and its estimate print first)")
    de.add_argument("-o", "--output", default="sb_mal_demo", help="output folder")
    de.add_argument("--minutes", type=float, default=2.5, help="budget of the reconstruction-only baseline, minutes")
    de.add_argument("--continue-minutes", type=float, default=1.0,
                    help="budget of the Model-as-Loss continuation, minutes; the reconstruction-only one makes as "
                         "many steps")
    de.add_argument("--variant", default="frozen", choices=["frozen", "frozen_fe", "dynamic"],
                    help="Model-as-Loss variant of the second continuation")
    de.add_argument("--lambda-mal", type=float, default=1.0, help="weight of the Model-as-Loss term")
    de.add_argument("--extra", action="append", default=[], metavar="--KEY=VALUE",
                    help="an override for the three runs of sb_mal/hparams/demo.yaml, e.g. --extra=--batch_size=4")
    de.add_argument("--corpus", help="mini corpus folder (default: the sb_mal cache)")
    de.add_argument("--test-limit", type=int, default=40, help="test utterances to enhance and score")
    de.add_argument("--jobs", type=int, default=2, help="metric worker processes")
    de.set_defaults(func=cmd_demo)

    it = sub.add_parser("iterate", help="self-consistency study: enhance K times, metrics and spectrograms per pass")
    it.add_argument("--model", action="append", required=True, help="NAME=SOURCE (exported folder or hub id); repeatable")
    it.add_argument("--noisy", help="folder of noisy inputs")
    it.add_argument("--clean", help="folder of clean references (same file names)")
    it.add_argument("--manifest", help="SpeechBrain JSON manifest instead of folders")
    it.add_argument("--data-root", help="value for {data_root} in the manifest (default: its folder)")
    it.add_argument("--match", default="name", choices=["name", "fileid"],
                    help="pair files by name, or by the fileid_<n> tag of DNS-Challenge names")
    it.add_argument("--limit", type=int, help="use only the first N utterances")
    it.add_argument("--passes", type=int, default=5, help="how many times each output is enhanced again (default 5)")
    it.add_argument("--metrics", default="pesq,stoi,dnsmos_ovrl,dnsmos_sig",
                    help="comma-separated metrics or groups, scored after every pass")
    it.add_argument("--sample-rate", type=int, default=16000, help="rate the audio is read at (default 16000)")
    it.add_argument("--device", default="cpu", help="device of the models, e.g. cuda:0 (default cpu)")
    it.add_argument("--jobs", type=int, default=2, help="metric worker processes (0: in-process)")
    it.add_argument("-o", "--output", default="sb_mal_iterate", help="folder for the table, scores and spectrograms")
    it.add_argument("--trust-code", action="store_true",
                    help="let the model folder's hyperparams.yaml call code outside sb_mal's allow-list (read it first)")
    it.set_defaults(func=cmd_iterate)

    ev = sub.add_parser("evaluate", help="score noisy/enhanced audio against clean references")
    ev.add_argument("--clean", help="folder of clean references")
    ev.add_argument("--noisy", help="folder of noisy inputs (same file names as --clean)")
    ev.add_argument("--enhanced", action="append", help="folder of enhanced outputs (repeatable)")
    ev.add_argument("--source", action="append",
                    help="[NAME=]SOURCE: enhance the noisy inputs with this model (sb_mal export, SpeechBrain "
                         "enhancement folder or hub id) and score it as one more system (repeatable)")
    ev.add_argument("--device", help="device for --source models, e.g. cuda:0 (default: cuda if available)")
    ev.add_argument("--manifest", help="SpeechBrain JSON manifest with noisy_wav/clean_wav instead of folders")
    ev.add_argument("--data-root", help="value for {data_root} in the manifest (default: its folder)")
    ev.add_argument("--no-noisy", action="store_true", help="with --manifest: do not score the noisy inputs")
    ev.add_argument("--match", default="name", choices=["name", "fileid"], help="how files are paired")
    ev.add_argument("--metrics", default="intrusive",
                    help="comma-separated metrics (pesq, stoi, siib, ...) or groups (intrusive, composite, "
                         "intelligibility, dnsmos, all); default intrusive")
    ev.add_argument("--jobs", type=int, default=2, help="metric worker processes (0: in-process)")
    ev.add_argument("--timeout", type=float, default=120.0, help="seconds per utterance before its worker is replaced")
    ev.add_argument("--strict", action="store_true",
                    help="stop (exit 2) when a file has no partner or several candidates instead of warning and "
                         "leaving it out")
    ev.add_argument("-o", "--output", default="sb_mal_eval", help="folder for CSV/JSON results (each system's "
                                                                   "rows are written as they are scored)")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ev.add_argument("--trust-code", action="store_true",
                    help="let the model folder's hyperparams.yaml call code outside sb_mal's allow-list (read it first)")
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("prepare", help="write SpeechBrain manifests for a corpus")
    prs = pr.add_subparsers(dest="corpus", required=True)
    p = prs.add_parser("pairs", help="a folder of noisy files and a folder of same-named clean files")
    p.add_argument("--noisy", required=True, help="folder of noisy files (searched recursively)")
    p.add_argument("--clean", required=True, help="folder of clean files with the same names (or fileid tags)")
    p.add_argument("-o", "--output", required=True, help="manifest JSON to write")
    p.add_argument("--data-root", help="root for {data_root} placeholders (default: the manifest's folder, the "
                                       "default of `sb-mal evaluate --manifest` too; files outside it get absolute "
                                       "paths)")
    p.add_argument("--match", default="name", choices=["name", "fileid"],
                   help="pair by file name, or by the fileid_<n> tag of DNS-Challenge names")
    p.add_argument("--sample-rate", type=int,
                   help="every file must have this rate (default: any, but a noisy file and its clean file must agree)")
    p = prs.add_parser("voicebank", help="VoiceBank-DEMAND (downloaded from Edinburgh DataShare if absent)")
    p.add_argument("--data-folder", required=True,
                   help="where the corpus is (or is downloaded to); its *_16k resampled copies are written there")
    p.add_argument("--save-folder", required=True, help="where the train/valid/test manifests are written")
    p.add_argument("--no-download", action="store_true",
                   help="never download: fail with the list of missing folders (offline machines)")
    p = prs.add_parser("mini", help="the embedded synthetic mini corpus")
    p.add_argument("-o", "--output", help="folder (default: the sb_mal cache)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus (sentences, voices, noises, SNRs)")
    pr.set_defaults(func=cmd_prepare)

    ex = sub.add_parser("export", help="export a training run to an inference folder (publish it with `hf upload`)")
    ex.add_argument("run_dir", help="the run's output folder (model_config.json, save/CKPT+*)")
    ex.add_argument("-o", "--output", required=True, help="folder to create")
    ex.add_argument("--key", default="pesq", help="CKPT.yaml metric that picks the checkpoint (default: pesq)")
    ex.add_argument("--min", action="store_true", help="the lowest --key wins (e.g. --key loss --min)")
    ex.add_argument("--checkpoint", help="export this CKPT+... folder instead of the best one")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    ex.add_argument("--recoverable", default="model",
                    help="checkpointed module to export (MetricGAN-OKD: generator_<i>; default: model)")
    ex.add_argument("--trust-code", action="store_true",
                    help="let the model folder's hyperparams.yaml call code outside sb_mal's allow-list (read it first)")
    ex.set_defaults(func=cmd_export)

    en = sub.add_parser("enhance", help="enhance audio files or folders with an exported model (a listening-enhancement "
                                        "model, task: listening, modifies clean speech to be played into noise)")
    en.add_argument("inputs", nargs="+", help="audio files and/or folders (scanned recursively)")
    en.add_argument("-o", "--output", required=True, help="output folder (folder layouts are kept)")
    en.add_argument("--source", required=True, help="exported model folder or Hugging Face repo id")
    en.add_argument("--savedir", help="where to keep the model files (default: use them in place / HF cache)")
    en.add_argument("--device", help="e.g. cpu, cuda:0 (default: cuda if available)")
    en.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="autocast precision")
    en.add_argument("--chunk-seconds", type=float, help="chunk length for long files (default: the model's, 10 s)")
    en.add_argument("--overlap-seconds", type=float, help="cross-faded overlap between chunks (default 0.5 s)")
    en.add_argument("--ext", default="wav", help="output format by extension: wav, flac, ogg, ... (default wav)")
    en.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no notes (errors still print)")
    en.add_argument("--trust-code", action="store_true",
                    help="let the model folder's hyperparams.yaml call code outside sb_mal's allow-list (read it first)")
    en.set_defaults(func=cmd_enhance)

    add_taps_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sb-mal`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure is one line (the traceback with -v)
        if args.verbose:
            import traceback

            traceback.print_exc()
        known = isinstance(err, (CommandError, OSError, ValueError, ImportError))
        print(f"error: {err}" if known else f"error: {type(err).__name__}: {err} (run with -v for the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
