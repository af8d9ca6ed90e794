#!/usr/bin/env python3
"""Model-as-Loss recipe: phase 1 with reconstruction losses (or start from a checkpoint), phase 2
adds the model's own encoder as the loss.

Usage::

    python recipes/mal/train.py hparams/mini/mal_dynamic.yaml
    python recipes/mal/train.py hparams/folders/mal_frozen.yaml --data_folder=../shared/data/devset
    python recipes/mal/train.py hparams/folders/mal_frozen_fe.yaml --data_folder=../shared/data/devset \\
        --init_from=results/baseline/folders/1234 --phase1_epochs=0
    python recipes/mal/train.py hparams/voicebank/mal_dynamic.yaml --data_folder=/data/voicebank

Variants (hparams ``variant``): frozen, frozen_fe, dynamic, and ssl_l1 (the WavLM deep-feature loss
baseline; set ``ssl_source`` to a hub id or a local folder).
"""

from sb_mal.brains import MALBrain
from sb_mal.run import main

if __name__ == "__main__":
    main(MALBrain, __file__)
