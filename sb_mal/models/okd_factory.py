"""What MetricGAN-OKD's YAMLs build: the ``modules`` dict of N generators and one discriminator.

The factories choose between sb_mal's MetricGAN networks (:mod:`sb_mal.models.metricgan`) and
SpeechBrain's own, wrapped to the same interface (:mod:`sb_mal.models.speechbrain_metricgan`), so
they live above both.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from torch import nn

from sb_mal.models.metricgan import MetricDiscriminator, MetricGANGenerator, MultiDiscriminator
from sb_mal.models.speechbrain_metricgan import (SpeechBrainDiscriminator, SpeechBrainGenerator, factory_kwargs,
                                                 is_speechbrain_class)

__all__ = ["make_discriminator", "okd_modules"]


def okd_modules(generators: int | Sequence[nn.Module] = 2, discriminator: nn.Module | None = None,
                generator_class=None, **generator_kwargs) -> dict:
    """The ``modules`` dict of a MetricGAN-OKD Brain: ``generator_0 .. generator_{N-1}`` and ``discriminator``.

    ``generators`` is a count (built with ``generator_class`` and ``generator_kwargs``) or a list
    of modules. ``generator_class`` defaults to :class:`MetricGANGenerator`; SpeechBrain's
    ``speechbrain.lobes.models.MetricGAN.EnhancementGenerator`` (class or ``!name:`` partial) is
    built inside :class:`~sb_mal.models.speechbrain_metricgan.SpeechBrainGenerator`. Each generator
    is its own entry so that DDP wraps and synchronises each one.

    Example
    -------
    >>> mods = okd_modules(2, MetricDiscriminator(2, channels=(4, 4, 4, 4)), hidden_size=8, num_layers=1, lin_dim=8)
    >>> sorted(mods)
    ['discriminator', 'generator_0', 'generator_1']
    """
    if isinstance(generators, int):
        if generators < 1:
            raise ValueError(f"need at least one generator, got {generators}")
        build = _generator_factory(generator_class, generator_kwargs)
        generators = [build() for _ in range(generators)]
    mods = {f"generator_{i}": g for i, g in enumerate(generators)}
    if discriminator is None:
        raise ValueError("okd_modules needs a discriminator")
    if discriminator.num_outputs != len(mods):
        raise ValueError(f"the discriminator has {discriminator.num_outputs} outputs for {len(mods)} generators")
    mods["discriminator"] = discriminator
    return mods


def _generator_factory(generator_class, kwargs: dict):
    if generator_class is None:
        return functools.partial(MetricGANGenerator, **kwargs)
    if is_speechbrain_class(generator_class, "EnhancementGenerator"):
        own = factory_kwargs(generator_class)
        if "input_size" in own:  # SpeechBrain's name for the bins: implied by n_fft here
            own["n_fft"] = 2 * (int(own.pop("input_size")) - 1)
        kwargs = dict(kwargs)
        fixed = {"lin_dim": 300, "causal": False, "beta": 1.2}  # what SpeechBrain's class hard-codes
        clash = {k: kwargs[k] for k in fixed if k in kwargs and kwargs[k] != fixed[k]}
        if clash:
            raise ValueError(f"SpeechBrain's EnhancementGenerator fixes {fixed}; got {clash}: use those values or "
                             "sb_mal.models.MetricGANGenerator")
        for k in fixed:
            kwargs.pop(k, None)
        return functools.partial(SpeechBrainGenerator, **{**kwargs, **own})
    return functools.partial(generator_class, **kwargs)


def make_discriminator(version: int = 2, num_outputs: int = 2, discriminator_class=None, **kwargs) -> nn.Module:
    """MetricGAN-OKD discriminator: ``version=2`` one D with N outputs, ``version=1`` N discriminators.

    ``discriminator_class``: SpeechBrain's ``speechbrain.lobes.models.MetricGAN.MetricDiscriminator``
    (class or ``!name:`` partial) builds one of SpeechBrain's discriminators per metric
    (:class:`~sb_mal.models.speechbrain_metricgan.SpeechBrainDiscriminator`; it has one output, so
    the version is 1 whatever is asked); None is sb_mal's :class:`MetricDiscriminator`.

    Example
    -------
    >>> type(make_discriminator(1, 2, channels=(4, 4, 4, 4))).__name__
    'MultiDiscriminator'
    """
    if discriminator_class is not None:
        if not is_speechbrain_class(discriminator_class, "MetricDiscriminator"):
            return discriminator_class(num_outputs=num_outputs, **kwargs)
        own = factory_kwargs(discriminator_class)
        if "base_channels" in own:
            kwargs["channels"] = [int(own.pop("base_channels"))] * 4
        if "kernel_size" in own:
            size = own.pop("kernel_size")
            kwargs["kernel_size"] = int(size[0] if isinstance(size, (tuple, list)) else size)
        return SpeechBrainDiscriminator(num_outputs, **kwargs, **own)
    if version == 2:
        return MetricDiscriminator(num_outputs, **kwargs)
    if version == 1:
        return MultiDiscriminator(num_outputs, **kwargs)
    raise ValueError(f"discriminator version must be 1 or 2, got {version!r}")
