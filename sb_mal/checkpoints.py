"""Training-time checkpoints that are complete or absent, and never lost (:class:`AtomicCheckpointer`).

Pretrained loading lives in :mod:`sb_mal.pretrained` and :mod:`sb_mal.model_folder`; their public
names are re-exported here for existing imports (``from sb_mal.checkpoints import load_pretrained``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import yaml
from speechbrain.utils.checkpoints import Checkpointer

from sb_mal.model_folder import ExportError, ModelLoadError, one_line, resolve_source
from sb_mal.pretrained import (Pretrained, build_model, find_best_checkpoint, load_model_config, load_pretrained,
                               load_run_model, load_verified)

logger = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointer", "CheckpointWriteError", "ExportError", "ModelLoadError", "Pretrained", "build_model",
           "find_best_checkpoint", "load_model_config", "load_pretrained", "load_run_model", "load_verified",
           "one_line", "resolve_source"]


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

    def update_meta(self, checkpoint, changes: dict, remove: tuple = ()):
        """Complete the meta of a checkpoint already written (e.g. validation scores computed after it):
        ``changes`` set, ``remove`` keys dropped, its time stamp kept; ``CKPT.yaml`` replaced atomically.
        Returns the checkpoint with its new meta."""
        from sb_mal.fileio import atomic_write_text

        meta_file = Path(checkpoint.path) / "CKPT.yaml"
        meta = yaml.safe_load(meta_file.read_text(encoding="utf-8"))
        meta.update(changes)
        for key in remove:
            meta.pop(key, None)
        atomic_write_text(meta_file, "# yamllint disable\n" + yaml.dump(meta))  # as SpeechBrain writes it
        return self._checkpoint_type(checkpoint.path, meta, checkpoint.paramfiles)

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
                self.recovered = ckpt  # e.g. which checkpoint a test stage scored
                return ckpt
            except Exception as err:  # noqa: BLE001 - a damaged file raises anything; fall back and say so
                error = err
                logger.warning("checkpoint %s cannot be loaded (%s: %s); trying the previous one", ckpt.path,
                               type(err).__name__, err)
        raise ExportError(f"{self.checkpoints_dir}: no checkpoint could be loaded; the last error: "
                          f"{type(error).__name__}: {error}") from error
