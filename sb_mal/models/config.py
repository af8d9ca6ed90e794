"""Models record their own constructor arguments: ``model.config``, the one source of a model's configuration.

``model_config.json`` (written at the start of training) and ``sb-mal export`` rebuild a model as
``<class>(**config)``. The arguments are captured from the actual constructor call, defaults
filled in, so there is no hand-written copy of them to drift from the constructor.
"""

from __future__ import annotations

import functools
import inspect

__all__ = ["RecordsConfig"]


def _plain(value):
    """Tuples as lists (what JSON gives back), recursively."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class RecordsConfig:
    """Mixin for ``nn.Module`` models: after construction, ``self.config`` holds the arguments of the
    constructor call (keyword form, defaults included; ``**kwargs`` merged in).

    Example
    -------
    >>> import torch
    >>> class Net(RecordsConfig, torch.nn.Module):
    ...     def __init__(self, width: int = 4, sizes=(1, 2)):
    ...         super().__init__()
    ...         self.lin = torch.nn.Linear(width, width)
    >>> Net(8).config
    {'width': 8, 'sizes': [1, 2]}
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            init(self, *args, **kw)
            if type(self) is cls:  # the outermost constructor's call is the configuration
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                config = {}
                for name, value in list(bound.arguments.items())[1:]:
                    if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                        config.update(value)
                    elif signature.parameters[name].kind is not inspect.Parameter.VAR_POSITIONAL:
                        config[name] = value
                self.config = _plain(config)

        cls.__init__ = recording_init
