"""The run skeleton every recipe shares: parse, prepare data on the main process, fit, test.

A recipe's ``train.py`` is then two lines::

    from sb_mal.run import run_recipe
    from sb_mal.brains import EnhanceBrain
    if __name__ == "__main__":
        run_recipe(EnhanceBrain, __file__)

The YAML declares, besides the usual Brain keys (``modules``, ``opt_class``, ``epoch_counter``,
``checkpointer``, ``compute_cost``...):

``prepare``
    optional callable (or list of callables, e.g. ``!name:`` partials) run once on the main
    process before the datasets are built (corpus download/preparation, manifests);
``train_data``, ``valid_data``, ``test_data``
    callables (``!name:``) returning the datasets; ``test_data`` is optional;
``train_dataloader_opts``, ``valid_dataloader_opts``, ``test_dataloader_opts``
    DataLoader keyword arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import shlex
import shutil
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

logger = logging.getLogger(__name__)

__all__ = ["RECIPE_KEYS", "load_recipe_hparams", "main", "run_recipe"]

#: YAML keys the recipe skeleton reads itself (besides those each Brain declares)
RECIPE_KEYS = ("modules", "opt_class", "epoch_counter", "checkpointer", "prepare", "train_data", "valid_data",
               "test_data", "train_dataloader_opts", "valid_dataloader_opts", "test_dataloader_opts", "output_folder",
               "ckpt_key", "seed")
_TOP_KEY = re.compile(r"^([A-Za-z_]\w*)\s*:", re.M)


def _recipe_hparams():
    """Keys many recipe YAMLs define for their own entries (data, loaders, optimisers): checked when
    present, so a value that cannot train is one line naming the file and key."""
    from sb_mal.brains.hparams import HParam, HParams

    return HParams("the recipe skeleton", [
        HParam("batch_size", "int", None, "examples per batch", low=1),
        HParam("number_of_epochs", "int", None, "epochs to train", low=1),
        HParam("segment_seconds", "float", None, "length of the training segments, seconds", above=0),
        HParam("lr", "float", None, "learning rate", above=0),
        HParam("g_lr", "float", None, "generator learning rate", above=0),
        HParam("d_lr", "float", None, "discriminator learning rate", above=0),
        HParam("weight_decay", "float", None, "optimiser weight decay", low=0),
        HParam("n_fft", "int", None, "STFT size", low=1),
        HParam("hop", "int", None, "STFT hop", low=1),
        HParam("examples_per_epoch", "int", None, "training mixtures per epoch", low=1),
        HParam("valid_limit", "int", None, "validation utterances used (null: all)", low=1),
        HParam("test_limit", "int", None, "test utterances used (null: all)", low=1),
        HParam("num_workers", "int", None, "data loader workers", low=0),
        HParam("snr_low", "float", None, "lowest mixing SNR, dB"),
        HParam("snr_high", "float", None, "highest mixing SNR, dB"),
        HParam("mix_seed", "int", None, "seed of the mixtures"),
    ])


def _check_plain_values(text: str, overrides: str, where: str) -> None:
    """The recipe-level checks on the file's plain values (references resolved, nothing constructed)."""
    import io

    from hyperpyyaml import resolve_references
    from ruamel.yaml import YAML

    from sb_mal.brains.hparams import HParamsError

    try:
        preview = YAML(typ="rt").load(resolve_references(io.StringIO(text), overrides or None))
    except Exception:  # noqa: BLE001 - a broken file: the real load below reports it
        return
    if not isinstance(preview, dict):
        return
    plain = {k: (float(v) if isinstance(v, float) else int(v) if isinstance(v, int) and not isinstance(v, bool)
                 else v) for k, v in preview.items() if isinstance(v, (int, float, str, bool)) or v is None}
    try:
        _check_finite(plain, where)
        _recipe_hparams().check_values(plain, where)
    except HParamsError as err:
        raise SystemExit(f"error: {err}") from None


def _check_finite(hparams: dict, where: str) -> None:
    """NaN or Inf in any top-level number (or list of numbers) of the YAML is an error naming the key."""
    import math

    from sb_mal.brains.hparams import HParamsError

    for key, value in hparams.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            raise HParamsError(f"{where}: {key} must be finite, got {value!r}")


def _run_option_names() -> set[str]:
    from speechbrain.utils.run_opts import RunOptions

    return {f.name for f in dataclasses.fields(RunOptions)}


