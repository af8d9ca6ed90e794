"""SeparationBrain: EnhanceBrain with the training loss picked by name (``l1`` or ``codec``).

The separation recipes compare the same network trained with a plain L1 loss and with the
codec-approximation loss. Their YAML lists the candidates as factories (``!name:``), so that only
the chosen one is built (the codec loss needs a trained codec-net run, an L1 run does not)::

    loss: l1            # or codec
    costs:
        l1: !name:sb_mal.losses.WaveformL1
        codec: !name:sb_mal.losses.CodecApproximationLoss.from_pretrained
            source: !ref <codec_run>

Input/target are the ``noisy_sig``/``clean_sig`` of the datasets (mixture and source).
"""

from __future__ import annotations

from torch import nn

from sb_mal.brains.enhance import ENHANCE_HPARAMS, EnhanceBrain
from sb_mal.brains.hparams import HParam

__all__ = ["SeparationBrain", "build_named_cost"]


def build_named_cost(costs, name: str) -> nn.Module:
    """Build ``costs[name]`` (a factory or an already built loss).

    Example
    -------
    >>> from sb_mal.losses import WaveformL1
    >>> type(build_named_cost({"l1": WaveformL1}, "l1")).__name__
    'WaveformL1'
    >>> build_named_cost({"l1": WaveformL1}, "codec")
    Traceback (most recent call last):
    ...
    ValueError: loss='codec' is not one of the YAML's costs ['l1']
    """
    if not isinstance(costs, dict) or not costs:
        raise ValueError("the YAML needs `costs`: a mapping from loss names to loss factories (!name:)")
    if name not in costs:
        raise ValueError(f"loss={name!r} is not one of the YAML's costs {sorted(costs)}")
    factory = costs[name]
    cost = factory if isinstance(factory, nn.Module) else factory()
    if not callable(cost):
        raise ValueError(f"costs[{name!r}] built a {type(cost).__name__}, not a loss")
    return cost


class SeparationBrain(EnhanceBrain):
    """EnhanceBrain whose ``compute_cost`` is ``costs[loss]`` (see the module docstring).

    A YAML that sets ``compute_cost`` directly works too (``loss``/``costs`` are then ignored).
    """

    HPARAMS = ENHANCE_HPARAMS.extend("SeparationBrain", [
        HParam("compute_cost", "callable", None, "the loss itself (then `loss` and `costs` are not used)"),
        HParam("costs", "any", None, "name -> loss (or a callable building it): the losses `loss` picks from"),
        HParam("loss", "str", "l1", "the name in `costs` of the training loss"),
    ])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h = self.hparams
        if h.compute_cost is None:
            h.compute_cost = build_named_cost(h.costs, h.loss)
