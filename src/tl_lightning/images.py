"""Decode any image file into the HxWx3 uint8 RGB array the transforms expect.

Written by hand because PIL's `convert("RGB")` alone gets real folders wrong: it ignores EXIF rotation, and
it clips 16-bit PNGs (mode `I;16`/`I`) to white instead of scaling them (torchvision #2218).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded."""


def load_rgb(path: str | Path) -> np.ndarray:
    """Read `path` as RGB uint8: EXIF orientation applied, 16-bit and float images scaled, alpha dropped.

    Raises:
        ImageDecodeError: the file is not a readable image; the message names it.
    """
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return _scale_high_depth(np.asarray(image))
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageDecodeError(
            f"Cannot decode image '{path}': {err}. Remove or replace the file, then run again."
        ) from err


def _scale_high_depth(array: np.ndarray) -> np.ndarray:
    """Map a single-channel 16-bit (or float) image onto 0..255 by its type's range, then to RGB."""
    if np.issubdtype(array.dtype, np.floating):
        scaled = np.clip(array, 0.0, 1.0) * 255.0
    else:
        scaled = array.astype(np.float64) * (255.0 / 65535.0)
    gray = np.rint(scaled).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
