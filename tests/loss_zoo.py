"""Every sb_mal loss at a tiny size, built fresh on the CPU (shared by the device tests)."""

from __future__ import annotations

import torch


def _fcn():
    from speechbrain.nnet.CNN import Conv1d
    from speechbrain.nnet.containers import Sequential

    torch.manual_seed(0)
    model = Sequential(input_shape=[None, None, 1])
    model.append(Conv1d, out_channels=8, kernel_size=9, layer_name="conv1")
    model.append(torch.nn.LeakyReLU(0.3), layer_name="act1")
    model.append(Conv1d, out_channels=1, kernel_size=9, layer_name="conv_out")
    return model


def _unet():
    from sb_mal.models import SpectralUNetSE

    torch.manual_seed(0)
    return SpectralUNetSE(channels=(8, 16), bottleneck_dim=32, rnn_layers=1)


def loss_factories(wavlm_dir):
    """Fresh-copy builders of every sb_mal loss (network losses at tiny sizes), by name."""
    from speechbrain.lobes.models.MetricGAN import EnhancementGenerator

    from sb_mal import losses as L
    from sb_mal.models import SSLFeatureExtractor
    from sb_mal.models.codec_net import SpectralCodecNet, TimeCodecNet

    def seeded(build):
        def make():
            torch.manual_seed(0)
            return build()
        return make

    ext = lambda: SSLFeatureExtractor(str(wavlm_dir))  # noqa: E731
    return {
        "WaveformL1": L.WaveformL1, "SISDRLoss": L.SISDRLoss, "MultiResolutionSTFTLoss": L.MultiResolutionSTFTLoss,
        "WeightedSum": lambda: L.WeightedSum({"l1": L.WaveformL1(), "mrstft": L.MultiResolutionSTFTLoss()}),
        "MAL backbone snapshot": lambda: L.ModelAsLoss(_unet(), taps=["enc1", "bottleneck"]),
        "MAL backbone live": lambda: L.ModelAsLoss(_unet(), encoder="live"),
        "MAL FCN live": lambda: L.ModelAsLoss(_fcn(), taps=["act1"], encoder="live", input_fn=lambda w: w[..., None]),
        "MAL MetricGAN+ snapshot": seeded(lambda: L.ModelAsLoss(EnhancementGenerator(num_layers=1), taps=["blstm"],
                                                                 input_fn=L.Log1pMagnitude())),
        "codec spectral": seeded(lambda: L.CodecApproximationLoss(SpectralCodecNet(filters=4, levels=3), lb=1.0)),
        "codec time": seeded(lambda: L.CodecApproximationLoss(TimeCodecNet(filters=4, levels=4), layers="F")),
        "SSLL1Loss": lambda: L.SSLL1Loss(ext()),
        "SSLMSELoss": lambda: L.SSLMSELoss(ext()),
        "SSLMSEPadLoss": lambda: L.SSLMSEPadLoss(ext(), seed=0),
        "SSLSoftDTWLoss": lambda: L.SSLSoftDTWLoss(ext()),
        "SSLSoftDTWLoss relative gamma": lambda: L.SSLSoftDTWLoss(ext(), gamma_relative=0.1),
    }


LOSS_NAMES = ["WaveformL1", "SISDRLoss", "MultiResolutionSTFTLoss", "WeightedSum", "MAL backbone snapshot",
              "MAL backbone live", "MAL FCN live", "MAL MetricGAN+ snapshot", "codec spectral", "codec time",
              "SSLL1Loss", "SSLMSELoss", "SSLMSEPadLoss", "SSLSoftDTWLoss", "SSLSoftDTWLoss relative gamma"]
