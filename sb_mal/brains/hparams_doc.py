"""Write docs/hparams.md from the Brains' declarations: ``python -m sb_mal.brains.hparams_doc``."""

from __future__ import annotations

from pathlib import Path

from sb_mal.brains import PARADIGMS
from sb_mal.brains.hparams import markdown

BRAINS = tuple(p.brain for p in PARADIGMS)

HEADER = """# Hyperparameters each Brain reads

Written by `python -m sb_mal.brains.hparams_doc` from the declarations in the code (`HPARAMS` of each
Brain, `sb_mal/brains/hparams.py`); a test fails when this page is stale. Every YAML key must be one
of these, a key the recipe skeleton reads (`modules`, `opt_class`, `epoch_counter`, `checkpointer`,
`prepare`, `*_data`, `*_dataloader_opts`, `output_folder`), a SpeechBrain run option, or referenced
by another entry of the file (`!ref <key>`); anything else is an error at start that names the key.
A declared key that a YAML does not define can be given on the command line (`--max_train_minutes=30`).

"""


def main(path: Path | None = None) -> Path:
    path = path or Path(__file__).resolve().parents[2] / "docs" / "hparams.md"
    path.write_text(HEADER + markdown([brain.HPARAMS for brain in BRAINS]), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(main())
