"""Predict classes for image files or folders with a trained checkpoint, into a CSV.

Preprocessing (size, mean, std, channels), class names and the calibration temperature come from the
checkpoint, so nothing is passed twice. A file that cannot be decoded is left out and named; a batch whose image
statistics are far from the training images' is warned about. The command line is `python -m tl_lightning predict`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tl_lightning.data.images import IMAGE_EXTENSIONS, ImageDecodeError, load_image
from tl_lightning.data.transforms import eval_transform
from tl_lightning.models.module import TransferClassifier
from tl_lightning.utils import NotFound, write_csv

log = logging.getLogger(__name__)


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and image files under folders (recursively, hidden entries skipped), in sorted order.

    Raises:
        FileNotFoundError: a path that does not exist, or no image at all.
    """
    paths = [Path(p) for p in paths]
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(p.relative_to(path))
            )
        else:
            raise NotFound(f"'{path}' does not exist. Pass image files or folders of images.")
    if not found:
        names = [str(p) for p in paths]
        raise NotFound(f"No images found in {names} (extensions: {sorted(IMAGE_EXTENSIONS)}).")
    return found


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


@dataclass
class Predictions:
    """Calibrated probabilities of the files that could be read (rows in their order), and the files left out."""

    files: list[Path]
    probabilities: torch.Tensor
    skipped: dict[Path, str] = field(default_factory=dict)


@torch.no_grad()
def predict_files(model: TransferClassifier, files: list[Path], batch_size: int = 64, tta: bool = False) -> Predictions:
    """Calibrated class probabilities for `files`, optionally averaged with horizontal flips.

    A file that cannot be decoded (corrupt, truncated, a decompression bomb, other channels) is left out and named
    with its reason in `skipped`: one bad file never costs the others their predictions. Each batch is compared
    with the checkpoint's training input statistics, and a far-off batch is logged as a warning naming its first
    and last file.
    """
    model.eval()
    kept, rows, skipped = [], [], {}
    for x, files_in in image_batches(model, files, batch_size, skipped):
        x = x.to(model.device)
        if model.input_statistics is not None and (problem := model.input_statistics.check(x)):
            log.warning("Images %s .. %s: %s", files_in[0], files_in[-1], problem)
        probs = model.probabilities(x)
        if tta:
            probs = (probs + model.probabilities(x.flip(-1))) / 2
        kept += files_in
        rows.append(probs.cpu())
    empty = torch.empty(0, len(model.class_names))
    return Predictions(kept, torch.cat(rows) if rows else empty, skipped)


def write_skipped(path: Path, skipped: dict[Path, str]) -> Path:
    """The files prediction left out, with the reason for each."""
    return write_csv(path, [["path", "reason"], *([str(f), reason] for f, reason in skipped.items())])


def image_batches(
    model: TransferClassifier, files: list[Path], batch_size: int, skipped: dict[Path, str] | None = None
) -> Iterator[tuple[torch.Tensor, list[Path]]]:
    """`files` decoded and through the checkpoint's eval transform, in batches, with the files each batch holds. A
    file that cannot be decoded is left out with a warning, and its reason goes into `skipped` when given."""
    transform = eval_transform(model.data_config)
    channels = int(model.data_config["input_size"][0])
    for start in range(0, len(files), batch_size):
        images = {}
        for file in files[start : start + batch_size]:
            try:
                images[file] = transform(image=load_image(file, channels))["image"]
            except ImageDecodeError as err:
                if skipped is not None:
                    skipped[file] = str(err)
                log.warning("Skipping %s", err)
        if images:
            yield torch.stack(list(images.values())), list(images)


def write_predictions(path: Path, files: list[Path], probs: torch.Tensor, class_names: list[str]) -> Path:
    """One CSV row per file: path, predicted class, its probability, and every class's probability."""
    rows = []
    for file, row in zip(files, probs.tolist(), strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        rows.append([str(file), class_names[best], f"{row[best]:.6f}", *(f"{p:.6f}" for p in row)])
    return write_csv(path, [["path", "class", "probability", *(f"p_{name}" for name in class_names)], *rows])
