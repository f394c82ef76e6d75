"""The peers benchmark's datasets: small real image folders assembled from what installed packages ship offline.

Each is written once as `ROOT/<name>/{train,val,test}/<class>/*.png`, the same split for every tool, and is
deterministic (its own fixed seed, independent of the training seeds). Together they cover what the recipe has
to survive: far from ImageNet (digits), natural photos near ImageNet (patches of the scikit-image, scikit-learn
and matplotlib sample photos, one class per photo), grayscale, few-shot (5 and 10 per class), imbalanced, and a
tiny validation split. Kept out on purpose: scikit-image's `lfw_subset` and its brick/grass/gravel textures,
reserved for held-out checks.

    python benchmarks/suite.py [--root benchmarks/.data]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import skimage
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

DEFAULT_ROOT = Path(__file__).parent / ".data"
SKIMAGE = Path(skimage.__file__).parent / "data"
MPL = Path(matplotlib.get_data_path()) / "sample_data"

# One class per photo: different scenes, so a patch's class is the photo it was cut from.
COLOUR_PHOTOS = {
    "astronaut": SKIMAGE / "astronaut.png",
    "cat": SKIMAGE / "chelsea.png",
    "coffee": SKIMAGE / "coffee.png",
    "rocket": SKIMAGE / "rocket.jpg",
    "motorcycle": SKIMAGE / "motorcycle_left.png",
    "hopper": MPL / "grace_hopper.jpg",
    "china": "sklearn:0",
    "flower": "sklearn:1",
}
GRAY_PHOTOS = {
    "camera": SKIMAGE / "camera.png",
    "coins": SKIMAGE / "coins.png",
    "moon": SKIMAGE / "moon.png",
    "page": SKIMAGE / "page.png",
    "text": SKIMAGE / "text.png",
    "cell": SKIMAGE / "cell.png",
}


def _photo(source: Path | str, gray: bool) -> np.ndarray:
    if isinstance(source, str) and source.startswith("sklearn:"):
        image = Image.fromarray(load_sample_images().images[int(source.split(":")[1])])
    else:
        image = Image.open(source)
    image = image.convert("L" if gray else "RGB")
    return np.asarray(image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR))


def _patches(photos: dict, counts: dict[str, list[int]], size: int, gray: bool, seed: int) -> dict:
    """`counts[split][i]` random `size`-pixel patches of photo i per split, from disjoint halves of the photo's rows
    (train and val from the top 60%, test from the rest), so no test patch overlaps a training one."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[np.ndarray]]] = {split: {} for split in counts}
    for index, (name, source) in enumerate(photos.items()):
        pixels = _photo(source, gray)
        cut = int(pixels.shape[0] * 0.6)
        for split, per_class in counts.items():
            rows = (0, cut - size) if split != "test" else (cut, pixels.shape[0] - size)
            tops = rng.integers(rows[0], rows[1] + 1, per_class[index])
            lefts = rng.integers(0, pixels.shape[1] - size + 1, per_class[index])
            out[split][name] = [pixels[t : t + size, x : x + size] for t, x in zip(tops, lefts, strict=True)]
    return out


def _digits(per_class: dict[str, list[int]], seed: int) -> dict:
    """scikit-learn's handwritten digits, 8x8 grayscale scaled to 0-255, `per_class[split][digit]` each."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[np.ndarray]]] = {split: {} for split in per_class}
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == digit))
        start = 0
        for split, counts in per_class.items():
            take = indices[start : start + counts[digit]] if counts[digit] >= 0 else indices[start:]
            start += len(take)
            out[split][str(digit)] = [(digits.images[i] * 255 / 16).round().astype(np.uint8) for i in take]
    return out


def _each(n: int, classes: int) -> list[int]:
    return [n] * classes


# name -> (what it covers, builder). Counts are per class; -1 takes the rest.
SUITE: dict[str, tuple[str, Callable[[], dict]]] = {
    "digits": ("far from ImageNet: 8 px handwritten digits, 10 classes, 500 train",
               lambda: _digits({"train": _each(50, 10), "val": _each(15, 10), "test": _each(-1, 10)}, seed=0)),
    "photos": ("natural photos near ImageNet: 48 px RGB patches of 8 photos, 30 train per class",
               lambda: _patches(COLOUR_PHOTOS, {"train": _each(30, 8), "val": _each(8, 8), "test": _each(30, 8)},
                                size=48, gray=False, seed=1)),
    "gray": ("grayscale: 32 px patches of 6 grayscale photos, 30 train per class",
             lambda: _patches(GRAY_PHOTOS, {"train": _each(30, 6), "val": _each(8, 6), "test": _each(30, 6)},
                              size=32, gray=True, seed=2)),
    "few-shot-5": ("few-shot: 5 train per class, 48 px RGB photo patches, 16 validation images",
                   lambda: _patches(COLOUR_PHOTOS, {"train": _each(5, 8), "val": _each(2, 8), "test": _each(30, 8)},
                                    size=48, gray=False, seed=3)),
    "few-shot-10": ("few-shot: 10 train per class, 32 px grayscale photo patches, 18 validation images",
                    lambda: _patches(GRAY_PHOTOS, {"train": _each(10, 6), "val": _each(3, 6), "test": _each(30, 6)},
                                     size=32, gray=True, seed=4)),
    "imbalanced": ("imbalanced: digits with 60 down to 3 train images per class (ratio 20), balanced test",
                   lambda: _digits({"train": [60, 42, 29, 21, 14, 10, 7, 5, 4, 3], "val": _each(6, 10),
                                    "test": _each(80, 10)}, seed=5)),
    "tiny-val": ("tiny validation split: 12 images for 4 classes; 24 px grayscale photo patches, 40 train each",
                 lambda: _patches(dict(list(GRAY_PHOTOS.items())[:4]),
                                  {"train": _each(40, 4), "val": _each(3, 4), "test": _each(40, 4)},
                                  size=24, gray=True, seed=6)),
}  # fmt: skip


def write(name: str, root: Path = DEFAULT_ROOT) -> Path:
    """Write dataset `name` under `root` (once; an existing complete copy is kept) and return its folder."""
    folder = root / name
    done = folder / ".complete"
    if done.exists():
        return folder
    splits = SUITE[name][1]()
    for split, classes in splits.items():
        for label, images in classes.items():
            target = folder / split / label
            target.mkdir(parents=True, exist_ok=True)
            for i, pixels in enumerate(images):
                Image.fromarray(pixels).save(target / f"{label}_{i:04d}.png")
    done.write_text("")
    return folder


def counts(folder: Path) -> dict[str, int]:
    return {split: sum(1 for _ in (folder / split).rglob("*.png")) for split in ("train", "val", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("TL_SUITE_ROOT", DEFAULT_ROOT)))
    args = parser.parse_args()
    for name, (about, _) in SUITE.items():
        folder = write(name, args.root)
        print(f"{name:<12} {counts(folder)}  {about}")


if __name__ == "__main__":
    main()
