"""SpeechBrain Brains: EnhanceBrain (base) and one Brain per training paradigm."""

from sb_mal.brains.codec import CodecNetBrain, prepare_mp3_cache
from sb_mal.brains.enhance import EnhanceBrain, model_config
from sb_mal.brains.mal import MAL_VARIANTS, MALBrain
from sb_mal.brains.metricgan_okd import MetricGANOKDBrain
from sb_mal.brains.pift import PositionInvariantBrain
from sb_mal.brains.separation import SeparationBrain

__all__ = ["MAL_VARIANTS", "CodecNetBrain", "EnhanceBrain", "MALBrain", "MetricGANOKDBrain", "PositionInvariantBrain", "SeparationBrain", "model_config", "prepare_mp3_cache"]
