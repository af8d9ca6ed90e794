"""One declaration of the hyperparameters each Brain reads: type, default, valid range, meaning.

Every Brain has a class attribute ``HPARAMS`` (an :class:`HParams`). At construction the Brain
calls :meth:`HParams.apply`, which checks the hparams it was given (a missing required key, a
wrong type, a value out of range are errors naming the key and the YAML file) and fills in the
defaults, so the Brain's code reads ``self.hparams.<key>`` and no default lives anywhere else.

At the recipe level (:func:`sb_mal.run.load_recipe_hparams`), :meth:`HParams.unknown_keys` finds
YAML keys that nothing reads: not declared by the Brain, not used by the recipe skeleton, not a
SpeechBrain run option, not referenced (``!ref <key>``) by another entry of the file. A misspelled
key is then an error naming the closest valid names, instead of a silent default. A declared key
that a YAML file does not define can still be given on the command line (``--max_train_minutes=25``).

The declarations are listed in ``docs/hparams.md`` (written by :func:`markdown`).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

__all__ = ["REQUIRED", "HParam", "HParams", "HParamsError", "markdown"]


class _Required:
    def __repr__(self) -> str:
        return "required"


#: The default of a key that must be given.
REQUIRED: Any = _Required()

_KINDS = ("int", "float", "bool", "str", "list", "numbers", "callable", "any", "metrics")


class HParamsError(ValueError):
    """A hyperparameter is missing, misspelled, of the wrong type or out of range (names key and file)."""


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: ``name``, ``kind`` (int, float, bool, str, list, numbers, callable, any, metrics), ``default``
    (:data:`REQUIRED` if it must be given; None allowed only where the default is None), a range
    (``low``/``high``, inclusive; ``above``, exclusive: ``above=0`` is "positive") or ``choices``, and
    what it means. Floats (and the elements of ``numbers``) must be finite: NaN or Inf is an error."""

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    above: float | None = None

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"unknown hparam kind {self.kind!r} for {self.name!r}")

    def check(self, value: Any, where: str) -> Any:
        """``value`` validated (ints accepted as floats, tuples as lists; ``numbers`` is a list of ints
        or floats, returned as floats)."""
        if value is None and self.default is None:
            return None
        kind = self.kind
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "list": isinstance(value, (list, tuple)),
            "numbers": isinstance(value, (list, tuple))
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
            "callable": callable(value),
            "any": True,
            "metrics": isinstance(value, (list, tuple, str)),
        }[kind]
        if not ok:
            raise HParamsError(f"{where}: {self.name} must be {_article(kind)}, got {value!r} "
                               f"({type(value).__name__})")
        if kind == "float":
            value = float(value)
            if not math.isfinite(value):
                raise HParamsError(f"{where}: {self.name} must be a finite number, got {value!r}")
        if kind == "numbers":
            value = [float(v) for v in value]
            if not all(math.isfinite(v) for v in value):
                raise HParamsError(f"{where}: {self.name} must hold finite numbers, got {value!r}")
        if kind == "metrics":
            from sb_mal.metrics import check_dependencies

            try:
                check_dependencies(value, f"{where}: {self.name}")
            except ImportError as err:
                raise HParamsError(str(err)) from err
            except ValueError as err:
                raise HParamsError(f"{where}: {self.name}: {err}") from err
            value = [value] if isinstance(value, str) else list(value)
        if self.choices and value not in self.choices:
            raise HParamsError(f"{where}: {self.name} must be one of {list(self.choices)}, got {value!r}")
        for item in value if kind == "numbers" else [value]:  # a range bounds each number of a list
            if self.low is not None and item < self.low or self.high is not None and item > self.high:
                bounds = f"in [{self.low}, {self.high}]" if self.high is not None else f">= {self.low}"
                raise HParamsError(f"{where}: {self.name} must be {bounds}, got {value!r}")
            if self.above is not None and not item > self.above:
                raise HParamsError(f"{where}: {self.name} must be > {self.above}, got {value!r}")
        return value

    def describe(self) -> str:
        parts = []
        if self.choices:
            parts.append("one of " + ", ".join(f"`{c}`" for c in self.choices))
        elif self.above is not None:
            parts.append(f"> {_num(self.above)}" + (f", <= {_num(self.high)}" if self.high is not None else ""))
        elif self.low is not None:
            parts.append(f"in [{_num(self.low)}, {_num(self.high)}]" if self.high is not None
                         else f">= {_num(self.low)}")
        return "; ".join(parts)


def _article(kind: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "True or False", "str": "a string",
            "list": "a list", "numbers": "a list of numbers", "callable": "a callable (e.g. !new: or !name:)", "any": "anything",
            "metrics": "a list of metric names or groups"}[kind]


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass
class HParams:
    """The hyperparameters of one Brain (see the module docstring)."""

    brain: str
    params: Sequence[HParam]
    index: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.index = {p.name: p for p in self.params}
        if len(self.index) != len(self.params):
            raise ValueError(f"{self.brain}: a hyperparameter is declared twice")

    def extend(self, brain: str, params: Iterable[HParam], drop: Iterable[str] = ()) -> HParams:
        """This declaration plus ``params`` (a redeclared name replaces the parent's), minus ``drop``."""
        new = {p.name: p for p in params}
        dropped = set(drop)
        kept = [new.pop(p.name, p) for p in self.params if p.name not in dropped]
        return HParams(brain, kept + list(new.values()))

    def names(self) -> list[str]:
        return list(self.index)

    def apply(self, hparams: SimpleNamespace, where: str | None = None) -> SimpleNamespace:
        """Check every declared key of ``hparams`` and fill in the defaults (in place); returns it."""
        where = where or getattr(hparams, "_hparams_file", None) or f"the hparams of {self.brain}"
        for param in self.params:
            if hasattr(hparams, param.name):
                value = param.check(getattr(hparams, param.name), where)
            elif param.default is REQUIRED:
                raise HParamsError(f"{where}: {self.brain} needs `{param.name}` ({param.doc or param.kind})")
            else:
                value = list(param.default) if isinstance(param.default, (list, tuple)) else param.default
            setattr(hparams, param.name, value)
        return hparams

    def check_values(self, hparams: dict, where: str) -> None:
        """Check the declared keys present in ``hparams`` (a loaded YAML) without changing them."""
        for param in self.params:
            if param.name in hparams:
                param.check(hparams[param.name], where)

    def unknown_keys(self, keys: Iterable[str], yaml_text: str, also_read: Iterable[str] = ()) -> list[str]:
        """YAML top-level ``keys`` that nothing reads (see the module docstring)."""
        referenced = set(re.findall(r"<([A-Za-z_][\w]*)(?:\[[^\]]*\])?>", yaml_text))
        known = set(self.index) | set(also_read) | referenced
        return [k for k in keys if not k.startswith("_") and k not in known]

    def closest(self, key: str, candidates: Iterable[str] = ()) -> list[str]:
        return difflib.get_close_matches(key, sorted(set(self.index) | set(candidates)), n=3, cutoff=0.6)


def markdown(declarations: Sequence[HParams]) -> str:
    """The declarations as Markdown tables (the body of docs/hparams.md)."""
    out = []
    for decl in declarations:
        out.append(f"## {decl.brain}\n\n| key | type | default | valid | meaning |\n|---|---|---|---|---|")
        for p in decl.params:
            default = "required" if p.default is REQUIRED else f"`{p.default!r}`"
            out.append(f"| `{p.name}` | {p.kind} | {default} | {p.describe()} | {p.doc} |")
        out.append("")
    return "\n".join(out)
