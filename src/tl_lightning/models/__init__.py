"""The model and what it is made of: headless timm backbones and where their weights come from, the new head, layer
groups with discriminative learning rates, losses, LR schedules, frozen-feature extraction, checkpoint checks, and
`TransferClassifier`, the LightningModule that carries them.
"""

from tl_lightning.models.backbones import Backbone, check_backbone_name, create_backbone
from tl_lightning.models.checkpoint import check_checkpoint_file, check_same_classes
from tl_lightning.models.features import Features, extract_features
from tl_lightning.models.groups import LayerGroup, build_param_groups, discriminative_lrs, layer_groups
from tl_lightning.models.heads import create_head, scaled_softmax
from tl_lightning.models.losses import balanced_class_weights, focal_loss
from tl_lightning.models.lr_schedules import warmup_cosine
from tl_lightning.models.module import TransferClassifier
from tl_lightning.models.options import Distillation, Imbalance, Performance, Regularization

__all__ = [
    "Backbone",
    "Distillation",
    "Features",
    "Imbalance",
    "LayerGroup",
    "Performance",
    "Regularization",
    "TransferClassifier",
    "balanced_class_weights",
    "build_param_groups",
    "check_backbone_name",
    "check_checkpoint_file",
    "check_same_classes",
    "create_backbone",
    "create_head",
    "discriminative_lrs",
    "extract_features",
    "focal_loss",
    "layer_groups",
    "scaled_softmax",
    "warmup_cosine",
]
