"""The model card (``README.md``) of an exported folder: what the Hugging Face hub shows as its page.

Its front matter carries SpeechBrain's tags (``audio-to-audio``, ``speech-enhancement``,
``speechbrain``) and the metrics; the page gives the test results of the run as SpeechBrain's own
model cards do (a "Release | Test PESQ | Test STOI ..." table, from the run's
``test_summary.json`` when it was measured on the exported checkpoint), the validation metrics of
the checkpoint, the training command (``train_command.txt``) and hyperparameters, how to use and
publish the folder, and the sb_mal version.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import yaml

from sb_mal.pretrained import _META_SKIP

__all__ = ["render_card"]

_TEST_ORDER = ("pesq", "stoi", "estoi", "si_sdr", "csig", "cbak", "covl", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak")


def _test_section(run_dir: Path, ckpt_name: str) -> tuple[str, str]:
    """(the test-results text, the front matter's metric names) from ``run_dir/test_summary.json``."""
    path = run_dir / "test_summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        means = {k: float(v) for k, v in summary["means"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "No test results: the run has no readable `test_summary.json`.", "- PESQ\n- STOI"
    tested = summary.get("checkpoint")
    if tested is not None and tested != ckpt_name:
        return (f"No test results for this checkpoint: the run's test set was scored on `{tested}`, not on the "
                f"exported `{ckpt_name}`.", "- PESQ\n- STOI")
    names = sorted(means, key=lambda k: (_TEST_ORDER.index(k) if k in _TEST_ORDER else len(_TEST_ORDER), k))
    header = "| Release | " + " | ".join(f"Test {_label(k)}" for k in names) + " |"
    rule = "|---|" + "---|" * len(names)
    row = f"| {datetime.date.today():%d-%m-%y} | " + " | ".join(f"{means[k]:.3f}" for k in names) + " |"
    n = summary.get("n_utterances")
    note = f"On {n} test utterances" + (f", checkpoint `{tested}`" if tested else "") + " (the run's `test_summary.json`)."
    return f"{header}\n{rule}\n{row}\n\n{note}", "\n".join(f"- {_label(k)}" for k in names)


def _label(metric: str) -> str:
    return {"si_sdr": "SI-SDR", "dnsmos_ovrl": "DNSMOS OVRL", "dnsmos_sig": "DNSMOS SIG",
            "dnsmos_bak": "DNSMOS BAK"}.get(metric, metric.upper())


def _training_section(run_dir: Path) -> str:
    parts = []
    command = run_dir / "train_command.txt"
    if command.is_file():
        parts.append(f"Trained with\n\n```bash\n{command.read_text(encoding='utf-8').strip()}\n```")
    hparams = run_dir / "hyperparams.yaml"
    if hparams.is_file():
        try:
            loaded = yaml.safe_load(hparams.read_text(encoding="utf-8"))
        except yaml.YAMLError:  # tags such as !new: make it unreadable to a safe loader: list the plain lines
            loaded = None
        if not isinstance(loaded, dict):
            loaded = {}
            for line in hparams.read_text(encoding="utf-8").splitlines():
                key, sep, value = line.partition(":")
                if sep and key and not key.startswith((" ", "#")) and value.strip() and "!" not in value:
                    loaded[key.strip()] = value.split("#")[0].strip()
        plain = {k: v for k, v in loaded.items() if isinstance(v, (str, int, float, bool)) and not str(k).startswith("_")}
        if plain:
            rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in plain.items())
            parts.append(f"Hyperparameters (the plain values of `train_hyperparams.yaml`, which holds them all):\n\n"
                         f"| key | value |\n|---|---|\n{rows}")
    return "\n\n".join(parts) or "The run folder recorded no training command or hyperparameters."


_LE_NOTE = ("A listening-enhancement model trained with sb_mal, a SpeechBrain plugin: its input is *clean* speech and "
            "its output is the same speech modified, at the input's power, to be better understood when played into a "
            "noisy place. It does not remove noise; do not give it noisy speech.")


def render_card(run_dir: Path, cfg: dict, sample_rate: int, ckpt_name: str, meta: dict, key: str, mode: str,
                n_params: int) -> str:
    """The model card (``README.md``) of a folder exported from ``run_dir`` (see the module docstring)."""
    import sb_mal

    run_name = run_dir.name
    metrics = {k: v for k, v in meta.items() if k not in _META_SKIP}
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    table = f"| metric | value |\n|---|---|\n{rows}" if rows else "(no metrics recorded in CKPT.yaml)"
    kwargs = json.dumps(cfg["kwargs"])
    test, test_metrics = _test_section(run_dir, ckpt_name)
    return f"""---
library_name: speechbrain
pipeline_tag: audio-to-audio
language: en
tags:
- audio-to-audio
- speech-enhancement
- speechbrain
- sb_mal
metrics:
{test_metrics}
---

# Speech enhancement: `{cfg["class"].rsplit(".", 1)[-1]}` (sb_mal)

{_LE_NOTE if cfg.get("task") == "listening" else "A waveform-to-waveform speech enhancer trained with sb_mal, a SpeechBrain plugin."}

- Model: `{cfg["class"]}` with `{kwargs}` ({n_params:,} parameters)
- Sample rate: {sample_rate} Hz, mono (other rates and channel counts are resampled and downmixed)
- Run: `{run_name}`, checkpoint `{ckpt_name}`, chosen by the {mode}imum of `{key}` on the validation set

## Results

{test}

Validation metrics of this checkpoint (its `CKPT.yaml`):

{table}

## Training

{_training_section(run_dir)}

## Use it

Needs the `sb_mal` package installed (it brings SpeechBrain); no code is downloaded.

```python
from sb_mal.inference import Enhancer

enhancer = Enhancer.from_hparams(source="path/to/this/folder")       # a local folder: no network
enhancer.enhance_file("noisy.wav", "enhanced.wav")                    # long files: chunked, bounded memory
enhanced = enhancer.enhance_batch(noisy_batch)                       # [batch, samples] at {sample_rate} Hz
```

From the Hugging Face hub (after uploading this folder, see below):

```python
enhancer = Enhancer.from_hparams(source="<user>/<repo>", savedir="pretrained_models/<repo>",
                                 run_opts={{"device": "cuda:0"}})
```

or from the command line: `sb-mal enhance noisy_folder/ -o enhanced_folder/ --source <folder or user/repo>`.
SpeechBrain's generic loader works too (`custom.py` names sb_mal's `Enhancer`):
`foreign_class(source="<folder or user/repo>", pymodule_file="custom.py", classname="CustomInterface")`.

On Windows, pass `local_strategy=LocalStrategy.COPY` (from `speechbrain.utils.fetching`) with a
`savedir` to copy files instead of symlinking them (sb_mal does this by default on Windows).

## Publish it

```bash
hf upload <user>/<repo> path/to/this/folder .    # the `hf` CLI of huggingface_hub
```

or `huggingface_hub.HfApi().upload_folder(folder_path="path/to/this/folder", repo_id="<user>/<repo>")`.

## Files

- `hyperparams.yaml`: inference hyperparameters (model class and arguments, chunking)
- `enhance_model.ckpt`: the model weights (a plain PyTorch `state_dict`)
- `export_info.json`: where the weights come from; `train_hyperparams.yaml`: the training recipe's YAML
- `custom.py`: the interface class for SpeechBrain's `foreign_class` (an import of sb_mal's `Enhancer`)

Exported with sb_mal {sb_mal.__version__}.
"""
