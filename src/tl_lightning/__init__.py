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

import importlib.abc
import importlib.util
import sys
from importlib.machinery import ModuleSpec

from tl_lightning.data import DigitsDataModule, ImageFolderDataModule
from tl_lightning.finetuning import (
    EMAEvaluation,
    FrozenFeatureCache,
    LayerFinetuning,
    PhaseAwareEarlyStopping,
    Preemption,
    ProbeFloor,
    ResumeRNG,
    TimmSyncBatchNorm,
)
from tl_lightning.models import (
    Distillation,
    Imbalance,
    Performance,
    Regularization,
    TransferClassifier,
    build_param_groups,
    create_backbone,
    create_head,
    discriminative_lrs,
    layer_groups,
    warmup_cosine,
)

__all__ = [
    "DigitsDataModule",
    "Distillation",
    "EMAEvaluation",
    "FrozenFeatureCache",
    "ImageFolderDataModule",
    "Imbalance",
    "LayerFinetuning",
    "Performance",
    "PhaseAwareEarlyStopping",
    "Preemption",
    "ProbeFloor",
    "Regularization",
    "ResumeRNG",
    "TimmSyncBatchNorm",
    "TransferClassifier",
    "build_param_groups",
    "create_backbone",
    "create_head",
    "discriminative_lrs",
    "layer_groups",
    "warmup_cosine",
]

# The command-line tools live in `app/`; these names keep `python -m tl_lightning.<name>` running them.
COMMANDS = ("predict", "serve", "export", "explain", "audit", "optimize", "backbones", "groups")
# ... and the one the data layer names: `python -m tl_lightning.data.optimize`.
_ALIASES = {f"{__name__}.{name}": name for name in COMMANDS} | {f"{__name__}.data.optimize": "optimize"}


class _CommandFinder(importlib.abc.MetaPathFinder):
    """Finds `tl_lightning.<command>` as the source of `tl_lightning.app.<command>`.

    Written as a finder rather than a re-exporting module per command, which would put a one-line file per command by
    the subpackages, and which `python -m` would find already imported (a runpy `RuntimeWarning`) whenever the
    package imported it.
    """

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        name = _ALIASES.get(fullname)
        if name is None:
            return None
        source = importlib.util.find_spec(f"{__name__}.app.{name}")
        return importlib.util.spec_from_file_location(fullname, source.origin) if source and source.origin else None


if not any(isinstance(finder, _CommandFinder) for finder in sys.meta_path):
    sys.meta_path.append(_CommandFinder())
