"""The one pretrained-model loader: run folders, checkpoints, exported folders, hub ids.

:func:`load_pretrained` is what MAL's and PIFT's ``init_from``, the losses' ``from_pretrained``,
``sb-mal export`` and the benchmarks use. A source is

- a run folder written by :class:`sb_mal.brains.EnhanceBrain`: ``model_config.json`` (class and
  constructor arguments of the model) and ``save/CKPT+*/`` (SpeechBrain checkpoints whose
  ``CKPT.yaml`` carries the validation metrics); the best checkpoint by ``key``/``mode`` is used;
- a ``CKPT+*`` folder inside one, or its ``<recoverable>.ckpt`` file;
- a model folder (``hyperparams.yaml`` + ``enhance_model.ckpt``): one written by ``sb-mal export``
  (rebuilt from its ``export_info.json``), or one in SpeechBrain's enhancement layouts (its
  ``enhance_model``; for a spectral-mask folder the feature function comes along as ``input_fn``);
- a Hugging Face hub id of such a folder (fetched into ``savedir`` or the hub cache).

Weights always load strictly (SpeechBrain's pretrainer loads non-strictly, so a partial load would
pass silently).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from speechbrain.utils.checkpoints import Checkpointer

logger = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointer", "CheckpointWriteError", "ExportError", "ModelLoadError", "Pretrained", "build_model", "find_best_checkpoint",
           "load_model_config", "load_pretrained", "load_run_model", "load_verified", "resolve_source", "toy_run"]

_META_SKIP = ("unixtime", "end-of-epoch")


class ExportError(ValueError):
    """A run folder or checkpoint cannot be used (names the file and what is wrong)."""


class ModelLoadError(ExportError):
    """A model source cannot be loaded: one line naming the file (or hub id) and the cause."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve_source(source) -> tuple[str, object]:
    """``("local", Path)`` for an existing file or folder, ``("hub", id)`` for a hub id ``org/name``.

    A path that does not exist is an error here, not a hub lookup: only a string of the form
    ``org/name`` (no leading ``.``, ``/`` or ``~``) that is not a local path is taken as a hub id.

    Example
    -------
    >>> resolve_source("speechbrain/metricgan-plus-voicebank")
    ('hub', 'speechbrain/metricgan-plus-voicebank')
    >>> resolve_source("./no/such/folder")
    Traceback (most recent call last):
    ...
    sb_mal.checkpoints.ModelLoadError: ./no/such/folder: no such file or folder (and not a hub id of the form org/name)
    """
    if not isinstance(source, (str, os.PathLike)):  # e.g. SpeechBrain's FetchSource
        return "hub", source
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        return "local", path
    if _HUB_ID.match(text):
        return "hub", text
    raise ModelLoadError(f"{text}: no such file or folder (and not a hub id of the form org/name)")


