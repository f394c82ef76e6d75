"""Transfer learning for image classification with timm backbones, Lightning and Hydra, correct by default.

The subpackages follow the data's path, each importing only those below it (a test checks):

    app/          the command line: Hydra configs in, the objects below out (the only layer that imports Hydra)
    evaluation/   calibration, the test report, the linear probe, Grad-CAM
    inference/    prediction into a CSV, the HTTP endpoint, ONNX / TorchScript / int8 / timm exports
    finetuning/   the unfreezing callback and the other training callbacks, the LR finder
    models/       backbones, weights, head, layer groups, losses, the LightningModule
    data/         decoding, splits, the audit, transforms, the DataModules
    utils         the user-error type, atomic file writes, usable CPUs
"""

from importlib.metadata import PackageNotFoundError, version

from tl_lightning.utils import lazy_exports

try:  # pyproject.toml's version, as installed: the one place it is written
    __version__ = version("tl_lightning")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

# Names -> the module that defines them, imported on first use (`utils.lazy_exports` says why).
_EXPORTS = {
    "DigitsDataModule": "tl_lightning.data",
    "Distillation": "tl_lightning.models",
    "EMAEvaluation": "tl_lightning.finetuning",
    "FrozenFeatureCache": "tl_lightning.finetuning",
    "ImageFolderDataModule": "tl_lightning.data",
    "Imbalance": "tl_lightning.models",
    "LayerFinetuning": "tl_lightning.finetuning",
    "Performance": "tl_lightning.models",
    "PhaseAwareEarlyStopping": "tl_lightning.finetuning",
    "Preemption": "tl_lightning.finetuning",
    "ProbeFloor": "tl_lightning.finetuning",
    "Recipe": "tl_lightning.finetuning",
    "Regularization": "tl_lightning.models",
    "ResumeRNG": "tl_lightning.finetuning",
    "TimmSyncBatchNorm": "tl_lightning.finetuning",
    "TransferClassifier": "tl_lightning.models",
    "build_param_groups": "tl_lightning.models",
    "create_backbone": "tl_lightning.models",
    "create_head": "tl_lightning.models",
    "discriminative_lrs": "tl_lightning.models",
    "layer_groups": "tl_lightning.models",
    "plan": "tl_lightning.finetuning",
    "train_transform": "tl_lightning.data",
    "warmup_cosine": "tl_lightning.models",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
