"""Transfer learning for image classification with timm backbones, Lightning and Hydra, correct by default."""

from tl_lightning.backbones import create_backbone
from tl_lightning.datamodule import ImageFolderDataModule
from tl_lightning.digits import DigitsDataModule
from tl_lightning.distributed import TimmSyncBatchNorm
from tl_lightning.early_stopping import PhaseAwareEarlyStopping
from tl_lightning.ema import EMAEvaluation
from tl_lightning.features import FrozenFeatureCache
from tl_lightning.finetuning import LayerFinetuning
from tl_lightning.groups import build_param_groups, discriminative_lrs, layer_groups
from tl_lightning.heads import create_head
from tl_lightning.module import TransferClassifier
from tl_lightning.schedules import warmup_cosine

__all__ = [
    "DigitsDataModule",
    "EMAEvaluation",
    "FrozenFeatureCache",
    "ImageFolderDataModule",
    "LayerFinetuning",
    "PhaseAwareEarlyStopping",
    "TimmSyncBatchNorm",
    "TransferClassifier",
    "build_param_groups",
    "create_backbone",
    "create_head",
    "discriminative_lrs",
    "layer_groups",
    "warmup_cosine",
]
