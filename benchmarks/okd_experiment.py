"""MetricGAN+ vs MetricGAN-OKD on the devset at an equal budget (epochs x utterances per epoch).

Three runs of ``recipes/metricgan_okd/train.py``, identical but for the number of generators,
their target metrics and the distillation weight (hparams/folders/*.yaml):

* MetricGAN+: one generator driven by PESQ (N = 1, alpha = 0);
* OKD (PESQ, CSIG): two generators, alpha 5;
* OKD (PESQ, CSIG, CBAK, COVL): four generators, alpha 5.

Every generator is trained from scratch for ``--epochs`` epochs of ``--samples`` utterances drawn
from the same pool of on-the-fly devset mixtures (same seed, so the same draws in every run), is
validated every ``--valid-every`` epochs on ``--valid-limit`` devset valid pairs, keeps the
checkpoint with the best validation score of its own target metric, and is tested on
``--test-limit`` devset test pairs (intrusive metrics + DNSMOS). The claim to check (Shin et al.
2023): OKD improves several metrics at once over single-metric MetricGAN+.

Usage: python benchmarks/okd_experiment.py [--out results/okd_experiment] [--epochs 10] [--samples 24]
"""

from __future__ import annotations

import csv
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _results import DEVSET, experiment_parser, header, parse_with_overrides, update_section
from mal_experiment import run_once
from sb_mal.metrics import format_table

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = {"metricgan_plus": ("MetricGAN+", ["pesq"]), "okd_pesq_csig": ("OKD (PESQ, CSIG)", ["pesq", "csig"]),
           "okd_4metrics": ("OKD (PESQ, CSIG, CBAK, COVL)", ["pesq", "csig", "cbak", "covl"])}
COLUMNS = ["pesq", "csig", "cbak", "covl", "stoi", "si_sdr", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak"]


def noisy_scores(out: Path, ids: list[str]) -> dict:
    """Means of the metrics on the noisy inputs of the test pairs ``ids`` (cached)."""
    cache = out / "noisy_scores.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("ids") == ids:
            return cached["means"]
    from sb_mal.metrics import evaluate

    noisy = [str(DEVSET / "pairs/test/noisy" / f"{u}.flac") for u in ids]
    clean = [str(DEVSET / "pairs/test/clean" / f"{u}.flac") for u in ids]
    result = evaluate(noisy, clean, metrics=["intrusive", "dnsmos"], n_jobs=2, ids=ids, progress=True)
    cache.write_text(json.dumps({"ids": ids, "means": result.means}))
    return result.means


def main():
    parser = experiment_parser(__doc__, "results/okd_experiment")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=24, help="utterances drawn per epoch")
    parser.add_argument("--valid-every", type=int, default=3)
    parser.add_argument("--valid-limit", type=int, default=20)
    parser.add_argument("--test-limit", type=int, default=60)
    args, extra = parse_with_overrides(parser)
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"--data_folder={DEVSET}", f"--number_of_epochs={args.epochs}", f"--samples_per_epoch={args.samples}",
              f"--valid_every={args.valid_every}", f"--valid_limit={args.valid_limit}",
              f"--test_limit={args.test_limit}", f"--seed={args.seed}", "--n_jobs=1", *extra]

    def train(name: str) -> tuple[str, float]:
        folder = out / name
        cmd = [sys.executable, "recipes/metricgan_okd/train.py", f"hparams/folders/{name}.yaml",
               f"--output_folder={folder}", *common]
        outputs = tuple(f"test_summary_g{i}.json" for i in range(len(SYSTEMS[name][1])))
        return name, run_once(cmd, folder, out / f"{name}.log", args.threads, outputs)

    t0 = time.monotonic()
    with ThreadPoolExecutor(args.parallel) as pool:  # the 4-generator run first: it is the longest
        times = dict(pool.map(train, sorted(SYSTEMS, key=lambda s: -len(SYSTEMS[s][1]))))
    print(f"training done in {(time.monotonic() - t0) / 60:.1f} min", flush=True)

    with open(out / "metricgan_plus" / "test_scores_g0.csv", newline="") as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    rows = [{"system": "noisy input", **noisy_scores(out, ids)}]
    for name, (label, targets) in SYSTEMS.items():
        for i, metric in enumerate(targets):
            summary = json.loads((out / name / f"test_summary_g{i}.json").read_text())
            rows.append({"system": label, "generator": f"G{i} ({metric.upper()})", **summary["means"],
                         "run min": times[name] / 60 if i == 0 else None})
    table = format_table(rows, ["system", "generator", *COLUMNS, "run min"])
    body = (header("MetricGAN+ vs MetricGAN-OKD on the devset (okd_experiment.py)")
            + f"- budget: every generator trained from scratch for {args.epochs} epochs x {args.samples} utterances "
            + f"(3 s on-the-fly devset mixtures from a fixed pool of 2000, batch 1; epoch 1 trains only the "
            + f"discriminator), the same draws in every run; model sizes of the YAMLs (BLSTM 200x2, discriminator "
            + f"15x4) unless the command overrides them, alpha 5 for OKD, PESQ mapped by the sigmoid, seed {args.seed}\n"
            + f"- checkpoint: each generator's best validation score of its own target metric (every "
            + f"{args.valid_every} epochs, {args.valid_limit} devset valid pairs); test: {len(ids)} devset test pairs\n"
            + f"- {args.threads} torch thread(s) per run, {args.parallel} runs at a time, wall times only indicative; "
            + "a run's time covers all its generators, validation and test\n\n" + table + "\n")
    print(body)
    update_section("okd_experiment", body)


if __name__ == "__main__":
    main()
