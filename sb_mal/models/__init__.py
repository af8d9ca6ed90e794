"""Neural networks: the enhancement backbone (and, in later modules, codec U-Nets, separation
ladder, MetricGAN generator/discriminator)."""

from sb_mal.models.backbone import Encoding, SpectralUNetSE

__all__ = ["Encoding", "SpectralUNetSE"]
