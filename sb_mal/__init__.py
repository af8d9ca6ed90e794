"""sb_mal: new training paradigms for speech enhancement in SpeechBrain."""

__version__ = "0.1.0"
