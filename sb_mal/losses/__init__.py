"""Loss modules with SpeechBrain's signature ``loss(predictions, targets, length=None, reduction="mean")``."""

from sb_mal.losses.reconstruction import (
    MultiResolutionSTFTLoss,
    SISDRLoss,
    STFTLoss,
    WaveformL1,
    WaveformMSE,
    WeightedSum,
)

__all__ = ["MultiResolutionSTFTLoss", "SISDRLoss", "STFTLoss", "WaveformL1", "WaveformMSE", "WeightedSum"]
