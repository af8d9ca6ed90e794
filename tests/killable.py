"""Run a recipe script with one checkpoint write slowed down, so a test can kill it there.

``python tests/killable.py RECIPE.py HPARAMS.yaml [overrides]`` runs the recipe as its own
``__main__``. With ``SB_MAL_SLOW_SAVE=N:MARKER`` in the environment, the first file written into
the N-th checkpoint folder of this process is created empty, ``MARKER`` is created, and the write
then sleeps for ten minutes: a test that waits for ``MARKER`` and kills the process group kills it
in the middle of a checkpoint write, every time (a 0-byte ``.ckpt``, as a real kill can leave).
"""

import os
import runpy
import sys
import time

import torch


def _slow_nth_checkpoint(nth: int, marker: str) -> None:
    real_save = torch.save
    folders: list[str] = []

    def save(obj, f, *args, **kwargs):
        path = os.fspath(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "name", ""))
        folder = os.path.dirname(path)
        if "CKPT+" in os.path.basename(folder) and folder not in folders:
            folders.append(folder)
            if len(folders) == nth:
                open(path, "wb").close()
                with open(marker, "w", encoding="utf-8") as fout:
                    fout.write(f"{path}\n")
                time.sleep(600)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


if __name__ == "__main__":
    spec = os.environ.get("SB_MAL_SLOW_SAVE")
    if spec:
        nth, _, marker = spec.partition(":")
        _slow_nth_checkpoint(int(nth), marker)
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
