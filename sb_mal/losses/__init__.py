"""Loss modules with SpeechBrain's signature ``loss(predictions, targets, length=None, reduction="mean")``."""

from sb_mal.losses.model_as_loss import ModelAsLoss
from sb_mal.losses.ssl import SSLFeatureLoss, SSLL1Loss, SSLMSELoss, SSLMSEPadLoss, pad_frames
from sb_mal.losses.reconstruction import (
    MultiResolutionSTFTLoss,
    SISDRLoss,
    STFTLoss,
    WaveformL1,
    WaveformMSE,
    WeightedSum,
)

__all__ = [
    "ModelAsLoss",
    "MultiResolutionSTFTLoss",
    "SISDRLoss",
    "SSLFeatureLoss",
    "SSLL1Loss",
    "SSLMSELoss",
    "SSLMSEPadLoss",
    "STFTLoss",
    "WaveformL1",
    "WaveformMSE",
    "WeightedSum",
    "pad_frames",
]
