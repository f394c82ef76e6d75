"""Training-pipeline throughput (decode + augment + collate) vs an equivalent torchvision-transforms-v2 pipeline.

Both read the same JPEG folder (written once to a temp dir: smooth colour fields with noise, 500x375, quality 90,
about the size of a phone photo downsampled) through a `DataLoader` with the same batch size and workers. Ours
is `ImageFolderDataModule`'s train loader with the `folder` config's transform (random resized crop, flip,
colour jitter); theirs is `torchvision.datasets.ImageFolder` with `v2.RandomResizedCrop`, `RandomHorizontalFlip`,
`ColorJitter`, `ToImage`, `ToDtype` and `Normalize`. Passes alternate; the figure is the median images/s.

    python benchmarks/dataloader.py [--images 384] [--workers 2] [--passes 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from _results import RESULTS, machine, save_json
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.data.transforms import train_transform

DATA_CONFIG = {
    "input_size": (3, 224, 224),
    "interpolation": "bilinear",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
}


def write_jpegs(root: Path, images: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(images):
        base = np.stack([np.sin(xx / (30 + 7 * c) + i) * 100 + 128 for c in range(3)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    del yy


def ours(root: Path, batch_size: int, workers: int) -> DataLoader:
    transform = partial(train_transform, crop_scale=(0.08, 1.0), hflip=0.5, color_jitter=0.3)
    dm = ImageFolderDataModule(
        root,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=False,
        val_fraction=0.0,
        test_fraction=0.0,
        audit=False,
        train_transform=transform,
        data_config=DATA_CONFIG,
    )
    return dm.train_dataloader()


def torchvision_v2(root: Path, batch_size: int, workers: int) -> DataLoader:
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(224, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.3, 0.3, 0.3)], p=0.8),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=DATA_CONFIG["mean"], std=DATA_CONFIG["std"]),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers)


def images_per_second(loader: DataLoader) -> float:
    started, seen = time.perf_counter(), 0
    for x, _ in loader:
        seen += len(x)
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rates: dict[str, list[float]] = {"tl_lightning (albumentations)": [], "torchvision v2": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpegs(root, args.images)
        for _ in range(args.passes):
            rates["tl_lightning (albumentations)"].append(images_per_second(ours(root, args.batch_size, args.workers)))
            rates["torchvision v2"].append(images_per_second(torchvision_v2(root, args.batch_size, args.workers)))
    medians = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    result = {
        "benchmark": "training pipeline throughput, 224 px",
        "images": args.images,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "median_images_per_second": medians,
        "ratio_ours_over_torchvision": round(medians["tl_lightning (albumentations)"] / medians["torchvision v2"], 3),
        "machine": machine(),
    }
    save_json("dataloader", result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
