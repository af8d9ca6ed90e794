"""Loss modules with SpeechBrain's signature ``loss(predictions, targets, length=None, reduction="mean")``."""

from sb_mal.losses.codec import LAYER_SETS, CodecApproximationLoss, layer_set
from sb_mal.losses.model_as_loss import Log1pMagnitude, ModelAsLoss, ModelAsLossError
from sb_mal.losses.model_taps import list_taps
from sb_mal.losses.soft_dtw import soft_dtw, soft_dtw_divergence
from sb_mal.losses.ssl import SSLFeatureLoss, SSLL1Loss, SSLMSELoss, SSLMSEPadLoss, SSLSoftDTWLoss, pad_frames
from sb_mal.losses.reconstruction import (
    MagnitudeL1,
    MultiResolutionSTFTLoss,
    SISDRLoss,
    STFTLoss,
    WaveformL1,
    WaveformMSE,
    WeightedSum,
)

__all__ = [
    "LAYER_SETS",
    "CodecApproximationLoss",
    "Log1pMagnitude",
    "MagnitudeL1",
    "ModelAsLoss",
    "ModelAsLossError",
    "MultiResolutionSTFTLoss",
    "SISDRLoss",
    "SSLFeatureLoss",
    "SSLL1Loss",
    "SSLMSELoss",
    "SSLMSEPadLoss",
    "SSLSoftDTWLoss",
    "STFTLoss",
    "WaveformL1",
    "WaveformMSE",
    "WeightedSum",
    "layer_set",
    "list_taps",
    "pad_frames",
    "soft_dtw",
    "soft_dtw_divergence",
]
