"""Export a training run to a self-contained inference folder (local or Hugging Face hub).

A run folder written by :class:`sb_mal.brains.EnhanceBrain` holds ``model_config.json`` (class and
constructor arguments of the model) and SpeechBrain checkpoints ``save/CKPT+*/`` with the model's
``state_dict`` in ``model.ckpt`` and validation metrics in ``CKPT.yaml``. :func:`export_run` picks
the best checkpoint by a metric, checks that its weights load *strictly* into the model built from
``model_config.json``, and writes::

    out_dir/
      hyperparams.yaml      inference-only: sample_rate, chunking, enhance_model, modules, pretrainer
      enhance_model.ckpt    the plain state_dict
      README.md             model card: model, run, validation metrics, how to load and publish
      export_info.json      provenance: run, checkpoint, its metadata, versions, SHA-256 of the weights
      custom.py             SpeechBrain's custom-interface convention: ``CustomInterface`` is sb_mal's
                            Enhancer, so ``foreign_class(source=out_dir)`` loads the folder too
      train_hyperparams.yaml  the training YAML of the run (if present; not used for loading)

The pretrainer has no ``paths:`` (files come from the folder or repo given as ``source``, so a local
folder never reaches the network) and loads through :func:`sb_mal.inference.load_strict`, so a
mismatched checkpoint fails instead of loading partially. The folder is built next to ``out_dir``,
loaded back with :class:`~sb_mal.inference.Enhancer` and compared with the run's model, then
renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
from pathlib import Path

import torch
import yaml

__all__ = ["ExportError", "export_run", "find_best_checkpoint"]

from sb_mal.fileio import temporary_folder  # noqa: E402
from sb_mal.pretrained import (  # noqa: E402  (ExportError, find_best_checkpoint are re-exported)
    ExportError,
    find_best_checkpoint,
    load_model_config,
    load_pretrained,
)
from sb_mal.inference.model_card import render_card  # noqa: E402
from sb_mal.weights import save_state_file  # noqa: E402

logger = logging.getLogger(__name__)

def _yaml_block(mapping: dict, indent: int = 4) -> str:
    text = yaml.safe_dump(mapping, default_flow_style=None, sort_keys=False).rstrip("\n")
    return "\n".join(" " * indent + line for line in text.splitlines())


_TASK_LINE = ("task: listening  # listening enhancement: input = clean speech, output = the same speech modified "
              "(at its power) to be played into noise, not a denoised signal\n")


def _render_hparams(cfg: dict, sample_rate: int, chunk_seconds: float, overlap_seconds: float, origin: str) -> str:
    kwargs = _yaml_block(cfg["kwargs"]) if cfg["kwargs"] else ""
    return f"""# Inference hyperparameters for sb_mal.inference.Enhancer (written by `sb-mal export`).
# Exported from {origin}.
# Load with: Enhancer.from_hparams(source=<this folder or hub id>, savedir=...)

sample_rate: {int(sample_rate)}
{_TASK_LINE if cfg.get("task") == "listening" else ""}chunk_seconds: {float(chunk_seconds)}    # long inputs are enhanced in chunks of this length
overlap_seconds: {float(overlap_seconds)}  # cross-faded overlap between chunks

enhance_model: !new:{cfg["class"]}
{kwargs}

modules:
    enhance_model: !ref <enhance_model>

# No `paths:`: enhance_model.ckpt is taken from the folder/repo given as `source`.
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        enhance_model: !ref <enhance_model>
    custom_hooks:
        enhance_model: !name:sb_mal.inference.load_strict
"""


_CUSTOM_INTERFACE = '''"""The interface of this model folder for SpeechBrain's ``foreign_class``.

    from speechbrain.inference.interfaces import foreign_class
    enhancer = foreign_class(source="<this folder or hub id>", pymodule_file="custom.py",
                             classname="CustomInterface")

