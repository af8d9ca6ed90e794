#!/usr/bin/env python3
"""Baseline recipe: the enhancement backbone trained with reconstruction losses.

Usage::

    python recipes/baseline/train.py hparams/mini/baseline.yaml
    python recipes/baseline/train.py hparams/folders/baseline.yaml --data_folder=../shared/data/devset
    python recipes/baseline/train.py hparams/voicebank/baseline.yaml --data_folder=/data/voicebank
    torchrun --nproc_per_node=2 recipes/baseline/train.py hparams/... --distributed_backend=gloo

Any key of the YAML can be overridden on the command line (``--number_of_epochs=5``), and every
SpeechBrain run option works (``--debug``, ``--device=cuda:0``, ``--precision=bf16``).
"""

from sb_mal.brains import EnhanceBrain
from sb_mal.run import main

if __name__ == "__main__":
    main(EnhanceBrain, __file__)
