"""Training-step cost of Model-as-Loss phase 2 vs reconstruction-only training, on the same batch.

One optimiser step (forward, loss, backward, Adam) of the default backbone on a fixed batch of
8 x 3 s devset mixtures, for: reconstruction only (L1 + multi-resolution STFT), and phase 2 of
MAL frozen, frozen_fe and dynamic (reconstruction + lambda_mal * L_mal on the bottleneck).
The systems are interleaved over ``--repeats`` rounds; medians; torch threads as given.
Goal: a MAL step at most 1.3x the reconstruction-only step.

Usage: python benchmarks/bench_mal_cost.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _results import devset_batch, header, update_section
from sb_mal.brains.mal import MAL_VARIANTS
from sb_mal.losses import ModelAsLoss, MultiResolutionSTFTLoss, WaveformL1, WeightedSum
from sb_mal.metrics import format_table
from sb_mal.models import SpectralUNetSE


def make_step(variant: str | None, batch, taps=("bottleneck",)):
    torch.manual_seed(0)
    model = SpectralUNetSE()
    rec = WeightedSum({"l1": WaveformL1(), "mrstft": MultiResolutionSTFTLoss()})
    mal = None
    if variant is not None:
        encoder, train_encoder = MAL_VARIANTS[variant]
        mal = ModelAsLoss(model, taps=taps, encoder=encoder, snapshot_now=True)
        if not train_encoder:
            for m in model.encoder_modules():
                m.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    noisy, clean = batch

    def step():
        enhanced = model(noisy)
        loss = rec(enhanced, clean)
        if mal is not None:
            loss = loss + 10.0 * mal(enhanced, clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = devset_batch()
    systems = {"reconstruction only": (None,), "MAL frozen": ("frozen",), "MAL frozen_fe": ("frozen_fe",),
               "MAL dynamic": ("dynamic",), "MAL dynamic, tap enc4 (no GRU)": ("dynamic", ("enc4",))}
    steps = {name: make_step(*v[:1], batch, *v[1:]) for name, v in systems.items()}
    for step in steps.values():  # warm-up
        step()
    times = {name: [] for name in systems}
    for _ in range(args.repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["reconstruction only"])
    rows = [{"training step": name, "median s": statistics.median(t), "min s": min(t),
             "ratio to reconstruction-only": statistics.median(t) / base} for name, t in times.items()]
    table = format_table(rows, ["training step", "median s", "min s", "ratio to reconstruction-only"])
    body = (header("Model-as-Loss training cost (bench_mal_cost.py)")
            + f"- one optimiser step of the default backbone (1.38 M parameters) on 8 x 3 s devset mixtures; "
            + f"{args.threads} torch thread(s); {args.repeats} interleaved rounds after a warm-up; lambda_mal 10, "
            + "bottleneck tap unless stated; goal: ratio <= 1.3\n\n" + table + "\n\n"
            + "The MAL term costs two extra passes through the encoder (the clean reference without gradient,\n"
            + "the enhanced signal with gradient to its input only), both through the bi-GRU for the bottleneck\n"
            + "tap. frozen_fe saves the encoder's weight gradients; a convolutional tap (enc4) skips the GRU.\n")
    print(body)
    if not args.no_write:
        update_section("bench_mal_cost", body)


if __name__ == "__main__":
    main()
