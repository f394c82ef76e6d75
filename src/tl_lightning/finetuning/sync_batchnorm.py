"""SyncBatchNorm for multi-device training that keeps timm's fused BatchNorm + activation layers intact."""

from __future__ import annotations

from lightning.pytorch.plugins import LayerSync
from timm.layers import convert_sync_batchnorm
from torch.nn import Module


class TimmSyncBatchNorm(LayerSync):
    """`Trainer(sync_batchnorm=True, plugins=[TimmSyncBatchNorm()])`: SyncBatchNorm that keeps timm's layers.

    Lightning's default converter (`torch.nn.SyncBatchNorm.convert_sync_batchnorm`) replaces timm's
    `BatchNormAct2d` (BatchNorm fused with its activation, in EfficientNet, MobileNet, NFNet, ...) by a plain
    `SyncBatchNorm`, silently dropping the activation: a Lite0's features then differ wholesale. timm's own
    converter maps it to `SyncBatchNormAct`.
    """

    def apply(self, model: Module) -> Module:
        return convert_sync_batchnorm(model)

    def revert(self, model: Module) -> Module:
        raise NotImplementedError("Reverting SyncBatchNorm is not supported; rebuild the model from its checkpoint.")
