#!/usr/bin/env python3
"""Position-invariant fine-tuning of a pretrained enhancer with a loss on frozen SSL features.

The enhancer starts from a pretrained run (``init_from``); train one first with the baseline recipe
on the same data and the same model sizes, e.g.::

    python recipes/baseline/train.py hparams/mini/baseline.yaml          # -> results/baseline/mini/1234
    python recipes/pift/train.py hparams/mini/pift_softdtw.yaml          # init_from defaults to that run

    python recipes/baseline/train.py hparams/folders/baseline.yaml --data_folder=../shared/data/devset
    python recipes/pift/train.py hparams/folders/pift_softdtw.yaml --data_folder=../shared/data/devset \\
        --init_from=results/baseline/folders/1234 --ssl_source=/path/to/wavlm-base-plus

    python recipes/pift/train.py hparams/librispeech_demand/pift_pad.yaml --data_folder=/data/ls_demand \\
        --init_from=results/baseline/librispeech_demand/1234

``init_from`` may also be a ``CKPT+*`` folder, its ``model.ckpt``, or a folder written by
``sb-mal export``. Losses (one YAML per loss): ``pift_mse`` (frame-aligned SSL MSE, the baseline),
``pift_pad`` (zero-padded clean reference), ``pift_softdtw`` (speed-perturbed noisy input and
soft-DTW). ``ssl_source`` is any Hugging Face id or a local folder written by ``save_pretrained``.
"""

from sb_mal.brains import PositionInvariantBrain
from sb_mal.run import main

if __name__ == "__main__":
    main(PositionInvariantBrain, __file__)
