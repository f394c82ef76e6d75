"""Class folders on disk, read into one class map and split per class: the checks here name the folder.

Class indices come from the sorted training class names, so a split that lacks a class cannot shift the
others; every split must have the same class folders, each with at least one image.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tl_lightning.data.images import IMAGE_EXTENSIONS
from tl_lightning.utils import BadValue, NotFound


def list_class_folders(folder: Path, ignored: list[str] | None = None) -> dict[str, list[Path]]:
    """Map each visible class folder under `folder` to its sorted image files (by extension).

    Hidden entries (`.ipynb_checkpoints`), files of other types and loose files beside the class folders are
    left out and, if `ignored` is given, appended to it.

    Raises:
        FileNotFoundError: `folder` is missing.
        ValueError: no class folders.
    """
    if not folder.is_dir():
        raise NotFound(
            f"Data folder '{folder}' does not exist. Set data.root to a folder of class folders "
            "(or of train/, val/, test/ folders of class folders)."
        )
    ignored = [] if ignored is None else ignored
    classes = {}
    for entry in sorted(folder.iterdir()):
        if not (entry.is_dir() and _visible(entry)):
            ignored.append(str(entry))
            continue
        files = []
        for f in sorted(entry.iterdir()):
            keep = f.is_file() and _visible(f) and f.suffix.lower() in IMAGE_EXTENSIONS
            (files if keep else ignored).append(f if keep else str(f))
        classes[entry.name] = files
    if not classes:
        raise BadValue(f"'{folder}' has no class folders. Put each class's images in a folder named after it.")
    return classes


def check_no_empty_class(classes: dict[str, list[Path]], folder: Path) -> None:
    """Raise a `ValueError` naming every class folder left without a usable image."""
    empty = [str(folder / name) for name, files in classes.items() if not files]
    if empty:
        raise BadValue(
            f"Class folders without usable images: {', '.join(empty)}. Add images (one of "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folders."
        )


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def check_same_class_folders(train: list[str], other: list[str], split: str, folder: Path) -> None:
    """Raise a `ValueError` listing the classes a split lacks or adds relative to `train/`."""
    missing = sorted(set(train) - set(other))
    extra = sorted(set(other) - set(train))
    if missing or extra:
        raise BadValue(
            f"Split '{split}' in '{folder}' does not have the training classes: missing {missing}, extra {extra}. "
            "Every split needs the same class folders, each with at least one image."
        )


def stratified_split(
    files: dict[str, list[Path]], fractions: dict[str, float], seed: int
) -> dict[str, dict[str, list[Path]]]:
    """Split each class's files by `fractions` (e.g. `{"val": 0.15}`), the rest going to train.

    Per class, by hand rather than scikit-learn's `train_test_split(stratify=...)`, so every class keeps at
    least one training image and the error for a too-small class names it.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[Path]]] = {"train": {}, **{s: {} for s in fractions}}
    for name, paths in files.items():
        order = [paths[i] for i in rng.permutation(len(paths))]
        start = 0
        for split, fraction in fractions.items():
            count = max(1, round(fraction * len(paths))) if fraction > 0 else 0
            out[split][name] = sorted(order[start : start + count])
            start += count
        out["train"][name] = sorted(order[start:])
        if not out["train"][name] or any(fractions[s] > 0 and not out[s][name] for s in fractions):
            raise BadValue(
                f"Class '{name}' has {len(paths)} images, too few to split into {['train', *fractions]}. "
                "Add images, lower data.val_fraction/data.test_fraction, or provide train/ and val/ folders."
            )
    return out


def read_split(path: str | Path) -> dict[str, list[tuple[Path, str]]]:
    """A run's `split.csv` (written by `ImageFolderDataModule.save_split`) as {split: [(file, class name), ...]}, so
    later jobs (int8 calibration, LitData chunks) use exactly the run's images and split."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"'{path}' does not exist: it is written into the run's folder by `python train.py`.")
    splits: dict[str, list[tuple[Path, str]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            splits.setdefault(row["split"], []).append((Path(row["path"]), row["class"]))
    return splits


def check_split_files(splits: dict[str, list[tuple[Path, str]]], source: str | Path) -> None:
    """Stop with one sentence when images that `source` (a run's split.csv) lists are not where it says: a later
    job on a run's images (int8 calibration and scoring) would otherwise quietly use fewer of them, or none."""
    files = [file for rows in splits.values() for file, _ in rows]
    missing = [file for file in files if not Path(file).is_file()]
    if not missing:
        return
    relative = not Path(missing[0]).is_absolute()
    where = (
        f"its paths are relative to the folder train.py ran in, not {Path.cwd()}: run this from that folder"
        if relative
        else "the images were moved or deleted since the run: put them back where the run read them"
    )
    raise NotFound(
        f"{len(missing)} of the {len(files)} images that {source} lists are not there (e.g. '{missing[0]}'); {where}."
    )
