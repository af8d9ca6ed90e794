"""What a model folder may make Python do before the user says they trust it.

A HyperPyYAML file is a program: ``!new:``, ``!name:`` and ``!apply:`` import and call whatever
they name, ``!applyref:`` calls while references are resolved, ``!include:`` reads other files, and
a plain ``(...)`` scalar is parsed by PyYAML's full loader. SpeechBrain's ``from_hparams`` runs such
files as they come. sb_mal loads a model folder's ``hyperparams.yaml`` only through
:func:`load_model_hparams`, which first judges, without running anything from the file, what the
loader *would* do, and refuses the file unless every step is known to be harmless:

1. **Deny by default.** Only these tags pass: the YAML core tags (string, number, boolean, null,
   sequence, mapping, timestamp), ``!ref``, ``!PLACEHOLDER`` (an error unless an override replaces
   it), and ``!new:`` / ``!name:`` / ``!apply:`` naming an allowed object. ``!applyref:``,
   ``!include:``, ``!module:``, ``!copy``, ``!tuple``, ``!!python/...`` and every tag HyperPyYAML
   may add later are refused. Anchors,
   aliases and ``%TAG`` directives are refused (no "billion laughs").
2. **Bounded work.** The file is at most :data:`MAX_BYTES`; a ``!ref`` may not read attributes
   (``<a.b>``) or raise to a power, may multiply only numbers, and the text that references expand
   to is estimated before anything is expanded and refused past :data:`MAX_BYTES`.
3. **The object reached, not the spelling.** Every dotted name is resolved the way HyperPyYAML
   resolves it (``pydoc.locate``: import the longest module prefix, then walk attributes), but
   without importing any module outside the packages that hold allowed objects and without walking
   through any such module. The object reached must itself be allowed (:func:`is_allowed_object`):
   a ``torch.nn.Module`` subclass defined in one of :data:`MODEL_MODULES`, SpeechBrain's
   ``Pretrainer`` or ``AudioNormalizer``, a window function or dtype of torch, SpeechBrain's
   spectral-magnitude and resynthesis functions, or :func:`sb_mal.inference.load_strict`. So
   ``torch.nn.functional.torch.os.system`` is refused: it walks through ``os``, and it reaches
   ``os.system``.
4. **What runs is what was judged.** References are resolved (by HyperPyYAML itself) only after
   step 1-2, and the resolved text, exactly what the loader then reads, is judged again with
   HyperPyYAML's own parser and resolvers (plain ``(...)`` scalars become tuples there and are
   checked to hold plain values only).

``trust_code=True`` (``--trust-code`` on the command line) lifts the check for a folder the user has
read and trusts, e.g. one whose model class is their own.

What is checked: model folders and hub ids (the hub cache included) given to
:class:`sb_mal.inference.Enhancer`, :func:`sb_mal.checkpoints.load_pretrained` (and so MAL's and
PIFT's ``init_from`` and the losses' ``from_pretrained``), ``sb-mal export`` and every ``sb-mal``
command; and the class named by a folder's ``export_info.json`` or a run's ``model_config.json``.
Not checked: the recipe YAML a user runs (their own program).

Weights are always read with ``torch.load(weights_only=True)`` passed explicitly (so
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off; see :mod:`sb_mal.weights`).
"""

from __future__ import annotations

import io
import os
import re

from sb_mal.allowlist import (ALLOWED_OBJECTS, MODEL_MODULES, REEXPORTING_MODULES, UntrustedCodeError, _hint,
                              _judge_name, check_callable, is_allowed, is_allowed_object, resolve_name)

__all__ = ["ALLOWED_OBJECTS", "MAX_BYTES", "MODEL_MODULES", "REEXPORTING_MODULES", "UntrustedCodeError",
           "check_callable", "check_hparams_file", "is_allowed", "is_allowed_object", "load_model_hparams",
           "resolve_name"]

#: Largest hyperparameter file, and largest text its references may expand to.
MAX_BYTES = 1_000_000

_CORE = "tag:yaml.org,2002:"
_SOURCE_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "timestamp")}
_CALLING = ("!new:", "!name:", "!apply:")
_REF = re.compile(r"<[^>]*>")  # HyperPyYAML's reference syntax
_TUPLE = re.compile(r"^\(.*\)$")  # HyperPyYAML's implicit tuple resolver


def _tag(event_or_node) -> str | None:
    tag = getattr(event_or_node, "tag", None)
    if tag is None:
        return None
    return getattr(tag, "value", tag) if not isinstance(tag, str) else tag


def _line(mark) -> int:
    return (mark.line + 1) if mark is not None else 0


