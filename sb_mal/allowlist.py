"""The objects a model folder may name, and the resolver that finds what a dotted name reaches.

:func:`resolve_name` finds the object HyperPyYAML's ``pydoc.locate`` would reach for a dotted
name, without importing any module outside the packages that hold allowed objects and without
walking through such a module; :func:`is_allowed_object` judges the object itself (its own module
and qualified name, or identity), never the text of the path. :mod:`sb_mal.trust` applies both to
every name a model folder's YAML would call or construct.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
import types

__all__ = ["ALLOWED_OBJECTS", "MODEL_MODULES", "REEXPORTING_MODULES", "UntrustedCodeError", "check_callable",
           "is_allowed", "is_allowed_object", "resolve_name"]

#: Modules whose ``torch.nn.Module`` subclasses a model folder may build (a package covers its submodules).
MODEL_MODULES = (
    "sb_mal.models.backbone",
    "sb_mal.models.separation",
    "sb_mal.models.codec_net",
    "sb_mal.models.metricgan",
    "sb_mal.models.speechbrain_metricgan",
    "speechbrain.lobes.models.MetricGAN",
    "speechbrain.lobes.models.MetricGAN_U",
    "speechbrain.lobes.models.EnhanceResnet",
    "speechbrain.lobes.models.transformer",
    "speechbrain.lobes.models.conv_tasnet",
    "speechbrain.lobes.models.dual_path",
    "speechbrain.lobes.models.resepformer",
    "speechbrain.lobes.models.segan_model",
    "speechbrain.lobes.models.convolution",
    "speechbrain.lobes.models.CRDNN",
    "speechbrain.lobes.models.VanillaNN",
    "speechbrain.nnet",
    "speechbrain.processing",
    "torch.nn.modules",
    "torchaudio.transforms",
)
#: Other objects a model folder may name, by the canonical name of the object itself.
ALLOWED_OBJECTS = (
    "speechbrain.utils.parameter_transfer.Pretrainer",
    "speechbrain.dataio.preprocess.AudioNormalizer",
    "speechbrain.processing.features.spectral_magnitude",
    "speechbrain.processing.signal_processing.resynthesize",
    "sb_mal.weights.load_strict",
    "torch.hamming_window",
    "torch.hann_window",
    "torch.blackman_window",
    "torch.bartlett_window",
    "torch.kaiser_window",
    "torch.float16",
    "torch.bfloat16",
    "torch.float32",
    "torch.float64",
)
#: Modules that re-export allowed objects under the names published model folders use
#: (``!name:sb_mal.inference.load_strict`` in every exported ``hyperparams.yaml``).
REEXPORTING_MODULES = ("sb_mal.inference",)


class UntrustedCodeError(ValueError):
    """A model folder asks to run code outside the allow-list (the message names file, line and entry)."""


def _hint(where: str) -> str:
    return (f"if you trust {where}, pass trust_code=True (command line: --trust-code); "
            "see 'What a model folder may run' in the README")


def _within(name: str, roots) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


@functools.lru_cache(maxsize=1)
def _homes() -> tuple[frozenset, frozenset]:
    """(modules of the allowed objects, their parent packages)."""
    homes = frozenset(n.rsplit(".", 1)[0] for n in ALLOWED_OBJECTS) | frozenset(MODEL_MODULES) | \
        frozenset(REEXPORTING_MODULES)
    parents = frozenset(".".join(h.split(".")[:i]) for h in homes for i in range(1, h.count(".") + 1))
    return homes, parents


def _may_import(name: str) -> bool:
    """Whether the resolver may import (or walk through) module ``name``: a module of allowed
    objects, a submodule of one of :data:`MODEL_MODULES`, or a parent package of either."""
    homes, parents = _homes()
    return name in homes or name in parents or _within(name, MODEL_MODULES)


def _module_exists(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None  # imports no code of `name` (its parent is imported)
    except ModuleNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - an odd module system state: treat as existing, so it must be allowed
        return True


def resolve_name(name: str):
    """The object HyperPyYAML's ``pydoc.locate(name)`` reaches, found without running foreign code.

    Like ``pydoc.locate``, the longest prefix that names a module is imported and the rest is
    walked by attribute; but a module outside the packages of allowed objects is neither imported
    nor walked through, and names with double-underscore parts are refused.
    :class:`UntrustedCodeError` says why a name cannot be resolved safely; ``None`` means it names
    nothing (HyperPyYAML would fail on it too).

    Example
    -------
    >>> resolve_name("torch.nn.Linear").__name__
    'Linear'
    >>> resolve_name("torch.nn.functional.torch.os.system")
    Traceback (most recent call last):
    ...
    sb_mal.allowlist.UntrustedCodeError: 'torch.nn.functional.torch.os.system' goes through module torch.nn.functional, outside the packages a model folder may use
    """
    parts = [p for p in name.split(".") if p]
    if not parts:
        raise UntrustedCodeError(f"{name!r} is not a dotted name")
    if any(p.startswith("__") for p in parts):
        raise UntrustedCodeError(f"{name!r} reaches into a double-underscore attribute")
    module, n = None, 0
    while n < len(parts):
        candidate = ".".join(parts[: n + 1])
        if not _module_exists(candidate):
            break
        if not _may_import(candidate):
            raise UntrustedCodeError(f"{name!r} goes through module {candidate}, outside the packages a model "
                                     "folder may use")
        try:
            module = importlib.import_module(candidate)
        except ImportError:
            break
        n += 1
    obj = module if module is not None else importlib.import_module("builtins")
    if module is None:
        raise UntrustedCodeError(f"{name!r} names a Python builtin or a module outside the packages a model "
                                 "folder may use")
    for part in parts[n:]:
        if isinstance(obj, types.ModuleType):
            _check_module(obj, name)
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return None
    if isinstance(obj, types.ModuleType):
        _check_module(obj, name)
    return obj


def _check_module(module: types.ModuleType, name: str) -> None:
    mod_name = vars(module).get("__name__", "")
    if not isinstance(mod_name, str) or not _may_import(mod_name):
        raise UntrustedCodeError(f"{name!r} goes through module {mod_name}, outside the packages a model folder "
                                 "may use")
    if type(module) is not types.ModuleType:  # a lazy or redirecting module: what it loads is not judged here
        raise UntrustedCodeError(f"{name!r} goes through {mod_name}, a lazily loaded module")


@functools.lru_cache(maxsize=1)
def _allowed_identities() -> tuple[int, ...]:
    ids = []
    for canonical in ALLOWED_OBJECTS:
        module_name, _, attr = canonical.rpartition(".")
        try:
            ids.append(id(getattr(importlib.import_module(module_name), attr)))
        except (ImportError, AttributeError):  # an optional package or an older version: simply not allowed
            continue
    return tuple(ids)


def is_allowed_object(obj) -> bool:
    """Whether a model folder may build or call ``obj`` without ``trust_code`` (judged by the object itself).

    Example
    -------
    >>> import os, torch
    >>> is_allowed_object(torch.nn.Linear), is_allowed_object(os.system), is_allowed_object(torch.load)
    (True, False, False)
    """
    if id(obj) in _allowed_identities():
        return True
    if not inspect.isclass(obj):
        return False
    import torch

    if not issubclass(obj, torch.nn.Module):
        return False
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "")
    if not isinstance(module, str) or not _within(module, MODEL_MODULES) or "<" in qualname:
        return False
    home = sys.modules.get(module)  # the class must be what its own module and name say it is
    target = home
    for part in qualname.split("."):
        target = vars(target).get(part) if target is not None and hasattr(target, "__dict__") else None
    return target is obj


def is_allowed(name: str) -> bool:
    """Whether a model folder may name ``name`` (the object it resolves to is allowed).

    Example
    -------
    >>> is_allowed("speechbrain.lobes.models.MetricGAN.EnhancementGenerator"), is_allowed("os.system")
    (True, False)
    >>> is_allowed("torch.nn.Module.load_state_dict"), is_allowed("torch.nn.functional.torch.os.system")
    (False, False)
    """
    try:
        obj = resolve_name(name)
    except UntrustedCodeError:
        return False
    return obj is not None and is_allowed_object(obj)


def _judge_name(name: str, missing_ok: bool = True) -> str | None:
    """Why ``name`` may not be used (None if it may; a name that reaches nothing is harmless to
    HyperPyYAML, which then fails with its own message, unless ``missing_ok`` is False)."""
    try:
        obj = resolve_name(name)
    except UntrustedCodeError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - importing an allowed module failed: refuse, naming it
        return f"{name!r} cannot be resolved ({type(err).__name__}: {err})"
    if obj is None:
        return None if missing_ok else f"{name!r} names nothing"
    if is_allowed_object(obj):
        return None
    what = f"{getattr(obj, '__module__', None) or type(obj).__module__}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
    return f"{name!r} reaches {what}"


def check_callable(name: str, where: str, trust_code: bool = False):
    """Refuse a class or function name outside the allow-list (e.g. from ``export_info.json``); return
    the object it names (None with ``trust_code``, where nothing is resolved here)."""
    if trust_code:
        return None
    why = _judge_name(name, missing_ok=False)
    if why:
        raise UntrustedCodeError(f"{where}: names {name!r}, which is outside the allow-list of what a model folder "
                                 f"may run ({why}); {_hint(where)}")
    return resolve_name(name)
