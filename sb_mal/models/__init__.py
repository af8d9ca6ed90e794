"""Neural networks: the enhancement backbone (and, in later modules, codec U-Nets, separation
ladder, MetricGAN generator/discriminator)."""

from sb_mal.models.backbone import Encoding, SpectralUNetSE
from sb_mal.models.codec_net import SpectralCodecNet, TimeCodecNet
from sb_mal.models.metricgan import MetricDiscriminator, MetricGANGenerator, MultiDiscriminator
from sb_mal.models.ssl import DEFAULT_SSL_SOURCE, SSLFeatureExtractor, SSLModelLoadError, build_tiny_wavlm, load_ssl_model

__all__ = [
    "DEFAULT_SSL_SOURCE",
    "Encoding",
    "MetricDiscriminator",
    "MetricGANGenerator",
    "MultiDiscriminator",
    "SSLFeatureExtractor",
    "SSLModelLoadError",
    "SpectralCodecNet",
    "SpectralUNetSE",
    "TimeCodecNet",
    "build_tiny_wavlm",
    "load_ssl_model",
]