def one_line(err: BaseException, limit: int = 400) -> str:
    """``Type: message`` on one line (whitespace folded), at most ``limit`` characters."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def toy_run(folder) -> Path:
    """A tiny run folder (model_config.json and one checkpoint with ``pesq: 2.0``) for examples and tests."""
    from speechbrain.utils.checkpoints import Checkpointer

    from sb_mal.models import SpectralUNetSE

    run = Path(folder)
    model = SpectralUNetSE(channels=(4,), bottleneck_dim=8, rnn_layers=1)
    run.mkdir(parents=True, exist_ok=True)
    (run / "model_config.json").write_text(json.dumps({"class": "sb_mal.models.SpectralUNetSE", "kwargs": model.config,
                                                       "sample_rate": 16000}))
    Checkpointer(run / "save", {"model": model}).save_checkpoint(meta={"pesq": 2.0})
    return run


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
    >>> run = toy_run(getfixture("tmp_path"))
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
    from sb_mal.trust import UntrustedCodeError, load_model_hparams

    where = where or f"model folder {folder}"
    info_file = folder / "export_info.json"
    if info_file.is_file():
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
    hp_file = folder / "hyperparams.yaml"
    try:
        hparams = load_model_hparams(hp_file, trust_code)
    except UntrustedCodeError:
        raise
    except Exception as err:  # noqa: BLE001 - a broken YAML: name the file
        raise ModelLoadError(f"{hp_file}: cannot be loaded ({one_line(err, 300)})") from err
    model = hparams.get("enhance_model") if isinstance(hparams, dict) else None
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"{hp_file}: defines no `enhance_model` (a torch.nn.Module)")
    load_verified(model, folder / "enhance_model.ckpt")
    spectral = all(k in hparams for k in ("compute_stft", "spectral_magnitude"))
    input_fn = None
    if spectral:
        from sb_mal.losses.model_taps import Log1pMagnitude

        input_fn = Log1pMagnitude(hparams["compute_stft"], spectral_magnitude=hparams["spectral_magnitude"])
    rate = hparams.get("sample_rate") or getattr(hparams.get("compute_stft"), "sample_rate", None)
    kind = "spectral_mask_folder" if spectral else "model_folder"
    return Pretrained(model.eval(), where, {}, kind, input_fn=input_fn, sample_rate=rate)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the message names the folder and the cause, e.g. a full disk);
    the checkpoints written before are intact."""

    def __str__(self) -> str:
        return str(self.strerror)


