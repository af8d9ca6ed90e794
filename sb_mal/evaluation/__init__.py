"""Evaluation: peer enhancers, iterative self-consistency study, shift robustness, ASR (WER), codec imitation.

Exports are lazy so that ``import sb_mal.evaluation`` loads nothing optional.
"""

from __future__ import annotations

import importlib

__all__ = [
    "DeepFilterNet3",
    "evaluate_asr",
    "evaluate_shift_robustness",
    "imitation_report",
    "iterate_models",
    "save_imitation_figure",
    "save_shift_plot",
    "shift_curves",
    "word_error_rate",
]

_LAZY = {
    "DeepFilterNet3": "sb_mal.evaluation.peers",
    "evaluate_asr": "sb_mal.evaluation.asr",
    "word_error_rate": "sb_mal.evaluation.asr",
    "evaluate_shift_robustness": "sb_mal.evaluation.shift",
    "shift_curves": "sb_mal.evaluation.shift",
    "save_shift_plot": "sb_mal.evaluation.shift",
    "imitation_report": "sb_mal.evaluation.codec_imitation",
    "save_imitation_figure": "sb_mal.evaluation.codec_imitation",
    "iterate_models": "sb_mal.evaluation.iterative",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sb_mal.evaluation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
