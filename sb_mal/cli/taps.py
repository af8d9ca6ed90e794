"""``sb-mal taps``: the module paths a model offers as Model-as-Loss taps, with the shape each produces.

The model comes from a model YAML (a recipe's ``models/*.yaml``, with ``--set`` for its
placeholders), a model folder, a run folder or a hub id. It runs once on a short input: the one its
folder defines (a spectral-mask folder's features), else the first that works of a waveform
``[1, T]``, a waveform ``[1, T, 1]`` (SpeechBrain's FCN) and log1p STFT magnitudes
``[1, frames, n_fft/2 + 1]`` (SpeechBrain's spectral-mask models), or the one ``--input`` names.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sb_mal.cli.common import CommandError

__all__ = ["INPUTS", "cmd_taps", "model_from"]

#: The inputs ``--input`` can name, in the order ``auto`` tries them.
INPUTS = ("waveform", "waveform-channel", "log1p-stft")
_MODEL_KEYS = ("enhance_model", "model", "generator")


def _overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def model_from(source: str, key: str | None = None, overrides: dict | None = None, trust_code: bool = False):
    """``(model, input_fn or None, hparams dict or None, where)`` for a model YAML or any model source."""
    import torch

    path = Path(source)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        from sb_mal.trust import load_model_hparams

        try:
            hparams = load_model_hparams(path, trust_code, overrides or None)
        except ValueError as err:
            hint = " (a !PLACEHOLDER: give it with --set KEY=VALUE)" if "PLACEHOLDER" in str(err) else ""
            raise CommandError(f"{err}{hint}") from err
        nested = hparams.get("models") if isinstance(hparams.get("models"), dict) else {}
        candidates = [key] if key else [*_MODEL_KEYS]
        for name in candidates:
            for where in (hparams, nested):
                if isinstance(where.get(name), torch.nn.Module):
                    return where[name], None, hparams, f"{path} [{name}]"
        modules = sorted(k for k, v in {**hparams, **nested}.items() if isinstance(v, torch.nn.Module))
        raise CommandError(f"{path}: no torch.nn.Module under {candidates}; modules defined: {modules or 'none'} "
                           "(choose one with --key)")
    from sb_mal.pretrained import load_pretrained

    found = load_pretrained(source, trust_code=trust_code)
    return found.model, found.input_fn, None, found.where


def _examples(choice: str, n_fft: int, sample_rate: int):
    import torch

    wav = 0.1 * torch.randn(2, sample_rate, generator=torch.Generator().manual_seed(0))
    if choice == "waveform":
        return wav
    if choice == "waveform-channel":
        return wav.unsqueeze(-1)
    from speechbrain.processing.features import STFT

    from sb_mal.dsp import Log1pMagnitude

    stft = STFT(sample_rate=sample_rate, win_length=32, hop_length=16, n_fft=n_fft, window_fn=torch.hamming_window)
    return Log1pMagnitude(stft)(wav)


def cmd_taps(args: argparse.Namespace) -> int:
    from sb_mal.losses import list_taps

    model, input_fn, hparams, where = model_from(args.source, args.key, _overrides(args.set), args.trust_code)
    model.eval()
    n_fft = args.n_fft or int((hparams or {}).get("N_fft") or (hparams or {}).get("n_fft") or 512)
    import torch

    if input_fn is not None and args.input == "auto":
        tried = [("the folder's own input features", input_fn(0.1 * torch.randn(2, args.sample_rate)))]
    else:
        names = INPUTS if args.input == "auto" else (args.input,)
        tried = [(name, _examples(name, n_fft, args.sample_rate)) for name in names]
    errors, ran = [], []
    for name, example in tried:  # an enhancer maps its input to a same-shaped output (a waveform, a mask)
        try:
            rows = list_taps(model, example)
            with torch.no_grad():
                out = model(example, torch.ones(2)) if _takes_lengths(model) else model(example)
        except Exception as err:  # noqa: BLE001 - a model refuses an input shape in many ways: try the next
            errors.append(f"{name} {tuple(example.shape)}: {type(err).__name__}: {' '.join(str(err).split())[:160]}")
            continue
        out = out[0] if isinstance(out, (tuple, list)) else out
        same = isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(example.shape)
        ran.append((not same, name, example, rows))
        if same:
            break
    if not ran:
        raise CommandError(f"{where}: {type(model).__name__} ran on none of the inputs tried: " + "; ".join(errors))
    mismatch, name, example, rows = sorted(ran, key=lambda r: r[0])[0]
    note = " (its output's shape differs from every input tried: check --input)" if mismatch else ""
    print(f"{where}: {type(model).__name__}, input {name} {list(example.shape)}{note}")
    width = max(len(n) for n, _ in rows) if rows else 3
    print(f"{'tap':<{width}}  output shape")
    for tap, shape in rows:
        print(f"{tap:<{width}}  {list(shape)}")
    return 0


def _takes_lengths(model) -> bool:
    from speechbrain.utils.callchains import lengths_arg_exists

    return lengths_arg_exists(model.forward)


def add_parser(sub) -> None:
    """The ``taps`` subcommand of ``sb-mal``."""
    ta = sub.add_parser("taps", help="list a model's module paths (Model-as-Loss taps) with the shape each produces")
    ta.add_argument("source", help="a model YAML (e.g. a recipe's models/CNNTransformer.yaml), a model folder, a run "
                                   "folder or a hub id")
    ta.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a value for the YAML, e.g. --set N_fft=512 for a placeholder (repeatable)")
    ta.add_argument("--key", help=f"the YAML entry holding the model (default: the first of {', '.join(_MODEL_KEYS)}, "
                                  "also under models:)")
    ta.add_argument("--input", default="auto", choices=["auto", *INPUTS],
                    help="the model's input: a waveform [1, T], [1, T, 1], or log1p STFT magnitudes [1, frames, F] "
                         "(default: the folder's own, else the first that runs)")
    ta.add_argument("--n-fft", type=int, help="STFT size of log1p-stft (default: the YAML's N_fft, else 512)")
    ta.add_argument("--sample-rate", type=int, default=16000, help="rate of the test waveform (default 16000)")
    ta.add_argument("--trust-code", action="store_true",
                    help="let the YAML or folder call code outside sb_mal's allow-list (read it first)")
    ta.set_defaults(func=cmd_taps)
