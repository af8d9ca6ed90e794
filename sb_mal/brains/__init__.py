"""SpeechBrain Brains: EnhanceBrain (base) and one Brain per training paradigm.

:data:`PARADIGMS` is the one registry of them: the Brain, its recipe script and the file names of
the hparams YAMLs written for it. ``docs/hparams.md`` (``python -m sb_mal.brains.hparams_doc``) and
the tests that load every YAML read it, so a new paradigm is registered here and nowhere else.
"""

from dataclasses import dataclass

from sb_mal.brains.codec import CodecNetBrain, prepare_mp3_cache
from sb_mal.brains.enhance import EnhanceBrain, model_config
from sb_mal.brains.mal import MAL_VARIANTS, MALBrain
from sb_mal.brains.metricgan_okd import MetricGANOKDBrain
from sb_mal.brains.pift import PositionInvariantBrain
from sb_mal.brains.separation import SeparationBrain


@dataclass(frozen=True)
class Paradigm:
    """A training paradigm: its Brain, its recipe (``recipes/...``, relative to the repository) and a
    regular expression matching the paths of its YAMLs under ``hparams/``."""

    name: str
    brain: type
    recipe: str
    yamls: str


PARADIGMS = (
    Paradigm("baseline", EnhanceBrain, "recipes/baseline/train.py", r"/(baseline|metricgan_pretrain)\.yaml$"),
    Paradigm("mal", MALBrain, "recipes/mal/train.py", r"/mal_\w+\.yaml$"),
    Paradigm("pift", PositionInvariantBrain, "recipes/pift/train.py", r"/pift_\w+\.yaml$"),
    Paradigm("metricgan_okd", MetricGANOKDBrain, "recipes/metricgan_okd/train.py",
             r"/(le_)?(okd_\w+|metricgan_plus)\.yaml$"),
    Paradigm("separation", SeparationBrain, "recipes/codec/train_separation.py", r"/separation(_\w+)?\.yaml$"),
    Paradigm("codec_net", CodecNetBrain, "recipes/codec/train_codec_net.py", r"mp3codec/\w+\.yaml$"),
)

__all__ = ["MAL_VARIANTS", "PARADIGMS", "CodecNetBrain", "EnhanceBrain", "MALBrain", "MetricGANOKDBrain", "Paradigm",
           "PositionInvariantBrain", "SeparationBrain", "model_config", "prepare_mp3_cache"]
