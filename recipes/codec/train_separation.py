#!/usr/bin/env python3
"""Small-network separation recipe: a U-Net of the P1..P5 ladder trained with L1 or the codec loss.

Usage::

    python recipes/codec/train_separation.py hparams/folders/separation_speech.yaml \
        --data_folder=../shared/data/devset --capacity=P1 --loss=l1
    python recipes/codec/train_separation.py hparams/folders/separation_music.yaml \
        --data_folder=../shared/data/devset --capacity=P1 --loss=codec --codec_run=results/mp3codec/spectral/1234
    python recipes/codec/train_separation.py hparams/musdb18/separation.yaml --data_folder=/data/musdb18hq

``--loss=codec`` needs a codec net trained by ``recipes/codec/train_codec_net.py`` (``--codec_run``).
Any key of the YAML can be overridden on the command line; every SpeechBrain run option works.
"""

from sb_mal.brains import SeparationBrain
from sb_mal.run import main

if __name__ == "__main__":
    main(SeparationBrain, __file__)
