"""Frozen networks inside losses: one mechanism for eval mode, no gradient, device and dtype.

Several sb_mal losses own a network they never train: the Model-as-Loss encoder snapshot, the
codec-imitation net, the SSL model (WavLM). :class:`FrozenNetworks` is their common base. A
network declared with :meth:`FrozenNetworks.freeze`

- has ``requires_grad=False`` on every weight (gradient reaches the loss's input only);
- stays in eval mode whatever ``.train()`` a Brain calls (no dropout, BatchNorm statistics fixed);
- follows the device of the inputs: :meth:`FrozenNetworks.follow` moves it, once, to the device
  of the tensor it is given, so a loss works as ``compute_cost`` whether or not the recipe lists
  it in ``modules`` (SpeechBrain's stock recipes never do);
- computes in float32, or in float64 when the input is float64. Half-precision inputs (fp16,
  bf16) are cast to float32: a loss network's normalisation layers are not safe in half precision,
  and inside an autocast region the matrix products still run in the autocast precision.
- moves with ``.to(...)`` / ``.cuda()`` of its owner, also when it is kept outside the module
  registry (``in_state_dict=False``: weights that come from a pretrained source and would only
  bloat checkpoints).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["FrozenNetworks", "compute_dtype", "loss_mode", "unwrap_model"]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a frozen network computes in for input ``x``: float64 stays, anything else is float32.

    Example
    -------
    >>> compute_dtype(torch.zeros(1, dtype=torch.bfloat16)), compute_dtype(torch.zeros(1, dtype=torch.float64))
    (torch.float32, torch.float64)
    """
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class FrozenNetworks(nn.Module):
    """Base class of modules that own frozen networks (see the module docstring).

    Example
    -------
    >>> class Judge(FrozenNetworks):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.freeze("net", nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)))
    ...     def forward(self, x):
    ...         x = self.follow(x)
    ...         return self.net(x)
    >>> judge = Judge().train()
    >>> judge.net.training, any(p.requires_grad for p in judge.parameters())
    (False, False)
    >>> judge(torch.ones(2, 4, dtype=torch.float64)).dtype  # follows a float64 input
    torch.float64
    >>> judge(torch.ones(2, 4, dtype=torch.bfloat16)).dtype  # half precision computes in float32
    torch.float32
    """

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "_frozen_names", [])
        object.__setattr__(self, "_outside", {})

    def freeze(self, name: str, net: nn.Module, *, in_state_dict: bool = True) -> nn.Module:
        """Declare ``net`` as a frozen network of this module, reachable as ``self.<name>``.

        With ``in_state_dict=False`` it is kept outside the module registry: not in
        ``parameters()`` or ``state_dict()``, still moved by ``.to()`` and :meth:`follow`.
        """
        net.requires_grad_(False).eval()
        if in_state_dict:
            setattr(self, name, net)
        else:
            self._outside[name] = net
            object.__setattr__(self, name, net)
        if name not in self._frozen_names:
            self._frozen_names.append(name)
        return net

    def frozen_networks(self) -> list[nn.Module]:
        """The frozen networks declared on this module."""
        return [getattr(self, name) for name in self._frozen_names]

    def _first_tensor(self) -> torch.Tensor | None:
        for net in self.frozen_networks():
            for tensor in (*net.parameters(), *net.buffers()):
                if tensor.is_floating_point():
                    return tensor
        return None

    def follow(self, x: torch.Tensor) -> torch.Tensor:
        """Move the frozen networks to ``x``'s device and compute dtype; return ``x`` in that dtype."""
        dtype = compute_dtype(x)
        ref = self._first_tensor()
        if ref is not None and (ref.device != x.device or ref.dtype != dtype):
            self.to(device=x.device, dtype=dtype)
        return x.to(dtype)

    def train(self, mode: bool = True):
        """Sets this module's flag; the frozen networks stay in eval mode."""
        super().train(mode)
        for net in self.frozen_networks():
            net.eval()
        return self

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for net in self._outside.values():
            net._apply(fn)
        return self


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP / DataParallel wrapper (the module itself otherwise)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


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
