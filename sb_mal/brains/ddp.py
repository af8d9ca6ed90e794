"""DDP wrapping that also works on CPU (gloo) for models with BatchNorm."""

from __future__ import annotations

import torch

from sb_mal.models.frozen import unwrap_model as unwrap  # one implementation, below the Brains

__all__ = ["GlooFriendlyDDP", "unwrap"]


class GlooFriendlyDDP:
    """Brain mixin: SpeechBrain's DDP wrapping, except that with the gloo backend modules are wrapped
    in plain DDP instead of first converting BatchNorm to SyncBatchNorm, which does not run on CPU.

    Without SyncBatchNorm each rank normalises with its own batch statistics and DDP broadcasts
    rank 0's running statistics before every forward pass. (The MetricGAN-OKD discriminator sees the
    same data on every rank, so nothing is lost there.)
    """

    def _wrap_distributed(self):
        if not self.distributed_launch or self.distributed_backend != "gloo":
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = torch.nn.parallel.DistributedDataParallel(
                    module, device_ids=None, find_unused_parameters=self.find_unused_parameters)
        return None