It only names sb_mal's installed Enhancer (pip install sb_mal); no model code lives here.
"""

from sb_mal.inference import Enhancer as CustomInterface

__all__ = ["CustomInterface"]
'''


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fin:
        for block in iter(lambda: fin.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve_checkpoint(run_dir: Path, checkpoint) -> tuple[Path, dict]:
    path = Path(checkpoint)
    if not path.is_dir() and (run_dir / "save" / checkpoint).is_dir():
        path = run_dir / "save" / checkpoint
    if not path.is_dir():
        raise ExportError(f"{checkpoint}: checkpoint folder not found (also looked in {run_dir / 'save'})")
    meta_file = path / "CKPT.yaml"
    meta = yaml.safe_load(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    return path, meta if isinstance(meta, dict) else {}


def export_run(run_dir, out_dir, *, key: str = "pesq", mode: str = "max", checkpoint=None, overwrite: bool = False,
               recoverable: str = "model", chunk_seconds: float = 10.0, overlap_seconds: float = 0.5,
               trust_code: bool = False) -> Path:
    """Export the best checkpoint of a training run to an inference folder; returns ``out_dir``.

    Arguments
    ---------
    run_dir : str or PathLike
        The run's output folder (holds ``model_config.json`` and ``save/CKPT+*``).
    out_dir : str or PathLike
        Folder to create. An existing non-empty folder is replaced only with ``overwrite=True``.
    key, mode : str
        Metric in CKPT.yaml that picks the checkpoint, and ``"max"`` or ``"min"``.
    checkpoint : str or PathLike, optional
        A checkpoint folder (path, or name under ``run_dir/save``) to export instead of the best.
    recoverable : str
        Checkpointer name of the model (its weights are ``<recoverable>.ckpt``).
    chunk_seconds, overlap_seconds : float
        Chunking written to ``hyperparams.yaml``.
    trust_code : bool
        Export a model whose class (``model_config.json``) is outside :data:`sb_mal.trust.ALLOWED`,
        e.g. your own; the exported folder then needs ``trust_code`` to load too.

    Example
    -------
    >>> run = toy_run(getfixture("tmp_path"))  # a tiny run folder (a doctest helper of conftest.py)
    >>> out = export_run(run, run / "exported")
    >>> sorted(p.name for p in out.iterdir())
    ['README.md', 'custom.py', 'enhance_model.ckpt', 'export_info.json', 'hyperparams.yaml']
    """
    from sb_mal.inference.enhancer import Enhancer

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: run folder not found")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ExportError(f"{out_dir}: exists and is not an empty folder; pass overwrite=True (--overwrite)")
    cfg = load_model_config(run_dir)
    sample_rate = int(cfg.get("sample_rate", 16000))
    ckpt_dir = _resolve_checkpoint(run_dir, checkpoint)[0] if checkpoint is not None else None
    found = load_pretrained(run_dir, key=key, mode=mode, checkpoint=ckpt_dir, recoverable=recoverable,
                            trust_code=trust_code)
    model, ckpt_dir, meta = found.model, found.checkpoint, found.meta

    tmp = Path(temporary_folder(out_dir))  # removed by the next export into this folder if this one is killed
    try:
        save_state_file(model, tmp / "enhance_model.ckpt")
        origin = f"run folder {run_dir.name!r}, checkpoint {ckpt_dir.name}"
        (tmp / "hyperparams.yaml").write_text(_render_hparams(cfg, sample_rate, chunk_seconds, overlap_seconds,
                                                              origin), encoding="utf-8")
        (tmp / "custom.py").write_text(_CUSTOM_INTERFACE, encoding="utf-8")
        n_params = sum(p.numel() for p in model.parameters())
        (tmp / "README.md").write_text(render_card(run_dir, cfg, sample_rate, ckpt_dir.name, meta, key, mode, n_params),
                                       encoding="utf-8")
        if (run_dir / "hyperparams.yaml").is_file():
            shutil.copyfile(run_dir / "hyperparams.yaml", tmp / "train_hyperparams.yaml")
        import speechbrain

        import sb_mal

        info = {"run_dir": str(run_dir.resolve()), "checkpoint": ckpt_dir.name, "selected_by": None if checkpoint
                else {"key": key, "mode": mode}, "meta": meta, "model_config": cfg,
                "enhance_model_sha256": _sha256(tmp / "enhance_model.ckpt"),
                "versions": {"sb_mal": sb_mal.__version__, "speechbrain": speechbrain.__version__,
                             "torch": torch.__version__, "python": platform.python_version()}}
        (tmp / "export_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
        _check_roundtrip(Enhancer, tmp, model, sample_rate, trust_code)
        _move_into_place(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s (%s) to %s", ckpt_dir, {k: meta.get(k) for k in (key,)}, out_dir)
    return out_dir


def _check_roundtrip(enhancer_cls, folder: Path, model: torch.nn.Module, sample_rate: int, trust_code: bool) -> None:
    """Load ``folder`` as users will and check it computes what ``model`` computes."""
    enhancer = enhancer_cls.from_hparams(source=str(folder), savedir=None, run_opts={"device": "cpu"},
                                         trust_code=trust_code)
    loaded = enhancer.mods.enhance_model.state_dict()
    for name, value in model.state_dict().items():
        if name not in loaded or not torch.equal(loaded[name].cpu(), value):
            raise ExportError(f"{folder}: exported weights differ from the checkpoint at {name!r}")
    probe = torch.randn(2, max(sample_rate // 4, 256), generator=torch.Generator().manual_seed(0))
    model.requires_grad_(False)  # as Pretrained does: frozen parameters can take other (CPU) kernels
    with torch.no_grad():
        expected = model(probe)
        if enhancer.task == "listening":  # what the Enhancer adds for such a model: the equal-power rule
            from sb_mal.listening import equal_power

            expected = equal_power(expected, probe)
    diff = float((enhancer.enhance_batch(probe).cpu() - expected).abs().max())
    if not diff <= 1e-6 * max(1.0, float(expected.abs().max())):
        raise ExportError(f"{folder}: the exported model's output differs from the checkpoint's (max {diff:.3g})")


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    if not overwrite:  # appeared while exporting
        raise ExportError(f"{out_dir}: exists and is not an empty folder; pass overwrite=True (--overwrite)")
    old = Path(temporary_folder(out_dir))
    os.replace(out_dir, old / out_dir.name)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