def _typed_run_options(run_opts):
    """SpeechBrain's parser leaves run options whose default is None as strings (``--optimizer_step_limit=5``
    then fails at the first step comparing an int with "5"); returns them with their declared type."""
    import typing

    from speechbrain.utils.run_opts import RunOptions

    fixed = {}
    for name, hint in typing.get_type_hints(RunOptions).items():
        value = getattr(run_opts, name, None)
        kinds = [k for k in typing.get_args(hint) if k in (int, float)]
        if isinstance(value, str) and kinds:
            try:
                fixed[name] = kinds[0](value)
            except ValueError:
                raise SystemExit(f"error: --{name}={value}: expected {'an integer' if kinds[0] is int else 'a number'}") \
                    from None
    return dataclasses.replace(run_opts, **fixed) if fixed and dataclasses.is_dataclass(run_opts) else run_opts


def _split_overrides(overrides: str, file_keys: set[str], declared, hparams_file: str) -> tuple[str, dict]:
    """``(overrides of keys the file defines, {declared key absent from the file: override text})``.

    A command-line override of a key that neither the file nor the Brain knows is an error naming
    the closest valid keys.
    """
    kept, extra = [], {}
    for line in overrides.splitlines():
        match = _TOP_KEY.match(line)
        key = match.group(1) if match else None
        if key is None or key in file_keys:
            kept.append(line)
        elif declared is not None and key in declared.index:
            extra[key] = line
        else:
            close = difflib.get_close_matches(key, sorted(file_keys | set(declared.index if declared else ())), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SystemExit(f"error: --{key}: {hparams_file} has no key {key!r}"
                             f"{' and ' + declared.brain + ' does not read it' if declared else ''}{hint}")
    return "\n".join(kept), extra


def load_recipe_hparams(argv: list[str], brain_class=None):
    """Parse SpeechBrain-style arguments and load the YAML; returns (hparams_file, run_opts, overrides, hparams).

    With ``brain_class`` (whose ``HPARAMS`` declares what it reads), a key of the file that nothing
    reads is an error naming the closest valid keys, and a declared key the file does not define
    can still be given on the command line.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    run_opts = _typed_run_options(run_opts)
    if not os.path.isfile(hparams_file):
        raise SystemExit(f"error: hparams file {hparams_file} not found")
    with open(hparams_file, encoding="utf-8") as fin:
        text = fin.read()
    declared = getattr(brain_class, "HPARAMS", None)
    file_keys = set(_TOP_KEY.findall(text))
    overrides, extra = _split_overrides(overrides or "", file_keys, declared, hparams_file)
    _check_plain_values(text, overrides, hparams_file)  # before the YAML builds anything from them
    hparams = load_hyperpyyaml(text, overrides)
    for key, line in extra.items():
        hparams[key] = load_hyperpyyaml(line)[key]
    for key in ("modules", "epoch_counter", "checkpointer", "train_data", "valid_data", "output_folder"):
        if key not in hparams:
            raise SystemExit(f"error: {hparams_file} defines no {key!r}")
    if declared is not None:
        unknown = declared.unknown_keys(hparams, text, also_read=set(RECIPE_KEYS) | _run_option_names())
        if unknown:
            lines = []
            for key in unknown:
                close = declared.closest(key, RECIPE_KEYS)
                lines.append(f"  {key}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            raise SystemExit(f"error: {hparams_file}: key(s) that no part of the recipe reads ({declared.brain}, the "
                             "recipe skeleton, SpeechBrain's run options, or a !ref in the file):\n" + "\n".join(lines))
    from sb_mal.brains.hparams import HParamsError

    try:  # types, ranges, metric names and their optional packages: at start, before any data preparation
        _check_finite(hparams, hparams_file)
        _recipe_hparams().check_values(hparams, hparams_file)
        if declared is not None:
            declared.check_values(hparams, hparams_file)
    except HParamsError as err:
        raise SystemExit(f"error: {err}") from None
    hparams["_hparams_file"] = hparams_file
    return hparams_file, run_opts, overrides, hparams


def _prepare(hparams) -> None:
    steps = hparams.get("prepare")
    if steps is None:
        return
    for step in steps if isinstance(steps, (list, tuple)) else [steps]:
        step()


def run_recipe(brain_class, script: str | None = None, argv: list[str] | None = None):
    """Run a recipe end to end: prepare, fit, test. Returns the Brain.

    Arguments
    ---------
    brain_class : type
        The Brain to build (e.g. :class:`sb_mal.brains.EnhanceBrain`).
    script : str, optional
        The recipe file, copied into the output folder for the record.
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).
    """
    from sb_mal.audio import AudioError
    from sb_mal.brains.hparams import HParamsError

    from sb_mal.checkpoints import CheckpointWriteError
    from sb_mal.data.download import DownloadError
    from sb_mal.devices import DeviceError, check_device
    from sb_mal.models.ssl import SSLModelLoadError
    from sb_mal.fileio import FolderLock, FolderLockedError

    argv = sys.argv[1:] if argv is None else argv
    hparams_file, run_opts, overrides, hparams = load_recipe_hparams(argv, brain_class)
    try:
        check_device(run_opts.get("device"))
    except DeviceError as err:
        raise SystemExit(f"error: {err}") from None
    sb.utils.distributed.ddp_init_group(run_opts)
    ok = False
    lock = FolderLock(hparams["output_folder"])
    try:
        if sb.utils.distributed.if_main_process():  # one writer per run folder: a requeued twin stops here
            lock.acquire()
        brain = _run(brain_class, script, hparams_file, run_opts, overrides, hparams, argv)
        ok = True
        return brain
    except (HParamsError, AudioError, FolderLockedError, CheckpointWriteError) as err:  # one line naming it
        raise SystemExit(f"error: {err}") from None
    except DownloadError as err:  # the corpus could not be fetched: the recipe's own switch
        raise SystemExit(f"error: {err.with_hint('--download=False (the YAML key download)')}") from None
    except SSLModelLoadError as err:  # a hub id offline: the recipe's key that names the model
        raise SystemExit(f"error: {err}; the YAML key ssl_source chooses the model (--ssl_source=/a/local/folder)") \
            from None
    finally:
        lock.release()
        _shutdown_process_group(wait_for_peers=ok)


def main(brain_class, script: str | None = None) -> None:
    """A recipe script's entry point: :func:`run_recipe` on the command line's arguments.

    In a distributed launch (``torchrun``, ``WORLD_SIZE`` > 1) a process that finished cleanly flushes
    its logs and output and ends at once (``os._exit(0)``), without interpreter finalization: PyTorch
    keeps a process group that DDP has used alive past ``destroy_process_group`` (checked with torch
    2.14: a weak reference to the group outlives it once a ``DistributedDataParallel`` was built), and
    destroying gloo's worker threads during finalization can abort a finished rank ("terminate called
    without an active exception", SIGABRT), which the launcher reports as a failed run. Everything a
    recipe writes is on disk by then (checkpoints and results are written atomically).
    """
    run_recipe(brain_class, script)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(0)


def _shutdown_process_group(wait_for_peers: bool) -> None:
    """Tear the process group down explicitly: leaving it to interpreter exit lets gloo's
    worker threads be destroyed while still joinable, which aborts the process (SIGABRT).
    After a failure we do not wait at a barrier (the peers may never arrive)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if wait_for_peers:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def _atomic_checkpoints(hparams) -> None:
    """A plain SpeechBrain Checkpointer (e.g. from a user's YAML) writes checkpoints atomically too."""
    from speechbrain.utils.checkpoints import Checkpointer

    from sb_mal.checkpoints import AtomicCheckpointer

    if type(hparams.get("checkpointer")) is Checkpointer:
        hparams["checkpointer"].__class__ = AtomicCheckpointer


