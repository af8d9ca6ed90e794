"""Training runs on disk: find checkpoints, rebuild the model from ``model_config.json``, load strictly.

A run folder (written by :class:`sb_mal.brains.EnhanceBrain`) holds ``model_config.json`` (class
and constructor arguments of the model) and ``save/CKPT+*/`` (SpeechBrain checkpoints whose
``CKPT.yaml`` carries the validation metrics). Export, MAL's ``init_from`` and the benchmarks all
go through these functions.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from pathlib import Path

import torch
import yaml

logger = logging.getLogger(__name__)

__all__ = ["ExportError", "build_model", "find_best_checkpoint", "load_model_config", "load_run_model", "load_verified"]

_META_SKIP = ("unixtime", "end-of-epoch")


class ExportError(ValueError):
    """A run folder or checkpoint cannot be used (names the file and what is wrong)."""


def _list_checkpoints(save_dir: Path) -> list[tuple[Path, dict]]:
    found = []
    for ckpt in sorted(save_dir.glob("CKPT*")):
        meta_file = ckpt / "CKPT.yaml"
        if ckpt.is_dir() and meta_file.is_file():
            with open(meta_file, encoding="utf-8") as fin:
                meta = yaml.safe_load(fin) or {}
            found.append((ckpt, meta if isinstance(meta, dict) else {}))
    return found


def find_best_checkpoint(save_dir, key: str = "pesq", mode: str = "max") -> tuple[Path, dict]:
    """The checkpoint folder under ``save_dir`` with the best ``key`` in its CKPT.yaml, and its meta.

    Checkpoints without a numeric ``key`` (e.g. intra-epoch ones) are ignored; NaN never wins;
    ties go to the most recent.

    Example
    -------
    >>> import tempfile, pathlib
    >>> save = pathlib.Path(tempfile.mkdtemp())
    >>> for name, pesq in [("CKPT+a", 1.5), ("CKPT+b", 2.5)]:
    ...     (save / name).mkdir()
    ...     _ = (save / name / "CKPT.yaml").write_text(f"pesq: {pesq}\\nunixtime: 0\\n")
    >>> path, meta = find_best_checkpoint(save)
    >>> path.name, meta["pesq"]
    ('CKPT+b', 2.5)
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        raise ExportError(f"{save_dir}: no checkpoint folder (expected the run's save/ folder)")
    checkpoints = _list_checkpoints(save_dir)
    if not checkpoints:
        raise ExportError(f"{save_dir}: no checkpoints (CKPT+*/CKPT.yaml) found")
    scored = [(c, m) for c, m in checkpoints if isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool)
              and not math.isnan(m[key])]
    if not scored:
        keys = sorted({k for _, m in checkpoints for k in m if k not in _META_SKIP})
        raise ExportError(f"{save_dir}: no checkpoint has a numeric {key!r} in its CKPT.yaml "
                          f"(keys found: {', '.join(keys) or 'none'}); choose another key or give the checkpoint")
    sign = 1.0 if mode == "max" else -1.0
    path, meta = max(scored, key=lambda cm: (sign * cm[1][key], cm[1].get("unixtime", 0)))
    if not math.isfinite(meta[key]):
        logger.warning("%s: best checkpoint %s has %s=%s (no checkpoint has a finite value)", save_dir, path.name,
                       key, meta[key])
    return path, meta


def load_model_config(run_dir: Path) -> dict:
    path = run_dir / "model_config.json"
    if not path.is_file():
        raise ExportError(f"{path}: missing; it is written by EnhanceBrain at the start of training "
                          "(class and constructor arguments of the model)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(cfg, dict) or not isinstance(cfg.get("class"), str) or not isinstance(cfg.get("kwargs"), dict):
        raise ExportError(f"{path}: expected {{'class': 'module.Class', 'kwargs': {{...}}}}, found {cfg!r}")
    if "sample_rate" not in cfg:
        logger.warning("%s: no sample_rate; assuming 16000 Hz", path)
    return cfg


def build_model(cfg: dict, where: Path) -> torch.nn.Module:
    module_name, _, class_name = cfg["class"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ExportError(f"{where}: cannot import model class {cfg['class']!r} ({err})") from err
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ExportError(f"{where}: {cfg['class']!r} is not a torch.nn.Module class")
    try:
        return cls(**cfg["kwargs"])
    except Exception as err:
        raise ExportError(f"{where}: cannot build {cfg['class']} from its kwargs ({err})") from err


def load_verified(model: torch.nn.Module, ckpt_file: Path) -> None:
    from speechbrain.utils.checkpoints import torch_patched_state_dict_load

    try:
        state = torch_patched_state_dict_load(ckpt_file, "cpu")
    except Exception as err:
        raise ExportError(f"{ckpt_file}: unreadable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise ExportError(f"{ckpt_file}: expected a state_dict, found {type(state).__name__}")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ExportError(f"{ckpt_file}: does not match {type(model).__name__} built from model_config.json: "
                          f"{err}") from err
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ExportError(f"{ckpt_file}: non-finite weights in {', '.join(bad[:5])}")


def load_run_model(run_dir, key: str = "pesq", mode: str = "max", checkpoint=None,
                   recoverable: str = "model") -> tuple[torch.nn.Module, Path, dict]:
    """Rebuild a run's model and load the best (or given) checkpoint strictly.

    Arguments
    ---------
    run_dir : path
        Training output folder (``model_config.json`` + ``save/``), or a checkpoint folder
        ``CKPT+*`` inside one, or a ``<recoverable>.ckpt`` file inside that.
    key, mode : str
        Which checkpoint is best (``CKPT.yaml`` meta) when a run folder is given.

    Returns
    -------
    (model, checkpoint_folder, meta)
    """
    path = Path(run_dir)
    if path.is_file():
        ckpt, path = path.parent, path.parent.parent.parent
    elif (path / "CKPT.yaml").is_file():
        ckpt, path = path, path.parent.parent
    else:
        ckpt = None
    if checkpoint is not None:
        ckpt = Path(checkpoint)
    if ckpt is None:
        ckpt, meta = find_best_checkpoint(path / "save", key, mode)
    else:
        with open(ckpt / "CKPT.yaml", encoding="utf-8") as fin:
            meta = yaml.safe_load(fin) or {}
    model = build_model(load_model_config(path), path)
    load_verified(model, ckpt / f"{recoverable}.ckpt")
    return model, ckpt, meta
