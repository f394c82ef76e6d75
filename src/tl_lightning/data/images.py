"""Decode any image file into the HxWx3 uint8 RGB array the transforms expect; `ImageDataset` pairs that with a
transform.

Written by hand because PIL's `convert("RGB")` alone gets real folders wrong: it ignores EXIF rotation, and
it clips 16-bit PNGs (mode `I;16`/`I`) to white instead of scaling them (torchvision #2218).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from tl_lightning.utils import BadValue

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".npy"}
)


# What PIL raises for a file it cannot decode safely: not an image, truncated, an unknown mode, or a decompression
# bomb (more pixels than Image.MAX_IMAGE_PIXELS allows twice over).
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


class ImageDecodeError(BadValue):
    """An image file that cannot be decoded."""


def load_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """Read `path` as an HxWxC uint8 array with `channels` channels.

    3: RGB (`load_rgb`). 1: grayscale (16-bit scaled). Other counts come from 4-band images (RGBA/CMYK TIFF or
    PNG, e.g. RGB+NIR) or from `.npy` arrays (HxW or HxWxC; uint16 is scaled by 65535, floats are taken as 0..1),
    which also serve 1 and 3 channels.

    Raises:
        ImageDecodeError: unreadable file, or a channel count other than `channels`; the message names the file.
    """
    return _decode(Path(path), str(path), channels)


def decode_image(data: bytes, name: str, channels: int = 3) -> np.ndarray:
    """The bytes of an image file (an upload to the server) decoded exactly as `load_image` decodes the file;
    `name` (the upload's file name) picks `.npy` decoding and names it in the error."""
    return _decode(io.BytesIO(data), name, channels)


def load_rgb(path: str | Path) -> np.ndarray:
    """Read `path` as RGB uint8: EXIF orientation applied, 16-bit and float images scaled, alpha dropped.

    Raises:
        ImageDecodeError: the file is not a readable image; the message names it.
    """
    return _load_rgb(Path(path), str(path))


Source = Path | BinaryIO


def _decode(source: Source, name: str, channels: int) -> np.ndarray:
    if name.lower().endswith(".npy"):
        array = _load_array(source, name)
    elif channels == 3:
        return _load_rgb(source, name)
    elif channels == 1:
        deep = _is_high_depth(source, name)
        array = _load_rgb(source, name)[..., :1] if deep else _load_pil(source, name, "L")[..., None]
    else:
        array = _load_pil(source, name, None)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] != channels:
        raise ImageDecodeError(
            f"'{name}' has {array.shape[-1]} channels but the model takes {channels} (backbone.kwargs.in_chans). "
            "Store every image with the same bands, or change in_chans."
        )
    return array


def _open(source: Source) -> Image.Image:
    if not isinstance(source, Path):
        source.seek(0)  # read twice when the mode decides how (`_is_high_depth`)
    return Image.open(source)


def _load_pil(source: Source, name: str, mode: str | None) -> np.ndarray:
    try:
        with _open(source) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert(mode) if mode else image)
    except DECODE_ERRORS as err:
        raise ImageDecodeError(f"Cannot decode image '{name}': {err}. Remove or replace the file.") from err


def _is_high_depth(source: Source, name: str) -> bool:
    try:
        with _open(source) as image:
            return image.mode in HIGH_DEPTH_MODES
    except DECODE_ERRORS as err:
        raise ImageDecodeError(f"Cannot decode image '{name}': {err}. Remove or replace the file.") from err


def _load_array(source: Source, name: str) -> np.ndarray:
    try:
        array = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ImageDecodeError(f"Cannot read array '{name}': {err}. Save it with numpy.save as HxW or HxWxC.") from err
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.rint(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def _load_rgb(source: Source, name: str) -> np.ndarray:
    try:
        with _open(source) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in HIGH_DEPTH_MODES:
                return _scale_high_depth(np.asarray(image))
            return np.asarray(image.convert("RGB"))
    except DECODE_ERRORS as err:
        raise ImageDecodeError(
            f"Cannot decode image '{name}': {err}. Remove or replace the file, then run again."
        ) from err


def short_sides(paths: list[Path], max_images: int = 256) -> list[int]:
    """The shorter side of up to `max_images` images, evenly spaced over `paths` (headers only, no decoding)."""
    step = max(1, len(paths) // max_images)
    sides = []
    for path in list(paths)[::step][:max_images]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except OSError:  # an undecodable file is the audit's to report; it says nothing about size
            continue
    return sides


def _scale_high_depth(array: np.ndarray) -> np.ndarray:
    """Map a single-channel 16-bit (or float) image onto 0..255 by its type's range, then to RGB."""
    if np.issubdtype(array.dtype, np.floating):
        scaled = np.clip(array, 0.0, 1.0) * 255.0
    else:
        scaled = array.astype(np.float64) * (255.0 / 65535.0)
    gray = np.rint(scaled).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


class ImageDataset(Dataset):
    """(path, label) pairs decoded with `load_rgb` and passed through an albumentations transform.

    Albumentations keeps its own random state, which `seed_everything` does not reach, so runs with the same
    seed augmented differently. Each sample reseeds the transform: with the seed the training sampler gives it
    (`sampling.EpochSampler`, an `(index, seed)` pair), else from torch's RNG, which Lightning seeds in the main
    process and PyTorch per DataLoader worker. Either way the run's seed makes augmentation reproducible.
    """

    def __init__(
        self, samples: list[tuple[Path, int]], transform: Callable[..., dict[str, Any]], channels: int = 3
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(int(torch.randint(2**31 - 1, ())) if seed is None else seed)
        return self.transform(image=self.read(index))["image"], self.samples[index][1]

    def read(self, index: int) -> np.ndarray:
        """The decoded image of sample `index` (from its file here; from a LitData chunk in `streaming`)."""
        return load_image(self.samples[index][0], self.channels)
