#!/usr/bin/env python3
"""MetricGAN+ and MetricGAN-OKD: N generators, each driven by one metric through a metric
discriminator, learning the others by online knowledge distillation.

Usage::

    python recipes/metricgan_okd/train.py hparams/mini/okd_pesq_csig.yaml
    python recipes/metricgan_okd/train.py hparams/folders/metricgan_plus.yaml --data_folder=../shared/data/devset
    python recipes/metricgan_okd/train.py hparams/folders/okd_4metrics.yaml --data_folder=../shared/data/devset \\
        --discriminator_version=1
    torchrun --nproc_per_node=2 recipes/metricgan_okd/train.py hparams/... --distributed_backend=gloo

Each generator keeps its best checkpoint by its own target metric on the validation split and is
tested from it; export generator i with
``sb-mal export RUN_DIR -o OUT --key g<i>_<metric> --recoverable generator_<i>``.
"""

from sb_mal.brains import MetricGANOKDBrain
from sb_mal.run import main

if __name__ == "__main__":
    main(MetricGANOKDBrain, __file__)