def _run(brain_class, script, hparams_file, run_opts, overrides, hparams, argv=()):
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    if sb.utils.distributed.if_main_process():
        if script:
            shutil.copy(os.path.realpath(script), hparams["output_folder"])
        from sb_mal.fileio import atomic_write_text

        command = " ".join(shlex.quote(a) for a in ["python", os.path.relpath(script) if script else "train.py",
                                                     *argv])
        atomic_write_text(os.path.join(hparams["output_folder"], "train_command.txt"), command + "\n")
    sb.utils.distributed.run_on_main(_prepare, kwargs={"hparams": hparams})
    datasets = {name: hparams[f"{name}_data"]() for name in ("train", "valid", "test") if hparams.get(f"{name}_data")}
    _atomic_checkpoints(hparams)
    brain = brain_class(
        modules=hparams["modules"],
        opt_class=hparams.get("opt_class"),
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams.get("train_dataloader_opts", {}),
        valid_loader_kwargs=hparams.get("valid_dataloader_opts", {}),
    )
    if "test" in datasets:
        # the Brain's own declared default when the YAML gives none; a Brain that declares no ckpt_key
        # (MetricGAN-OKD: one checkpoint per generator) chooses in its evaluate()
        key = brain.hparams.ckpt_key if "ckpt_key" in getattr(brain, "HPARAMS").index else None
        brain.evaluate(
            datasets["test"],
            max_key=None if key in ("loss", None) else key,
            min_key="loss" if key == "loss" else None,
            test_loader_kwargs=hparams.get("test_dataloader_opts", {}),
        )
    return brain