class AtomicCheckpointer(Checkpointer):
    """SpeechBrain's Checkpointer, with checkpoints that are complete or absent, and never lost.

    - **Atomic writes.** SpeechBrain writes ``CKPT.yaml`` first and the ``.ckpt`` files after it, in
      place: a run killed in between leaves a folder that looks complete and cannot be loaded. Here a
      checkpoint is written into a hidden staging folder (``.staging/`` inside ``checkpoints_dir``;
      leftovers of killed writes are removed at the next save) and renamed into place once every file
      is written. A failed write (a full disk) is a :class:`CheckpointWriteError` naming the cause;
      the staging folder is removed and the earlier checkpoints stay as they were.
    - **Plain tensors.** Modules, optimizers, schedulers and scalers are written through a Python
      file object (so a write error names its cause) and read with ``weights_only=True``
      (:mod:`sb_mal.weights`), whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says.
    - **Recovery falls back.** From the preferred checkpoint to the next when one cannot be read or
      loaded (a damaged or foreign folder), with a warning naming it; if none loads, the last error.
    - **Pruning never loses weights.** The checkpoint just written is never deleted, and only
      checkpoints whose files can be loaded take part in choosing what to keep: a damaged checkpoint
      that claims the best score, or a time stamp ahead of the clock (a run folder copied from another
      machine), can no longer push good checkpoints out. It is left where it is (never used, never
      counted), with a warning.

    The YAMLs in ``hparams/`` name this class; :func:`sb_mal.run.run_recipe` also upgrades a plain
    SpeechBrain ``Checkpointer`` of any other YAML to it.
    """

    STAGING = ".staging"

    def _plain_tensor_hooks(self) -> None:
        """Give every recoverable that SpeechBrain would ``torch.save``/``torch.load`` the hooks of
        :mod:`sb_mal.weights` (recoverables may come from the constructor, ``add_recoverable`` or a Brain)."""
        from speechbrain.utils.checkpoints import (DEFAULT_LOAD_HOOKS, DEFAULT_SAVE_HOOKS, get_default_hook,
                                                   torch_recovery, torch_save)
        from speechbrain.utils.distributed import main_process_only

        from sb_mal.weights import save_state_file, weights_only_recovery

        for name, obj in self.recoverables.items():
            if name not in self.custom_load_hooks and get_default_hook(obj, DEFAULT_LOAD_HOOKS) is torch_recovery:
                self.custom_load_hooks[name] = weights_only_recovery
            if name not in self.custom_save_hooks and get_default_hook(obj, DEFAULT_SAVE_HOOKS) is torch_save:
                self.custom_save_hooks[name] = main_process_only(save_state_file)

    def load_checkpoint(self, checkpoint):
        """As SpeechBrain's, reading plain tensors only."""
        self._plain_tensor_hooks()
        return super().load_checkpoint(checkpoint)

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):  # noqa: B006
        from speechbrain.utils.distributed import ddp_barrier, if_main_process

        self._plain_tensor_hooks()
        final_root = Path(self.checkpoints_dir)
        staging = final_root / self.STAGING
        if name is None:  # SpeechBrain's time-stamped name, unique among the final folders (not the staging one)
            name = self._new_checkpoint_dirpath().name.split("+", 1)[1]
        try:
            if if_main_process():
                shutil.rmtree(staging, ignore_errors=True)  # what a killed write left behind
                staging.mkdir(parents=True, exist_ok=True)
            self.checkpoints_dir = staging
            try:
                saved = super().save_checkpoint(meta=meta, end_of_epoch=end_of_epoch, name=name,
                                                verbosity=logging.DEBUG)
            finally:
                self.checkpoints_dir = final_root
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            cause = os.strerror(err.errno) if err.errno else str(err)
            raise CheckpointWriteError(err.errno, f"cannot write a checkpoint in {final_root}: {cause} ({err}; the "
                                                  "checkpoints written before are intact)") from err
        ddp_barrier()  # every process has written its files
        if saved is None:  # not the main process
            return None
        target = final_root / saved.path.name
        if target.exists():  # a custom name used twice, or the same second: keep both
            target = final_root / f"{saved.path.name}+{int(time.time() * 1e6) % 1_000_000:06d}"
        os.replace(saved.path, target)
        self._fresh = target
        logger.log(verbosity, "Saved an %s checkpoint in %s", "end-of-epoch" if end_of_epoch else "intra-epoch", target)
        return type(saved)(target, saved.meta, {k: target / Path(v).name for k, v in saved.paramfiles.items()})

    def list_checkpoints(self):
        """The checkpoints whose ``CKPT.yaml`` can be read (others are skipped with a warning)."""
        root = Path(self.checkpoints_dir)
        found = []
        for folder in sorted(root.glob("CKPT+*")) if root.is_dir() else []:
            meta_file = folder / "CKPT.yaml"
            if not (folder.is_dir() and meta_file.is_file()):
                continue
            try:
                meta = yaml.safe_load(meta_file.read_text(encoding="utf-8"))
                if not isinstance(meta, dict):
                    raise ValueError(f"expected a mapping, found {type(meta).__name__}")
            except (OSError, ValueError, yaml.YAMLError) as err:
                logger.warning("skipping checkpoint %s: %s unreadable (%s)", folder, meta_file.name, err)
                continue
            files = {p.stem: p for p in folder.iterdir() if p.suffix == ".ckpt"}
            found.append(self._checkpoint_type(folder, meta, files))
        return found

    @staticmethod
    def _checkpoint_type(path, meta, paramfiles):
        from speechbrain.utils.checkpoints import Checkpoint

        return Checkpoint(path, meta, paramfiles)

    def loadable(self, ckpt) -> str | None:
        """Why checkpoint ``ckpt`` cannot be loaded into this checkpointer's recoverables (None if it can).

        Every required recoverable must have its file, readable as plain tensors (checked once per
        file version)."""
        self._plain_tensor_hooks()
        cache = self.__dict__.setdefault("_verified", {})
        if "end-of-epoch" not in ckpt.meta:
            return "its CKPT.yaml lacks 'end-of-epoch'"
        for name in self.recoverables:
            path = ckpt.paramfiles.get(name)
            if path is None or not Path(path).is_file():
                if self.optional_recoverables.get(name) or self.allow_partial_load or "dataloader" in name:
                    continue
                return f"{name}.ckpt is missing"
            stat = Path(path).stat()
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            if key not in cache:
                cache[key] = self._read_error(name, path)
            if cache[key]:
                return cache[key]
        return None

    def _read_error(self, name, path) -> str | None:
        from speechbrain.utils.checkpoints import DEFAULT_LOAD_HOOKS, get_default_hook

        from sb_mal.weights import WeightsError, load_state_file, weights_only_recovery

        hook = self.custom_load_hooks.get(name) or get_default_hook(self.recoverables[name], DEFAULT_LOAD_HOOKS)
        if hook is not weights_only_recovery:  # e.g. an EpochCounter's text file: its size is all we can judge
            return None if Path(path).stat().st_size > 0 else f"{name}.ckpt is empty"
        try:
            load_state_file(path)
        except WeightsError as err:
            return str(err)
        return None

    def delete_checkpoints(self, *, num_to_keep=1, min_keys=None, max_keys=None, importance_keys=None,
                           ckpt_predicate=None, verbosity=logging.INFO):
        """SpeechBrain's pruning, over the loadable checkpoints only, never deleting the one just written."""
        from speechbrain.utils.checkpoints import ckpt_recency
        from speechbrain.utils.distributed import ddp_barrier, if_main_process

        if num_to_keep < 0:
            raise ValueError("Number of checkpoints to keep must be positive.")
        importance_keys = [ckpt_recency] if importance_keys is None else importance_keys
        fresh = getattr(self, "_fresh", None)
        usable, damaged = [], []
        for ckpt in self.list_checkpoints():
            if ckpt_predicate is not None and not ckpt_predicate(ckpt):
                continue
            why = None if ckpt.path == fresh else self.loadable(ckpt)
            (damaged if why else usable).append((ckpt, why))
        warned = self.__dict__.setdefault("_warned", set())
        for ckpt, why in damaged:
            if ckpt.path not in warned:
                warned.add(ckpt.path)
                logger.warning("checkpoint %s cannot be loaded (%s); it is neither used nor counted when choosing "
                               "which checkpoints to keep, and is left in place", ckpt.path, why)
        paths = {c.path for c, _ in usable}

        def in_usable(c):
            return c.path in paths

        keys = [{"min_key": k} for k in min_keys or []] + [{"max_key": k} for k in max_keys or []]
        keys += [{"importance_key": k} for k in importance_keys]
        protected = {fresh}
        candidates = set()
        for kwargs in keys:
            candidates.update(c.path for c in self.find_checkpoints(ckpt_predicate=in_usable, **kwargs))
            protected.update(c.path for c in self.find_checkpoints(max_num_checkpoints=num_to_keep,
                                                                   ckpt_predicate=in_usable, **kwargs))
        ddp_barrier()
        if if_main_process():
            for ckpt, _ in usable:
                if ckpt.path in candidates and ckpt.path not in protected:
                    Checkpointer._delete_checkpoint(ckpt, verbosity=verbosity)
        ddp_barrier()

    def recover_if_possible(self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None):
        """Load the preferred checkpoint; if it cannot be loaded, the next one (warning naming it)."""
        candidates = self.find_checkpoints(importance_key=importance_key, max_key=max_key, min_key=min_key,
                                           ckpt_predicate=ckpt_predicate)
        if not candidates:
            logger.info("Would load a checkpoint here, but none found yet.")
            return None
        error = None
        for ckpt in candidates:
            try:
                self.load_checkpoint(ckpt)
                return ckpt
            except Exception as err:  # noqa: BLE001 - a damaged file raises anything; fall back and say so
                error = err
                logger.warning("checkpoint %s cannot be loaded (%s: %s); trying the previous one", ckpt.path,
                               type(err).__name__, err)
        raise ExportError(f"{self.checkpoints_dir}: no checkpoint could be loaded; the last error: "
                          f"{type(error).__name__}: {error}") from error
