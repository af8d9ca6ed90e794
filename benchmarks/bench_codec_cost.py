"""Training-step cost of the codec-approximation loss vs plain L1, for the smallest and largest separators.

One optimiser step (forward, loss, backward, Adam) of a separation U-Net of the ladder on a fixed
batch of 8 x 3 s devset mixtures, with: waveform L1; the codec loss with layer set F (shallow
encoder layers) and with layer set A (all encoder layers), each with and without the prediction
term (``lb``; without it only the layers up to the deepest chosen one are run). The codec net has
the paper's size (base 32 filters, 5 levels) with random weights (the cost does not depend on
them). Interleaved rounds, medians, torch threads as given.

Usage: python benchmarks/bench_codec_cost.py [--repeats 7] [--threads 1] [--capacities P1 P5] [--write-results]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from _results import add_results_option, devset_batch, header, interleaved_times, update_section
from sb_mal.losses import CodecApproximationLoss, WaveformL1
from sb_mal.metrics import format_table
from sb_mal.models import SeparationUNet, SpectralCodecNet, ladder_table


def make_step(capacity: str, loss, batch):
    torch.manual_seed(0)
    model = SeparationUNet.from_capacity(capacity)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    noisy, clean = batch

    def step():
        value = loss(model(noisy), clean)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed rounds after one warm-up, each step once per round; the median is reported "
                             "(default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--capacities", nargs="+", default=["P1", "P5"],
                        help="separators of the ladder to time, P1 (smallest) to P5 (largest) (default: P1 P5)")
    parser.add_argument("--no-write", action="store_true", help="print the table only; write no results file")
    add_results_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = devset_batch()
    torch.manual_seed(0)
    codec = SpectralCodecNet()  # the paper's size
    losses = {"L1": WaveformL1(), "codec F": CodecApproximationLoss(codec, layers="F"),
              "codec F, no prediction term": CodecApproximationLoss(codec, layers="F", lb=0.0),
              "codec A": CodecApproximationLoss(codec, layers="A"),
              "codec A, no prediction term": CodecApproximationLoss(codec, layers="A", lb=0.0)}
    steps = {(cap, name): make_step(cap, loss, batch) for cap in args.capacities for name, loss in losses.items()}
    times = interleaved_times(steps, args.repeats)
    params = {r["name"]: r["parameters"] for r in ladder_table()}
    rows = []
    for (cap, name), t in times.items():
        base = statistics.median(times[(cap, "L1")])
        rows.append({"separator": f"{cap} ({params[cap]} parameters)", "loss": name, "median s": statistics.median(t),
                     "min s": min(t), "ratio to L1": statistics.median(t) / base,
                     "ratio to codec F": statistics.median(t) / statistics.median(times[(cap, "codec F")])})
    table = format_table(rows, ["separator", "loss", "median s", "min s", "ratio to L1", "ratio to codec F"])
    body = (header("Codec-approximation loss training cost (bench_codec_cost.py)")
            + "- one optimiser step of a ladder separator on 8 x 3 s devset mixtures; codec net of the paper's size "
            + f"(SpectralCodecNet, 32 filters, 5 levels, {sum(p.numel() for p in codec.parameters()) / 1e6:.2f} M "
            + f"parameters, frozen); {args.threads} torch thread(s); {args.repeats} interleaved rounds after a warm-up\n\n"
            + table + "\n")
    print(body)
    if not args.no_write:
        update_section("bench_codec_cost", body)


if __name__ == "__main__":
    main()
