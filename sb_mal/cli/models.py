"""``sb-mal export``, ``enhance`` and ``iterate``: from a training run to a model folder, and its use."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from sb_mal.cli.common import CommandError, quiet_speechbrain
from sb_mal.cli.evaluate import report_unmatched

__all__ = ["cmd_enhance", "cmd_export", "cmd_iterate", "enhance_jobs"]


def cmd_export(args: argparse.Namespace) -> int:
    from sb_mal.inference import export_run

    quiet_speechbrain(args)

    out = export_run(args.run_dir, args.output, key=args.key, mode="min" if args.min else "max",
                     checkpoint=args.checkpoint, overwrite=args.overwrite, recoverable=args.recoverable,
                     trust_code=args.trust_code)
    info = json.loads((out / "export_info.json").read_text(encoding="utf-8"))
    print(f"exported {info['checkpoint']} ({args.key}={info['meta'].get(args.key)}) -> {out}")
    return 0


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def enhance_jobs(inputs: list[str], out_dir: str, ext: str) -> list[tuple[str, str]]:
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


def cmd_enhance(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sb_mal.audio import AUDIO_EXTENSIONS
    from sb_mal.inference import Enhancer

    quiet_speechbrain(args)
    if args.device:
        from sb_mal.devices import check_device

        check_device(args.device)
    ext = args.ext.lower().lstrip(".")
    if f".{ext}" not in AUDIO_EXTENSIONS:
        raise ValueError(f"--ext {args.ext}: unknown audio format; use one of {', '.join(AUDIO_EXTENSIONS)}")
    jobs = enhance_jobs(args.inputs, args.output, ext)
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


def cmd_iterate(args: argparse.Namespace) -> int:
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
        report_unmatched("noisy", found.unmatched, strict=False)
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
