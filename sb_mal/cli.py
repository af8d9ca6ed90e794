"""The ``sb-mal`` command line.

Subcommands
-----------
``sb-mal demo``       train the baseline briefly, continue it with and without Model as Loss, compare
``sb-mal evaluate``   score noisy and/or enhanced audio against clean references
``sb-mal prepare``    write SpeechBrain manifests (folders of pairs, VoiceBank-DEMAND, mini corpus)
``sb-mal export``     turn a training run into an inference folder (publish it with ``hf upload``)
``sb-mal enhance``    enhance audio files or folders with an exported model
``sb-mal iterate``    self-consistency study: enhance K times, metrics and spectrograms per pass

Run ``sb-mal <command> --help`` for the options of each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

__all__ = ["main"]


class CommandError(Exception):
    """A command cannot go on: ``main`` prints ``error: <message>`` on one line and exits with 2."""


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------
def _report_unmatched(name: str, unmatched: dict, strict: bool) -> None:
    """Warn about (or, with --strict, stop on) files without a partner; they are listed in summary.json."""
    for what, items in unmatched.items():
        shown = ", ".join(map(str, items[:5])) + (f", ... ({len(items) - 5} more)" if len(items) > 5 else "")
        if strict:
            raise CommandError(f"{name}: {len(items)} unmatched ({what}): {shown}  [--strict]")
        logging.getLogger("sb_mal").warning("%s: %d file(s) left out, %s: %s", name, len(items), what, shown)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from sb_mal.data.manifest import enhanced_for_manifest, existing_entries, load_manifest, pair_folders
    from sb_mal.metrics import evaluate, format_table, resolve_metrics

    metrics = resolve_metrics([m.strip() for m in args.metrics.split(",") if m.strip()])
    systems: list[tuple] = []  # name, ids, files, clean, unmatched
    if args.device:
        from sb_mal.devices import check_device

        check_device(args.device)
    if args.manifest:
        root = args.data_root or os.path.dirname(os.path.abspath(args.manifest))
        manifest = load_manifest(args.manifest, root, required=("clean_wav",))
        if not manifest:
            raise CommandError(f"{args.manifest} has no entries")
        manifest, absent = existing_entries(manifest, args.manifest, root)
        ids = list(manifest)
        clean = [manifest[u]["clean_wav"] for u in ids]
        if all("noisy_wav" in e for e in manifest.values()) and not args.no_noisy:
            systems.append(("noisy", ids, [manifest[u]["noisy_wav"] for u in ids], clean, absent))
        for folder in args.enhanced or []:
            found = enhanced_for_manifest(manifest, folder)
            systems.append((Path(folder).name or folder, found.ids, found.files, found.clean, found.unmatched))
        if args.source and not all("noisy_wav" in e for e in manifest.values()):
            raise CommandError(f"--source needs noisy inputs, and {args.manifest} has entries without noisy_wav")
        noisy_input = (ids, [manifest[u].get("noisy_wav") for u in ids], clean)
    else:
        if not args.clean:
            raise CommandError("give --clean DIR (with --noisy and/or --enhanced) or --manifest JSON")
        if args.source and not args.noisy:
            raise CommandError("--source needs --noisy DIR (the inputs the model enhances)")
        noisy_pairs = pair_folders(args.clean, args.noisy, args.match) if args.noisy else None
        if noisy_pairs:
            systems.append(("noisy", noisy_pairs.ids, noisy_pairs.files, noisy_pairs.clean, noisy_pairs.unmatched))
        for folder in args.enhanced or []:
            found = pair_folders(args.clean, folder, args.match)
            systems.append((Path(folder).name or folder, found.ids, found.files, found.clean, found.unmatched))
        noisy_input = (noisy_pairs.ids, noisy_pairs.files, noisy_pairs.clean) if args.source else None
    if not systems and not args.source:
        raise CommandError("nothing to evaluate: give --noisy, --enhanced and/or --source")
    for name, *_, unmatched in systems:
        _report_unmatched(name, unmatched, args.strict)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for spec in args.source or []:
        systems.append((*_enhance_for_evaluation(spec, noisy_input, out, args), {}))
    rows, summary, notes = [], {}, []
    for name, ids, files, clean, unmatched in systems:
        result = evaluate(files, clean, metrics=metrics, n_jobs=args.jobs, ids=ids, timeout=args.timeout, progress=True)
        result.to_csv(out / f"{name}_scores.csv")
        rows.append({"system": name, "n": len(ids), **result.means})
        summary[name] = {**result.summary(), "unmatched": unmatched}
        short = {m: c for m, c in result.counts.items() if c < len(ids)}
        if short:
            notes.append(f"{name}: " + ", ".join(f"{m} on {c} of {len(ids)}" for m, c in short.items()))
    from sb_mal.fileio import atomic_write_text

    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    print(format_table(rows, ["system", "n", *metrics]))
    if notes:
        print("\nmeans over the utterances where a metric is defined (the others are NaN, with the reason, in "
              f"{out / 'summary.json'}):")
        print("\n".join(f"  {line}" for line in notes))
    left = sum(len(v) for *_, unmatched in systems for v in unmatched.values())
    if left:
        print(f"\n{left} file(s) without a partner left out; listed under 'unmatched' in {out / 'summary.json'}")
    print(f"\nper-utterance scores and summary written to {out}/")
    return 0


def _enhance_for_evaluation(spec: str, noisy_input, out: Path, args: argparse.Namespace):
    """Enhance the noisy inputs with the model ``[NAME=]SOURCE`` into ``out/enhanced_<NAME>/``."""
    from tqdm import tqdm

    from sb_mal.inference import Enhancer

    name, sep, source = spec.partition("=")
    if not sep:
        name, source = Path(spec.rstrip("/")).name or spec, spec
    ids, noisy_files, clean = noisy_input
    folder = out / f"enhanced_{name}"
    run_opts = {"device": args.device} if args.device else {}
    enhancer = Enhancer.from_hparams(source=source, run_opts=run_opts, trust_code=args.trust_code)
    files = []
    for uid, noisy in tqdm(list(zip(ids, noisy_files)), desc=f"enhance ({name})", unit="file"):
        target = folder / f"{uid}.wav"
        enhancer.enhance_file(noisy, target, return_waveform=False)
        files.append(str(target))
    return name, ids, files, clean


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------
def _cmd_prepare(args: argparse.Namespace) -> int:
    if args.corpus == "pairs":
        from sb_mal.data.manifest import prepare_pairs

        # the default {data_root} is the manifest's folder, as `sb-mal evaluate --manifest` assumes;
        # files outside it are stored with absolute paths
        root = args.data_root or os.path.dirname(os.path.abspath(args.output))
        entries = prepare_pairs(args.noisy, args.clean, args.output, match=args.match, data_root=root,
                                sample_rate=args.sample_rate)
        print(f"{len(entries)} pairs -> {args.output}")
    elif args.corpus == "voicebank":
        from sb_mal.data.voicebank import prepare_voicebank

        paths = prepare_voicebank(args.data_folder, args.save_folder, download=not args.no_download)
        for split, path in paths.items():
            print(f"{split}: {path}")
    elif args.corpus == "mini":
        from sb_mal.data.mini import build_mini_corpus, default_mini_dir

        paths = build_mini_corpus(args.output or default_mini_dir(), seed=args.seed)
        for split, path in paths.items():
            print(f"{split}: {path}")
    return 0


# --------------------------------------------------------------------------------------------
# export / enhance
# --------------------------------------------------------------------------------------------
def _quiet_speechbrain(args: argparse.Namespace) -> None:
    """SpeechBrain sets each of its loggers to INFO (or $SB_LOG_LEVEL); keep them at WARNING unless -v."""
    if args.verbose:
        return
    os.environ.setdefault("SB_LOG_LEVEL", "WARNING")  # loggers created later (before speechbrain's import)
    import speechbrain.utils.fetching  # noqa: F401  (the loggers that speak while loading a model)
    import speechbrain.utils.parameter_transfer  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("speechbrain"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _cmd_export(args: argparse.Namespace) -> int:
    from sb_mal.inference import export_run

    _quiet_speechbrain(args)

    out = export_run(args.run_dir, args.output, key=args.key, mode="min" if args.min else "max",
                     checkpoint=args.checkpoint, overwrite=args.overwrite, recoverable=args.recoverable,
                     trust_code=args.trust_code)
    info = json.loads((out / "export_info.json").read_text(encoding="utf-8"))
    print(f"exported {info['checkpoint']} ({args.key}={info['meta'].get(args.key)}) -> {out}")
    return 0


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _enhance_jobs(inputs: list[str], out_dir: str, ext: str) -> list[tuple[str, str]]:
    """(input, output) pairs; folders are scanned recursively and keep their relative layout."""
    from sb_mal.audio import list_audio_files

    out_root = os.path.realpath(out_dir)
    jobs = []
    for item in inputs:
        if os.path.isdir(item):
            root = os.path.realpath(item)
            for path in list_audio_files(item):
                # an output folder inside an input folder: never re-enhance earlier outputs
                if out_root != root and _inside(out_root, root) and _inside(os.path.realpath(path), out_root):
                    continue
                rel = os.path.splitext(os.path.relpath(path, item))[0]
                jobs.append((path, os.path.join(out_dir, f"{rel}.{ext}")))
        elif os.path.isfile(item):
            jobs.append((item, os.path.join(out_dir, f"{os.path.splitext(os.path.basename(item))[0]}.{ext}")))
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    sources = {os.path.realpath(src): src for src, _ in jobs}
    targets: dict[str, str] = {}
    for src, dst in jobs:
        real = os.path.realpath(dst)
        if real in sources:
            raise ValueError(f"{dst}: the output for {src} would overwrite input file {sources[real]}; "
                             "choose another --output folder or --ext")
        if real in targets:
            raise ValueError(f"{targets[real]} and {src} would both be written to {dst}")
        targets[real] = src
    return jobs


def _cmd_enhance(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sb_mal.audio import AUDIO_EXTENSIONS
    from sb_mal.inference import Enhancer

    _quiet_speechbrain(args)
    if args.device:
        from sb_mal.devices import check_device

        check_device(args.device)
    ext = args.ext.lower().lstrip(".")
    if f".{ext}" not in AUDIO_EXTENSIONS:
        raise ValueError(f"--ext {args.ext}: unknown audio format; use one of {', '.join(AUDIO_EXTENSIONS)}")
    jobs = _enhance_jobs(args.inputs, args.output, ext)
    if not jobs:
        raise ValueError(f"no audio files to enhance in {', '.join(args.inputs)}")
    run_opts = {k: v for k, v in (("device", args.device), ("precision", args.precision)) if v}
    enhancer = Enhancer.from_hparams(source=args.source, savedir=args.savedir, run_opts=run_opts,
                                     trust_code=args.trust_code)
    log = logging.getLogger("sb_mal")
    if enhancer.task == "listening" and not args.quiet:
        print("listening-enhancement model: the inputs must be clean speech; the outputs are that speech modified, "
              "at its own power, to be played into noise (they are not denoised)", file=sys.stderr)
    failed = []
    for src, dst in tqdm(jobs, desc="enhance", unit="file", disable=args.quiet):
        try:
            enhancer.enhance_file(src, dst, chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds,
                                  return_waveform=False)
        except Exception as err:  # one bad file must not stop the batch
            log.warning("skipped %s: %s", src, err)
            failed.append((src, err))
    print(f"{len(jobs) - len(failed)} of {len(jobs)} file(s) enhanced -> {args.output}")
    if failed:
        print(f"{len(failed)} file(s) failed:", file=sys.stderr)
        for src, err in failed:
            print(f"  {src}: {err}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from sb_mal.demo import run_demo

    run_demo(args.output, minutes=args.minutes, continue_minutes=args.continue_minutes, variant=args.variant,
             lambda_mal=args.lambda_mal, corpus_dir=args.corpus, test_limit=args.test_limit, n_jobs=args.jobs,
             extra_args=args.extra)
    return 0


def _cmd_iterate(args: argparse.Namespace) -> int:
    from sb_mal.audio import read_audio
    from sb_mal.evaluation.iterative import iterate_models, load_enhancers
    from sb_mal.metrics import format_table, resolve_metrics

    sources = {}
    for spec in args.model:
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise CommandError(f"--model expects NAME=SOURCE, got {spec!r}")
        sources[name] = source
    from sb_mal.data.manifest import load_manifest, pair_folders
    from sb_mal.devices import check_device

    check_device(args.device)
    if args.manifest:
        manifest = load_manifest(args.manifest, args.data_root or os.path.dirname(os.path.abspath(args.manifest)),
                                 required=("noisy_wav", "clean_wav"))
        ids = list(manifest)
        noisy_files = [manifest[u]["noisy_wav"] for u in ids]
        clean_files = [manifest[u]["clean_wav"] for u in ids]
    elif args.noisy and args.clean:
        found = pair_folders(args.clean, args.noisy, args.match)
        ids, noisy_files, clean_files = found.ids, found.files, found.clean
        _report_unmatched("noisy", found.unmatched, strict=False)
    else:
        raise CommandError("give --noisy DIR and --clean DIR, or --manifest JSON")
    if args.limit:
        ids, noisy_files, clean_files = ids[: args.limit], noisy_files[: args.limit], clean_files[: args.limit]
    rate = args.sample_rate
    noisy = [read_audio(f, rate, as_numpy=True)[0] for f in noisy_files]
    clean = [read_audio(f, rate, as_numpy=True)[0] for f in clean_files]
    metrics = resolve_metrics([m.strip() for m in args.metrics.split(",") if m.strip()])
    rows = iterate_models(load_enhancers(sources, args.device, args.trust_code), noisy, clean, passes=args.passes, metrics=metrics,
                          sample_rate=rate, ids=ids, out_dir=args.output, n_jobs=args.jobs)
    print(format_table(rows, ["model", "pass", *metrics]))
    print(f"\ntables and figures written to {args.output}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sb-mal`` (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="sb-mal", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    de = sub.add_parser("demo", help="train the baseline on the mini corpus, continue it with and without Model as "
                                      "Loss, show the three side by side (about 6 min on 2 CPU cores)")
    de.add_argument("-o", "--output", default="sb_mal_demo", help="output folder")
    de.add_argument("--minutes", type=float, default=2.5, help="budget of the reconstruction-only baseline, minutes")
    de.add_argument("--continue-minutes", type=float, default=1.0,
                    help="budget of each continuation (turned into the same number of epochs for both), minutes")
    de.add_argument("--variant", default="frozen", choices=["frozen", "frozen_fe", "dynamic"],
                    help="Model-as-Loss variant of the second continuation")
    de.add_argument("--lambda-mal", type=float, default=1.0, help="weight of the Model-as-Loss term")
    de.add_argument("--extra", action="append", default=[], metavar="--KEY=VALUE",
                    help="an override for the three runs of sb_mal/hparams/demo.yaml, e.g. --extra=--batch_size=4")
    de.add_argument("--corpus", help="mini corpus folder (default: the sb_mal cache)")
    de.add_argument("--test-limit", type=int, default=40, help="test utterances to enhance and score")
    de.add_argument("--jobs", type=int, default=2, help="metric worker processes")
    de.set_defaults(func=_cmd_demo)

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
    it.set_defaults(func=_cmd_iterate)

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
    ev.add_argument("-o", "--output", default="sb_mal_eval", help="folder for CSV/JSON results")
    ev.add_argument("--trust-code", action="store_true",
                    help="let the model folder's hyperparams.yaml call code outside sb_mal's allow-list (read it first)")
    ev.set_defaults(func=_cmd_evaluate)

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
    pr.set_defaults(func=_cmd_prepare)

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
    ex.set_defaults(func=_cmd_export)

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
    en.set_defaults(func=_cmd_enhance)
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
