"""Pretrained models from any source: run folders, checkpoints, exported folders, hub ids.

:func:`load_pretrained` is what MAL's and PIFT's ``init_from``, the losses' ``from_pretrained``,
``sb-mal export`` and the benchmarks use. A source is

- a run folder written by :class:`sb_mal.brains.EnhanceBrain`: ``model_config.json`` (class and
  constructor arguments of the model) and ``save/CKPT+*/`` (SpeechBrain checkpoints whose
  ``CKPT.yaml`` carries the validation metrics); the best checkpoint by ``key``/``mode`` whose
  weights load is used (past a damaged one, with a warning);
- a ``CKPT+*`` folder inside one, or its ``<recoverable>.ckpt`` file;
- a model folder (``hyperparams.yaml`` + ``enhance_model.ckpt``): one written by ``sb-mal export``
  (rebuilt from its ``export_info.json``), or one in SpeechBrain's enhancement layouts, loaded by
  :func:`sb_mal.model_folder.load_model_folder` (for a spectral-mask folder the feature function
  comes along as ``input_fn``);
- a Hugging Face hub id of such a folder (fetched into ``savedir`` or the hub cache).

Weights always load strictly and as plain tensors (:func:`sb_mal.weights.load_weights`); the class a
run folder or an export names is judged by :mod:`sb_mal.trust` unless ``trust_code``.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from sb_mal.model_folder import ExportError, ModelLoadError, load_model_folder, one_line, resolve_source

logger = logging.getLogger(__name__)

__all__ = ["ExportError", "ModelLoadError", "Pretrained", "build_model", "find_best_checkpoint", "load_model_config",
           "load_pretrained", "load_run_model", "load_verified", "resolve_source"]

_META_SKIP = ("unixtime", "end-of-epoch")


def _list_checkpoints(save_dir: Path) -> list[tuple[Path, dict]]:
    found = []
    for ckpt in sorted(save_dir.glob("CKPT*")):
        meta_file = ckpt / "CKPT.yaml"
        if ckpt.is_dir() and meta_file.is_file():
            try:
                with open(meta_file, encoding="utf-8") as fin:
                    meta = yaml.safe_load(fin) or {}
            except (OSError, ValueError, yaml.YAMLError) as err:
                logger.warning("skipping checkpoint %s: %s unreadable (%s)", ckpt, meta_file.name, err)
                continue
            found.append((ckpt, meta if isinstance(meta, dict) else {}))
    return found


def find_best_checkpoint(save_dir, key: str = "pesq", mode: str = "max", _ranked: bool = False):
    """The checkpoint folder under ``save_dir`` with the best ``key`` in its CKPT.yaml, and its meta.

    Checkpoints without a numeric ``key`` (e.g. intra-epoch ones) are ignored; NaN never wins;
    ties go to the most recent. (Whether its files load is not checked here; :func:`load_run_model`
    falls back to the next best when they do not.)

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
    ranked = sorted(scored, key=lambda cm: (sign * cm[1][key], _stamp(cm[1])), reverse=True)
    path, meta = ranked[0]
    if not math.isfinite(meta[key]):
        logger.warning("%s: best checkpoint %s has %s=%s (no checkpoint has a finite value)", save_dir, path.name,
                       key, meta[key])
    return (path, meta) if not _ranked else ranked


def _stamp(meta: dict) -> float:
    value = meta.get("unixtime", 0)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


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


def build_model(cfg: dict, where: Path, trust_code: bool = False) -> torch.nn.Module:
    """The model ``cfg`` names (``class``, ``kwargs``); without ``trust_code`` only an allow-listed class,
    found the way :mod:`sb_mal.trust` judges it (nothing outside the allowed packages is imported)."""
    if not trust_code:
        from sb_mal.trust import check_callable

        cls = check_callable(cfg["class"], str(where))
    else:
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
    """Load ``ckpt_file`` into ``model`` strictly, plain tensors only (:func:`sb_mal.weights.load_weights`);
    failures are :class:`ExportError` naming the file."""
    from sb_mal.weights import WeightsError, load_weights

    try:
        load_weights(model, ckpt_file)
    except WeightsError as err:
        raise ExportError(str(err)) from err


def load_run_model(run_dir, key: str = "pesq", mode: str = "max", checkpoint=None,
                   recoverable: str = "model", trust_code: bool = False) -> tuple[torch.nn.Module, Path, dict]:
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
        ranked = find_best_checkpoint(path / "save", key, mode, _ranked=True)
    else:
        with open(ckpt / "CKPT.yaml", encoding="utf-8") as fin:
            ranked = [(ckpt, yaml.safe_load(fin) or {})]
    model = build_model(load_model_config(path), path / "model_config.json", trust_code=trust_code)
    first_error = None
    for ckpt, meta in ranked:  # the best first; past one whose weights cannot be loaded, with a warning
        ckpt_file = ckpt / f"{recoverable}.ckpt"
        try:
            if not ckpt_file.is_file():
                present = sorted(p.name for p in ckpt.glob("*.ckpt"))
                raise ExportError(f"{ckpt_file}: missing (files in the checkpoint: {', '.join(present) or 'none'})")
            load_verified(model, ckpt_file)
        except ExportError as err:
            first_error = first_error or err
            if len(ranked) > 1:
                logger.warning("skipping checkpoint %s: %s", ckpt.name, err)
            continue
        return model, ckpt, meta
    if len(ranked) > 1:
        raise ExportError(f"{path / 'save'}: no checkpoint with a {key!r} could be loaded; the best: "
                          f"{first_error}") from first_error
    raise first_error


