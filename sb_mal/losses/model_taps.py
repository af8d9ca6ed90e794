"""Running any model up to named activations ("taps"), for :class:`~sb_mal.losses.ModelAsLoss`.

:class:`TapEncoder` runs a model either through its ``encode()`` method (sb_mal's encode protocol)
or through its ``forward`` with forward hooks on the tap modules, abandoning the pass once every
tap has fired. The state a loss encoder runs in (``loss_mode``) and ``unwrap_model`` belong to
:mod:`sb_mal.models.frozen`, the input features of spectral-mask models (``Log1pMagnitude``) to
:mod:`sb_mal.dsp`; both are re-exported here for existing imports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from sb_mal.dsp import Log1pMagnitude
from sb_mal.models.frozen import loss_mode, unwrap_model

__all__ = ["Log1pMagnitude", "ModelAsLossError", "TapEncoder", "constant_weights", "describe", "list_taps", "listing",
           "loss_mode", "tap_tensor", "unwrap_model"]


class ModelAsLossError(RuntimeError):
    """The model cannot serve as a loss with the given taps / input function (names the model and tap)."""


class _TapsReady(BaseException):
    """Raised from a forward hook once every tap has fired: the rest of the forward pass is skipped.

    A BaseException so that a model's own ``except Exception`` cannot swallow it.
    """


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
def constant_weights(model: nn.Module) -> Iterator[None]:
    """The model's weights enter the graphs built inside the block as constants: gradient reaches the
    inputs only, and the weights themselves (no copy, no detached views) are used as they are, so a
    cuDNN RNN keeps its flat weight buffer. The weights that required gradient get it back on exit.

    Equal, in values and in the input's gradient, to running the model through
    ``torch.func.functional_call`` with detached weights (``tests/test_mal_any_model.py`` checks it).

    Example
    -------
    >>> net = nn.Linear(3, 1)
    >>> x = torch.ones(2, 3, requires_grad=True)
    >>> with constant_weights(net):
    ...     y = net(x).sum()
    >>> y.backward()
    >>> net.weight.grad is None, net.weight.requires_grad, bool(x.grad.abs().sum() > 0)
    (True, True, True)
    """
    trained = [p for p in model.parameters() if p.requires_grad]
    for p in trained:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trained:
            p.requires_grad_(True)


def describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


def listing(names: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"


def tap_tensor(output) -> torch.Tensor | None:
    """The tensor a tap contributes: the first element of a tuple (an RNN's output, not its state), a
    packed sequence unpacked; None when the module's output holds no tensor."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if isinstance(output, PackedSequence):
        output = pad_packed_sequence(output, batch_first=True)[0]
    return output if isinstance(output, torch.Tensor) else None


def list_taps(model: nn.Module, example: torch.Tensor, lengths: torch.Tensor | None = None) -> list[tuple[str, tuple]]:
    """``(module path, output shape)`` of every submodule that runs when ``model`` sees ``example``:
    the taps :class:`~sb_mal.losses.ModelAsLoss` can use, in the order they run (``sb-mal taps``).

    ``example`` is the model's own input (e.g. ``input_fn(wav)``); ``lengths`` is passed when the
    model's ``forward`` takes it. Modules whose output holds no tensor are left out.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> list_taps(net, torch.randn(3, 4))
    [('0', (3, 8)), ('1', (3, 8)), ('2', (3, 2))]
    """
    from speechbrain.utils.callchains import lengths_arg_exists

    found: list[tuple[str, tuple]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(module, args, output, name=name):
            tensor = tap_tensor(output)
            if tensor is not None and name not in {n for n, _ in found}:
                found.append((name, tuple(tensor.shape)))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), loss_mode(model):
            if lengths is not None or lengths_arg_exists(model.forward):
                model(example, torch.ones(example.shape[0]) if lengths is None else lengths)
            else:
                model(example)
    finally:
        for handle in handles:
            handle.remove()
    return found
