"""Which frame-feature extractor a ``source`` names: the wheels' encoders or a speech SSL model.

It sits above :mod:`sb_mal.models.frame_features` (the base and the wheel encoders) and
:mod:`sb_mal.models.ssl` (the SSL models, a subclass of that base), which do not import it.
"""

from __future__ import annotations

from sb_mal.models.frame_features import (WHEEL_ENCODERS, FCPEFeatureExtractor, FrameFeatureExtractor,
                                          ResemblyzerFeatureExtractor)
from sb_mal.models.ssl import SSLFeatureExtractor

__all__ = ["build_frame_extractor"]


def build_frame_extractor(source, layers=None, **kwargs) -> FrameFeatureExtractor:
    """The frame-feature extractor for ``source``: ``"torchfcpe"``, ``"resemblyzer"``, or a speech SSL
    model (hub id, ``save_pretrained`` folder or transformers module) for
    :class:`~sb_mal.models.ssl.SSLFeatureExtractor`. ``kwargs`` go to the extractor.

    Example
    -------
    >>> from sb_mal.models.ssl import build_tiny_wavlm
    >>> type(build_frame_extractor(build_tiny_wavlm(num_layers=1))).__name__
    'SSLFeatureExtractor'
    """
    layers = "last" if layers is None else layers
    if isinstance(source, str) and source.lower() in WHEEL_ENCODERS:
        cls = FCPEFeatureExtractor if source.lower() == "torchfcpe" else ResemblyzerFeatureExtractor
        return cls(layers, **kwargs)
    return SSLFeatureExtractor(source, layers, **kwargs)

