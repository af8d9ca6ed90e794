"""Self-consistency study of the Model-as-Loss experiment's models (after mal_experiment.py).

Exports the best checkpoint of each phase-2 run (baseline, MAL frozen / frozen_fe / dynamic),
enhances ``--limit`` devset test pairs ``--passes`` times (each output fed back as the next
input) and records PESQ, STOI and DNSMOS OVRL/SIG per pass, a spectrogram grid (rows: passes,
columns: models) and metric-vs-pass curves, in ``<experiment>/iterative/``; a small copy of both figures
goes to ``figures/`` beside the results file (``results/benchmarks/``; the committed
``benchmarks/figures/`` and ``benchmarks/RESULTS.md`` with ``--write-results``).

Usage: python benchmarks/mal_iterative.py [--experiment results/mal_experiment] [--limit 20] [--passes 5]
       [--write-results]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _results import DEVSET, add_results_option, figures_dir, header, update_section
from sb_mal.audio import read_audio
from sb_mal.evaluation.iterative import DEFAULT_ITERATE_METRICS, iterate_models, load_enhancers
from sb_mal.inference import export_run
from sb_mal.metrics import format_table

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = {"baseline": "baseline", "MAL frozen": "frozen", "MAL frozen_fe": "frozen_fe", "MAL dynamic": "dynamic"}


def small_png(src: Path, dst: Path, colors: int = 32, max_side: int = 1100) -> None:
    """Copy a figure as a palette PNG, at most ``max_side`` pixels wide/high (a few hundred kB at most)."""
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(src).convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    image.quantize(colors=colors).save(dst, optimize=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="results/mal_experiment",
                        help="the --out folder of mal_experiment.py, relative to the repository (its phase-2 runs "
                             "are exported there, under exported/) (default results/mal_experiment)")
    parser.add_argument("--limit", type=int, default=20, help="first devset test pairs enhanced (default 20)")
    parser.add_argument("--passes", type=int, default=5,
                        help="times each model is applied, its output fed back as the next input (default 5)")
    parser.add_argument("--n-jobs", type=int, default=2, help="metric worker processes (default 2)")
    add_results_option(parser)
    args = parser.parse_args()
    exp = (REPO / args.experiment).resolve()
    models = {}
    for label, name in SYSTEMS.items():
        out = exp / "exported" / name
        if not (out / "hyperparams.yaml").exists():
            if out.exists():
                shutil.rmtree(out)
            export_run(exp / name, out)
        models[label] = str(out)
    noisy_files = sorted((DEVSET / "pairs/test/noisy").glob("*.flac"))[: args.limit]
    noisy = [read_audio(p, as_numpy=True)[0] for p in noisy_files]
    clean = [read_audio(DEVSET / "pairs/test/clean" / p.name, as_numpy=True)[0] for p in noisy_files]
    ids = [p.stem for p in noisy_files]
    study = exp / "iterative"
    rows = iterate_models(load_enhancers(models), noisy, clean, passes=args.passes, metrics=DEFAULT_ITERATE_METRICS,
                          ids=ids, out_dir=study, n_jobs=args.n_jobs)
    small_png(study / "iterate_spectrograms.png", figures_dir() / "mal_iterate_spectrograms.png")
    small_png(study / "iterate_curves.png", figures_dir() / "mal_iterate_curves.png")
    table = format_table(rows, ["model", "pass", *DEFAULT_ITERATE_METRICS])
    body = (header("Model-as-Loss self-consistency study (mal_iterative.py)")
            + "- models: the best checkpoints (validation PESQ) of the four phase-2 runs of mal_experiment.py\n"
            + f"- input: the first {args.limit} devset test pairs; each model applied {args.passes} times, its output "
            + "fed back as the next input; metrics against the clean reference (DNSMOS on the output alone)\n\n"
            + table + "\n\n"
            + "![metric vs pass](figures/mal_iterate_curves.png)\n\n"
            + f"![spectrograms: rows = passes, columns = models ({ids[0]})](figures/mal_iterate_spectrograms.png)\n")
    print(body)
    update_section("mal_iterative", body)


if __name__ == "__main__":
    main()
