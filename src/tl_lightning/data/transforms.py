"""Albumentations pipelines built from a backbone's data config (`timm.data.resolve_model_data_config`).

Mean, std, size, interpolation and crop come from the weights' config: ImageNet statistics on weights
trained with 0.5/0.5 cost accuracy silently. Eval is deterministic: no random op may reach val or test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from tl_lightning.utils import BadValue

# How the eval resize may treat the aspect ratio (timm's `crop_mode` names; timm's "border" is not offered).
CROP_MODES = ("center", "squash")
# How training images are cut to the input square (`train_transform`).
TRAIN_CROP_MODES = ("random_resized", "random_square")

_INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


class DataConfig(TypedDict, total=False):
    """The preprocessing a backbone's weights expect, as `timm.data.resolve_model_data_config` returns it: the one
    object that passes from the model (`TransferClassifier.data_config`) to the data (`ImageFolderDataModule`)."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    crop_mode: str


def _size_and_interpolation(data_config: DataConfig) -> tuple[int, int, int]:
    _, height, width = data_config["input_size"]
    interpolation = _INTERPOLATION.get(data_config.get("interpolation", "bilinear"), cv2.INTER_LINEAR)
    return int(height), int(width), interpolation


def _normalize(data_config: DataConfig) -> list[A.BasicTransform]:
    return [A.Normalize(mean=tuple(data_config["mean"]), std=tuple(data_config["std"])), ToTensorV2()]


def train_transform(
    data_config: DataConfig,
    crop_scale: Sequence[float] = (0.08, 1.0),
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    affine_degrees: float = 0.0,
    affine_scale: float = 0.0,
    affine_translate: float = 0.0,
    vflip: float = 0.0,
    rand_ops: int = 0,
    erasing: float = 0.0,
    crop_mode: str = "random_resized",
    lighting: float = 0.0,
    warp: float = 0.0,
) -> A.Compose:
    """A random crop, then optional flip, colour jitter, lighting, affine and warp, then normalisation.

    Args:
        data_config: the backbone's config (`input_size`, `interpolation`, `mean`, `std`).
        crop_scale: area fraction range of the random crop; `(1, 1)` with `crop_ratio=(1, 1)` only resizes.
        crop_ratio: aspect-ratio range of the random crop.
        hflip: probability of a horizontal flip; 0 for orientation-sensitive data (digits, text).
        color_jitter: brightness/contrast/saturation strength; 0 turns it off. Skipped, like `rand_ops`, for
            inputs that are not 3-channel RGB.
        affine_degrees: rotation (+-degrees) of a random affine applied with probability 1 when any of the three
            affine arguments is non-zero.
        affine_scale: its scale (+-fraction).
        affine_translate: its shift (+-fraction of size).
        vflip: probability of a vertical flip (aerial, microscopy and other orientation-free images).
        rand_ops: apply this many ops drawn from a RandAugment-style pool (equalize, posterize, solarize,
            sharpen, contrast, shear, ...) to every image; albumentations has no RandAugment of its own.
        erasing: probability of erasing up to 4 random rectangles (RandomErasing / CoarseDropout).
        crop_mode: ``"random_resized"`` (`RandomResizedCrop` with `crop_scale` and `crop_ratio`) or
            ``"random_square"``: the shorter side resized to the input size, then a random square of it, which is
            what fastai's `Resize` does to training images (`crop_scale` and `crop_ratio` are then unused).
        lighting: brightness and contrast change (+-fraction), for three images in four (fastai's `max_lighting`).
        warp: perspective warp strength, for three images in four (fastai's `max_warp`; 0.2 moves a corner by up
            to a tenth of the side).
    """
    if crop_mode not in TRAIN_CROP_MODES:
        raise BadValue(f"train_transform.crop_mode must be one of {', '.join(TRAIN_CROP_MODES)}, got {crop_mode!r}.")
    height, width, interpolation = _size_and_interpolation(data_config)
    if crop_mode == "random_square":
        ops: list[A.BasicTransform] = [
            A.SmallestMaxSize(max_size=max(height, width), interpolation=interpolation),
            A.RandomCrop(height=height, width=width),
        ]
    else:
        ops = [
            A.RandomResizedCrop(
                size=(height, width), scale=tuple(crop_scale), ratio=tuple(crop_ratio), interpolation=interpolation
            )
        ]
    if hflip > 0:
        ops.append(A.HorizontalFlip(p=hflip))
    rgb = data_config["input_size"][0] == 3  # colour ops and the RandAugment pool assume RGB
    if color_jitter > 0 and rgb:
        j = color_jitter
        ops.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=0.8))
    if lighting > 0:
        ops.append(A.RandomBrightnessContrast(brightness_limit=lighting, contrast_limit=lighting, p=0.75))
    if affine_degrees or affine_scale or affine_translate:
        ops.append(
            A.Affine(
                rotate=(-affine_degrees, affine_degrees),
                scale=(1 - affine_scale, 1 + affine_scale),
                translate_percent=(-affine_translate, affine_translate),
                interpolation=interpolation,
                p=1.0,
            )
        )
    if warp > 0:
        ops.append(A.Perspective(scale=(0.0, warp / 2), keep_size=True, interpolation=interpolation, p=0.75))
    if vflip > 0:
        ops.append(A.VerticalFlip(p=vflip))
    if rand_ops > 0 and rgb:
        ops.append(A.SomeOf(_rand_pool(), n=rand_ops, p=1.0))
    if erasing > 0:
        holes = {"num_holes_range": (1, 4), "hole_height_range": (0.1, 0.3), "hole_width_range": (0.1, 0.3)}
        ops.append(A.CoarseDropout(**holes, p=erasing))
    return A.Compose(ops + _normalize(data_config))


def _rand_pool() -> list[A.BasicTransform]:
    return [
        A.Equalize(p=1.0),
        A.Posterize(num_bits=(4, 6), p=1.0),
        A.Solarize(threshold_range=(0.5, 1.0), p=1.0),
        A.Sharpen(p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=1.0),
        A.Affine(shear=(-15, 15), p=1.0),
        A.Affine(rotate=(-20, 20), p=1.0),
        A.ToGray(p=1.0),
    ]


def eval_transform(data_config: DataConfig) -> A.Compose:
    """timm's eval protocol: resize to `size / crop_pct`, then centre-crop `size`. `crop_mode` says how the resize
    treats the aspect ratio, as in timm: ``"center"`` (the default) scales the shorter side, so the crop cuts the
    longer one; ``"squash"`` scales both sides to the square, so with `crop_pct` 1 the whole image is seen
    (fastai's `Resize`, BiT's eval). Any other mode a weights' config names (timm's "border") is taken as "center".

    >>> config = DataConfig(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0, crop_mode="squash")
    >>> import numpy as np
    >>> eval_transform(config)(image=np.zeros((40, 80, 3), np.uint8))["image"].shape
    torch.Size([3, 32, 32])
    """
    height, width, interpolation = _size_and_interpolation(data_config)
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    if data_config.get("crop_mode") == "squash":
        resize: A.BasicTransform = A.Resize(
            height=math.floor(height / crop_pct), width=math.floor(width / crop_pct), interpolation=interpolation
        )
    else:
        resize = A.SmallestMaxSize(max_size=math.floor(max(height, width) / crop_pct), interpolation=interpolation)
    return A.Compose([resize, A.CenterCrop(height=height, width=width), *_normalize(data_config)])