def _refuse(where: str, line: int, what: str) -> UntrustedCodeError:
    at = f"{where}, line {line}" if line else where
    return UntrustedCodeError(f"{at}: {what}; {_hint(where)}")


def _check_calling_tag(tag: str, where: str, line: int) -> None:
    prefix = next(p for p in _CALLING if tag.startswith(p))
    why = _judge_name(tag[len(prefix):])
    if why:
        raise _refuse(where, line, f"{tag} calls {tag[len(prefix):]!r}, which is outside the allow-list of what a "
                                   f"model folder may run ({why})")


def _check_source(text: str, where: str) -> None:
    """Step 1-2 on the file as written: tags, anchors, directives, and bounded references."""
    from ruamel.yaml import YAML
    from ruamel.yaml.events import AliasEvent, DocumentStartEvent, NodeEvent

    documents = 0
    try:
        for event in YAML(typ="rt").parse(io.StringIO(text)):
            line = _line(event.start_mark)
            if isinstance(event, DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _refuse(where, line, "more than one YAML document")
                if getattr(event, "tags", None):
                    raise _refuse(where, line, "a %TAG directive (tag shorthands are not allowed in a model folder)")
            if isinstance(event, AliasEvent) or (isinstance(event, NodeEvent) and event.anchor is not None):
                raise _refuse(where, line, "a YAML anchor or alias (&name / *name); write the value out or use !ref")
            tag = _tag(event)
            if tag is None or tag in _SOURCE_TAGS or tag in ("!ref", "!PLACEHOLDER"):  # a placeholder runs nothing:
                continue  # HyperPyYAML refuses the file unless an override replaced it
            if tag.startswith(_CALLING):
                _check_calling_tag(tag, where, line)
                continue
            raise _refuse(where, line, f"the tag {tag} is not allowed in a model folder")
    except UntrustedCodeError:
        raise
    except Exception as err:  # noqa: BLE001 - ruamel raises several kinds for broken YAML
        raise UntrustedCodeError(f"{where}: not valid YAML ({' '.join(str(err).split())[:300]})") from err
    _check_references(text, where)


def _check_references(text: str, where: str) -> None:
    """Refuse ``!ref`` forms that read attributes, exponentiate or repeat text, and bound their expansion."""
    from ruamel.yaml import YAML
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    try:
        root = YAML(typ="rt").compose(io.StringIO(text))
    except Exception as err:  # noqa: BLE001
        raise UntrustedCodeError(f"{where}: not valid YAML ({' '.join(str(err).split())[:300]})") from err
    if root is None:
        return
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def lookup(path: str, line: int):
        node = root
        for part in path.split("["):
            part = part.strip("]")
            if not isinstance(node, MappingNode):
                return None
            node = next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == part), None)
            if node is None:
                return None
        return node

    def is_number(node) -> bool:
        if not isinstance(node, ScalarNode):
            return False
        if _tag(node) == "!ref":
            targets = _REF.findall(node.value)
            return all(is_number(lookup(t[1:-1], 0)) for t in targets)
        return re.fullmatch(r"\s*[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", node.value) is not None

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise _refuse(where, _line(node.start_mark), "a circular !ref")
        busy.add(key)
        if isinstance(node, ScalarNode):
            total = len(node.value)
            if _tag(node) == "!ref":
                total = ref_size(node)
        elif isinstance(node, SequenceNode):
            total = sum(size(v) + 2 for v in node.value)
        elif isinstance(node, MappingNode):
            total = sum(size(k) + size(v) + 4 for k, v in node.value)
        else:
            total = 0
        busy.discard(key)
        if total > MAX_BYTES:
            raise _refuse(where, _line(node.start_mark), f"its references expand to more than {MAX_BYTES} bytes")
        sizes[key] = total
        return total

    def ref_size(node) -> int:
        value, line = node.value, _line(node.start_mark)
        targets = _REF.findall(value)
        if any("." in t for t in targets):
            raise _refuse(where, line, f"!ref {value} reads an attribute (<key.attribute>), which calls getattr")
        rest = _REF.sub("0", value)
        if "**" in rest:
            raise _refuse(where, line, f"!ref {value} raises to a power (unbounded work)")
        if "*" in rest and not all(is_number(lookup(t[1:-1], line)) for t in targets):
            raise _refuse(where, line, f"!ref {value} multiplies something that is not a number (unbounded work)")
        if "*" in rest and re.search(r"['\"]", rest):
            raise _refuse(where, line, f"!ref {value} multiplies a string (unbounded work)")
        total = len(value)
        for target in targets:
            found = lookup(target[1:-1], line)
            total += size(found) if found is not None else 0
        return total

    size(root)


