"""``sb-mal prepare`` and ``sb-mal demo``: manifests for corpora, and the guided first run."""

from __future__ import annotations

import argparse
import os

__all__ = ["cmd_demo", "cmd_prepare"]


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.corpus == "pairs":
        from sb_mal.data.manifest import prepare_pairs

        # the default {data_root} is the manifest's folder, as `sb-mal evaluate --manifest` assumes;
        # files outside it are stored with absolute paths
        root = args.data_root or os.path.dirname(os.path.abspath(args.output))
        entries = prepare_pairs(args.noisy, args.clean, args.output, match=args.match, data_root=root,
                                sample_rate=args.sample_rate, progress=True)
        print(f"{len(entries)} pairs -> {args.output}")
    elif args.corpus == "voicebank":
        from sb_mal.cli.common import CommandError
        from sb_mal.data.download import DownloadError
        from sb_mal.data.voicebank import prepare_voicebank

        try:
            paths = prepare_voicebank(args.data_folder, args.save_folder, download=not args.no_download)
        except DownloadError as err:
            raise CommandError(str(err.with_hint("--no-download"))) from err
        for split, path in paths.items():
            print(f"{split}: {path}")
    elif args.corpus == "mini":
        from sb_mal.data.mini import build_mini_corpus, default_mini_dir

        paths = build_mini_corpus(args.output or default_mini_dir(), seed=args.seed)
        for split, path in paths.items():
            print(f"{split}: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sb_mal.demo import run_demo

    run_demo(args.output, minutes=args.minutes, continue_minutes=args.continue_minutes, variant=args.variant,
             lambda_mal=args.lambda_mal, corpus_dir=args.corpus, test_limit=args.test_limit, n_jobs=args.jobs,
             extra_args=args.extra)
    return 0
