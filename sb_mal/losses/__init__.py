"""Loss modules with SpeechBrain's signature ``loss(predictions, targets, length=None, reduction="mean")``."""

from sb_mal.losses.model_as_loss import ModelAsLoss
from sb_mal.losses.reconstruction import (
    MultiResolutionSTFTLoss,
    SISDRLoss,
    STFTLoss,
    WaveformL1,
    WaveformMSE,
    WeightedSum,
)

__all__ = ["ModelAsLoss", "MultiResolutionSTFTLoss", "SISDRLoss", "STFTLoss", "WaveformL1", "WaveformMSE", "WeightedSum"]
