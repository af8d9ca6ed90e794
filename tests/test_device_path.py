"""One device path: a loss's tensors live in its frozen networks, which follow the inputs.

No Brain moves a loss by hand (the eager moves are gone), so every tensor a loss owns must be
reached by :meth:`sb_mal.models.frozen.FrozenNetworks.follow`, or be host-side bookkeeping that the
loss reads device-independently. On the CPU the dtype stands in for the device: float64 inputs
must take every frozen network to float64 on the first call.
"""

from __future__ import annotations

import pytest
import torch
from loss_zoo import LOSS_NAMES, loss_factories

from sb_mal.models.frozen import FrozenNetworks

pytestmark = pytest.mark.unit

#: tensors a loss may own outside its frozen networks: flags and statistics read on the host
BOOKKEEPING = {"snapshot_taken", "gamma_state.median_cost", "gamma_state.observed"}


def _frozen(loss: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor of the frozen networks inside ``loss`` (those kept outside its state dict included)."""
    found = []
    for module in loss.modules():
        if isinstance(module, FrozenNetworks):
            for net in module.frozen_networks():
                found += [*net.parameters(), *net.buffers()]
    return found


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_a_loss_owns_no_tensor_outside_its_frozen_networks(name, tiny_wavlm_dir):
    loss = loss_factories(tiny_wavlm_dir)[name]()
    owned = {id(t) for t in _frozen(loss)}
    stray = [key for key, t in (*loss.named_parameters(), *loss.named_buffers())
             if id(t) not in owned and key not in BOOKKEEPING]
    assert not stray, f"{name}: tensors no frozen network holds (a Brain would have to move them): {stray}"


NETWORK_LOSSES = [n for n in LOSS_NAMES if n.startswith(("MAL", "codec", "SSL"))]


@pytest.mark.parametrize("name", NETWORK_LOSSES)
def test_the_first_call_takes_every_frozen_network_to_the_inputs(name, tiny_wavlm_dir):
    loss = loss_factories(tiny_wavlm_dir)[name]()
    g = torch.Generator().manual_seed(0)
    clean = 0.3 * torch.randn(2, 8000, generator=g, dtype=torch.float64)
    if getattr(loss, "encoder", None) == "live":
        loss.model.double()  # the live encoder is the recipe's own model, placed by the Brain
    value = loss(clean + 0.05 * torch.randn(2, 8000, generator=g, dtype=torch.float64), clean)
    assert torch.isfinite(value).all()
    floating = [t for t in _frozen(loss) if t.is_floating_point()]
    if getattr(loss, "encoder", None) != "live":
        assert floating, f"{name}: no frozen network found"
    assert all(t.dtype == torch.float64 for t in floating), name
