"""The peers benchmark's datasets: small real image folders of several kinds, from what installs offline.

Each is written once as `ROOT/<name>/{train,val,test}/<class>/*.png`, the same split for every tool, and is
deterministic (its own fixed subsampling seed, independent of the training seeds). Validation is what a user's
15% of a few hundred images gives. Together they cover what the recipe has to survive:

- **galaxies**: radio-telescope images (FIRST survey, PyPI `firstgalaxydata`), 300 px grayscale, the source small
  in the centre: large images far from ImageNet, 4 imbalanced classes (the survey's own proportions, 2.7:1);
- **clipart**: colour drawings (Debian `openclipart-png`), ~300 px, 5 categories: mid-size colour images near
  ImageNet's objects but not photographs;
- **clipart-tiny**: the same drawings of 8 categories at 28 px grayscale: tiny images;
- **few-shot**: clip art, 10 training images a class, 5 classes;
- **digits**: scikit-learn's 8 px handwritten digits, 500 train: tiny and far from ImageNet.

Clip art is RGBA with transparent backgrounds; it is flattened onto white here, once, so every tool reads the same
pixels (what each tool does with an alpha channel is not what this suite measures). Kept out on purpose:
scikit-image's `lfw_subset` and its brick/grass/gravel textures, reserved for held-out checks.

The clip art comes from Debian's package: `apt-get download openclipart-png` and `dpkg-deb -x` into
`ROOT/.openclipart` on first use (or pass `--clipart DIR`); the galaxies from `pip install --no-deps
firstgalaxydata==0.2.1`.

    python benchmarks/suite.py [--root benchmarks/.data]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import os
import subprocess
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

DEFAULT_ROOT = Path(__file__).parent / ".data"
Splits = dict[str, dict[str, list[Image.Image]]]


def clipart_folder(root: Path) -> Path:
    """Debian's openclipart-png, downloaded and unpacked under `root` once (apt reaches Debian's mirror)."""
    folder = Path(os.environ.get("TL_CLIPART", root / ".openclipart"))
    png = folder / "usr/share/openclipart/png"
    if png.is_dir():
        return png
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "openclipart-png"], cwd=folder, check=True, capture_output=True)
    deb = next(folder.glob("openclipart-png_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], check=True)
    deb.unlink()
    return png


def _flat(image: Image.Image, gray: bool, side: int | None) -> Image.Image:
    """Onto white, RGB or L, and (when `side`) the centre square resized to `side` px."""
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, rgba).convert("L" if gray else "RGB")
    if side is None:
        return flat
    short = min(flat.size)
    left, top = (flat.width - short) // 2, (flat.height - short) // 2
    return flat.crop((left, top, left + short, top + short)).resize((side, side), Image.Resampling.LANCZOS)


def _usable(path: Path) -> bool:
    """A drawing of a sensible size: no icon under 64 px, no poster over 4,000 px (PIL refuses the largest)."""
    try:
        with Image.open(path) as image:
            return min(image.size) >= 64 and max(image.size) <= 4000
    except (OSError, Image.DecompressionBombError):
        return False


def _clipart(
    png: Path, categories: list[str], per_class: dict[str, int], seed: int, gray: bool, side: int | None
) -> Splits:
    """`per_class[split]` drawings of each category (sub-folders included), disjoint across splits; odd sizes
    (`_usable`) and drawings the collection holds more than once are left out."""
    rng = np.random.default_rng(seed)
    out: Splits = {split: {} for split in per_class}
    found = {category: sorted(p for p in (png / category).rglob("*.png") if _usable(p)) for category in categories}
    digests = Counter(hashlib.sha256(p.read_bytes()).hexdigest() for files in found.values() for p in files)
    for category in categories:
        # The collection holds some drawings twice (in two categories, or twice in one): kept out, so no test
        # image is a copy of a training one.
        files = [p for p in found[category] if digests[hashlib.sha256(p.read_bytes()).hexdigest()] == 1]
        if len(files) < sum(per_class.values()):
            raise ValueError(
                f"'{category}' has {len(files)} usable drawings, fewer than the {sum(per_class.values())} asked"
            )
        order = rng.permutation(len(files))
        start = 0
        for split, count in per_class.items():
            chosen = [files[i] for i in order[start : start + count]]
            start += count
            out[split][category] = [_flat(Image.open(p), gray, side) for p in chosen]
    return out


def _galaxies(per_split: dict[str, int], seed: int) -> Splits:
    """FIRST radio galaxies, `per_split[split]` images drawn from the package's fixed split of the same name
    ("val" from its "valid") in the survey's class proportions."""
    package = Path(importlib.util.find_spec("firstgalaxydata").submodule_search_locations[0])
    names: dict[str, dict[str, list[str]]] = {}
    with zipfile.ZipFile(package / "galaxy_data.zip") as archive:
        for name in archive.namelist():
            parts = name.split("/")  # galaxy_data/<train|valid|test|all>/<class>/<file>.png
            if len(parts) == 4 and parts[3].endswith(".png"):
                split = {"valid": "val"}.get(parts[1], parts[1])
                names.setdefault(split, {}).setdefault(parts[2], []).append(name)
        rng = np.random.default_rng(seed)
        out: Splits = {}
        for split, total in per_split.items():
            classes = {label: sorted(files) for label, files in sorted(names[split].items())}
            available = sum(len(files) for files in classes.values())
            out[split] = {}
            for label, files in classes.items():
                take = len(files) if total < 0 else round(total * len(files) / available)
                chosen = sorted(rng.choice(len(files), take, replace=False))
                out[split][label] = [Image.open(io.BytesIO(archive.read(files[i]))).convert("L") for i in chosen]
    return out


