"""Reading and writing weight files: plain tensors only, strict, with errors that name the file.

Every weight file sb_mal reads goes through :func:`load_state_file`, which passes
``weights_only=True`` to ``torch.load`` explicitly: PyTorch's ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
overrides only calls that leave the argument out, so a pickled payload in a checkpoint is never
run, whatever the environment says. :func:`load_weights` is the one strict load of a module
(DDP prefixes removed, every key matched, non-finite weights refused); :func:`save_state_file`
writes through a Python file object, so a full disk is an ``OSError`` naming the file and its cause
(``torch.save`` to a path reports only "file write failed").
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch

__all__ = ["WeightsError", "load_state_file", "load_strict", "load_weights", "save_state_file", "weights_only_recovery"]


class WeightsError(ValueError):
    """A weight file cannot be read or does not fit its module (the message names the file)."""


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_state_file(path, map_location="cpu"):
    """The object stored in ``path`` by ``torch.save``, read as plain tensors and containers only.

    SpeechBrain's key-renaming hooks for old checkpoints are applied, as its own loader does.

    Example
    -------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "w.ckpt")
    >>> torch.save({"w": torch.ones(2)}, p)
    >>> load_state_file(p)["w"]
    tensor([1., 1.])
    """
    from speechbrain.utils.checkpoints import hook_on_loading_state_dict_checkpoint

    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as err:
        raise WeightsError(f"{path}: missing") from err
    except Exception as err:  # noqa: BLE001 - unpickling raises many kinds; name the file and the cause
        if path.is_file() and path.stat().st_size == 0:
            cause = "empty file (a checkpoint cut short?)"
        elif "weights_only" in str(err) or "Unsupported global" in str(err):
            cause = "holds pickled Python objects, not only tensors; refused (weights are loaded with weights_only=True)"
        else:
            cause = f"truncated or not a PyTorch file ({_one_line(err)})"
        raise WeightsError(f"{path}: unreadable checkpoint, {cause}") from err
    return hook_on_loading_state_dict_checkpoint(state)


def load_weights(module: torch.nn.Module, path, built_by: str | None = None) -> None:
    """Load the ``state_dict`` in ``path`` into ``module`` strictly (no silent partial load).

    A state saved from a DDP wrapper (every key ``module.``-prefixed) loads too; non-finite
    weights are refused. ``built_by`` names what built ``module`` (for the mismatch message).
    """
    path = Path(path)
    state = load_state_file(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state_dict, found {type(state).__name__}")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        origin = f"the model built by {built_by}" if built_by else f"{type(module).__name__} built from its configuration"
        raise WeightsError(f"{path}: does not match {origin} ({_one_line(err, 300)})") from err
    bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{path}: non-finite weights in {', '.join(bad[:5])}")


def load_strict(module: torch.nn.Module, path) -> None:
    """Pretrainer hook that model folders name (``!name:sb_mal.inference.load_strict``): :func:`load_weights`.

    SpeechBrain's default parameter transfer is non-strict (missing keys are only logged) and
    unpickles whatever the file holds when the environment asks for it; this hook loads every key,
    plain tensors only, so stock SpeechBrain loading an exported folder is strict and safe too.
    """
    load_weights(module, path)


def weights_only_recovery(obj, path, end_of_epoch=None) -> None:
    """Checkpointer load hook: SpeechBrain's ``torch_recovery`` with :func:`load_state_file`."""
    del end_of_epoch
    state = load_state_file(path)
    try:
        obj.load_state_dict(state, strict=True)
    except TypeError:  # optimizers and schedulers take no `strict`
        obj.load_state_dict(state)


def save_state_file(obj, path) -> None:
    """Checkpointer save hook: ``torch.save(obj.state_dict())`` through a Python file object, so a
    write error is an ``OSError`` naming ``path`` and its cause (e.g. ENOSPC, no space left)."""
    from sb_mal.fileio import WriteError

    path = os.fspath(path)
    state = obj.state_dict() if hasattr(obj, "state_dict") else obj
    try:
        with open(path, "wb") as fout:
            torch.save(state, fout)
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as err:
        raise WriteError(err.errno, f"cannot write {path}: {err.strerror or err}") from err
    except RuntimeError as err:  # torch's writer wraps the file object's OSError
        cause = err.__cause__ or err.__context__
        code = getattr(cause, "errno", None)
        if code is None:
            raise WriteError(errno.EIO, f"cannot write {path}: {_one_line(err, 160)}") from err
        raise WriteError(code, f"cannot write {path}: {os.strerror(code)}") from err
