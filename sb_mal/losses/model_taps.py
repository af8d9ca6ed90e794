"""Running any model up to named activations ("taps"), for :class:`~sb_mal.losses.ModelAsLoss`.

:class:`TapEncoder` runs a model either through its ``encode()`` method (sb_mal's encode protocol)
or through its ``forward`` with forward hooks on the tap modules, abandoning the pass once every
tap has fired. :func:`loss_mode` puts a model in the state a loss encoder runs in (eval mode, but
recurrent layers in train mode with dropout 0, since cuDNN cannot backpropagate through an RNN in
eval mode). :class:`Log1pMagnitude` is the input of SpeechBrain's spectral-mask models.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["Log1pMagnitude", "ModelAsLossError", "TapEncoder", "describe", "listing", "loss_mode", "unwrap_model"]


class ModelAsLossError(RuntimeError):
    """The model cannot serve as a loss with the given taps / input function (names the model and tap)."""


class _TapsReady(BaseException):
    """Raised from a forward hook once every tap has fired: the rest of the forward pass is skipped.

    A BaseException so that a model's own ``except Exception`` cannot swallow it.
    """


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP / DataParallel wrapper (the module itself otherwise)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


class Log1pMagnitude(nn.Module):
    """``log1p(|STFT(wav)|)`` ``[B, frames, F]``: the input of SpeechBrain's spectral-mask models.

    Arguments
    ---------
    compute_stft : callable, optional
        A SpeechBrain ``STFT`` (e.g. the recipe's ``compute_STFT``, through ``!ref``). Default:
        ``STFT(sample_rate, win_length=32, hop_length=16, n_fft=512, window_fn=hamming)``, the
        Voicebank recipes' settings.
    power : float
        Passed to ``spectral_magnitude`` (0.5 = magnitude, as in those recipes).
    spectral_magnitude : callable, optional
        Instead of ``power``: a model folder's own ``spectral_magnitude`` (a ``!name:`` partial).

    Example
    -------
    >>> Log1pMagnitude()(torch.randn(2, 16000)).shape
    torch.Size([2, 63, 257])
    """

    def __init__(self, compute_stft: Callable | None = None, power: float = 0.5, sample_rate: int = 16000,
                 spectral_magnitude: Callable | None = None):
        super().__init__()
        if compute_stft is None:
            from speechbrain.processing.features import STFT

            compute_stft = STFT(sample_rate=sample_rate, win_length=32, hop_length=16, n_fft=512,
                                window_fn=torch.hamming_window)
        if spectral_magnitude is None:
            from speechbrain.processing.features import spectral_magnitude as magnitude

            spectral_magnitude = functools.partial(magnitude, power=float(power))
        self.compute_stft, self.spectral_magnitude = compute_stft, spectral_magnitude

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.spectral_magnitude(self.compute_stft(wav)))


class TapEncoder(nn.Module):
    """Runs ``model`` up to the taps: ``encode`` (protocol) or ``forward`` with hooks."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, lengths, owner):
        model = self.model
        if owner.protocol:
            enc = model.encode(x, lengths)
            missing = [t for t in owner.taps if t not in enc.taps]
            if missing:
                raise ModelAsLossError(f"ModelAsLoss: encoder taps {missing} not available; "
                                       f"{type(model).__name__}.encode offers {sorted(enc.taps)}")
            return [enc.taps[t] for t in owner.taps], enc.frame_mask
        captured: dict[str, object] = {}

        def hook_for(name):
            def hook(module, args, output):
                if name not in captured:
                    captured[name] = output
                    if len(captured) == len(owner.taps):
                        raise _TapsReady
            return hook

        handles = [model.get_submodule(t).register_forward_hook(hook_for(t)) for t in owner.taps]
        try:
            if owner.pass_lengths:
                model(x, lengths)
            else:
                model(x)
        except _TapsReady:
            pass
        except Exception as err:
            raise ModelAsLossError(f"ModelAsLoss: {type(model).__name__} failed on the input given by input_fn "
                                   f"({describe(x)}): {type(err).__name__}: {err}") from err
        finally:
            for handle in handles:
                handle.remove()
        missing = [t for t in owner.taps if t not in captured]
        if missing:
            raise ModelAsLossError(f"ModelAsLoss: taps {missing} of {type(model).__name__} were never called "
                                   "during its forward pass")
        return [owner._tap_tensor(t, captured[t]) for t in owner.taps], None


@contextlib.contextmanager
def loss_mode(model: nn.Module):
    """Eval mode for a loss encoder's forward pass, restored afterwards.

    Recurrent layers are the exception: cuDNN cannot backpropagate through an RNN in eval mode, so
    they run in train mode with their dropout set to 0, which computes the same function.
    """
    saved = [(m, m.training) for m in model.modules()]
    rnns = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    dropouts = [m.dropout for m in rnns]
    model.eval()
    for m in rnns:
        m.dropout = 0.0
        m.train()
    try:
        yield
    finally:
        for m, p in zip(rnns, dropouts):
            m.dropout = p
        for m, mode in saved:
            m.training = mode


def describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


def listing(names: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"
