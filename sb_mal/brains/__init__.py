"""SpeechBrain Brains: EnhanceBrain (base) and one Brain per training paradigm."""

from sb_mal.brains.enhance import EnhanceBrain, model_config

__all__ = ["EnhanceBrain", "model_config"]
