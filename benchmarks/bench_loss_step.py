"""Time of one forward + backward pass of every sb_mal loss, on a CPU or a GPU, fp32 and autocast.

Each loss is built on the CPU and called on a fixed batch of 8 x 3 s devset mixtures placed on
``--device`` (the losses follow their inputs there by themselves); the gradient reaches the
"enhanced" batch only. Medians over ``--repeats`` calls after two warm-ups, interleaved across
losses; a CUDA device is synchronised after every call. The loss networks are the small
stand-ins of the test suite (a random 2-layer WavLM, a 3-level codec net), so the times compare
the losses' own overheads, not real-size models.

Usage: python benchmarks/bench_loss_step.py [--device cuda:0] [--repeats 10] [--precisions fp32 bf16 fp16]
       [--write-results]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from _results import add_results_option, devset_batch, header, interleaved_times, update_section
from sb_mal.metrics import format_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from loss_zoo import LOSS_NAMES, loss_factories  # noqa: E402  (the device tests' loss set)

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu",
                        help="torch device of the batch: cpu (default) or cuda[:index]; the results go to the "
                             "section bench_loss_step_<device type>")
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed calls per loss and precision after two warm-ups; the median is reported "
                             "(default 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES),
                        help="fp32, or autocast to bf16 / fp16 (default: fp32 bf16)")
    parser.add_argument("--no-write", action="store_true", help="print the table only; write no results file")
    add_results_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from sb_mal.models import build_tiny_wavlm

    wavlm = Path(tempfile.mkdtemp()) / "wavlm"
    build_tiny_wavlm(wavlm)
    factories = loss_factories(wavlm)
    noisy, clean = (x.to(device) for x in devset_batch())
    lengths = torch.ones(noisy.shape[0], device=device)
    losses = {name: factories[name]() for name in LOSS_NAMES}
    for loss in losses.values():
        if getattr(loss, "encoder", None) == "live":
            loss.model.to(device)  # the recipe's own model, which a Brain puts on the device

    def call(loss, dtype):
        x = noisy.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            value = loss(x, clean, lengths)
        value.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = []
    for precision in args.precisions:
        dtype = DTYPES[precision]
        steps = {name: (lambda loss=loss: call(loss, dtype)) for name, loss in losses.items()}
        times = interleaved_times(steps, args.repeats, warmup=2)
        base = statistics.median(times["WaveformL1"])
        rows += [{"precision": precision, "loss": name, "median ms": 1000 * statistics.median(t),
                  "ratio to WaveformL1": statistics.median(t) / base} for name, t in times.items()]
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)")
    table = format_table(rows, ["precision", "loss", "median ms", "ratio to WaveformL1"])
    body = (header(f"Loss forward + backward, {device.type} (bench_loss_step.py)")
            + f"- {where}; batch 8 x 3 s devset mixtures; {args.repeats} interleaved calls after 2 warm-ups; "
            + "loss networks: the test suite's small stand-ins (random 2-layer WavLM, 3-level codec net)\n\n"
            + table + "\n")
    print(body)
    if not args.no_write:
        update_section(f"bench_loss_step_{device.type}", body)


if __name__ == "__main__":
    main()