@dataclass
class Pretrained:
    """What :func:`load_pretrained` found: the model (eval mode, on the CPU), where from, its metadata."""

    model: torch.nn.Module
    where: str
    meta: dict = field(default_factory=dict)
    kind: str = "run"  # run, checkpoint, exported, model_folder, spectral_mask_folder
    input_fn: Callable | None = None  # the input features of a spectral-mask model folder
    sample_rate: int | None = None
    checkpoint: Path | None = None  # the CKPT+* folder, for run and checkpoint sources


_MODEL_FOLDER_FILES = ("hyperparams.yaml", "enhance_model.ckpt")


def load_pretrained(source, *, key: str = "pesq", mode: str = "max", checkpoint=None, recoverable: str = "model",
                    savedir=None, trust_code: bool = False) -> Pretrained:
    """Load a pretrained model from any source (see the module docstring).

    Arguments
    ---------
    source : str or Path
        Run folder, ``CKPT+*`` folder, ``<recoverable>.ckpt`` file, model folder or hub id.
    key, mode : str
        Which checkpoint of a run folder is best (``CKPT.yaml`` meta).
    checkpoint : path, optional
        A checkpoint folder to use instead of the best one.
    recoverable : str
        Checkpointer name of the model in a run (``generator_1`` for an OKD generator).
    savedir : path, optional
        Where a hub model's files are kept (default: the hub cache).
    trust_code : bool
        Let a model folder's ``hyperparams.yaml`` / ``export_info.json`` call what is outside
        :data:`sb_mal.trust.ALLOWED` (default: refused with :class:`sb_mal.trust.UntrustedCodeError`).

    Example
    -------
    >>> run = toy_run(getfixture("tmp_path"))  # a tiny run folder (a doctest helper of conftest.py)
    >>> found = load_pretrained(run)
    >>> found.kind, found.meta["pesq"], type(found.model).__name__
    ('run', 2.0, 'SpectralUNetSE')
    """
    kind, where = resolve_source(source)
    if kind == "local":
        path = where
        if path.is_dir() and all((path / f).is_file() for f in _MODEL_FOLDER_FILES):
            return _load_model_folder(path, trust_code=trust_code)
        model, ckpt, meta = load_run_model(path, key=key, mode=mode, checkpoint=checkpoint, recoverable=recoverable,
                                           trust_code=trust_code)
        kind = "checkpoint" if (path.is_file() or (path / "CKPT.yaml").is_file()) else "run"
        return Pretrained(model.eval(), f"checkpoint {ckpt}", meta, kind, sample_rate=_run_rate(ckpt), checkpoint=ckpt)
    return _load_model_folder(_fetch_hub(where, savedir), where=f"hub model {where}", trust_code=trust_code)


def _run_rate(ckpt: Path) -> int | None:
    cfg_file = ckpt.parent.parent / "model_config.json"
    try:
        return int(json.loads(cfg_file.read_text(encoding="utf-8")).get("sample_rate"))
    except (OSError, ValueError, TypeError):
        return None


def _fetch_hub(repo: str, savedir) -> Path:
    from speechbrain.utils.fetching import fetch

    folder = None
    for name in (*_MODEL_FOLDER_FILES, "export_info.json"):
        try:
            folder = Path(fetch(filename=name, source=repo, savedir=savedir)).parent
        except Exception as err:  # noqa: BLE001 - the hub raises many kinds; name the source instead
            if name == "export_info.json":
                continue
            raise ModelLoadError(f"hub model {repo}: could not fetch {name} ({one_line(err, 200)})") from err
    return folder


def _load_model_folder(folder: Path, where: str | None = None, trust_code: bool = False) -> Pretrained:
    where = where or f"model folder {folder}"
    info_file = folder / "export_info.json"
    if info_file.is_file():  # an sb-mal export: rebuilt from its model_config, the YAML is not run at all
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ExportError(f"{info_file}: not valid JSON ({err})") from err
        cfg = info.get("model_config") if isinstance(info, dict) else None
        if isinstance(cfg, dict) and isinstance(cfg.get("class"), str) and isinstance(cfg.get("kwargs"), dict):
            model = build_model(cfg, info_file, trust_code=trust_code)
            load_verified(model, folder / "enhance_model.ckpt")
            return Pretrained(model.eval(), where, dict(info.get("meta") or {}), "exported",
                              sample_rate=cfg.get("sample_rate"))
    loaded = load_model_folder(folder, trust_code=trust_code)
    model = loaded.hparams.get("enhance_model")
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"{loaded.where}: defines no `enhance_model` (a torch.nn.Module)")
    spectral = loaded.layout.layout == "spectral_mask"
    return Pretrained(model.eval(), where, {}, "spectral_mask_folder" if spectral else "model_folder",
                      input_fn=loaded.layout.input_fn, sample_rate=loaded.layout.sample_rate)