def _check_resolved(text: str, where: str) -> None:
    """Step 4: the text the loader reads, parsed by HyperPyYAML's own loader class and resolvers."""
    import ruamel.yaml
    import yaml as pyyaml
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    class _Probe(ruamel.yaml.Loader):  # the class load_hyperpyyaml constructs with, composing only
        pass

    _Probe.add_implicit_resolver("!tuple", _TUPLE, first="(")
    where_r = f"{where} (after its references were resolved)"
    probe = _Probe(io.StringIO(text))
    try:
        root = probe.get_single_node()
    except Exception as err:  # noqa: BLE001
        raise UntrustedCodeError(f"{where_r}: not valid YAML ({' '.join(str(err).split())[:300]})") from err
    finally:
        probe.dispose()
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        tag = _tag(node)
        if tag == "!tuple" and isinstance(node, ScalarNode):
            _check_tuple(node.value, where_r, pyyaml)
        elif tag is not None and tag.startswith(_CALLING):
            _check_calling_tag(tag, where_r, 0)
        elif tag not in _SOURCE_TAGS and tag != _CORE + "merge":
            raise _refuse(where_r, 0, f"the tag {tag} is not allowed in a model folder")
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                stack.extend((k, v))


def _check_tuple(value: str, where: str, pyyaml) -> None:
    """A ``(...)`` scalar is parsed by PyYAML's *full* loader: it may hold untagged plain values only."""
    try:
        for event in pyyaml.parse("[" + value[1:-1] + "]", Loader=pyyaml.SafeLoader):
            if isinstance(event, pyyaml.AliasEvent) or getattr(event, "anchor", None) is not None or \
                    getattr(event, "tag", None) is not None:
                raise _refuse(where, 0, f"the tuple {value[:80]} holds a tag, anchor or alias")
    except pyyaml.YAMLError as err:
        raise _refuse(where, 0, f"the tuple {value[:80]} is not a plain list ({' '.join(str(err).split())[:120]})")


def check_hparams_file(path: str | os.PathLike, trust_code: bool = False, overrides=None) -> str:
    """The text of the hyperparameter file ``path`` with references resolved, once judged harmless.

    Raises :class:`UntrustedCodeError` naming the file (and line where it can) unless every tag
    is allowed (see the module docstring). With ``trust_code`` the file's own text is returned
    unjudged. ``overrides`` (the caller's own) are applied as HyperPyYAML applies them.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if not trust_code and size > MAX_BYTES:
            raise UntrustedCodeError(f"{path}: {size} bytes, more than a model folder's hyperparameters may hold "
                                     f"({MAX_BYTES}); {_hint(path)}")
        with open(path, encoding="utf-8") as fin:
            text = fin.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UntrustedCodeError(f"{path}: cannot be read ({err})") from err
    if trust_code:
        return text
    _check_source(text, path)
    from hyperpyyaml import resolve_references

    try:
        resolved = resolve_references(io.StringIO(text), overrides).getvalue()
    except Exception as err:  # noqa: BLE001 - a broken reference: name the file
        raise UntrustedCodeError(f"{path}: its references cannot be resolved ({' '.join(str(err).split())[:300]})") \
            from err
    if len(resolved) > MAX_BYTES:
        raise UntrustedCodeError(f"{path}: expands to more than {MAX_BYTES} bytes; {_hint(path)}")
    _check_resolved(resolved, path)
    if resolve_references(io.StringIO(resolved)).getvalue() != resolved:  # the loader resolves once more
        raise UntrustedCodeError(f"{path}: resolving its references twice gives different text; {_hint(path)}")
    return resolved


def load_model_hparams(path: str | os.PathLike, trust_code: bool = False, overrides=None,
                       overrides_must_match: bool = True) -> dict:
    """Load a model folder's hyperparameter file with HyperPyYAML, after :func:`check_hparams_file`.

    Example
    -------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "hyperparams.yaml"
    >>> _ = f.write_text("n: 4\\nlayer: !new:torch.nn.Linear\\n  in_features: !ref <n>\\n  out_features: 2\\n")
    >>> load_model_hparams(f)["layer"]
    Linear(in_features=4, out_features=2, bias=True)
    >>> _ = f.write_text("x: !apply:torch.nn.functional.torch.os.system ['true']\\n")
    >>> load_model_hparams(f)
    Traceback (most recent call last):
    ...
    sb_mal.allowlist.UntrustedCodeError: ...line 1: !apply:torch.nn.functional.torch.os.system calls ...
    """
    from hyperpyyaml import load_hyperpyyaml

    text = check_hparams_file(path, trust_code, overrides)
    if trust_code:
        with open(path, encoding="utf-8") as fin:
            return load_hyperpyyaml(fin, overrides or {}, overrides_must_match)
    return load_hyperpyyaml(text)
