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

import logging
import os
import shutil
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

logger = logging.getLogger(__name__)

__all__ = ["load_recipe_hparams", "run_recipe"]


def load_recipe_hparams(argv: list[str]):
    """Parse SpeechBrain-style arguments and load the YAML; returns (hparams_file, run_opts, overrides, hparams)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    if not os.path.isfile(hparams_file):
        raise SystemExit(f"error: hparams file {hparams_file} not found")
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    for key in ("modules", "epoch_counter", "checkpointer", "train_data", "valid_data", "output_folder"):
        if key not in hparams:
            raise SystemExit(f"error: {hparams_file} defines no {key!r}")
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
    argv = sys.argv[1:] if argv is None else argv
    hparams_file, run_opts, overrides, hparams = load_recipe_hparams(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    ok = False
    try:
        brain = _run(brain_class, script, hparams_file, run_opts, overrides, hparams)
        ok = True
        return brain
    finally:
        _shutdown_process_group(wait_for_peers=ok)


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


def _run(brain_class, script, hparams_file, run_opts, overrides, hparams):
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    if script and sb.utils.distributed.if_main_process():
        shutil.copy(os.path.realpath(script), hparams["output_folder"])
    sb.utils.distributed.run_on_main(_prepare, kwargs={"hparams": hparams})
    datasets = {name: hparams[f"{name}_data"]() for name in ("train", "valid", "test") if hparams.get(f"{name}_data")}
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
        brain.evaluate(
            datasets["test"],
            max_key=hparams.get("ckpt_key", "pesq") if hparams.get("ckpt_key", "pesq") != "loss" else None,
            min_key="loss" if hparams.get("ckpt_key", "pesq") == "loss" else None,
            test_loader_kwargs=hparams.get("test_dataloader_opts", {}),
        )
    return brain
