"""Training-step cost of Model-as-Loss phase 2 vs reconstruction-only training, on the same batch.

One optimiser step (forward, loss, backward, Adam) on a fixed batch of 8 x 3 s devset mixtures, for
two models:

- sb_mal's backbone (``SpectralUNetSE``, default size; MAL tap: the bottleneck, or ``enc4``);
- SpeechBrain's MetricGAN+ generator (``speechbrain.lobes.models.MetricGAN.EnhancementGenerator``,
  as SpeechBrain's spectral-mask recipes run it: log1p magnitude in, mask out, noisy-phase
  resynthesis; MAL tap: its BLSTM, through forward hooks and ``Log1pMagnitude``).

Systems per model: reconstruction only (L1 + multi-resolution STFT on the waveform), and phase 2 of
MAL frozen, frozen_fe and dynamic (reconstruction + lambda_mal * L_mal). The systems are interleaved
over ``--repeats`` rounds; medians; torch threads as given; on ``--device cuda:0`` every step ends
with a synchronisation. Goal: a MAL step at most 1.3x the reconstruction-only step of its model.

Usage: python benchmarks/bench_mal_cost.py [--repeats 7] [--threads 1] [--device cpu] [--models backbone metricgan]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from _results import devset_batch, header, interleaved_times, update_section
from sb_mal.brains.mal import MAL_VARIANTS
from sb_mal.losses import Log1pMagnitude, ModelAsLoss, MultiResolutionSTFTLoss, WaveformL1, WeightedSum
from sb_mal.metrics import format_table
from sb_mal.models import SpectralUNetSE


def backbone():
    """(model, enhance(noisy) -> wav, MAL kwargs, encoder prefixes)."""
    model = SpectralUNetSE()
    return model, model, {}, None


def metricgan():
    from speechbrain.lobes.models.MetricGAN import EnhancementGenerator
    from speechbrain.processing.features import ISTFT, STFT
    from speechbrain.processing.signal_processing import resynthesize

    model = EnhancementGenerator()
    stft = STFT(16000, win_length=32, hop_length=16, n_fft=512, window_fn=torch.hamming_window)
    istft = ISTFT(16000, win_length=32, hop_length=16, window_fn=torch.hamming_window)
    features = Log1pMagnitude(stft)

    def enhance(noisy):
        feats = features(noisy)
        mask = model(feats, torch.ones(noisy.shape[0], device=noisy.device))
        return resynthesize(torch.expm1(mask * feats), noisy, stft, istft, normalize_wavs=False)

    return model, enhance, {"taps": ["blstm"], "input_fn": features}, ["blstm"]


MODELS = {"backbone": ("sb_mal SpectralUNetSE (1.38 M)", backbone),
          "metricgan": ("SpeechBrain MetricGAN+ EnhancementGenerator (1.9 M)", metricgan)}


def make_step(build, variant: str | None, batch, device, taps=None):
    torch.manual_seed(0)
    model, enhance, mal_kwargs, prefixes = build()
    model.to(device)
    rec = WeightedSum({"l1": WaveformL1(), "mrstft": MultiResolutionSTFTLoss()})
    mal = None
    if variant is not None:
        encoder, train_encoder = MAL_VARIANTS[variant]
        if taps is not None:
            mal_kwargs = {**mal_kwargs, "taps": taps}
        mal = ModelAsLoss(model, encoder=encoder, train_encoder=train_encoder, encoder_prefixes=prefixes,
                          snapshot_now=True, **mal_kwargs)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    noisy, clean = (x.to(device) for x in batch)

    def step():
        enhanced = enhance(noisy)
        loss = rec(enhanced, clean)
        if mal is not None:
            loss = loss + 10.0 * mal(enhanced, clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def systems_of(model_key: str) -> dict:
    out = {"reconstruction only": (None,), "MAL frozen": ("frozen",), "MAL frozen_fe": ("frozen_fe",),
           "MAL dynamic": ("dynamic",)}
    if model_key == "backbone":
        out["MAL dynamic, tap enc4 (no GRU)"] = ("dynamic", ["enc4"])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = devset_batch()
    rows = []
    for key in args.models:
        label, build = MODELS[key]
        steps = {name: make_step(build, *spec[:1], batch, device, *spec[1:]) for name, spec in systems_of(key).items()}
        times = interleaved_times(steps, args.repeats)
        base = statistics.median(times["reconstruction only"])
        rows += [{"model": label, "training step": name, "median s": statistics.median(t), "min s": min(t),
                  "ratio to reconstruction-only": statistics.median(t) / base} for name, t in times.items()]
    table = format_table(rows, ["model", "training step", "median s", "min s", "ratio to reconstruction-only"])
    where = (f"{args.threads} torch thread(s)" if device.type == "cpu"
             else f"{torch.cuda.get_device_name(device)}, fp32")
    body = (header(f"Model-as-Loss training cost, {device.type} (bench_mal_cost.py)")
            + "- one optimiser step on 8 x 3 s devset mixtures; " + where + f"; {args.repeats} interleaved rounds "
            + "after a warm-up; lambda_mal 10; taps: the backbone's bottleneck, the MetricGAN+ generator's BLSTM "
            + "(forward hooks, forward stopped after the tap); goal: ratio <= 1.3\n\n" + table + "\n\n"
            + "The MAL term costs two extra passes through the encoder up to the tap (the clean reference without\n"
            + "gradient, the enhanced signal with gradient to its input only). frozen_fe saves the encoder's weight\n"
            + "gradients; a convolutional tap (enc4) skips the GRU.\n")
    print(body)
    if not args.no_write:
        update_section(f"bench_mal_cost{'' if device.type == 'cpu' else '_' + device.type}", body)


if __name__ == "__main__":
    main()
