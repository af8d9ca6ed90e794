"""Neural networks: the enhancement backbone, codec U-Nets, the separation ladder P1..P5, MetricGAN
generator/discriminator and the frozen SSL feature extractor."""

from sb_mal.models.backbone import Encoding, SpectralUNetSE
from sb_mal.models.codec_net import SpectralCodecNet, TimeCodecNet
from sb_mal.models.metricgan import MetricDiscriminator, MetricGANGenerator, MultiDiscriminator
from sb_mal.models.speechbrain_metricgan import SpeechBrainDiscriminator, SpeechBrainGenerator
from sb_mal.models.separation import LADDER, SeparationUNet, ladder_table
from sb_mal.models.extractors import build_frame_extractor
from sb_mal.models.frame_features import FCPEFeatureExtractor, FrameFeatureExtractor, ResemblyzerFeatureExtractor
from sb_mal.models.ssl import DEFAULT_SSL_SOURCE, SSLFeatureExtractor, SSLModelLoadError, build_tiny_wavlm, load_ssl_model

__all__ = [
    "FCPEFeatureExtractor",
    "FrameFeatureExtractor",
    "ResemblyzerFeatureExtractor",
    "build_frame_extractor",
    "DEFAULT_SSL_SOURCE",
    "Encoding",
    "LADDER",
    "MetricDiscriminator",
    "MetricGANGenerator",
    "MultiDiscriminator",
    "SSLFeatureExtractor",
    "SSLModelLoadError",
    "SeparationUNet",
    "SpectralCodecNet",
    "SpectralUNetSE",
    "SpeechBrainDiscriminator",
    "SpeechBrainGenerator",
    "TimeCodecNet",
    "build_tiny_wavlm",
    "ladder_table",
    "load_ssl_model",
]
