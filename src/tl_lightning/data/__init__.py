"""From files on disk to batches: decoding, class folders and splits, the audit, transforms and augmentation
presets, the DataModules (any ImageFolder, the embedded digits), DDP sampling, and training-input statistics.

Nothing here knows about models: the preprocessing a model wants arrives as a `DataConfig` dict.
"""

from tl_lightning.utils import lazy_exports

# Names -> the module that defines them, imported on first use (`utils.lazy_exports` says why).
_EXPORTS = {
    "AuditReport": "tl_lightning.data.audit",
    "DataConfig": "tl_lightning.data.transforms",
    "DigitsDataModule": "tl_lightning.data.digits",
    "IMAGE_EXTENSIONS": "tl_lightning.data.images",
    "ImageDataset": "tl_lightning.data.images",
    "ImageDecodeError": "tl_lightning.data.images",
    "ImageFolderDataModule": "tl_lightning.data.datamodule",
    "InputStatistics": "tl_lightning.data.drift",
    "check_files": "tl_lightning.data.audit",
    "decode_image": "tl_lightning.data.images",
    "eval_transform": "tl_lightning.data.transforms",
    "load_image": "tl_lightning.data.images",
    "load_rgb": "tl_lightning.data.images",
    "train_transform": "tl_lightning.data.transforms",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
