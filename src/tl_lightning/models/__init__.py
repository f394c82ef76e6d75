"""The model and what it is made of: headless timm backbones and where their weights come from, the new head, layer
groups with discriminative learning rates, losses, LR schedules, frozen-feature extraction, Grad-CAM maps,
checkpoint checks, and `TransferClassifier`, the LightningModule that carries them.
"""

from tl_lightning.utils import lazy_exports

# Names -> the module that defines them, imported on first use (`utils.lazy_exports` says why).
_EXPORTS = {
    "Backbone": "tl_lightning.models.backbones",
    "Distillation": "tl_lightning.models.options",
    "Features": "tl_lightning.models.features",
    "Imbalance": "tl_lightning.models.options",
    "LayerGroup": "tl_lightning.models.groups",
    "Performance": "tl_lightning.models.options",
    "Regularization": "tl_lightning.models.options",
    "TransferClassifier": "tl_lightning.models.module",
    "balanced_class_weights": "tl_lightning.models.losses",
    "build_param_groups": "tl_lightning.models.groups",
    "check_backbone_name": "tl_lightning.models.backbones",
    "check_checkpoint_file": "tl_lightning.models.checkpoint",
    "check_same_classes": "tl_lightning.models.checkpoint",
    "create_backbone": "tl_lightning.models.backbones",
    "create_head": "tl_lightning.models.heads",
    "discriminative_lrs": "tl_lightning.models.groups",
    "extract_features": "tl_lightning.models.features",
    "focal_loss": "tl_lightning.models.losses",
    "grad_cam": "tl_lightning.models.gradcam",
    "layer_groups": "tl_lightning.models.groups",
    "scaled_softmax": "tl_lightning.models.heads",
    "warmup_cosine": "tl_lightning.models.lr_schedules",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
