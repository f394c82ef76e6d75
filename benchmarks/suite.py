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
- **digits**: scikit-learn's 8 px handwritten digits, 500 train: tiny and far from ImageNet;
- **deep-sky**: astrophotographs of galaxies, clusters and nebulae (Debian `stellarium-data`), ~512 px colour,
  5 object types: natural photographs, the kind where fine-tuning the backbone pays most.

Clip art is RGBA with transparent backgrounds; it is flattened onto white here, once, so every tool reads the same
pixels (what each tool does with an alpha channel is not what this suite measures). Kept out on purpose:
scikit-image's `lfw_subset` and its brick/grass/gravel textures, reserved for held-out checks.

The clip art comes from Debian's package: `apt-get download openclipart-png` and `dpkg-deb -x` into
`ROOT/.openclipart` on first use (or pass `--clipart DIR`); the galaxies from `pip install --no-deps
firstgalaxydata==0.2.1`; the deep-sky photos from `apt-get download stellarium-data`, unpacked under
`ROOT/.stellarium` on first use (or set `TL_STELLARIUM` to a folder holding `usr/share/stellarium/nebulae`).

    python benchmarks/suite.py [--root benchmarks/.data]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import os
import re
import struct
import subprocess
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

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


def stellarium_folder(root: Path) -> Path:
    """Debian's stellarium-data, its nebula images unpacked under `root` once (apt reaches Debian's mirror)."""
    folder = Path(os.environ.get("TL_STELLARIUM", root / ".stellarium"))
    nebulae = folder / "usr/share/stellarium/nebulae/default"
    if (nebulae / "catalog.dat").is_file():
        return nebulae
    folder.mkdir(parents=True, exist_ok=True)
    if not list(folder.glob("stellarium-data_*.deb")):
        subprocess.run(["apt-get", "download", "stellarium-data"], cwd=folder, check=True, capture_output=True)
    deb = next(folder.glob("stellarium-data_*.deb"))
    unpack = f"dpkg-deb --fsys-tarfile {deb.name} | tar -x ./usr/share/stellarium/nebulae"
    subprocess.run(["sh", "-c", unpack], cwd=folder, check=True)
    deb.unlink()
    return nebulae


# Stellarium's object types (its `Nebula::NebulaType`) grouped into the five classes with enough photographs.
DEEP_SKY_TYPES = {
    **dict.fromkeys((0, 1, 2, 3), "galaxy"),
    **dict.fromkeys((5, 6), "open_cluster"),
    7: "globular_cluster",
    11: "planetary_nebula",
    **dict.fromkeys((10, 13, 15, 16, 17), "diffuse_nebula"),
}


class _QtStream:
    """Reads Qt `QDataStream` values (big-endian) from bytes: what Stellarium's `catalog.dat` is written in."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def uint32(self, count: int = 1) -> tuple[int, ...]:
        values = struct.unpack_from(f">{count}I", self.data, self.pos)
        self.pos += 4 * count
        return values

    def double(self, count: int = 1) -> tuple[float, ...]:
        values = struct.unpack_from(f">{count}d", self.data, self.pos)
        self.pos += 8 * count
        return values

    def string(self, count: int = 1) -> None:  # skipped: a byte length (0xFFFFFFFF for null), then UTF-16
        for _ in range(count):
            (length,) = self.uint32()
            self.pos += 0 if length == 0xFFFFFFFF else length


def _deep_sky_types(catalog: Path) -> dict[tuple[str, int], int]:
    """`{(catalogue, number): object type}` for the Messier ("m"), NGC ("n") and IC ("ic") numbers in `catalog`."""
    stream = _QtStream(gzip.decompress(catalog.read_bytes()))
    stream.string(2)  # version, edition
    types: dict[tuple[str, int], int] = {}
    while stream.pos < len(stream.data):
        stream.uint32()  # id
        stream.double(4)  # ra, dec, bmag, vmag
        (kind,) = stream.uint32()
        stream.string()  # morphological type
        stream.double(2)  # axes
        stream.uint32()  # orientation
        stream.double(6)  # redshift, parallax, distance, each with its error
        numbers = stream.uint32(14)  # NGC, IC, M, C, B, Sh2, VdBH, RCW, LDN, LBN, Cr, Mel, PGC, UGC
        stream.string()  # ced
        stream.uint32(2)  # arp, vv
        stream.string(7)  # pk, png, snrg, aco, hcg, eso, vdbh
        stream.uint32(5)
        for prefix, number in zip(("n", "ic", "m"), numbers[:3], strict=True):
            if number:
                types[(prefix, number)] = kind
    return types


def _deep_sky(root: Path, test: int, val_fraction: float, seed: int) -> Splits:
    """Stellarium's deep-sky photographs labelled by object type: a stratified `test` images for test, and of the
    rest `val_fraction` for validation (what a user's folder gets), each image once, onto black (the sky)."""
    nebulae = stellarium_folder(root)
    types = _deep_sky_types(nebulae / "catalog.dat")
    listing = re.sub(r"(?<=[\[,\s:-])\.(\d)", r"0.\1", (nebulae / "textures.json").read_text())  # `.5` -> `0.5`
    labelled = {}
    for url in sorted({tile["imageUrl"] for tile in json.loads(listing)["subTiles"]}):
        named = re.match(r"(m|n|ic)(\d+)", url)
        kind = types.get((named.group(1), int(named.group(2)))) if named else None
        if kind in DEEP_SKY_TYPES:
            labelled[url] = DEEP_SKY_TYPES[kind]
    urls, labels = list(labelled), list(labelled.values())
    rest, test_urls = train_test_split(urls, test_size=test, stratify=labels, random_state=seed)
    train_urls, val_urls = train_test_split(
        rest, test_size=val_fraction, stratify=[labelled[u] for u in rest], random_state=seed
    )
    out: Splits = {}
    for split, chosen in (("train", train_urls), ("val", val_urls), ("test", test_urls)):
        out[split] = {}
        for url in sorted(chosen):
            image = Image.open(nebulae / url).convert("RGBA")
            flat = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image).convert("RGB")
            out[split].setdefault(labelled[url], []).append(flat)
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
    "deep-sky": (
        "natural photographs: ~512 px colour astrophotographs, 5 object types (galaxy 190 ... diffuse nebula 53)",
        lambda root: _deep_sky(root, test=222, val_fraction=0.15, seed=0),
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
