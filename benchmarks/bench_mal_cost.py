"""Training-step cost of Model-as-Loss phase 2 vs reconstruction-only training, and its floor.

One optimiser step (forward, loss, backward, Adam) on a fixed batch of 8 x 3 s devset mixtures, for
two models:

- sb_mal's backbone (``SpectralUNetSE``, default size; MAL tap: the bottleneck, or ``enc4``);
- SpeechBrain's MetricGAN+ generator (``speechbrain.lobes.models.MetricGAN.EnhancementGenerator``,
  as SpeechBrain's spectral-mask recipes run it: log1p magnitude in, mask out, noisy-phase
  resynthesis; MAL tap: its BLSTM, through forward hooks and ``Log1pMagnitude``).

Systems per model: reconstruction only (L1 + multi-resolution STFT on the waveform), and phase 2 of
MAL frozen, frozen_fe and dynamic (reconstruction + lambda_mal * L_mal).

The floor of a MAL step is what the method cannot avoid: the reconstruction step of the same model
with the same trainable weights (frozen_fe: the encoder frozen, so its step is cheaper), plus the
encoder up to the tap on the clean signal without gradient, plus the encoder up to the tap on the
enhanced signal forward and backward to its input (the gradient then joins the generator's
backward, which the reconstruction step already counts). Each part is measured on its own, with
the encoder run directly up to the tap (written out here, not through ``ModelAsLoss``):
``floor = R + F_clean + FB_enhanced``. ``MAL / floor`` is the median over rounds of the round's MAL
step divided by the sum of the same round's parts; goal: at most 1.10.

Every step and part is interleaved over ``--repeats`` rounds after a warm-up; medians with the range
over rounds; torch threads as given; on ``--device cuda:0`` every step ends with a synchronisation and
the run goes to section ``bench_mal_cost_cuda`` with the GPU named.

Usage: python benchmarks/bench_mal_cost.py [--repeats 7] [--threads 1] [--device cpu] [--models backbone metricgan]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from _results import devset_batch, header, interleaved_times, update_section

from sb_mal.brains.mal import MAL_VARIANTS
from sb_mal.dsp import stft
from sb_mal.losses import (
    Log1pMagnitude,
    ModelAsLoss,
    MultiResolutionSTFTLoss,
    WaveformL1,
    WeightedSum,
)
from sb_mal.metrics import format_table
from sb_mal.models import SpectralUNetSE

GOAL_RATIO_TO_FLOOR = 1.10


@dataclass
class Spec:
    """A model as the benchmark runs it."""

    model: torch.nn.Module
    enhance: Callable  # noisy [B, T] -> enhanced [B, T], through ``model``
    mal_kwargs: dict
    prefixes: list | None  # encoder module paths (frozen_fe)
    to_tap: Callable  # (model, wav, tap) -> the tap's activation, the encoder written out up to the tap


def backbone() -> Spec:
    model = SpectralUNetSE()

    def to_tap(net, wav, tap):
        if tap == "bottleneck":  # encode() stops at the bottleneck: the whole encoder is the way there
            return net.encode(wav).bottleneck
        spec = stft(wav, net.stft_cfg)
        x = spec.abs().clamp(min=1e-8).pow(net.compress).transpose(1, 2).unsqueeze(1)
        for block in net.encoder_blocks[:int(tap[3:])]:  # full lengths: no padding to mask
            x = block(x)
        return x

    return Spec(model, model, {}, None, to_tap)


def metricgan() -> Spec:
    from speechbrain.lobes.models.MetricGAN import EnhancementGenerator
    from speechbrain.processing.features import ISTFT, STFT
    from speechbrain.processing.signal_processing import resynthesize

    model = EnhancementGenerator()
    stft_ = STFT(16000, win_length=32, hop_length=16, n_fft=512, window_fn=torch.hamming_window)
    istft = ISTFT(16000, win_length=32, hop_length=16, window_fn=torch.hamming_window)
    features = Log1pMagnitude(stft_)

    def enhance(noisy):
        feats = features(noisy)
        mask = model(feats, torch.ones(noisy.shape[0], device=noisy.device))
        return resynthesize(torch.expm1(mask * feats), noisy, stft_, istft, normalize_wavs=False)

    def to_tap(net, wav, tap):
        assert tap == "blstm"
        return net.blstm(features(wav))[0]

    return Spec(model, enhance, {"input_fn": features}, ["blstm"], to_tap)


MODELS = {"backbone": ("sb_mal SpectralUNetSE (1.38 M)", backbone),
          "metricgan": ("SpeechBrain MetricGAN+ EnhancementGenerator (1.9 M)", metricgan)}


#: each model's default MAL tap
DEFAULT_TAP = {"backbone": "bottleneck", "metricgan": "blstm"}


def systems_of(model_key: str) -> dict:
    """label -> (MAL variant or None, tap)."""
    tap = DEFAULT_TAP[model_key]
    out = {"reconstruction only": (None, tap), "MAL frozen": ("frozen", tap), "MAL frozen_fe": ("frozen_fe", tap),
           "MAL dynamic": ("dynamic", tap)}
    if model_key == "backbone":
        out["MAL dynamic, tap enc4"] = ("dynamic", "enc4")
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(build, variant: str | None, batch, device, tap: str, freeze_encoder: bool = False):
    """One optimiser step of a system (``variant`` None: reconstruction only; ``freeze_encoder``: with
    the encoder's weights frozen, as frozen_fe trains)."""
    torch.manual_seed(0)
    spec = build()
    model = spec.model.to(device)
    rec = WeightedSum({"l1": WaveformL1(), "mrstft": MultiResolutionSTFTLoss()})
    mal = None
    if variant is not None:
        encoder, train_encoder = MAL_VARIANTS[variant]
        kwargs = dict(spec.mal_kwargs, taps=[tap])
        mal = ModelAsLoss(model, encoder=encoder, train_encoder=train_encoder, encoder_prefixes=spec.prefixes,
                          snapshot_now=True, **kwargs)
    elif freeze_encoder:
        ModelAsLoss(model, encoder="snapshot", train_encoder=False, encoder_prefixes=spec.prefixes,
                    snapshot_now=True, taps=[tap], **spec.mal_kwargs)  # freezes the same weights frozen_fe freezes
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    noisy, clean = (x.to(device) for x in batch)

    def step():
        enhanced = spec.enhance(noisy)
        loss = rec(enhanced, clean)
        if mal is not None:
            loss = loss + 10.0 * mal(enhanced, clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)

    return step


def make_parts(build, batch, device, tap: str):
    """``(clean forward, enhanced forward + backward)``: the encoder up to ``tap`` run directly on a
    frozen copy of the model (eval mode, no weight gradients), on the batch's clean and noisy signals."""
    torch.manual_seed(0)
    spec = build()
    net = spec.model.to(device).eval().requires_grad_(False)
    for m in net.modules():  # RNNs run as a loss encoder runs them (train mode, no dropout: same function)
        if isinstance(m, torch.nn.RNNBase):
            m.dropout = 0.0
            m.train()
    noisy, clean = (x.to(device) for x in batch)

    def clean_forward():
        with torch.no_grad():
            spec.to_tap(net, clean, tap)
        _sync(device)

    def enhanced_forward_backward():
        x = noisy.detach().requires_grad_(True)
        spec.to_tap(net, x, tap).abs().mean().backward()
        _sync(device)

    return clean_forward, enhanced_forward_backward


def floor_of(variant: str | None, tap: str) -> tuple[str, str, str] | None:
    """The keys of the three floor parts of a system (None for reconstruction only)."""
    if variant is None:
        return None
    rec = "part: reconstruction only, encoder frozen" if variant == "frozen_fe" else "reconstruction only"
    return rec, f"part: clean forward to {tap}", f"part: enhanced forward + backward to {tap}"


def measure(key: str, batch, device, repeats: int) -> dict[str, list[float]]:
    """Seconds per round of every system and floor part of model ``key`` (interleaved)."""
    _, build = MODELS[key]
    steps = {}
    for label, (variant, tap) in systems_of(key).items():
        steps[label] = make_step(build, variant, batch, device, tap)
        parts = floor_of(variant, tap)
        if parts and parts[0] not in steps:
            steps[parts[0]] = make_step(build, None, batch, device, tap, freeze_encoder=True)
        if parts and parts[1] not in steps:
            steps[parts[1]], steps[parts[2]] = make_parts(build, batch, device, tap)
    return interleaved_times(steps, repeats)


def rows_of(key: str, times: dict[str, list[float]]) -> list[dict]:
    label, _ = MODELS[key]
    base = statistics.median(times["reconstruction only"])
    rows = []
    for name, (variant, tap) in systems_of(key).items():
        t = times[name]
        row = {"model": label, "training step": name, "median s": statistics.median(t),
               "range s": f"{min(t):.3f}-{max(t):.3f}", "ratio to reconstruction-only": statistics.median(t) / base}
        parts = floor_of(variant, tap)
        if parts:
            floor = sum(statistics.median(times[p]) for p in parts)
            per_round = [t[r] / sum(times[p][r] for p in parts) for r in range(len(t))]
            row.update({"floor s": floor, "floor ratio": floor / base,
                        "MAL / floor": statistics.median(per_round),
                        "MAL / floor range": f"{min(per_round):.2f}-{max(per_round):.2f}"})
        rows.append(row)
    for name in sorted(k for k in times if k.startswith("part: ")):
        t = times[name]
        rows.append({"model": label, "training step": name, "median s": statistics.median(t),
                     "range s": f"{min(t):.3f}-{max(t):.3f}", "ratio to reconstruction-only": statistics.median(t) / base})
    return rows


COLUMNS = ["model", "training step", "median s", "range s", "ratio to reconstruction-only", "floor s", "floor ratio",
           "MAL / floor", "MAL / floor range"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (a GPU run writes bench_mal_cost_cuda)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models to run")
    parser.add_argument("--no-write", action="store_true", help="print the table only (RESULTS.md untouched)")
    return parser


def main():
    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = devset_batch()
    rows = []
    for key in args.models:
        rows += rows_of(key, measure(key, batch, device, args.repeats))
    table = format_table([{c: r.get(c, "") for c in COLUMNS} for r in rows], COLUMNS)
    worst = max((r["MAL / floor"] for r in rows if "MAL / floor" in r), default=float("nan"))
    where = (f"{args.threads} torch thread(s)" if device.type == "cpu"
             else f"{torch.cuda.get_device_name(device)}, fp32")
    body = (header(f"Model-as-Loss training cost and its floor, {device.type} (bench_mal_cost.py)")
            + "- one optimiser step on 8 x 3 s devset mixtures; " + where + f"; {args.repeats} interleaved rounds "
            + "after a warm-up (range: fastest-slowest round); lambda_mal 10; taps: the backbone's bottleneck (and "
            + "enc4), the MetricGAN+ generator's BLSTM (forward hooks, forward stopped after the tap)\n"
            + "- floor = R + F_clean + FB_enhanced, each part measured on its own (rows `part:`): R the "
            + "reconstruction step with the system's trainable weights (frozen_fe: encoder frozen), F_clean the "
            + "encoder up to the tap on the clean batch without gradient, FB_enhanced the encoder up to the tap "
            + "on a batch forward and backward to its input (frozen weights); MAL / floor: median over rounds of "
            + "the round's step / the round's parts\n"
            + f"- goal: MAL / floor <= {GOAL_RATIO_TO_FLOOR:.2f}: "
            + f"{'met' if worst <= GOAL_RATIO_TO_FLOOR else 'NOT met'} (worst {worst:.2f})\n\n" + table + "\n\n"
            + "Beyond the floor: the backbone's encode() runs the whole encoder, GRU included, whatever the tap, so "
            + "a MAL step on tap enc4 also runs the GRU on the clean and the enhanced batch (the floor stops at "
            + "enc4); stopping there needs encode() to stop after a given tap (sb_mal/models/backbone.py).\n")
    print(body)
    if not args.no_write:
        update_section(f"bench_mal_cost{'' if device.type == 'cpu' else '_' + device.type}", body)


if __name__ == "__main__":
    main()
