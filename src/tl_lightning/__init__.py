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
