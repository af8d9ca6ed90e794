"""Evaluation helpers: pretrained peer enhancers (and, later, shift robustness, sweeps, tables).

Exports are lazy so that ``import sb_mal.evaluation`` loads nothing optional.
"""

from __future__ import annotations

import importlib

__all__ = ["DeepFilterNet3"]

_LAZY = {"DeepFilterNet3": "sb_mal.evaluation.peers"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sb_mal.evaluation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