def _digits(per_class: dict[str, list[int]], seed: int) -> Splits:
    """scikit-learn's handwritten digits, 8x8 grayscale scaled to 0-255, `per_class[split][digit]` each."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    out: Splits = {split: {} for split in per_class}
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == digit))
        start = 0
        for split, counts in per_class.items():
            take = indices[start : start + counts[digit]] if counts[digit] >= 0 else indices[start:]
            start += len(take)
            pixels = [(digits.images[i] * 255 / 16).round().astype(np.uint8) for i in take]
            out[split][str(digit)] = [Image.fromarray(p) for p in pixels]
    return out


def _each(n: int, classes: int) -> list[int]:
    return [n] * classes


FIVE = ["animals", "food", "people", "tools", "transportation"]
EIGHT = [*FIVE, "geography", "recreation", "office"]

# name -> (what it covers, builder taking the data root). Counts per class unless said; -1 takes the rest.
SUITE: dict[str, tuple[str, Callable[[Path], Splits]]] = {
    "galaxies": (
        "radio galaxies: 300 px grayscale, far from ImageNet, 4 classes in the survey's proportions (2.7:1)",
        lambda root: _galaxies({"train": 300, "val": 52, "test": -1}, seed=0),
    ),
    "clipart": (
        "colour clip art: ~300 px drawings, 5 categories, 44 train each",
        lambda root: _clipart(
            clipart_folder(root), FIVE, {"train": 44, "val": 8, "test": 40}, seed=1, gray=False, side=None
        ),
    ),
    "clipart-tiny": (
        "tiny grayscale: the clip art at 28 px, 8 categories, 40 train each",
        lambda root: _clipart(
            clipart_folder(root), EIGHT, {"train": 40, "val": 7, "test": 30}, seed=2, gray=True, side=28
        ),
    ),
    "few-shot": (
        "few-shot: colour clip art, 10 train per category, 5 categories",
        lambda root: _clipart(
            clipart_folder(root), FIVE, {"train": 10, "val": 3, "test": 40}, seed=3, gray=False, side=None
        ),
    ),
    "digits": (
        "far from ImageNet: 8 px handwritten digits, 10 classes, 500 train",
        lambda root: _digits({"train": _each(50, 10), "val": _each(15, 10), "test": _each(-1, 10)}, seed=0),
    ),
}


def write(name: str, root: Path = DEFAULT_ROOT) -> Path:
    """Write dataset `name` under `root` (once; an existing complete copy is kept) and return its folder."""
    folder = root / name
    done = folder / ".complete"
    if done.exists():
        return folder
    splits = SUITE[name][1](root)
    for split, classes in splits.items():
        for label, images in classes.items():
            target = folder / split / label
            target.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                image.save(target / f"{label}_{i:04d}.png")
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
