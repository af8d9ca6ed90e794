"""``sb-mal evaluate``: score noisy and/or enhanced audio (or models' outputs) against clean references."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from sb_mal.cli.common import CommandError

__all__ = ["cmd_evaluate", "report_unmatched"]


def report_unmatched(name: str, unmatched: dict, strict: bool) -> None:
    """Warn about (or, with --strict, stop on) files without a partner; they are listed in summary.json."""
    for what, items in unmatched.items():
        shown = ", ".join(map(str, items[:5])) + (f", ... ({len(items) - 5} more)" if len(items) > 5 else "")
        if strict:
            raise CommandError(f"{name}: {len(items)} unmatched ({what}): {shown}  [--strict]")
        logging.getLogger("sb_mal").warning("%s: %d file(s) left out, %s: %s", name, len(items), what, shown)


def cmd_evaluate(args: argparse.Namespace) -> int:
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
        report_unmatched(name, unmatched, args.strict)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for spec in args.source or []:
        systems.append((*_enhance_for_evaluation(spec, noisy_input, out, args), {}))
    from tqdm.auto import tqdm

    from sb_mal.fileio import atomic_write_text
    from sb_mal.metrics.results import PartialRows

    rows, summary, notes = [], {}, []
    total = sum(len(ids) for _, ids, *_ in systems)
    with tqdm(total=total, desc=f"scoring {len(systems)} system(s)", unit="utt", disable=args.quiet) as bar:
        for name, ids, files, clean, unmatched in systems:  # each system's rows are on disk as they come
            bar.set_postfix_str(name)
            partial = PartialRows(out / f"{name}_scores.csv", metrics)
            result = evaluate(files, clean, metrics=metrics, n_jobs=args.jobs, ids=ids, timeout=args.timeout,
                              bar=bar, on_result=lambda i, scores, _, ids=ids, rows=partial: rows.add(ids[i], scores))
            partial.finish(result)
            rows.append({"system": name, "n": len(ids), **result.means})
            summary[name] = {**result.summary(), "unmatched": unmatched}
            atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
            short = {m: c for m, c in result.counts.items() if c < len(ids)}
            if short:
                notes.append(f"{name}: " + ", ".join(f"{m} on {c} of {len(ids)}" for m, c in short.items()))
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
    for uid, noisy in tqdm(list(zip(ids, noisy_files)), desc=f"enhance ({name})", unit="file", disable=args.quiet):
        target = folder / f"{uid}.wav"
        enhancer.enhance_file(noisy, target, return_waveform=False)
        files.append(str(target))
    return name, ids, files, clean
