"""From files on disk to batches: decoding, class folders and splits, the audit, transforms and augmentation
presets, the DataModules (any ImageFolder, the embedded digits), DDP sampling, and training-input statistics.

Nothing here knows about models: the preprocessing a model wants arrives as a `DataConfig` dict.
"""

from tl_lightning.data.audit import AuditReport, check_files
from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.data.digits import DigitsDataModule
from tl_lightning.data.drift import InputStatistics
from tl_lightning.data.images import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    ImageDecodeError,
    decode_image,
    load_image,
    load_rgb,
)
from tl_lightning.data.transforms import DataConfig, eval_transform, train_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "AuditReport",
    "DataConfig",
    "DigitsDataModule",
    "ImageDataset",
    "ImageDecodeError",
    "ImageFolderDataModule",
    "InputStatistics",
    "check_files",
    "decode_image",
    "eval_transform",
    "load_image",
    "load_rgb",
    "train_transform",
]
