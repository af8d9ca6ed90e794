"""What a model folder may make Python do before the user says they trust it.

A HyperPyYAML file is a program: ``!new:``, ``!name:``, ``!apply:`` and ``!module:`` import and
call whatever they name (``!apply:os.system [...]`` runs a shell command while the file loads).
SpeechBrain's ``from_hparams`` loads such files as they come. sb_mal reads a model folder's
``hyperparams.yaml`` (and the class named in its ``export_info.json``) *without running it* first
and refuses any callable outside :data:`ALLOWED`: the model, feature and pretrainer classes that
sb_mal's exports and SpeechBrain's enhancement folders use. ``trust_code=True`` (``--trust-code`` on
the command line) lifts the check for a folder the user has read and trusts, e.g. one whose model
class is their own.

What is checked: model folders and hub ids given to :class:`sb_mal.inference.Enhancer`,
:func:`sb_mal.checkpoints.load_pretrained` and the ``sb-mal`` commands. Not checked: the recipe
YAML a user runs (their own program) and their run folders (``model_config.json`` names a class
that must be a ``torch.nn.Module``; it is imported, as training did).

Weights are read with ``torch.load(weights_only=True)`` (SpeechBrain's loader under torch >= 2.6),
which does not unpickle arbitrary objects.
"""

from __future__ import annotations

import os
import re

import yaml

__all__ = ["ALLOWED", "UntrustedCodeError", "check_callable", "check_hparams_file", "is_allowed"]

#: Dotted-name prefixes a model folder may import and call. A prefix ending in ``.`` covers a
#: package; otherwise it is one exact name.
ALLOWED = (
    "sb_mal.models.",
    "sb_mal.losses.",
    "sb_mal.inference.load_strict",
    "speechbrain.lobes.models.",
    "speechbrain.nnet.",
    "speechbrain.processing.",
    "speechbrain.dataio.preprocess.AudioNormalizer",
    "speechbrain.utils.parameter_transfer.Pretrainer",
    "torch.nn.",
    "torch.hamming_window",
    "torch.hann_window",
    "torch.blackman_window",
    "torch.bartlett_window",
    "torch.kaiser_window",
    "torch.float32",
    "torch.float64",
    "torch.tensor",
    "torch.zeros",
    "torch.ones",
    "torchaudio.transforms.",
)
#: Names under an allowed package that still read files, fetch or import by path.
_DENIED = re.compile(r"(^|\.)(load|hub|from_pretrained|from_hparams|fetch|download)", re.IGNORECASE)
_CALLING_TAGS = ("!new:", "!name:", "!apply:", "!module:")


class UntrustedCodeError(ValueError):
    """A model folder asks to run code outside the allow-list (the message names file, line and entry)."""


def is_allowed(name: str) -> bool:
    """Whether a model folder may call the dotted ``name`` without ``trust_code``.

    Example
    -------
    >>> is_allowed("speechbrain.lobes.models.MetricGAN.EnhancementGenerator"), is_allowed("os.system")
    (True, False)
    >>> is_allowed("torch.nn.Module.load_state_dict")
    False
    """
    if not any(name == p or (p.endswith(".") and name.startswith(p)) for p in ALLOWED):
        return False
    return name == "sb_mal.inference.load_strict" or not _DENIED.search(name.split(".", 1)[1] if "." in name else name)


def _hint(where: str) -> str:
    return (f"if you trust {where}, pass trust_code=True (command line: --trust-code); "
            "see 'What a model folder may run' in the README")


def check_callable(name: str, where: str, trust_code: bool = False) -> None:
    """Refuse a class or function name outside the allow-list (e.g. from ``export_info.json``)."""
    if not trust_code and not is_allowed(name):
        raise UntrustedCodeError(f"{where}: names {name!r}, which is outside the allow-list of what a model folder "
                                 f"may run; {_hint(where)}")


class _TagRecorder(yaml.SafeLoader):
    """Parses a HyperPyYAML file without constructing anything, recording every tag."""


def _record(loader: _TagRecorder, suffix: str, node: yaml.Node):
    loader.found.append((node.tag, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        loader.construct_sequence(node, deep=True)
    return None


_TagRecorder.add_multi_constructor("!", _record)
_TagRecorder.add_multi_constructor("tag:", _record)


def check_hparams_file(path: str | os.PathLike, trust_code: bool = False) -> None:
    """Refuse a hyperparameter file whose tags call anything outside :data:`ALLOWED`.

    ``!include:`` is refused too (it would read another file unchecked). Nothing in the file is
    imported or called by the check.
    """
    if trust_code:
        return
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fin:
            loader = _TagRecorder(fin)
            loader.found = []
            try:
                while loader.check_data():
                    loader.get_data()
            finally:
                loader.dispose()
    except yaml.YAMLError as err:
        raise UntrustedCodeError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise UntrustedCodeError(f"{path}: cannot be read ({err})") from err
    for tag, line in loader.found:
        if not tag.startswith("!"):  # e.g. !!python/object/apply:..., which a full YAML loader would call
            raise UntrustedCodeError(f"{path}, line {line}: the YAML tag {tag} is not allowed in a model folder; "
                                     f"{_hint(path)}")
        if tag.startswith("!include:"):
            raise UntrustedCodeError(f"{path}, line {line}: {tag} reads another file; {_hint(path)}")
        for prefix in _CALLING_TAGS:
            if tag.startswith(prefix) and not is_allowed(tag[len(prefix):]):
                raise UntrustedCodeError(f"{path}, line {line}: {tag} calls {tag[len(prefix):]!r}, which is outside "
                                         f"the allow-list of what a model folder may run; {_hint(path)}")
