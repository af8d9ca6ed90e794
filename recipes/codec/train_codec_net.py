#!/usr/bin/env python3
"""Train the codec-approximation network (the loss net of CodecApproximationLoss) on MP3 pairs.

Usage::

    python recipes/codec/train_codec_net.py hparams/mp3codec/spectral.yaml --data_folder=../shared/data/devset
    python recipes/codec/train_codec_net.py hparams/mp3codec/time.yaml --data_folder=../shared/data/devset
    python recipes/codec/train_codec_net.py hparams/mp3codec/spectral.yaml --data_folder=unused \\
        --source_folders=[/data/music/train,/data/speech/train] --valid_folders=[/data/music/valid] \\
        --test_folders=[/data/music/test]

Any key of the YAML can be overridden on the command line (``--filters=8``), and every
SpeechBrain run option works (``--debug``, ``--device=cuda:0``). The output folder is then a
loss: ``CodecApproximationLoss.from_pretrained(<output_folder>)``; its imitation numbers:
``python benchmarks/bench_codec_imitation.py --run <output_folder>``.
"""

from sb_mal.brains.codec import CodecNetBrain
from sb_mal.run import main

if __name__ == "__main__":
    main(CodecNetBrain, __file__)
